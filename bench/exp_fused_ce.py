"""Experiment (not run by `make bench`): what a chunked, fused unembedding + cross-entropy would
give our training step, before anyone changes the trainer for it.

    python bench/exp_fused_ce.py [--preset tiny] [--seq-len 256] [--batch 4] [--chunk 128]

Today the model returns all B x L x 50304 logits and the objective takes their cross-entropy:
the logits, their log-softmax and its gradient are each a full fp32 B*L*V buffer (412 MB at
4 x 256 tokens; 3.3 GB at the GPU bench's 8 x 2048), and the loss's backward zero-fills one more.
The fused version here never materialises them: for each chunk of `--chunk` rows it computes
the logits, the weighted loss, and the gradient (softmax - one-hot) x weight at once, then the
gradients of the hidden states and of the (tied) unembedding; backward only scales them.
The same FLOPs, far fewer bytes. The per-row weights express both objectives exactly: AR 1/(B*L)
on every row; MDM masked/p/(B*L), 0 on unmasked rows (the paper's loss).

Checks the loss and gradients against the model's own path, then times both (one thread, CPU
seconds, interleaved, medians), on this CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stepbench as sb  # noqa: E402
import torch  # noqa: E402
from stepbench import ModelConfig, Transformer  # noqa: E402

from diffar.trainer.objectives import apply_mask, mask_rate  # noqa: E402


class FusedLinearCE(torch.autograd.Function):
    """sum_i w_i * CE(h_i @ W^T, y_i), gradients computed chunk by chunk in the forward.

    Matmuls run in `mm_dtype` (bf16 under autocast, else the weights' dtype); the softmax, the
    loss and the accumulated weight gradient in fp32."""

    @staticmethod
    def forward(ctx, h, weight, targets, row_weights, chunk: int, mm_dtype):
        w_mm = weight.detach().to(mm_dtype)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros_like(weight, dtype=torch.float32)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.autocast(h.device.type, enabled=False):
            for i in range(0, h.shape[0], chunk):
                hc = h[i : i + chunk].detach().to(mm_dtype)
                yc, wc = targets[i : i + chunk], row_weights[i : i + chunk]
                logits = (hc @ w_mm.t()).float()
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, yc[:, None]).squeeze(1)
                total += ((lse - picked) * wc).sum()
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                probs.scatter_add_(1, yc[:, None], -torch.ones_like(lse[:, None]))
                g = probs.mul_(wc[:, None]).to(mm_dtype)
                grad_h[i : i + chunk] = g @ w_mm
                grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None, None, None


def hidden(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Transformer.forward without the final unembedding: the normalised hidden states."""
    T = tokens.shape[1]
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    x = model.embed_dropout(model.embed(tokens))
    for block in model.blocks:
        x = block(x, cos, sin)
    return model.norm(x)


def fused_loss(model, objective, windows, gen, chunk):
    """The objective's loss (same draws from `gen` for MDM) through FusedLinearCE."""
    model = getattr(model, "_orig_mod", model)
    dev = windows.device
    if objective == "ar":
        inputs, targets = windows[:, :-1], windows[:, 1:]
        w = torch.full(targets.shape, 1.0 / targets.numel(), device=dev)
    else:
        clean = windows[:, :-1]
        p = mask_rate(torch.rand(clean.shape[0], generator=gen, device=dev), 1e-3)
        inputs, masked = apply_mask(clean, p, model.cfg.mask_token_id, gen)
        targets = clean
        w = torch.where(masked, 1.0 / p[:, None], torch.zeros((), device=dev)) / clean.numel()
    h = hidden(model, inputs).flatten(0, 1)
    mm_dtype = (
        torch.get_autocast_dtype(dev.type)
        if torch.is_autocast_enabled(dev.type)
        else model.embed.weight.dtype
    )
    return FusedLinearCE.apply(
        h, model.embed.weight, targets.flatten(), w.flatten(), chunk, mm_dtype
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=128, help="rows per chunk (CPU best: 64-128)")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = ModelConfig(preset=args.preset, seq_len=args.seq_len, dropout=0.0)
    print(f"model: {sb.describe(cfg)}; batch {args.batch}; chunk {args.chunk} rows")
    windows = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1))
    for objective in ("ar", "mdm"):
        torch.manual_seed(0)
        base = Transformer(cfg, objective == "ar")
        fused = Transformer(cfg, objective == "ar")
        fused.load_state_dict(base.state_dict())
        obj = sb.objective_for(cfg, objective)

        # Same loss and gradients as the model's own path (same generator draws for MDM).
        la = obj.loss(base, windows, torch.Generator().manual_seed(5))
        la.backward()
        lb = fused_loss(fused, objective, windows, torch.Generator().manual_seed(5), args.chunk)
        lb.backward()
        gdiff = max(
            ((a.grad - b.grad).abs().max() / a.grad.abs().max()).item()
            for a, b in zip(base.parameters(), fused.parameters(), strict=True)
        )
        print(
            f"{objective}: loss {la.item():.6f} vs fused {lb.item():.6f}; max rel grad diff {gdiff:.2e}"
        )

        steps = {
            "model (logits + CE)": sb.Stepper(base, objective, cfg, torch.device("cpu")),
            "fused chunked CE": sb.Stepper(fused, objective, cfg, torch.device("cpu")),
        }
        gen = torch.Generator().manual_seed(0)
        steps["fused chunked CE"].loss = lambda w, m=fused, o=objective, g=gen: fused_loss(
            m, o, w, g, args.chunk
        )
        times = {k: [] for k in steps}
        for r in range(args.reps + 1):
            for name in list(steps)[:: 1 if r % 2 else -1]:
                c = time.process_time()
                steps[name].step(windows)
                if r:  # the first round warms up
                    times[name].append(time.process_time() - c)
        med = {k: statistics.median(v) for k, v in times.items()}
        a, b = med["model (logits + CE)"], med["fused chunked CE"]
        print(f"   step CPU s: model {a:.3f}, fused {b:.3f} -> speed-up {a / b:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
