"""Likelihood estimators for AR and MDM models, per sequence.

Every estimator returns, per input sequence, the summed negative log-likelihood in nats (or its
upper bound) of the scored tokens. `vocab_size` says over which ids the softmax normalises
(logits[..., :vocab_size]): the padded vocabulary (the paper's code and the trainer's loss: every
row of the output embedding, the mask token and padding included) or the tokenizer's ids only
(the text vocabulary: the mask and padding rows never hold text). A tuple of sizes scores every
convention from the same forward passes and returns one column per size, (B, len(sizes)).

- `ar_nll`: exact next-token NLL of windows (B, L+1): L predicted tokens per window.
- `mdm_elbo`: the training objective's Monte Carlo ELBO of sequences (B, L): K draws of the mask
  rate t per sequence, each giving sum over masked positions of CE / p with p = (1-eps) t + eps.
  Stratified draws t_k = (u + k/K) mod 1 (one u per sequence) cover [0, 1) evenly and lower the
  variance; `stratified=False` draws t i.i.d. (for comparison). `masking="count"` masks exactly
  m of the L tokens instead (m stratified over 1..L, weight L/m): the same bound with less
  variance (see `draw_masks`).
- `mdm_chain_rule_nll`: the left-to-right chain rule of the MDM: token k predicted from the clean
  tokens before it with itself and everything after it masked. A product of proper conditionals,
  so an exact likelihood of a proper distribution, comparable with AR's NLL (one forward pass per
  position: L passes per sequence).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from diffar.trainer.objectives import (
    apply_mask,
    ar_loss_from_logits,
    mask_rate,
    mdm_loss_from_logits,
)

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
VocabSizes = int | tuple[int, ...]


def _logits(model: LogitsFn, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return model(tokens)[..., :vocab_size].float()


def _sizes(vocab_size: VocabSizes) -> tuple[int, ...]:
    return (vocab_size,) if isinstance(vocab_size, int) else tuple(vocab_size)


def _shape(out: torch.Tensor, vocab_size: VocabSizes) -> torch.Tensor:
    """(B, C) per-convention results as the caller asked: (B,) for one int size."""
    return out[:, 0] if isinstance(vocab_size, int) else out


@torch.no_grad()
def ar_nll(
    model: LogitsFn, windows: torch.Tensor, vocab_size: VocabSizes, batch_size: int = 8
) -> torch.Tensor:
    """Summed next-token NLL of each window (B, L+1) over its L targets -> (B,) float64
    (or (B, C) for C vocabulary sizes)."""
    sizes = _sizes(vocab_size)
    out = torch.empty(windows.shape[0], len(sizes), dtype=torch.float64)
    L = windows.shape[1] - 1
    for s in range(0, windows.shape[0], batch_size):
        w = windows[s : s + batch_size]
        full = model(w[:, :-1]).float()
        for c, vs in enumerate(sizes):
            logits = full[..., :vs]
            for r in range(w.shape[0]):
                loss = ar_loss_from_logits(logits[r : r + 1], w[r : r + 1, 1:])
                out[s + r, c] = loss.double() * L
    return _shape(out, vocab_size)


def stratified_times(
    n: int, samples: int, generator: torch.Generator, stratified: bool = True
) -> torch.Tensor:
    """(n, samples) diffusion times in [0, 1): t_k = (u + k/K) mod 1, or i.i.d. uniform."""
    if not stratified:
        return torch.rand(n, samples, generator=generator, dtype=torch.float64)
    u = torch.rand(n, 1, generator=generator, dtype=torch.float64)
    k = torch.arange(samples, dtype=torch.float64)[None, :] / samples
    return torch.remainder(u + k, 1.0)


MASKINGS = ("rate", "count")


def draw_masks(
    clean: torch.Tensor,
    scorable: torch.Tensor | None,
    t: torch.Tensor,
    masking: str,
    eps: float,
    mask_id: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks for rows (B, T) at times t (B,) in [0, 1): (masked (B, T) bool, weight rate p (B,)).

    "rate" (training's): p = (1-eps) t + eps, each scorable token masked with probability p.
    "count": m = floor(t n) + 1 of the row's n scorable tokens masked, exactly, uniformly at
    random, with p = m / n. Integrating the rate form over t gives sum over m of g(m) / m (g(m):
    the expected CE summed over m random masked tokens), which is what the count form estimates
    directly (eps = 0), without the binomial noise in how many tokens get masked and without
    the 1/p weights' heavy tail at small p. Both feed `CE / p` over masked tokens.
    """
    t = t.to(clean.device)
    full = scorable is None
    if masking == "rate":
        p = mask_rate(t, eps).float()
        _, masked = apply_mask(clean, p, mask_id, generator)
        return (masked if full else masked & scorable), p
    if masking != "count":
        raise ValueError(f"unknown masking {masking!r}; known: {', '.join(MASKINGS)}")
    n = torch.full_like(t, clean.shape[1]) if full else scorable.sum(1).to(t.dtype)
    n = n.clamp(min=1)
    m = torch.minimum((t * n).floor() + 1, n)
    scores = torch.rand(clean.shape, generator=generator, device=clean.device)
    if not full:
        scores = torch.where(scorable, scores, 2.0)  # never among the m lowest
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < m[:, None], (m / n).float()


@torch.no_grad()
def mdm_elbo(
    model: LogitsFn,
    seqs: torch.Tensor,
    vocab_size: VocabSizes,
    mask_id: int,
    generator: torch.Generator,
    samples: int = 32,
    eps: float = 1e-3,
    stratified: bool = True,
    batch_size: int = 32,
    masking: str = "rate",
) -> torch.Tensor:
    """Monte Carlo ELBO (nats, summed over L tokens) of sequences (B, L) -> (B,) (or (B, C) for
    C vocabulary sizes, the same masks for each); `masking` as in `draw_masks` ("rate": the
    training estimator).

    `generator` must live on the sequences' device (masks are drawn there); times are drawn on it
    too when it is a CPU generator, else on the CPU with a seed taken from it.
    """
    B, L = seqs.shape
    sizes = _sizes(vocab_size)
    t = stratified_times(B, samples, _cpu_generator(generator), stratified)
    rows_seq = torch.arange(B).repeat_interleave(samples)
    rows_t = t.flatten()
    total = torch.zeros(B * samples, len(sizes), dtype=torch.float64)
    for s in range(0, B * samples, batch_size):
        idx = rows_seq[s : s + batch_size]
        clean = seqs[idx.to(seqs.device)]
        masked, p = draw_masks(
            clean, None, rows_t[s : s + batch_size], masking, eps, mask_id, generator
        )
        noisy = torch.where(masked, mask_id, clean)
        full = model(noisy).float()
        for c, vs in enumerate(sizes):
            logits = full[..., :vs]
            for r in range(clean.shape[0]):
                one = mdm_loss_from_logits(
                    logits[r : r + 1], clean[r : r + 1], masked[r : r + 1], p[r : r + 1]
                )
                total[s + r, c] = one.double() * L
    return _shape(total.view(B, samples, len(sizes)).mean(dim=1), vocab_size)


@torch.no_grad()
def mdm_chain_rule_nll(
    model: LogitsFn,
    seqs: torch.Tensor,
    vocab_size: VocabSizes,
    mask_id: int,
    batch_size: int = 32,
) -> torch.Tensor:
    """Exact left-to-right NLL (nats, summed over L tokens) of sequences (B, L) -> (B,) (or
    (B, C) for C vocabulary sizes)."""
    B, L = seqs.shape
    sizes = _sizes(vocab_size)
    out = torch.zeros(B, len(sizes), dtype=torch.float64)
    pos = torch.arange(L, device=seqs.device)
    for b in range(B):
        for s in range(0, L, batch_size):
            ks = pos[s : s + batch_size]
            rows = seqs[b].expand(ks.numel(), L)
            noisy = torch.where(pos[None, :] >= ks[:, None], mask_id, rows)
            r = torch.arange(ks.numel(), device=seqs.device)
            picked = model(noisy).float()[r, ks]
            for c, vs in enumerate(sizes):
                logp = torch.log_softmax(picked[:, :vs], dim=-1)
                out[b, c] -= logp[r, seqs[b, ks]].double().sum().cpu()
    return _shape(out, vocab_size)


@torch.no_grad()
def continuation_logprobs_ar(
    model: LogitsFn, seqs: list[list[int]], starts: list[int], vocab_size: int, pad_id: int
) -> tuple[list[float], list[bool]]:
    """For token lists whose tokens from `starts[i]` on are a continuation: its summed log-prob
    under an AR model, and whether greedy decoding would reproduce it (one batched forward pass,
    right-padded; causal attention makes padding invisible to earlier positions)."""
    width = max(len(s) for s in seqs) - 1
    device = device_of(model)
    inp = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        inp[i, : len(s) - 1] = torch.tensor(s[:-1])
    logits = _logits(model, inp.to(device), vocab_size)
    # Only the continuation's positions: (row, position) pairs and their target tokens.
    row = torch.tensor([i for i, s in enumerate(seqs) for _ in range(starts[i], len(s))])
    col = torch.tensor([k - 1 for i, s in enumerate(seqs) for k in range(starts[i], len(s))])
    tgt = torch.tensor([t for i, s in enumerate(seqs) for t in s[starts[i] :]])
    picked = logits[row.to(device), col.to(device)]
    logp = torch.log_softmax(picked, dim=-1)
    tgt_d = tgt.to(device)
    token_ll = logp.gather(1, tgt_d[:, None])[:, 0].double().cpu()
    hit = (picked.argmax(-1) == tgt_d).cpu()
    lls = torch.zeros(len(seqs), dtype=torch.float64).index_add_(0, row, token_ll).tolist()
    misses = torch.zeros(len(seqs), dtype=torch.long).index_add_(0, row, (~hit).long())
    greedy = (misses == 0).tolist()
    return lls, greedy


def masked_ce_over_p(
    logits: torch.Tensor, clean: torch.Tensor, masked: torch.Tensor, p: torch.Tensor
) -> torch.Tensor:
    """Per row: sum over masked positions of CE / p -> (B,) float64. Row by row this is
    `mdm_loss_from_logits(...) * L` (a test holds them equal); vectorised for scoring."""
    # Unscored positions may hold ids past the softmax (mask padding): score them as id 0.
    targets = torch.where(masked, clean, 0)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(clean)
    return (torch.where(masked, ce, 0.0).sum(-1).double() / p.double()).cpu()


@torch.no_grad()
def continuation_elbo_mdm(
    model: LogitsFn,
    seqs: list[list[int]],
    starts: list[int],
    vocab_size: int,
    mask_id: int,
    generator: torch.Generator,
    samples: int = 32,
    eps: float = 1e-3,
    batch_size: int = 32,
    masking: str = "rate",
    ends: list[int] | None = None,
) -> list[float]:
    """Monte Carlo ELBO estimates of log p(continuation | clean context) (lower bounds, nats)
    for equal-length sequences whose continuation is positions [starts[i], ends[i]) (ends
    default: the row's length; past it, padding the model sees and nothing is scored): only
    continuation tokens are masked, at stratified t (`masking` as in `draw_masks`); `samples`
    rows each."""
    device = device_of(model)
    x = torch.tensor(seqs, device=device)
    R, T = x.shape
    t = stratified_times(R, samples, _cpu_generator(generator)).flatten()
    owner = torch.arange(R).repeat_interleave(samples)
    starts_t = torch.tensor(starts, device=device)
    ends_t = torch.tensor(ends if ends is not None else [T] * R, device=device)
    pos = torch.arange(T, device=device)
    totals = torch.zeros(R * samples, dtype=torch.float64)
    for s in range(0, R * samples, batch_size):
        idx = owner[s : s + batch_size].to(device)
        clean = x[idx]
        scorable = (pos[None, :] >= starts_t[idx][:, None]) & (pos[None, :] < ends_t[idx][:, None])
        masked, p = draw_masks(
            clean, scorable, t[s : s + batch_size], masking, eps, mask_id, generator
        )
        noisy = torch.where(masked, mask_id, clean)
        logits = _logits(model, noisy, vocab_size)
        totals[s : s + len(idx)] = masked_ce_over_p(logits, clean, masked, p)
    return (-totals.view(R, samples).mean(dim=1)).tolist()


@torch.no_grad()
def continuation_chain_rule_mdm(
    model: LogitsFn,
    seqs: list[list[int]],
    starts: list[int],
    vocab_size: int,
    mask_id: int,
    batch_size: int = 32,
    ends: list[int] | None = None,
) -> list[float]:
    """Exact left-to-right log p(continuation | context) under an MDM, for equal-length
    sequences whose continuation is positions [starts[i], ends[i]) (default: to the row's end):
    one row per continuation token, that token and all after it masked (padding past ends[i]
    is expected to be the mask token already)."""
    device = device_of(model)
    x = torch.tensor(seqs, device=device)
    T = x.shape[1]
    ends = ends if ends is not None else [T] * len(seqs)
    spans = list(zip(starts, ends, strict=True))
    owner = torch.tensor([i for i, (st, en) in enumerate(spans) for _ in range(st, en)])
    ks = torch.tensor([k for st, en in spans for k in range(st, en)])
    pos = torch.arange(T, device=device)
    out = torch.zeros(len(seqs), dtype=torch.float64)
    for s in range(0, len(ks), batch_size):
        o, k = owner[s : s + batch_size].to(device), ks[s : s + batch_size].to(device)
        noisy = torch.where(pos[None, :] >= k[:, None], mask_id, x[o])
        rows = torch.arange(len(k), device=device)
        logp = torch.log_softmax(_logits(model, noisy, vocab_size)[rows, k], dim=-1)
        out.index_add_(0, o.cpu(), logp[rows, x[o, k]].double().cpu())
    return out.tolist()


@torch.no_grad()
def unmask_by_confidence(
    model: LogitsFn,
    seqs: list[list[int]],
    starts: list[int],
    vocab_size: int,
    mask_id: int,
    ends: list[int] | None = None,
) -> list[list[int]]:
    """For equal-length sequences, mask positions [starts[i], ends[i]) (default: to the row's
    end) and fill them back one token per pass and row, the most confident masked position
    first; padding past ends[i] stays as it is. Returns the fills."""
    device = device_of(model)
    x = torch.tensor(seqs, device=device)
    T = x.shape[1]
    ends = ends if ends is not None else [T] * len(seqs)
    pos = torch.arange(T, device=device)
    starts_t = torch.tensor(starts, device=device)
    ends_t = torch.tensor(ends, device=device)
    target = (pos[None, :] >= starts_t[:, None]) & (pos[None, :] < ends_t[:, None])
    x = torch.where(target, mask_id, x)
    rows = torch.arange(x.shape[0], device=device)
    for _ in range(max(e - s for s, e in zip(starts, ends, strict=True))):
        open_ = target & (x == mask_id)
        if not open_.any():
            break
        probs = torch.softmax(_logits(model, x, vocab_size), dim=-1)
        conf, best = probs.max(-1)
        k = torch.where(open_, conf, -1.0).argmax(-1)
        fill = open_[rows, k]
        x[rows[fill], k[fill]] = best[rows[fill], k[fill]]
    return [x[i, st:en].tolist() for i, (st, en) in enumerate(zip(starts, ends, strict=True))]


def _cpu_generator(generator: torch.Generator) -> torch.Generator:
    if generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator().manual_seed(seed)


def device_of(model: LogitsFn) -> torch.device:
    try:
        return next(model.parameters()).device  # type: ignore[attr-defined]
    except (AttributeError, StopIteration):
        return torch.device("cpu")
