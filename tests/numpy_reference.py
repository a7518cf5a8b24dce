"""Independent NumPy implementations used as expected values by the minattn tests.

Written from the textbook formulas, row by row where that is clearer, in float64 on the host. Nothing here imports
minattn or autograd, so an expected value never comes from the code under test.
"""
import contextlib
import warnings

import numpy as np


@contextlib.contextmanager
def strict_floats():
    """Turn every warning (NumPy's RuntimeWarning for 0/0, inf - inf, overflow included) into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(divide="warn", over="warn", invalid="warn"):
            yield


def softmax_rows(scores, mask=None):
    """Softmax over the last axis, one row at a time.

    Entries where ``mask`` is False, or whose score is -inf, get weight 0; a row with no entry left is all zeros.
    ``mask`` (bool, True = take part) broadcasts with ``scores``; the result has the broadcast shape.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if mask is not None:
        shape = np.broadcast_shapes(scores.shape, np.shape(mask))
        scores = np.broadcast_to(scores, shape)
        takes_part_all = np.broadcast_to(np.asarray(mask, dtype=bool), shape)
    else:
        takes_part_all = np.ones(scores.shape, dtype=bool)
    out = np.zeros(scores.shape, dtype=np.float64)
    for idx in np.ndindex(*scores.shape[:-1]):
        row = scores[idx]
        takes_part = takes_part_all[idx] & (row > -np.inf)
        if not takes_part.any():
            continue
        kept = row[takes_part]
        e = np.exp(kept - kept.max())
        out_row = np.zeros(row.shape)
        out_row[takes_part] = e / e.sum()
        out[idx] = out_row
    return out


def attention(q, k, v, mask=None, bias=None, scale=None, dropout_mask=None, is_causal=False):
    """PyTorch's scaled_dot_product_attention semantics, in NumPy. Returns (output, weights before dropout).

    scores = q kᵀ · scale (scale 1/√E by default) + bias; mask bool, True = take part; is_causal: key j <= query i
    (top-left aligned lower triangle); weights = softmax over keys (fully masked row → 0);
    out = (weights ∘ dropout_mask) v (dropout_mask: the dropout multiplier D).
    """
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    if is_causal:
        num_q, num_k = q.shape[-2], k.shape[-2]
        mask = np.array([[j <= i for j in range(num_k)] for i in range(num_q)])
    weights = softmax_rows(scores, mask)
    used = weights * dropout_mask if dropout_mask is not None else weights
    return np.matmul(used, v), weights


def layer_norm(x, gamma, beta, eps=1e-5):
    """(x − mean) / sqrt(biased var + eps) · γ + β over the last axis."""
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def log_softmax_rows(z):
    """log softmax over the last axis through log-sum-exp with the row max taken out."""
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))


def cross_entropy(logits, target, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """PyTorch F.cross_entropy for (N, C) logits: per row −Σ_c q_c log p_c, q = (1−ε) onehot + ε/C.

    Returns (loss, d loss / d logits) — the gradient from the closed form (p − q) / count, computed here by hand.
    The mean is over rows not ignored; with every row ignored the loss and the gradient are 0.
    """
    logits = np.asarray(logits, dtype=np.float64)
    n, c = logits.shape
    rows = np.zeros(n)
    grad = np.zeros((n, c))
    for i in range(n):
        if target[i] == ignore_index:
            continue
        q = np.full(c, label_smoothing / c)
        q[target[i]] += 1.0 - label_smoothing
        logp = log_softmax_rows(logits[i])
        rows[i] = -(q * logp).sum()
        grad[i] = np.exp(logp) - q
    count = max(int(np.sum(np.asarray(target) != ignore_index)), 1)
    if reduction == "none":
        return rows, grad
    if reduction == "sum":
        return rows.sum(), grad
    return rows.sum() / count, grad / count
