"""Rotary position embedding (RoPE), fused, with the backward written by hand; and its twin from primitives.

RoPE encodes position m by ROTATING q and k rather than adding to them: the channels are cut into d/2 pairs, and pair
i of the vector at position m is turned by the angle m·θ_i, θ_i = base^(−2i/d). A dot product of two rotated vectors
only sees the difference of their angles, so the score q_m · k_n depends on the positions only through n − m.
"""
from autograd import ops, parallel
from autograd.backend import float64, xp
from autograd.function import Function


def rotary_angles(length, dim, offset, base, dtype):
    """cos and sin of m·θ_i for positions m = offset … offset + length − 1 and pairs i < dim/2: two (length, dim/2)
    arrays of ``dtype`` (computed in float64: m·θ is large at long positions)."""
    theta = base ** (-xp.arange(0, dim, 2, dtype=float64) / dim)               # (d/2,)  θ_i = base^(−2i/d)
    angles = xp.arange(offset, offset + length, dtype=float64)[:, None] * theta   # (L, d/2)  m θ_i
    return xp.cos(angles).astype(dtype), xp.sin(angles).astype(dtype)


def rotate_pairs(x, cos, sin, interleaved):
    """Turn each channel pair (x1, x2) of x (..., L, d) by the angle whose cos and sin are given (L, d/2):
    (x1 cos − x2 sin, x2 cos + x1 sin). The pairs are (x_i, x_{i+d/2}) (rotate_half), or (x_2i, x_2i+1)
    (``interleaved``)."""
    half = x.shape[-1] // 2
    x1, x2 = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., :half], x[..., half:])   # (..., L, d/2) each
    y1 = x1 * cos - x2 * sin                                                    # (..., L, d/2)
    y2 = x2 * cos + x1 * sin                                                    # (..., L, d/2)
    if interleaved:
        return xp.stack([y1, y2], axis=-1).reshape(x.shape)                     # (..., L, d)  y1, y2 alternate
    return xp.concatenate([y1, y2], axis=-1)                                    # (..., L, d)


def rotary_forward(x, cos, sin, interleaved):
    """y = R_m x: every pair of x turned by m θ_i."""
    return rotate_pairs(x, cos, sin, interleaved)


def rotary_backward(grad_y, cos, sin, interleaved):
    """dx = R_mᵀ dy = R_(−m) dy: the inverse rotation (the same cos, the opposite sin)."""
    return rotate_pairs(grad_y, cos, -sin, interleaved)


class RotaryEmbeddingFunction(Function):
    """Rotary position embedding: rotate each channel pair of x by its position's angle, backward written by hand.

    Forward:  θ_i = base^(−2i/d),  φ_mi = (offset + m) θ_i                       i < d/2, m < L
              (y1, y2)_mi = (x1 cos φ_mi − x2 sin φ_mi,  x2 cos φ_mi + x1 sin φ_mi)   pair i of row m
              i.e. y_m = R_m x_m with R_m block-diagonal 2 × 2 rotations.
    Backward: dx_m = R_mᵀ dy_m = R_(−m) dy_m: (dx1, dx2) = (dy1 cos φ + dy2 sin φ, dy2 cos φ − dy1 sin φ)
              because y is linear in x with the orthogonal Jacobian R_m, and the transpose of a rotation is the
              rotation by the opposite angle.
    Why it encodes relative position: (R_m q)ᵀ (R_n k) = qᵀ R_mᵀ R_n k = qᵀ R_(n−m) k — only n − m is left.
    Layouts:  rotate_half (default; GPT-NeoX, litgpt, Hugging Face) pairs channel i with i + d/2; interleaved (Llama,
              gpt-fast, llm.c) pairs 2i with 2i + 1. They are one fixed permutation apart: interleaved(x) =
              P⁻¹ rotate_half(P x), P putting the even channels first, then the odd ones.
    Shapes:   x, y: (..., L, d) with d even — L positions (the second-to-last axis), starting at ``offset`` (for
              cached decoding: the position of the first new token).
    Executed by ``parallel.map_batch`` (chunks of the batch axes; cos and sin given whole).
    Source:   Su et al. 2021, "RoFormer", eq. 13–16; GPT-NeoX and Llama's apply_rotary_emb.
    """

    @staticmethod
    def forward(ctx, x, offset=0, base=10000.0, interleaved=False):
        cos, sin = rotary_angles(x.shape[-2], x.shape[-1], offset, base, x.dtype)   # (L, d/2) each
        ctx.save_for_backward(cos, sin)
        ctx.interleaved = interleaved
        return parallel.map_batch(rotary_forward, x, cos=cos, sin=sin, interleaved=interleaved)   # (..., L, d)

    @staticmethod
    def backward(ctx, grad_y):
        cos, sin = ctx.saved
        return parallel.map_batch(rotary_backward, grad_y, cos=cos, sin=sin, interleaved=ctx.interleaved)


def rotary_reference(x, offset=0, base=10000.0, interleaved=False):
    """The same rotation composed from engine primitives: getitem, mul, sub, add, concatenate / stack, reshape."""
    half = x.shape[-1] // 2
    cos, sin = rotary_angles(x.shape[-2], x.shape[-1], offset, base, x.dtype)     # (L, d/2) constants
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        x1, x2 = x[..., :half], x[..., half:]
    y1, y2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin                               # (..., L, d/2)
    if interleaved:
        return ops.reshape(ops.stack([y1, y2], axis=-1), x.shape)                   # (..., L, d)
    return ops.concatenate([y1, y2], axis=-1)                                       # (..., L, d)
