"""The data-constrained scaling law of Muennighoff et al. (2023), fitted per objective.

    L(N, U, epochs) = E + A / N'^alpha + B / D'^beta
    D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*)),   U_D = min(U, D), R_D = D / U_D - 1
    N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*)),   U_N = min(N, N_opt(U_D)), R_N = N / U_N - 1

with D = U * epochs the tokens trained on, and N_opt(D) = G^((alpha+beta)/alpha) D^(beta/alpha),
G = (alpha A / (beta B))^(1/(alpha+beta)) the compute-optimal parameter count for D tokens under
the same law (Chinchilla's allocation): parameters beyond it are "repeated" like epochs are.

Fitting, as Muennighoff et al. (and Chinchilla before them) did: Huber loss (delta 1e-3) between
the predicted and observed log-loss, the prediction written as logsumexp(log A - alpha log N',
log B - beta log D', log E), minimised with L-BFGS from a grid of starting points. Stages:
(1) E, A, B, alpha, beta from a grid of starts on the single-epoch points (N' = N, D' = D);
(2) R_D*, R_N* from a grid with those held; (3) all seven jointly from the best few. Standard
errors come from a bootstrap over the points (refits from the best solution).

The critical compute C_crit(U): for U unique tokens, the compute C = 6 N D at which the best MDM
loss reachable with C (over N, with D = C / (6N) repeated from U) first drops below AR's.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np
from scipy.optimize import brentq, minimize, minimize_scalar

from diffar.trainer.errors import UserError, read_text

PARAMS = ("E", "A", "B", "alpha", "beta", "R_D_star", "R_N_star")
HUBER_DELTA = 1e-3
# Starting grid for (log E, log A, log B, alpha, beta), and how many of its best points L-BFGS
# starts from (all 675 change nothing on the tests' data but take 5x longer).
BASE_GRID = (
    (-1.0, 0.0, 1.0),
    (0.0, 5.0, 10.0, 15.0, 20.0),
    (0.0, 5.0, 10.0, 15.0, 20.0),
    (0.2, 0.5, 1.0),
    (0.2, 0.5, 1.0),
)
GRID_KEEP = 128
_LBFGS_OPTIONS = {"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12}


@dataclass(frozen=True)
class Point:
    objective: str
    params: float
    unique_tokens: float
    epochs: float
    loss: float
    source: str = ""


@dataclass
class LawFit:
    objective: str
    values: dict[str, float]
    stderr: dict[str, float] = field(default_factory=dict)
    points: int = 0
    objective_value: float = float("nan")
    rmse_log: float = float("nan")
    identified: dict[str, bool] = field(default_factory=dict)
    fixed: dict[str, float] = field(default_factory=dict)

    def predict(self, params, unique_tokens, epochs) -> np.ndarray:
        return predict(self.values, params, unique_tokens, epochs)

    def to_dict(self) -> dict:
        return {
            "values": self.values,
            "stderr": self.stderr,
            "points": self.points,
            "huber_objective": self.objective_value,
            "rmse_log_loss": self.rmse_log,
            "identified": self.identified,
            "fixed": self.fixed,
        }


# ---------------------------------------------------------------- the law


def n_opt(D, A, B, alpha, beta):
    """Compute-optimal parameters for D tokens: G^((a+b)/a) D^(b/a)."""
    log_n = (np.log(alpha * A) - np.log(beta * B) + beta * np.log(D)) / alpha
    return np.exp(log_n)


def effective(U, R, Rstar):
    """U + U R* (1 - exp(-R / R*)): repeated units are worth less and less, at most U (1 + R*)."""
    return U * (1.0 + Rstar * (-np.expm1(-R / Rstar)))


def effective_data(unique_tokens, epochs, R_D_star):
    D = np.asarray(unique_tokens, float) * np.asarray(epochs, float)
    U_D = np.minimum(unique_tokens, D)
    return effective(U_D, D / U_D - 1.0, R_D_star)


def effective_params(params, unique_tokens, epochs, v):
    D = np.asarray(unique_tokens, float) * np.asarray(epochs, float)
    U_D = np.minimum(unique_tokens, D)
    U_N = np.minimum(params, n_opt(U_D, v["A"], v["B"], v["alpha"], v["beta"]))
    return effective(U_N, np.asarray(params, float) / U_N - 1.0, v["R_N_star"])


def predict(v: dict, params, unique_tokens, epochs) -> np.ndarray:
    Dp = effective_data(unique_tokens, epochs, v["R_D_star"])
    Np = effective_params(params, unique_tokens, epochs, v)
    return v["E"] + v["A"] / Np ** v["alpha"] + v["B"] / Dp ** v["beta"]


# ---------------------------------------------------------------- fitting


def _huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _huber_grad(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    return np.clip(r, -delta, delta)


def _lse3(x1, x2, x3):
    m = np.maximum(np.maximum(x1, x2), x3)
    e1, e2, e3 = np.exp(x1 - m), np.exp(x2 - m), np.exp(x3 - m)
    s = e1 + e2 + e3
    return m + np.log(s), e1 / s, e2 / s, e3 / s


def _base_objective(theta, logN, logD, logL):
    """Plain Chinchilla form (N' = N, D' = D); theta = (e, a, b, alpha, beta); with gradient."""
    e, a, b, al, be = theta
    pred, w1, w2, w3 = _lse3(a - al * logN, b - be * logD, np.full_like(logN, e))
    r = pred - logL
    g = _huber_grad(r)
    grad = np.array(
        [
            (g * w3).sum(),
            (g * w1).sum(),
            (g * w2).sum(),
            -(g * w1 * logN).sum(),
            -(g * w2 * logD).sum(),
        ]
    )
    return float(_huber(r).sum()), grad


# Log-parameters past this are unphysical; clipping keeps a wandering line search finite.
_MAX_LOG = 300.0


def _unpack(theta: np.ndarray, free: list[str], fixed: dict[str, float]) -> dict[str, float]:
    v = dict(fixed)
    for name, x in zip(free, theta, strict=True):
        if name in ("E", "A", "B", "R_D_star", "R_N_star"):
            v[name] = math.exp(min(max(float(x), -_MAX_LOG), _MAX_LOG))
        else:
            v[name] = float(x)
    return v


def _pack(v: dict[str, float], free: list[str]) -> np.ndarray:
    return np.array(
        [math.log(v[n]) if n in ("E", "A", "B", "R_D_star", "R_N_star") else v[n] for n in free]
    )


def _full_objective(theta, free, fixed, N, U, ep, logL) -> float:
    v = _unpack(theta, free, fixed)
    if not (0.0 < v["alpha"] < 5.0 and 0.0 < v["beta"] < 5.0):
        return 1e6
    Dp = effective_data(U, ep, v["R_D_star"])
    Np = effective_params(N, U, ep, v)
    pred, *_ = _lse3(
        math.log(v["A"]) - v["alpha"] * np.log(Np),
        math.log(v["B"]) - v["beta"] * np.log(Dp),
        np.full_like(logL, math.log(v["E"])),
    )
    return float(_huber(pred - logL).sum())


def _num_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.empty_like(x)
    for i in range(len(x)):
        d = np.zeros_like(x)
        d[i] = h
        g[i] = (f(x + d) - f(x - d)) / (2 * h)
    return g


def _lbfgs(f, x0, jac=None, tight: bool = True):
    """L-BFGS-B; `tight` runs to convergence (final fits), else scipy's defaults (grid scans)."""
    options = _LBFGS_OPTIONS if tight else {"maxiter": 1000}
    if jac is None:

        def fun(x):
            return f(x), _num_grad(f, x)

        return minimize(fun, x0, jac=True, method="L-BFGS-B", options=options)
    return minimize(f, x0, jac=True, method="L-BFGS-B", options=options)


def _fit_arrays(N, U, ep, L, fixed: dict[str, float], starts: list[np.ndarray] | None = None):
    """Best (values, objective) over the staged grid, or refits from `starts` (bootstrap)."""
    free = [p for p in PARAMS if p not in fixed]
    logL = np.log(L)
    f = lambda th: _full_objective(th, free, fixed, N, U, ep, logL)  # noqa: E731
    if starts is None:
        starts = _staged_starts(N, U, ep, L, fixed, free, f)
    best = None
    for x0 in starts:
        res = _lbfgs(f, x0)
        if best is None or res.fun < best.fun:
            best = res
    return _unpack(best.x, free, fixed), float(best.fun), best.x


def _staged_starts(N, U, ep, L, fixed, free, f) -> list[np.ndarray]:
    # Stage 1: the base law on single-epoch points (all points if too few), from a grid of
    # starts after Chinchilla's; L-BFGS runs from the GRID_KEEP starts with the lowest objective.
    one = np.abs(ep - 1.0) < 1e-6
    sel = one if one.sum() >= 5 else np.ones_like(one)
    logN, logD, logL = np.log(N[sel]), np.log((U * ep)[sel]), np.log(L[sel])

    def base(th):
        return _base_objective(th, logN, logD, logL)

    grid = [np.array(x) for x in product(*BASE_GRID)]
    grid.sort(key=lambda x: base(x)[0])
    base_best = []
    for x0 in grid[:GRID_KEEP]:
        res = _lbfgs(base, x0, jac=True, tight=False)
        base_best.append((res.fun, res.x))
    base_best.sort(key=lambda t: t[0])
    # Stage 2: R_D*, R_N* from a grid with the base held (the best few base solutions).
    candidates = []
    for _, xb in base_best[:3]:
        e, a, b, al, be = xb
        base = {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": al, "beta": be}
        base.update({k: v for k, v in fixed.items() if k in base})
        for rd, rn in product((1.0, 5.0, 20.0, 100.0, 500.0, 3000.0), (1.0, 5.0, 20.0, 100.0)):
            v = {
                **base,
                "R_D_star": fixed.get("R_D_star", rd),
                "R_N_star": fixed.get("R_N_star", rn),
            }
            x = _pack(v, free)
            candidates.append((f(x), x, v))
    candidates.sort(key=lambda t: t[0])
    # Stage 3 (in the caller): all free constants jointly from the best few.
    starts = []
    for _, _, v in candidates[:8]:
        rfree = [p for p in ("R_D_star", "R_N_star") if p in free]
        if rfree:
            held = {k: val for k, val in v.items() if k not in rfree}

            def g(th, held=held, rfree=rfree):
                return _full_objective(th, rfree, held, N, U, ep, np.log(L))

            res = _lbfgs(g, _pack(v, rfree), tight=False)
            v = {**held, **_unpack(res.x, rfree, {})}
        starts.append(_pack(v, free))
    return starts


@contextlib.contextmanager
def _one_blas_thread():
    """L-BFGS-B on a 7-dimensional problem makes thousands of tiny BLAS calls; a multi-threaded
    OpenBLAS spends most of its time waking threads (6x slower on a busy 2-core machine)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def fit_law(
    points: list[Point],
    objective: str,
    fixed: dict[str, float] | None = None,
    bootstrap: int = 50,
    seed: int = 0,
) -> LawFit:
    pts = [p for p in points if p.objective == objective]
    fixed = dict(fixed or {})
    free = [p for p in PARAMS if p not in fixed]
    if len(pts) < len(free) + 1:
        raise UserError(
            f"{objective}: {len(pts)} points cannot fit {len(free)} constants; add runs or --fix some"
        )
    N = np.array([p.params for p in pts], float)
    U = np.array([p.unique_tokens for p in pts], float)
    ep = np.array([p.epochs for p in pts], float)
    L = np.array([p.loss for p in pts], float)
    with _one_blas_thread():
        return _fit_law(N, U, ep, L, objective, fixed, bootstrap, seed)


def _fit_law(N, U, ep, L, objective, fixed, bootstrap, seed) -> LawFit:
    values, obj, x_best = _fit_arrays(N, U, ep, L, fixed)
    pred = predict(values, N, U, ep)
    fit = LawFit(
        objective,
        values,
        points=len(L),
        objective_value=obj,
        rmse_log=float(np.sqrt(np.mean((np.log(pred) - np.log(L)) ** 2))),
        fixed=fixed,
    )
    D_U = np.minimum(U, U * ep)
    fit.identified = {
        "R_D_star": bool((ep > 1.0 + 1e-9).any()) or "R_D_star" in fixed,
        "R_N_star": bool(
            (N > n_opt(D_U, values["A"], values["B"], values["alpha"], values["beta"])).any()
        )
        or "R_N_star" in fixed,
    }
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(bootstrap):
            i = rng.integers(0, len(L), len(L))
            v, _, _ = _fit_arrays(N[i], U[i], ep[i], L[i], fixed, starts=[x_best])
            draws.append([v[p] for p in PARAMS])
        sd = np.std(np.array(draws), axis=0, ddof=1)
        fit.stderr = {p: (0.0 if p in fixed else float(s)) for p, s in zip(PARAMS, sd, strict=True)}
    return fit


# ---------------------------------------------------------------- critical compute


def best_loss(v: dict, unique_tokens: float, flops: float) -> tuple[float, float]:
    """(lowest loss, its N) reachable with `flops` = 6 N D and U unique tokens."""
    logN = np.linspace(math.log(1e4), math.log(flops / 6.0 / 1e3), 400)
    N = np.exp(logN)
    ep = flops / 6.0 / N / unique_tokens
    losses = predict(v, N, np.full_like(N, unique_tokens), ep)
    i = int(np.argmin(losses))
    lo, hi = logN[max(i - 1, 0)], logN[min(i + 1, len(logN) - 1)]
    if hi <= lo:
        return float(losses[i]), float(N[i])

    def f(x):
        n = math.exp(x)
        return float(predict(v, n, unique_tokens, flops / 6.0 / n / unique_tokens))

    res = minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    return float(res.fun), math.exp(res.x)


def critical_compute(
    ar: dict, mdm: dict, unique_tokens: float, lo: float = 1e12, hi: float = 1e32
) -> float | None:
    """FLOPs where MDM's best loss first drops below AR's at U unique tokens (None: never)."""

    def gap(logc):  # > 0 where MDM is better
        c = math.exp(logc)
        return best_loss(ar, unique_tokens, c)[0] - best_loss(mdm, unique_tokens, c)[0]

    grid = np.linspace(math.log(lo), math.log(hi), 81)
    gaps = [gap(x) for x in grid]
    for i in range(1, len(grid)):
        if gaps[i - 1] <= 0 < gaps[i]:
            return math.exp(brentq(gap, grid[i - 1], grid[i], xtol=1e-8))
    if gaps[0] > 0:
        return lo  # MDM already better at the smallest compute scanned
    return None


def critical_compute_law(ar: dict, mdm: dict, us=None) -> dict | None:
    """Fit C_crit(U) = k U^p over U from 1e7 to 1e11 (the paper reports p = 2.174)."""
    us = np.logspace(7, 11, 9) if us is None else np.asarray(us, float)
    cs = [critical_compute(ar, mdm, u) for u in us]
    ok = [(u, c) for u, c in zip(us, cs, strict=True) if c is not None and c > 1e12]
    if len(ok) < 2:
        return None
    x, y = np.log([u for u, _ in ok]), np.log([c for _, c in ok])
    p, logk = np.polyfit(x, y, 1)
    return {
        "exponent": float(p),
        "coefficient": float(math.exp(logk)),
        "unique_tokens_range": [float(us[0]), float(us[-1])],
    }


# ---------------------------------------------------------------- inputs


def read_points(paths: list[str]) -> list[Point]:
    points: list[Point] = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise UserError(f"{p}: no such file")
        if path.suffix.lower() == ".csv":
            with io.StringIO(read_text(path, "CSV"), newline="") as f:
                reader = csv.DictReader(f)
                need = {"objective", "params", "unique_tokens", "epochs", "loss"}
                if not need <= set(reader.fieldnames or ()):
                    raise UserError(f"{p}: a CSV needs the columns {', '.join(sorted(need))}")
                for i, row in enumerate(reader, start=2):
                    points.append(_point(row, f"{p}:{i}"))
        else:
            try:
                data = json.loads(read_text(path, "results.json"))
            except json.JSONDecodeError as e:
                raise UserError(f"{p}: not JSON ({e})") from None
            for j, row in enumerate(data if isinstance(data, list) else [data]):
                points.append(_point(row, f"{p}[{j}]" if isinstance(data, list) else p))
    if not points:
        raise UserError("no data points in the inputs")
    return points


def _point(row: dict, where: str) -> Point:
    try:
        pt = Point(
            str(row["objective"]).strip().lower(),
            float(row["params"]),
            float(row["unique_tokens"]),
            float(row["epochs"]),
            float(row["loss"]),
            where,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(
            f"{where}: needs objective, params, unique_tokens, epochs, loss ({e})"
        ) from None
    if pt.objective not in ("ar", "mdm"):
        raise UserError(f"{where}: objective {pt.objective!r} is not ar or mdm")
    if min(pt.params, pt.unique_tokens, pt.epochs, pt.loss) <= 0:
        raise UserError(f"{where}: params, unique_tokens, epochs and loss must be positive")
    return pt


def parse_fixed(items: list[str]) -> dict[str, dict[str, float]]:
    aliases = {"R_D": "R_D_star", "R_N": "R_N_star", "R_D*": "R_D_star", "R_N*": "R_N_star"}
    out: dict[str, dict[str, float]] = {"ar": {}, "mdm": {}}
    for item in items:
        key, sep, value = item.partition("=")
        obj, dot, name = key.partition(".")
        name = aliases.get(name, name)
        if not sep or not dot or obj not in out or name not in PARAMS:
            raise UserError(
                f"--fix {item!r}: expected OBJ.PARAM=VALUE, e.g. mdm.R_N=5.31 (PARAM in {', '.join(PARAMS)})"
            )
        out[obj][name] = float(value)
    return out


# ---------------------------------------------------------------- the command

# What `--paper-constants` holds fixed: the exponents and R_N* of Muennighoff et al. (2023), which
# the paper adopts, and the paper's R_D* at U = 100M (about 31 for AR, about 500 for diffusion).
# E, A and B stay free: they depend on the tokenizer and the data, and need 4 points.
PAPER_CONSTANTS = {
    "ar": {"alpha": 0.353, "beta": 0.353, "R_D_star": 31.0, "R_N_star": 5.31},
    "mdm": {"alpha": 0.353, "beta": 0.353, "R_D_star": 500.0, "R_N_star": 5.31},
}


def paper_fixes() -> dict[str, dict[str, float]]:
    return {obj: dict(values) for obj, values in PAPER_CONSTANTS.items()}


def check_enough_points(objective: str, n: int, fixed: dict, paper_constants: bool) -> None:
    """Say what grid the law needs, instead of only that it cannot be fitted."""
    free = [p for p in PARAMS if p not in fixed]
    if n > len(free):
        return
    hint = (
        "or add --paper-constants to hold alpha, beta, R_D* and R_N* at the paper's values and "
        "fit E, A, B only (4 points)"
        if not paper_constants
        else "or --fix more constants"
    )
    raise UserError(
        f"{objective}: {n} point(s) cannot fit {len(free)} free constants (need at least "
        f"{len(free) + 1}). The law needs a grid per objective: two or more model sizes, two or "
        "more unique-token budgets, and several epoch counts each (a CSV of the validation "
        "curves gives one point per validation; `diffar reproduce` writes such a grid); " + hint
    )


def fit_command(
    inputs: list[str],
    unique_tokens: list[float],
    plots: str | None = None,
    bootstrap: int = 50,
    fixed: list[str] | None = None,
    seed: int = 0,
    as_json: bool = False,
    paper_constants: bool = False,
) -> int:
    points = read_points(inputs)
    fixes = paper_fixes() if paper_constants else {"ar": {}, "mdm": {}}
    for obj, values in parse_fixed(fixed or []).items():
        fixes[obj].update(values)  # --fix wins over --paper-constants
    fits: dict[str, LawFit] = {}
    short: list[UserError] = []
    for obj in ("ar", "mdm"):
        n = sum(p.objective == obj for p in points)
        if not n:
            continue
        try:
            check_enough_points(obj, n, fixes[obj], paper_constants)
        except UserError as e:
            short.append(e)
            continue
        fits[obj] = fit_law(points, obj, fixes[obj], bootstrap=bootstrap, seed=seed)
    if short and not fits:
        raise short[0]
    for e in short:  # fit what can be fitted; say what could not
        print(f"diffar fit: {e}", file=sys.stderr)
    out: dict = {"objectives": {k: f.to_dict() for k, f in fits.items()}}
    if "ar" in fits and "mdm" in fits:
        ar, mdm = fits["ar"].values, fits["mdm"].values
        out["c_crit"] = [
            {"unique_tokens": u, "flops": critical_compute(ar, mdm, u)} for u in unique_tokens
        ]
        out["c_crit_law"] = critical_compute_law(ar, mdm)
    if plots:
        from diffar.evaluator.plots import write_plots

        out["plots"] = write_plots(Path(plots), points, fits)
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        print(format_fit(out), file=sys.stdout)
    return 0


def format_fit(out: dict) -> str:
    lines = []
    for obj, f in out["objectives"].items():
        lines.append(f"{obj}: {f['points']} points, rmse(log loss) {f['rmse_log_loss']:.4f}")
        for p in PARAMS:
            v = f["values"][p]
            se = f["stderr"].get(p)
            tag = " (fixed)" if p in f["fixed"] else ""
            if not f["identified"].get(p, True):
                tag = " (not identified: no point has more params than compute-optimal)"
            se_s = f" ± {se:.4g}" if se is not None and p not in f["fixed"] else ""
            lines.append(f"  {p:<9} {v:.4g}{se_s}{tag}")
    for c in out.get("c_crit", []):
        flops = c["flops"]
        when = f"{flops:.3g} FLOPs" if flops is not None else "never (AR stays ahead)"
        lines.append(f"C_crit(U={c['unique_tokens']:.3g}) = {when}")
    law = out.get("c_crit_law")
    if law:
        lines.append(f"C_crit(U) ~ {law['coefficient']:.3g} * U^{law['exponent']:.3f}")
    for path in out.get("plots", []):
        lines.append(f"plot: {path}")
    return "\n".join(lines)
