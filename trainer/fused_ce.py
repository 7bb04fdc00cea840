"""The unembedding and the training loss in one pass, chunk by chunk.

Both objectives' losses are a weighted sum of per-position cross-entropies over the tied
unembedding: sum_i w_i * CE(h_i @ E^T, y_i). Computed the plain way, the B*L*V logits, their
log-softmax and its gradient are each a full fp32 buffer (412 MB at 4 x 256 tokens, 3.3 GB at
8 x 2048 with V = 50304), and at small model widths those passes over memory are half the step.
Here each chunk of rows computes its logits, its share of the loss and, when a gradient is
wanted, the gradient (softmax - onehot) * w at once, then that chunk's gradients for h and E;
the B*L*V tensors never exist. Same FLOPs, far fewer bytes (docs/performance.md has the
measurements).

Matmuls run in the autocast dtype when autocast is on (else in the weight's dtype, bf16 under
DeepSpeed's bf16 mode); the softmax, the loss and the accumulated weight gradient in fp32.
"""

from __future__ import annotations

import torch

# Rows per chunk. On a CPU the chunk's logits should stay near the cache: 64-128 rows measured
# best (bench/bench_trainer.py). On a GPU, larger GEMMs and fewer launches win; 4096 rows keep one
# chunk's fp32 logits at 0.8 GB for V = 50304.
CHUNK_ROWS = {"cpu": 128, "cuda": 4096}
DEFAULT_CHUNK_ROWS = 1024


def chunk_rows_for(device: torch.device) -> int:
    return CHUNK_ROWS.get(device.type, DEFAULT_CHUNK_ROWS)


def _matmul_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return weight.dtype


def _chunked(h, weight, targets, row_weights, chunk: int, mm_dtype, grads: bool):
    """The weighted loss and, with `grads`, the gradients for h and weight (else None)."""
    w_mm = weight.detach().to(mm_dtype)
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    grad_h = torch.empty_like(h) if grads else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if grads else None
    with torch.autocast(h.device.type, enabled=False):
        for i in range(0, h.shape[0], chunk):
            hc = h[i : i + chunk].detach().to(mm_dtype)
            yc, wc = targets[i : i + chunk, None], row_weights[i : i + chunk, None]
            logits = (hc @ w_mm.t()).float()
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            total += ((lse - logits.gather(1, yc)) * wc).sum()
            if not grads:
                continue
            probs = logits.sub_(lse).exp_()  # softmax, in place of the logits
            probs.scatter_add_(1, yc, -torch.ones_like(lse))
            g = probs.mul_(wc).to(mm_dtype)
            grad_h[i : i + chunk] = g @ w_mm
            if mm_dtype == torch.float32:
                grad_w.addmm_(g.t(), hc)
            else:  # a low-precision product, accumulated in fp32
                grad_w.add_(g.t() @ hc)
    return total, grad_h, grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and both gradients; backward only scales them by grad_out."""

    @staticmethod
    def forward(ctx, h, weight, targets, row_weights, chunk: int, mm_dtype):
        total, grad_h, grad_w = _chunked(h, weight, targets, row_weights, chunk, mm_dtype, True)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None, None, None


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    row_weights: torch.Tensor,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """sum_i row_weights[i] * CE(h[i] @ weight^T, targets[i]) as an fp32 scalar.

    h (N, d) hidden states, weight (V, d) the unembedding, targets (N,) ids, row_weights (N,)."""
    chunk = chunk_rows or chunk_rows_for(h.device)
    row_weights = row_weights.float()
    mm_dtype = _matmul_dtype(h, weight)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h, weight, targets, row_weights, chunk, mm_dtype)
    with torch.no_grad():
        return _chunked(h, weight, targets, row_weights, chunk, mm_dtype, grads=False)[0]
