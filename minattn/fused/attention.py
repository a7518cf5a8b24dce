"""Scaled dot-product attention, fused, with the backward written by hand; and its twin from primitives."""
from autograd import ops
from autograd.function import Function
from autograd.ops import sum_to
from minattn.fused.softmax import masked_softmax_forward, softmax_backward, softmax_reference


class ScaledDotProductAttentionFunction(Function):
    """Attention(Q, K, V) = softmax(Q Kᵀ · scale + bias, masked) V, forward and backward in one node.

    Forward:  S = Q Kᵀ · scale                     (..., L, S)   scale = 1/√E by default
              P = softmax(S), masked               (..., L, S)   masked keys → weight 0; fully masked row → 0
              O = (P ∘ D) V                        (..., L, Ev)  D = dropout keep-mask / (1 − p), or 1
    Backward: dV = (P ∘ D)ᵀ dO                     (..., S, Ev)
              dP = (dO Vᵀ) ∘ D                     (..., L, S)
              dS = P ∘ (dP − Σ_j dP ∘ P)           (..., L, S)   softmax's backward (SoftmaxFunction)
              dQ = dS K · scale,  dK = dSᵀ Q · scale
              each a matrix product's rule (∂(AB) = ∂A B + A ∂B), summed over broadcast batch axes.
    Saved:    Q, K, V, P (and D): one (..., L, S) matrix, as in the textbook algorithm (flash attention, issue 5,
              saves only the row log-sum-exp instead).
    Shapes:   Q (..., L, E), K (..., S, E), V (..., S, Ev); mask (bool, True = take part) and bias (float, added)
              broadcastable to (..., L, S); ``keep``: the dropout multiplier D or None.
    Source:   Vaswani et al. 2017, eq. 1; d2l §11.3.3
    """

    @staticmethod
    def forward(ctx, q, k, v, mask=None, bias=None, scale=1.0, keep=None):
        scores = (q @ k.swapaxes(-1, -2)) * q.dtype.type(scale)       # (..., L, S)
        p = masked_softmax_forward(scores, mask, bias)                # (..., L, S)
        p_used = p * keep if keep is not None else p                  # (..., L, S)
        ctx.save_for_backward(q, k, v, p, keep)
        ctx.scale = scale
        return p_used @ v                                             # (..., L, Ev)

    @staticmethod
    def backward(ctx, grad_o):
        q, k, v, p, keep = ctx.saved
        scale = q.dtype.type(ctx.scale)
        p_used = p * keep if keep is not None else p                  # (..., L, S)
        dv = sum_to(p_used.swapaxes(-1, -2) @ grad_o, v.shape)        # (..., S, Ev)
        dp = grad_o @ v.swapaxes(-1, -2)                              # (..., L, S)
        if keep is not None:
            dp = dp * keep                                            # (..., L, S)
        ds = softmax_backward(p, dp) * scale                          # (..., L, S)
        dq = sum_to(ds @ k, q.shape)                                  # (..., L, E)
        dk = sum_to(ds.swapaxes(-1, -2) @ q, k.shape)                 # (..., S, E)
        return dq, dk, dv


def attention_reference(q, k, v, mask=None, bias=None, scale=1.0, keep=None):
    """The same attention composed from engine primitives: matmul, softmax_reference, mul, matmul."""
    scores = ops.matmul(q, ops.transpose(k)) * scale                  # (..., L, S)
    p = softmax_reference(scores, mask, bias)                         # (..., L, S)
    if keep is not None:
        p = p * ops.lift(keep, p)                                     # (..., L, S)
    return ops.matmul(p, v)                                           # (..., L, Ev)
