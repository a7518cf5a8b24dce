"""Cross-entropy from logits, fused, with the backward written by hand; and its twin from primitives."""
from autograd import ops, parallel
from autograd.backend import rowmax, rowsum, xp
from autograd.function import Function


def log_softmax_forward(logits):
    """Array log-softmax over the last axis: x − m − log Σ exp(x − m), m the row max (no overflow for large x)."""
    shifted = logits - rowmax(logits)                                 # (N, C)
    return shifted - xp.log(rowsum(xp.exp(shifted)))                  # (N, C)


def cross_entropy_forward(logits, target, ignore_index, label_smoothing):
    """The per-row losses ℓ (N,) of CrossEntropyFunction, and log p (N, C) for its backward, on whole arrays."""
    eps = label_smoothing
    log_p = log_softmax_forward(logits)                                # (N, C)  log p
    counted = target != ignore_index                                   # (N,)    rows not ignored
    t = xp.where(counted, target, 0)                                   # (N,)    any class id for ignored rows
    nll = -xp.take_along_axis(log_p, t[:, None], axis=-1)[:, 0]        # (N,)    −log p_t
    losses = nll if eps == 0 else (1 - eps) * nll - eps * log_p.mean(axis=-1)   # (N,)  ℓ = −Σ_c q_c log p_c
    #                                   (ε = 0: no 0 · log p term, which is NaN where some p_c = 0)
    return xp.where(counted, losses, 0), log_p                         # (N,)    0 for ignored rows


def cross_entropy_backward(log_p, target, grad_losses, ignore_index, label_smoothing):
    """dz (N, C) of CrossEntropyFunction on whole arrays, from dℓ = ``grad_losses`` (N,)."""
    eps, num_classes = label_smoothing, log_p.shape[-1]
    counted = target != ignore_index                                   # (N,)
    onehot = (xp.arange(num_classes) == target[:, None]).astype(log_p.dtype)   # (N, C)  1 at the target class
    q = (1 - eps) * onehot + eps / num_classes                         # (N, C)  the smoothed target
    return (xp.exp(log_p) - q) * (grad_losses * counted)[:, None]        # (N, C)  dz = (p − q) dℓ, 0 if ignored


class CrossEntropyFunction(Function):
    """Mean (or sum, or per-row) cross-entropy between logits and integer targets, backward written by hand.

    Forward:  log p = log_softmax(z)                                    (N, C)
              q = (1 − ε) onehot(t) + ε / C                             label smoothing ε (Szegedy et al. 2016)
              ℓ_n = −Σ_c q_nc log p_nc  for rows with t_n ≠ ignore_index, 0 for ignored rows
              loss = Σ_n ℓ_n / (number of rows not ignored)              for reduction='mean'
    Backward: dz_n = (p_n − q_n) · dℓ_n   for rows not ignored,  0 for ignored rows;
              dℓ_n = g / count ('mean'), g ('sum'), g_n ('none')
              because ∂ℓ_n/∂z_nc = p_nc Σ_c' q_nc' − q_nc = p_nc − q_nc (q sums to 1).
    When every row is ignored, 'mean' returns 0 with zero gradient (PyTorch returns NaN).
    Shapes:   logits z: (N, C) float; target t: (N,) int; output () for 'mean'/'sum', (N,) for 'none'.
    Executed by ``parallel.map_batch`` (rows cut into chunks).
    Source:   PyTorch F.cross_entropy (ignore_index, label_smoothing, reduction); d2l §4.1.2
    """

    @staticmethod
    def forward(ctx, logits, target, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
        options = dict(ignore_index=ignore_index, label_smoothing=label_smoothing)
        losses, log_p = parallel.map_batch(cross_entropy_forward, logits, target, core_ndim=(1, 0), **options)
        count = xp.maximum((target != ignore_index).sum(), 1).astype(logits.dtype) if reduction == "mean" \
            else logits.dtype.type(1)                                  # ()  rows averaged over, kept on the device
        ctx.save_for_backward(log_p, target)
        ctx.options, ctx.reduction, ctx.count = options, reduction, count
        if reduction == "none":
            return losses                                              # (N,)
        return losses.sum() / count                                     # ()

    @staticmethod
    def backward(ctx, grad):
        log_p, target = ctx.saved
        grad_losses = grad if ctx.reduction == "none" else xp.broadcast_to(grad / ctx.count, target.shape)   # (N,)
        return (parallel.map_batch(cross_entropy_backward, log_p, target, grad_losses, core_ndim=(1, 0, 0),
                                   grads_for=(log_p,), **ctx.options),)    # (N, C), shaped as log p: as z


def cross_entropy_reference(logits, target, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """The same loss composed from engine primitives (log_softmax by sub/exp/sum/log, gather by getitem)."""
    n, c = logits.shape
    shifted = logits - logits.data.max(axis=-1, keepdims=True)
    log_p = shifted - ops.log(ops.exp(shifted).sum(axis=-1, keepdims=True))
    counted = target != ignore_index
    t = xp.where(counted, target, 0)
    losses = -log_p[xp.arange(n), t] * (1 - label_smoothing) - log_p.mean(axis=-1) * label_smoothing
    losses = ops.where(counted, losses, xp.zeros((), dtype=logits.dtype))
    if reduction == "none":
        return losses
    return losses.sum() / float(max(int(counted.sum()), 1) if reduction == "mean" else 1)

