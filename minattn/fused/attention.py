"""Scaled dot-product attention, fused, with the backward written by hand; and its twin from primitives."""
from autograd import ops
from autograd.function import Function
from autograd.ops import sum_to
from minattn.fused.softmax import masked_softmax_forward, softmax_backward, softmax_reference


class ScaledDotProductAttentionFunction(Function):
    """Attention(Q, K, V) = softmax(Q Kᵀ · scale + bias, masked) V, forward and backward in one node.

    Forward:  Q̃ = Q · scale                         (..., L, E)   scale = 1/√E by default; scaling Q costs L·E,
                                                                   scaling the scores would cost L·S
              A = Q̃ Kᵀ + bias                       (..., L, S)   the attention scores
              P = softmax(A), masked                (..., L, S)   masked keys → weight 0; fully masked row → 0
              O = (P ∘ D) V                         (..., L, Ev)  D = dropout keep-mask / (1 − p), or 1
    Backward: dV = (P ∘ D)ᵀ dO                      (..., S, Ev)
              dP = (dO Vᵀ) ∘ D                      (..., L, S)
              dA = P ∘ (dP − Σ_j dP ∘ P)            (..., L, S)   softmax's backward (SoftmaxFunction)
              dQ = dA K · scale,  dK = dAᵀ Q̃
              each a matrix product's rule (∂(XY) = ∂X Y + X ∂Y), summed over broadcast batch axes.
    Saved:    Q̃, K, V, P (and D): one (..., L, S) matrix, as in the textbook algorithm.
    Shapes:   Q (..., L, E), K (..., S, E), V (..., S, Ev) — L queries, S keys; mask (bool, True = take part) and
              bias (float, added) broadcastable to (..., L, S); ``keep``: the dropout multiplier D or None.
    Source:   Vaswani et al. 2017, eq. 1; d2l §11.3.3
    """

    @staticmethod
    def forward(ctx, q, k, v, mask=None, bias=None, scale=1.0, keep=None):
        q_scaled = q * q.dtype.type(scale)                             # (..., L, E)
        scores = q_scaled @ k.swapaxes(-1, -2)                         # (..., L, S)
        p = masked_softmax_forward(scores, mask, bias, overwrite=True)  # (..., L, S), in the scores' memory
        p_used = p * keep if keep is not None else p                   # (..., L, S)
        ctx.save_for_backward(q_scaled, k, v, p, keep)
        ctx.scale, ctx.q_shape = scale, q.shape
        return p_used @ v                                              # (..., L, Ev)

    @staticmethod
    def backward(ctx, grad_o):
        q_scaled, k, v, p, keep = ctx.saved
        p_used = p * keep if keep is not None else p                   # (..., L, S)
        dv = sum_to(p_used.swapaxes(-1, -2) @ grad_o, v.shape)         # (..., S, Ev)
        dp = grad_o @ v.swapaxes(-1, -2)                               # (..., L, S)
        if keep is not None:
            dp = dp * keep                                             # (..., L, S)
        ds = softmax_backward(p, dp, overwrite=True)                   # (..., L, S), in dp's memory
        dq = sum_to((ds @ k) * q_scaled.dtype.type(ctx.scale), ctx.q_shape)   # (..., L, E)
        dk = sum_to(ds.swapaxes(-1, -2) @ q_scaled, k.shape)           # (..., S, E)
        return dq, dk, dv


def attention_reference(q, k, v, mask=None, bias=None, scale=1.0, keep=None):
    """The same attention composed from engine primitives: matmul, softmax_reference, mul, matmul."""
    scores = ops.matmul(q * scale, ops.transpose(k))                  # (..., L, S)
    p = softmax_reference(scores, mask, bias)                         # (..., L, S)
    if keep is not None:
        p = p * ops.lift(keep, p)                                     # (..., L, S)
    return ops.matmul(p, v)                                           # (..., L, Ev)
