"""Scoring downstream tasks with AR and MDM models.

Multiple choice: each choice's log-likelihood given its context. AR: the exact summed
log-probability (requests sorted by length and batched, right-padded). MDM: a Monte Carlo ELBO of
the answer given the clean context (stratified t, `samples` draws, batched as one row per draw),
or with scoring="chain_rule" the exact left-to-right likelihood. An MDM sees its whole input, so
what follows the answer matters: padding="none" scores context+answer as they are (rows of one
length batched together); padding="mask" fills the rest of the sequence length with mask tokens,
as the paper's evaluation does (the model was trained on full-length rows). The paper's main
script scores with the chain rule on mask-padded rows (`PAPER_MDM_SCORING`). acc picks the
highest log-likelihood; acc_norm divides by the choice's length in characters (lm-eval's
acc_norm).
LAMBADA: exact match of the last word's tokens; AR greedy (argmax at every target position,
teacher-forced, as lm-eval counts it), MDM by unmasking the target positions one at a time, the
most confident first.

Pairs are tokenized as lm-eval does: trailing spaces of the context move to the continuation,
the continuation's tokens are the whole text's tokens past the context's, and an empty context
becomes the end-of-document token. Long inputs keep their last seq_len (+1 for AR) tokens.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffar.evaluator.estimators import (
    LogitsFn,
    continuation_chain_rule_mdm,
    continuation_elbo_mdm,
    continuation_logprobs_ar,
    device_of,
    unmask_by_confidence,
)
from diffar.evaluator.progress import progress
from diffar.evaluator.tasks import Task
from diffar.evaluator.tokenizers import Tokenizer


def encode_pair(tok: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:
        return [tok.eod_id], tok.encode(continuation)
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return ctx, whole[len(ctx) :]


PAPER_MDM_SCORING = ("chain_rule", "mask")  # (scoring, padding) of the paper's main script
SCORINGS = ("elbo", "chain_rule")
PADDINGS = ("none", "mask")


def _fit(ctx: list[int], cont: list[int], width: int) -> tuple[list[int], int]:
    """The last `width` tokens of ctx+cont and where the continuation starts in them (>= 1)."""
    seq = (ctx + cont)[-width:]
    return seq, max(1, len(seq) - len(cont))


def score_task(
    model: LogitsFn,
    objective: str,
    task: Task,
    tok: Tokenizer,
    *,
    seq_len: int,
    mask_id: int | None = None,
    scoring: str = "elbo",
    padding: str = "none",
    softmax_vocab: int | None = None,
    masking: str = "rate",
    samples: int = 32,
    eps: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    show_progress: bool = False,
) -> dict:
    """Accuracy metrics of one task; `softmax_vocab` is the number of output rows the softmax
    normalises over (default: the tokenizer's ids; the padded size is the paper's convention): {"acc", "acc_stderr", ["acc_norm", "acc_norm_stderr"], "n"}."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; known: {', '.join(SCORINGS)}")
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; known: {', '.join(PADDINGS)}")
    device = device_of(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    vocab = softmax_vocab or tok.vocab_size  # padded (the paper's) or the text vocabulary
    requests = []  # (instance index, choice index, seq, start)
    for i, inst in enumerate(task.instances):
        for c, (ctx_text, cont_text) in enumerate(
            zip(inst.contexts, inst.continuations, strict=True)
        ):
            ctx, cont = encode_pair(tok, ctx_text, cont_text)
            seq, start = _fit(ctx, cont, seq_len + 1 if objective == "ar" else seq_len)
            requests.append((i, c, seq, start))
    lls = [[0.0] * len(inst.continuations) for inst in task.instances]
    exact = [True] * len(task.instances)
    desc = f"{task.name} ({len(task.instances)})"
    if objective == "ar":
        order = sorted(range(len(requests)), key=lambda r: -len(requests[r][2]))
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        for batch in progress(batches, desc, show_progress):
            ll, greedy = continuation_logprobs_ar(
                model,
                [requests[r][2] for r in batch],
                [requests[r][3] for r in batch],
                vocab,
                tok.eod_id,
            )
            for r, v, g in zip(batch, ll, greedy, strict=True):
                i, c = requests[r][:2]
                lls[i][c] = v
                exact[i] = exact[i] and g
    else:
        if mask_id is None:
            raise ValueError("MDM scoring needs the mask token id")
        # A bidirectional model sees padding, so batches hold sequences of one length only;
        # with mask padding every row is seq_len long and ends where its own tokens end.
        ends = [len(req[2]) for req in requests]
        if padding == "mask":
            requests = [
                (i, c, seq + [mask_id] * (seq_len - len(seq)), start)
                for i, c, seq, start in requests
            ]
        groups: dict[int, list[int]] = {}
        for r, req in enumerate(requests):
            groups.setdefault(len(req[2]), []).append(r)
        elbo = task.kind != "greedy" and scoring == "elbo"
        per_pass = max(1, batch_size // samples) if elbo else batch_size  # requests per chunk
        chunks = [
            rs[s : s + per_pass] for rs in groups.values() for s in range(0, len(rs), per_pass)
        ]
        for chunk in progress(chunks, desc, show_progress):
            seqs = [requests[r][2] for r in chunk]
            starts = [requests[r][3] for r in chunk]
            chunk_ends = [ends[r] for r in chunk]
            if task.kind == "greedy":
                fills = unmask_by_confidence(model, seqs, starts, vocab, mask_id, ends=chunk_ends)
                for r, fill in zip(chunk, fills, strict=True):
                    i, _, seq, start = requests[r]
                    exact[i] = exact[i] and fill == seq[start : ends[r]]
                continue
            if scoring == "chain_rule":
                values = continuation_chain_rule_mdm(
                    model, seqs, starts, vocab, mask_id, batch_size, ends=chunk_ends
                )
            else:
                values = continuation_elbo_mdm(
                    model,
                    seqs,
                    starts,
                    vocab,
                    mask_id,
                    generator,
                    samples=samples,
                    eps=eps,
                    batch_size=batch_size,
                    masking=masking,
                    ends=chunk_ends,
                )
            for r, v in zip(chunk, values, strict=True):
                i, c = requests[r][:2]
                lls[i][c] = v
    n = len(task.instances)
    if task.kind == "greedy":
        return {**_mean_stderr("acc", np.array(exact, dtype=np.float64)), "n": n}
    acc = np.array(
        [int(np.argmax(ll)) == inst.gold for ll, inst in zip(lls, task.instances, strict=True)],
        dtype=np.float64,
    )
    out = {**_mean_stderr("acc", acc)}
    if task.acc_norm:
        norm = np.array(
            [
                int(
                    np.argmax(
                        [v / max(1, len(t)) for v, t in zip(ll, _choice_texts(inst), strict=True)]
                    )
                )
                == inst.gold
                for ll, inst in zip(lls, task.instances, strict=True)
            ],
            dtype=np.float64,
        )
        out.update(_mean_stderr("acc_norm", norm))
    return {**out, "n": n}


def _choice_texts(inst) -> tuple[str, ...]:
    return inst.choice_texts or tuple(c.strip() for c in inst.continuations)


def _mean_stderr(name: str, values: np.ndarray) -> dict:
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {name: mean, f"{name}_stderr": se}
