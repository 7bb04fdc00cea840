"""One AR / AR-with-input-masking / MDM training run for the crossover experiment (issue 15).

The trainer's own parts (Transformer, objectives, epoch sampler, lr schedule, AdamW parameter
groups, per-step seeds) in one process without DeepSpeed, so that many small runs fit on a shared
CPU; the loop is the trainer's (fp32, global batch = micro batch, grad clip). Validation is the
evaluator's convention, on held-out tokens that follow the training ones:

- AR (plain or input-masked): exact next-token NLL on clean inputs.
- MDM: Monte Carlo ELBO, `--val-samples` stratified t per window (the paper's eps), the same
  masks at every evaluation (a fixed seed), so successive points differ by the model only.

Both conventions are recorded: `padded` normalises over the padded vocabulary (the paper's code
and the trainer's loss), `text` over the tokenizer's ids only (the mask and padding rows never
hold text). Writes one JSON line per evaluation and a final summary line to --out.

    python bench/exp_crossover.py --data runs/exp/q25k/quickstart/data --objective mdm \\
        --dim 64 --layers 2 --heads 2 --lr 2e-3 --epochs 200 --eval-every 10 --out r.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffar.evaluator.estimators import stratified_times
from diffar.trainer.config import TrainConfig
from diffar.trainer.engine import param_groups
from diffar.trainer.model import Transformer
from diffar.trainer.objectives import apply_mask, build_objective, mask_rate
from diffar.trainer.plan import plan_run
from diffar.trainer.sampler import EpochSampler
from diffar.trainer.schedule import lr_at
from diffar.trainer.shards import load_tokens, read_manifest
from diffar.trainer.sizing import count_parameters
from diffar.trainer.train import step_seed

EVAL_SEED = 20250721


def config_from(args: argparse.Namespace) -> TrainConfig:
    objective = "mdm" if args.objective == "mdm" else "ar"
    return TrainConfig.model_validate(
        {
            "name": "exp",
            "objective": objective,
            "model": {
                "dim": args.dim,
                "n_layers": args.layers,
                "n_heads": args.heads,
                "seq_len": args.seq_len,
                "vocab_size": args.vocab_size,
                "dropout": args.dropout,
            },
            "data": {"train_uri": str(Path(args.data) / "train"), "unique_tokens": args.unique},
            "epochs": args.epochs,
            "global_batch": args.batch,
            "micro_batch": args.batch,
            "optim": {
                "lr": args.lr,
                "min_lr": args.lr * args.min_lr_ratio,
                "warmup_fraction": args.warmup,
                "weight_decay": args.weight_decay,
            },
            "diffusion": {"time_sampling": args.time_sampling},
            "ar": {"input_mask_rate": args.input_mask_rate},
            "seed": args.seed,
        }
    )


@torch.no_grad()
def evaluate(model, cfg: TrainConfig, val: torch.Tensor, samples: int, batch: int) -> dict:
    """Validation loss in nats per token, over the padded and over the text vocabulary."""
    model.eval()
    V = cfg.model.vocab_size
    sums = {"padded": 0.0, "text": 0.0}
    count = 0
    if cfg.objective == "ar":
        for w in val.split(batch):
            logits = model(w[:, :-1]).float()
            tgt = w[:, 1:].flatten()
            sums["padded"] += F.cross_entropy(logits.flatten(0, 1), tgt, reduction="sum").item()
            sums["text"] += F.cross_entropy(
                logits[..., :V].flatten(0, 1), tgt, reduction="sum"
            ).item()
            count += tgt.numel()
    else:
        gen = torch.Generator(device=val.device).manual_seed(EVAL_SEED)
        seqs = val[:, :-1]
        t = stratified_times(len(seqs), samples, torch.Generator().manual_seed(EVAL_SEED))
        t = t.flatten().to(val.device)
        rows = torch.arange(len(seqs), device=val.device).repeat_interleave(samples)
        eps = cfg.diffusion.mask_eps
        for s in range(0, len(rows), batch):
            clean = seqs[rows[s : s + batch]]
            p = mask_rate(t[s : s + batch], eps).float()
            noisy, masked = apply_mask(clean, p, cfg.model.mask_token_id, gen)
            logits = model(noisy).float()
            for key, lg in (("padded", logits), ("text", logits[..., :V])):
                ce = F.cross_entropy(lg.flatten(0, 1), clean.flatten(), reduction="none")
                ce = ce.view_as(clean)
                sums[key] += (torch.where(masked, ce, 0.0).sum(1) / p).sum().item() / samples
        count = seqs.numel()
    model.train()
    return {k: v / count for k, v in sums.items()}


def validation_windows(data: Path, seq_len: int, max_tokens: int) -> torch.Tensor:
    val_dir = data / "val"
    tokens = load_tokens(val_dir, min(max_tokens, read_manifest(val_dir).total_tokens))
    n = (len(tokens) - 1) // seq_len
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))


def train_and_validate(
    cfg: TrainConfig,
    val: torch.Tensor,
    out: Path,
    *,
    eval_every: float,
    val_samples: int,
    device: str = "cpu",
    meta: dict | None = None,
    log=print,
) -> dict:
    """Train `cfg` (global batch = micro batch), validating every `eval_every` epochs; returns
    the best validation point. bf16 autocast on CUDA, fp32 on the CPU (the trainer's rule)."""
    dev = torch.device(device)
    tokens = load_tokens(Path(cfg.data.train_uri), cfg.data.unique_tokens)
    plan = plan_run(cfg, unique_tokens=len(tokens))
    torch.manual_seed(cfg.seed)
    objective = build_objective(cfg)
    model = Transformer(cfg.model, causal=objective.causal).to(dev)
    o = cfg.optim
    opt = torch.optim.AdamW(
        param_groups(model, o.weight_decay),
        lr=o.lr,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
        fused=dev.type == "cuda",
    )
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=dev.type == "cuda")
    sampler = EpochSampler(tokens, cfg.model.seq_len, cfg.global_batch, cfg.seed)
    val = val.to(dev)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        **(meta or {}),
        "objective": cfg.objective,
        "input_mask_rate": cfg.ar.input_mask_rate,
        "time_sampling": cfg.diffusion.time_sampling,
        "lr": o.lr,
        "seed": cfg.seed,
        "params": count_parameters(cfg.model),
        "unique_tokens": len(tokens),
        "epochs": cfg.epochs,
        "steps": plan.total_steps,
        "tokens_per_step": plan.tokens_per_step,
        "val_windows": len(val),
        "device": str(dev),
    }
    evals_per = max(1, round(eval_every * sampler.n / cfg.global_batch))
    gen = torch.Generator(device=dev)
    train_sum = torch.zeros((), device=dev)
    train_n, train_time = 0, 0.0
    best = {"padded": math.inf, "text": math.inf, "epoch": None}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with out.open("w") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
        for step in range(plan.total_steps):
            t0 = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, o, plan.warmup_steps, plan.scheduled_steps)
            seed = step_seed(cfg.seed, step, 0, 0)
            torch.manual_seed(seed)
            gen.manual_seed(seed)
            with autocast:
                loss = objective.loss(model, sampler.next_batch().to(dev), gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            opt.step()
            train_sum += loss.detach()
            train_n += 1
            done = step + 1
            if done % evals_per == 0 or done == plan.total_steps:
                sync()
                train_time += time.perf_counter() - t0
                with autocast:
                    val_loss = evaluate(model, cfg, val, val_samples, 32)
                row = {
                    "step": done,
                    "epoch": sampler.epoch,
                    "tokens": done * plan.tokens_per_step,
                    "train_loss": float(train_sum) / train_n,
                    "val": val_loss,
                    "train_seconds": train_time,
                    "tokens_per_second": done * plan.tokens_per_step / train_time,
                }
                f.write(json.dumps(row) + "\n")
                f.flush()
                train_sum.zero_()
                train_n = 0
                if val_loss["padded"] < best["padded"]:
                    best = {**val_loss, "epoch": sampler.epoch}
            else:
                train_time += time.perf_counter() - t0
        f.write(json.dumps({"best": best, "train_seconds": train_time}) + "\n")
    log(f"{out}: best {best}, {train_time:.0f}s training")
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset root with train/ and val/")
    ap.add_argument("--objective", choices=("ar", "ar-mask", "mdm"), required=True)
    ap.add_argument("--input-mask-rate", type=float, default=0.0)
    ap.add_argument("--time-sampling", choices=("iid", "stratified"), default="iid")
    ap.add_argument("--unique", type=int, default=None)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=float, default=0.02)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--epochs", type=float, required=True)
    ap.add_argument("--eval-every", type=float, default=2.0, help="epochs between evaluations")
    ap.add_argument("--val-tokens", type=int, default=8192)
    ap.add_argument("--val-samples", type=int, default=8, help="MDM ELBO draws per window")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.objective == "ar-mask" and not args.input_mask_rate:
        ap.error("ar-mask needs --input-mask-rate > 0")
    torch.set_num_threads(args.threads)
    cfg = config_from(args)
    val = validation_windows(Path(args.data), cfg.model.seq_len, args.val_tokens)
    train_and_validate(
        cfg,
        val,
        Path(args.out),
        eval_every=args.eval_every,
        val_samples=args.val_samples,
        device=args.device,
        meta={"args": vars(args)},
    )


if __name__ == "__main__":
    main()
