"""`diffar fit`: recovers known constants from synthetic data; C_crit; plots."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from diffar.evaluator import scaling
from diffar.operator.cli import main

# Muennighoff et al. (2023), C4.
C4 = {
    "E": 1.87,
    "A": 520.8,
    "B": 1487.7,
    "alpha": 0.353,
    "beta": 0.353,
    "R_D_star": 15.39,
    "R_N_star": 5.31,
}
# A made-up diffusion law: worse at one epoch, far more patient with repeats.
MDM = {**C4, "E": 1.95, "B": 2200.0, "R_D_star": 500.0, "R_N_star": 50.0}


def synthetic(constants, objective, noise, seed, epochs=(1, 2, 4, 8, 16, 32, 64, 128)):
    rng = np.random.default_rng(seed)
    points = []
    for u in (1e7, 1e8, 1e9):
        for n in (5e6, 2e7, 1e8, 4e8):
            for ep in epochs:
                loss = float(scaling.predict(constants, n, u, ep)) * float(
                    np.exp(rng.normal(0, noise))
                )
                points.append(scaling.Point(objective, n, u, ep, loss))
    return points


def test_recovers_muennighoff_c4_constants():
    fit = scaling.fit_law(synthetic(C4, "ar", noise=0.002, seed=0), "ar", bootstrap=0)
    err = {k: abs(fit.values[k] / C4[k] - 1) for k in C4}
    print("relative errors:", {k: round(v, 4) for k, v in err.items()})
    assert err["R_D_star"] < 0.05
    assert err["R_N_star"] < 0.10
    assert max(err["alpha"], err["beta"], err["E"]) < 0.02
    assert fit.identified == {"R_D_star": True, "R_N_star": True}
    assert fit.rmse_log < 0.004


def test_effective_data_saturates_at_one_plus_r_d():
    assert scaling.effective_data(100.0, 1.0, 15.0) == pytest.approx(100.0)
    assert scaling.effective_data(100.0, 1e6, 15.0) == pytest.approx(1600.0)
    assert scaling.effective_data(100.0, 0.5, 15.0) == pytest.approx(50.0)  # under one epoch


def test_critical_compute_separates_who_wins():
    for u in (1e7, 1e8):
        c = scaling.critical_compute(C4, MDM, u)
        assert c is not None
        ar_lo, ar_hi = scaling.best_loss(C4, u, c / 3)[0], scaling.best_loss(C4, u, c * 3)[0]
        md_lo, md_hi = scaling.best_loss(MDM, u, c / 3)[0], scaling.best_loss(MDM, u, c * 3)[0]
        assert ar_lo < md_lo and md_hi < ar_hi
    law = scaling.critical_compute_law(C4, MDM)
    assert 1.5 < law["exponent"] < 3.5
    # Identical laws never cross.
    assert scaling.critical_compute(C4, C4, 1e8) is None


def test_fit_command_csv_json_and_plots(tmp_path, capsys):
    path = tmp_path / "runs.csv"
    epochs = (1, 4, 16, 64, 256)
    points = synthetic(C4, "ar", 0.001, 1, epochs) + synthetic(MDM, "mdm", 0.001, 2, epochs)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["objective", "params", "unique_tokens", "epochs", "loss"])
        for p in points:
            w.writerow([p.objective, p.params, p.unique_tokens, p.epochs, p.loss])
    plots = tmp_path / "plots"
    args = ["--json", "--plots", str(plots), "--bootstrap", "3"]
    rc = main(["fit", str(path), *args, "--unique-tokens", "1e8", "--unique-tokens", "1e9"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    ar, mdm = out["objectives"]["ar"], out["objectives"]["mdm"]
    assert abs(ar["values"]["R_D_star"] / 15.39 - 1) < 0.05
    assert mdm["values"]["R_D_star"] > 10 * ar["values"]["R_D_star"]
    assert set(ar["stderr"]) == set(scaling.PARAMS)
    truth = scaling.critical_compute(C4, MDM, 1e8)
    assert out["c_crit"][0]["unique_tokens"] == 1e8
    assert abs(np.log(out["c_crit"][0]["flops"] / truth)) < np.log(2.0)
    assert out["c_crit_law"]["exponent"] > 1
    names = sorted(p.rsplit("/", 1)[-1] for p in out["plots"])
    assert names == [
        "critical_compute.png",
        "effective_data.png",
        "fit_vs_observed.png",
        "loss_vs_epochs.png",
    ]
    for p in out["plots"]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_fit_command_rejects_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("objective,params\nar,1\n")
    assert main(["fit", str(bad)]) == 2
    assert "needs the columns" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "missing.json")]) == 2
    assert main(["fit", str(bad), "--fix", "xx.E=1"]) == 2
