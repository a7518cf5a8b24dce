"""Cross-entropy from logits, fused, with the backward written by hand; and its twin from primitives."""
from autograd import ops
from autograd.backend import xp
from autograd.function import Function


def log_softmax_forward(logits):
    """Array log-softmax over the last axis: x − m − log Σ exp(x − m), m the row max (no overflow for large x)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)             # (N, C)
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


class CrossEntropyFunction(Function):
    """Mean (or sum, or per-row) cross-entropy between logits and integer targets, backward written by hand.

    Forward:  log p = log_softmax(z)                                    (N, C)
              q = (1 − ε) onehot(t) + ε / C                             label smoothing ε (Szegedy et al. 2016)
              ℓ_n = −Σ_c q_nc log p_nc  for rows with t_n ≠ ignore_index, 0 for ignored rows
              loss = Σ_n ℓ_n / (number of rows not ignored)              for reduction='mean'
    Backward: dz_n = (p_n − q_n) · g / count   for kept rows,  0 for ignored rows
              because ∂ℓ_n/∂z_nc = p_nc Σ_c' q_nc' − q_nc = p_nc − q_nc (q sums to 1).
    When every row is ignored, 'mean' returns 0 with zero gradient (PyTorch returns NaN).
    Shapes:   logits z: (N, C) float; target t: (N,) int; output () for 'mean'/'sum', (N,) for 'none'.
    Source:   PyTorch F.cross_entropy (ignore_index, label_smoothing, reduction); d2l §4.1.2
    """

    @staticmethod
    def forward(ctx, logits, target, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
        n, c = logits.shape
        log_p = log_softmax_forward(logits)                           # (N, C)
        keep = target != ignore_index                                 # (N,)
        t = xp.where(keep, target, 0)                                 # (N,)
        eps = logits.dtype.type(label_smoothing)
        nll = -log_p[xp.arange(n), t]                                 # (N,)
        rows = (1 - eps) * nll - eps * log_p.mean(axis=-1) if label_smoothing else nll   # (N,)
        rows = xp.where(keep, rows, 0)                                # (N,)
        count = int(keep.sum()) if reduction == "mean" else 1
        ctx.save_for_backward(log_p, t, keep)
        ctx.eps, ctx.reduction, ctx.count = eps, reduction, max(count, 1)
        if reduction == "none":
            return rows
        return rows.sum() / logits.dtype.type(ctx.count)

    @staticmethod
    def backward(ctx, grad):
        log_p, t, keep = ctx.saved
        n, c = log_p.shape
        dz = xp.exp(log_p)                                            # p, (N, C)
        if ctx.eps:
            dz -= ctx.eps / c
        dz[xp.arange(n), t] -= 1 - ctx.eps                            # p − q
        scale = grad[:, None] if ctx.reduction == "none" else grad / log_p.dtype.type(ctx.count)
        return (dz * (keep[:, None] * scale),)                         # (N, C)


def cross_entropy_reference(logits, target, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """The same loss composed from engine primitives (log_softmax by sub/exp/sum/log, gather by getitem)."""
    n, c = logits.shape
    shifted = logits - logits.data.max(axis=-1, keepdims=True)
    log_p = shifted - ops.log(ops.exp(shifted).sum(axis=-1, keepdims=True))
    keep = target != ignore_index
    t = xp.where(keep, target, 0)
    rows = -log_p[xp.arange(n), t] * (1 - label_smoothing) - log_p.mean(axis=-1) * label_smoothing
    rows = ops.where(keep, rows, xp.zeros((), dtype=logits.dtype))
    if reduction == "none":
        return rows
    return rows.sum() / float(max(int(keep.sum()), 1) if reduction == "mean" else 1)

