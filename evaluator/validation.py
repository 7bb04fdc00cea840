"""Validation loss over a token stream: AR exact NLL; MDM ELBO and chain-rule NLL; bits per byte.

The stream is cut as training cuts it: windows of L+1 tokens at stride L. AR predicts the last L
tokens of each window from the ones before; MDM scores the first L tokens (the training input).
Either way every window contributes L scored tokens, the windows tile the stream, and the loss is
nats per token (total NLL / total tokens). Standard errors are over windows (each window's NLL is
one observation: data and Monte Carlo noise together); bits per byte is total NLL / (ln 2 * total
UTF-8 bytes of the scored tokens), with a delta-method standard error.

Two vocabulary conventions, each named in the result (`Estimate.vocab`): "padded" normalises the
softmax over every output row (the paper's code and the trainer's loss; what numbers compared with
the paper use), "text" over the tokenizer's ids only. Given `padded_vocab_size`, both come from
the same forward passes: the padded one under the estimator's name ("nll", "elbo",
"chain_rule_nll"), the text one under the name + "_text". The chain-rule NLL scores the ELBO's
windows (all of them by default); when capped to the first n, "elbo_paired" is the ELBO of those
same n windows, so the bound and the exact likelihood are always compared window for window.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from diffar.evaluator.estimators import LogitsFn, ar_nll, mdm_chain_rule_nll, mdm_elbo
from diffar.evaluator.progress import progress


@dataclass(frozen=True)
class Estimate:
    """One estimator's result: nats per token and bits per byte, each with a standard error."""

    loss: float
    stderr: float
    bits_per_byte: float
    bits_per_byte_stderr: float
    sequences: int
    tokens: int
    bytes: int
    vocab: str = "text"  # the softmax's support: "padded" (the paper's) or "text"

    def to_dict(self) -> dict:
        return asdict(self)


def windows_of(tokens: np.ndarray, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """(N, L+1) windows at stride L, the first `max_windows` of them."""
    n = (len(tokens) - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return torch.from_numpy(np.asarray(tokens, dtype=np.int64)[idx])


def summarize(nll: np.ndarray, tokens: np.ndarray, nbytes: np.ndarray) -> Estimate:
    """Per-sequence summed NLL (nats), scored tokens and bytes -> ratio estimates with stderrs."""
    n = len(nll)
    loss = nll.sum() / tokens.sum()
    bpb = nll.sum() / nbytes.sum() / math.log(2)
    if n > 1:
        # Ratio estimator: se(r) ~= sd(y - r x) / (sqrt(n) mean(x)).
        se = np.std(nll - loss * tokens, ddof=1) / math.sqrt(n) / tokens.mean()
        se_b = np.std(nll / math.log(2) - bpb * nbytes, ddof=1) / math.sqrt(n) / nbytes.mean()
    else:
        se = se_b = float("nan")
    return Estimate(
        float(loss), float(se), float(bpb), float(se_b), n, int(tokens.sum()), int(nbytes.sum())
    )


def evaluate_validation(
    model: LogitsFn,
    objective: str,
    tokens: np.ndarray,
    *,
    seq_len: int,
    vocab_size: int,
    token_bytes: np.ndarray,
    mask_id: int | None = None,
    padded_vocab_size: int | None = None,
    samples: int = 32,
    eps: float = 1e-3,
    max_sequences: int | None = None,
    chain_rule_sequences: int | None = None,
    stratified: bool = True,
    masking: str = "rate",
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, Estimate]:
    """Validation estimates by estimator name: AR {"nll"}; MDM {"elbo", "chain_rule_nll"}
    (+ "elbo_paired" when the chain rule is capped), each also as name + "_text" when
    `padded_vocab_size` is given (see the module's docstring).

    `chain_rule_sequences` caps the windows scored by the chain rule (L passes each; 0 skips it;
    None: the ELBO's windows).
    """
    windows = windows_of(tokens, seq_len, max_sequences)
    if len(windows) == 0:
        raise ValueError(f"{len(tokens)} validation tokens hold no window of {seq_len + 1}")
    generator = torch.Generator(device=device).manual_seed(seed)
    # (suffix, vocabulary convention, softmax size), the paper's convention first.
    conventions = [("", "text", vocab_size)]
    if padded_vocab_size is not None:
        conventions = [("", "padded", padded_vocab_size), ("_text", "text", vocab_size)]
    sizes = tuple(c[2] for c in conventions)
    out: dict[str, Estimate] = {}

    def put(name: str, nll: torch.Tensor, scored: torch.Tensor) -> None:
        for c, (suffix, vocab, _) in enumerate(conventions):
            out[name + suffix] = _estimate(nll[:, c], scored, token_bytes, vocab)

    if objective == "ar":
        chunks = []
        for s in progress(range(0, len(windows), batch_size), "val nll", show_progress):
            w = windows[s : s + batch_size].to(device)
            chunks.append(ar_nll(model, w, sizes, batch_size))
        put("nll", torch.cat(chunks), windows[:, 1:])
        return out
    if mask_id is None:
        raise ValueError("MDM estimators need the mask token id")
    seqs = windows[:, :-1]
    rows = max(1, batch_size // samples)  # sequences per call: rows * samples forward rows
    chunks = []
    for s in progress(range(0, len(seqs), rows), "val elbo", show_progress):
        chunks.append(
            mdm_elbo(
                model,
                seqs[s : s + rows].to(device),
                sizes,
                mask_id,
                generator,
                samples=samples,
                eps=eps,
                stratified=stratified,
                batch_size=max(batch_size, 1),
                masking=masking,
            )
        )
    elbo = torch.cat(chunks)
    put("elbo", elbo, seqs)
    n_chain = len(seqs) if chain_rule_sequences is None else min(len(seqs), chain_rule_sequences)
    if n_chain > 0:
        chunks = [
            mdm_chain_rule_nll(model, seqs[s : s + 1].to(device), sizes, mask_id, batch_size)
            for s in progress(range(n_chain), "val chain rule", show_progress)
        ]
        put("chain_rule_nll", torch.cat(chunks), seqs[:n_chain])
        if n_chain < len(seqs):
            put("elbo_paired", elbo[:n_chain], seqs[:n_chain])
    return out


def _estimate(
    nll: torch.Tensor, scored: torch.Tensor, token_bytes: np.ndarray, vocab: str
) -> Estimate:
    scored_np = scored.numpy()
    nbytes = token_bytes[scored_np].sum(axis=1).astype(np.float64)
    counts = np.full(len(scored_np), scored_np.shape[1], dtype=np.float64)
    est = summarize(nll.numpy(), counts, nbytes)
    return Estimate(**{**est.to_dict(), "vocab": vocab})
