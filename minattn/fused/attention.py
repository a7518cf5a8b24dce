"""Scaled dot-product attention, fused, with the backward written by hand; and its twin from primitives."""
from autograd import ops, parallel
from autograd.function import Function
from autograd.ops import sum_to
from minattn.fused.softmax import softmax_, softmax_backward_, softmax_reference


def attention_forward(q, k, v, mask, bias, dropout_mask, scale):
    """The forward of ScaledDotProductAttentionFunction on whole arrays: returns (O, P)."""
    a = (q * scale) @ k.swapaxes(-1, -2)                           # (..., L, S)   A = Q̃ Kᵀ
    p = softmax_(a, mask, bias)                                    # (..., L, S)   P = softmax(A + bias), masked
    p_used = p if dropout_mask is None else p * dropout_mask       # (..., L, S)   P ∘ D
    return p_used @ v, p                                           # (..., L, Ev)  O = (P ∘ D) V;  P for the backward


def attention_backward(q, k, v, p, dropout_mask, grad_o, scale):
    """The backward of ScaledDotProductAttentionFunction on whole arrays: returns (dQ, dK, dV)."""
    p_used = p if dropout_mask is None else p * dropout_mask       # (..., L, S)   P ∘ D
    dv = p_used.swapaxes(-1, -2) @ grad_o                          # (..., S, Ev)  dV = (P ∘ D)ᵀ dO
    dp = grad_o @ v.swapaxes(-1, -2)                               # (..., L, S)   dO Vᵀ
    if dropout_mask is not None:
        dp *= dropout_mask                                         # (..., L, S)   dP = (dO Vᵀ) ∘ D
    da = softmax_backward_(p, dp)                                  # (..., L, S)   dA = P ∘ (dP − Σ_j dP ∘ P)
    dq = da @ k                                                    # (..., L, E)
    dq *= scale                                                    # (..., L, E)   dQ = dA K · scale
    dk = da.swapaxes(-1, -2) @ q                                   # (..., S, E)
    dk *= scale                                                    # (..., S, E)   dK = dAᵀ Q · scale
    return sum_to(dq, q.shape), sum_to(dk, k.shape), sum_to(dv, v.shape)   # each summed over its broadcast axes


class ScaledDotProductAttentionFunction(Function):
    """Attention(Q, K, V) = softmax(Q Kᵀ · scale + bias, masked) V, forward and backward in one node.

    Forward:  A = (Q · scale) Kᵀ + bias             (..., L, S)   the attention scores; scale = 1/√E by default,
                                                                   applied to Q (L·E products, not L·S)
              P = softmax(A), masked                (..., L, S)   masked keys → weight 0; fully masked row → 0
              O = (P ∘ D) V                         (..., L, Ev)  D = dropout keep-mask / (1 − p), or 1
    Backward: dV = (P ∘ D)ᵀ dO                      (..., S, Ev)
              dP = (dO Vᵀ) ∘ D                      (..., L, S)
              dA = P ∘ (dP − Σ_j dP ∘ P)            (..., L, S)   softmax's backward (SoftmaxFunction)
              dQ = dA K · scale,  dK = dAᵀ Q · scale
              each a matrix product's rule (∂(XY) = ∂X Y + X ∂Y), summed over broadcast batch axes.
    Saved:    Q, K, V, P (and D): one (..., L, S) matrix, as in the textbook algorithm.
    Shapes:   Q (..., L, E), K (..., S, E), V (..., S, Ev) — L queries, S keys; mask (bool, True = take part) and
              bias (float, added) broadcastable to (..., L, S); ``dropout_mask``: the dropout multiplier D or None.
    Executed by ``parallel.map_batch``: chunks of the batch on the CPU cores (autograd/parallel.py).
    Source:   Vaswani et al. 2017, eq. 1; d2l §11.3.3
    """

    @staticmethod
    def forward(ctx, q, k, v, mask=None, bias=None, scale=1.0, dropout_mask=None):
        out, p = parallel.map_batch(attention_forward, q, k, v, mask, bias, dropout_mask, scale=scale)
        ctx.save_for_backward(q, k, v, p, dropout_mask)
        ctx.scale, ctx.attention_weights = scale, p
        return out                                                 # (..., L, Ev)

    @staticmethod
    def backward(ctx, grad_o):
        q, k, v, p, dropout_mask = ctx.saved
        return parallel.map_batch(attention_backward, q, k, v, p, dropout_mask, grad_o, scale=ctx.scale,
                                  grads_for=(q, k, v))            # (..., L, E), (..., S, E), (..., S, Ev)


def attention_reference(q, k, v, mask=None, bias=None, scale=1.0, dropout_mask=None):
    """The same attention composed from engine primitives: matmul, softmax_reference, mul, matmul."""
    scores = ops.matmul(q * scale, ops.transpose(k))                  # (..., L, S)
    p = softmax_reference(scores, mask, bias)                         # (..., L, S)
    if dropout_mask is not None:
        p = p * ops.lift(dropout_mask, p)                             # (..., L, S)
    return ops.matmul(p, v)                                           # (..., L, Ev)
