"""Scaled dot-product attention, fused, with the backward written by hand; and its twin from primitives."""
from autograd import ops, parallel
from autograd.backend import xp
from autograd.function import Function
from autograd.ops import sum_to
from minattn import masks
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
        batch = masks.batch_shape(q, k, v, mask, bias, keep)           # (...) every batch axis, broadcast
        q_scaled = q * q.dtype.type(scale)                             # (..., L, E)
        p = xp.empty(batch + (q.shape[-2], k.shape[-2]), dtype=q.dtype)   # (..., L, S) the weights, filled part by part
        out = xp.empty_like(q, shape=batch + (q.shape[-2], v.shape[-1]))   # (..., L, Ev) laid out as q: see below
        madds = p.size * (q.shape[-1] + v.shape[-1])                   # multiply-adds of Q̃ Kᵀ and P V
        parts = parallel.batch_parts(batch, madds)                     # the batch cut in one part per core

        def attend(part):                                              # the forward above, on one part of the batch
            p_i, out_i = part.take(p), part.take(out)                  # (b, L, S), (b, L, Ev): views to fill
            q_i, k_i, v_i = (_expand(part.take(x), p_i) for x in (q_scaled, k, v))   # (b, L|S, E|Ev) views
            xp.matmul(q_i, k_i.swapaxes(-1, -2), out=p_i)              # (b, L, S) A = Q̃ Kᵀ
            weights = masked_softmax_forward(p_i, part.take(mask), part.take(bias), overwrite=True)   # (b, L, S) P
            if weights is not p_i:                                     # (no keys, S = 0: a new empty array)
                p_i[...] = weights                                     # (b, L, S)
            keep_i = part.take(keep)                                   # (b, L, S) D, or None
            xp.matmul(p_i * keep_i if keep is not None else p_i, v_i, out=out_i)            # (b, L, Ev) (P ∘ D) V

        parallel.run(attend, parts)
        # Memory layout: MultiHeadAttention's q is (B, L, h, d_h) memory seen as (B, h, L, d_h) (transpose_qkv);
        # an output in that same layout makes transpose_output's merge of the heads a view, not a copy.
        ctx.save_for_backward(q_scaled, k, v, p, keep)
        ctx.scale, ctx.parts = scale, parts
        return out                                                     # (..., L, Ev)

    @staticmethod
    def backward(ctx, grad_o):
        q_scaled, k, v, p, keep = ctx.saved
        parts, scale = ctx.parts, q_scaled.dtype.type(ctx.scale)

        def backprop(part):                                            # the backward above, on one part of the batch
            q_i, k_i, v_i, p_i, keep_i = (part.take(x) for x in (q_scaled, k, v, p, keep))   # (b, L|S, ·) views
            grad_o_i = part.take(grad_o)                               # (b, L, Ev)
            p_used = p_i * keep_i if keep is not None else p_i         # (b, L, S)
            dv = sum_to(p_used.swapaxes(-1, -2) @ grad_o_i, v_i.shape)   # (b, S, Ev)
            dp = grad_o_i @ v_i.swapaxes(-1, -2)                       # (b, L, S)
            if keep is not None:
                dp *= keep_i                                           # (b, L, S)
            ds = softmax_backward(p_i, dp, overwrite=True)             # (b, L, S), in dp's memory
            dq = ds @ k_i                                              # (b, L, E)
            dq *= scale                                                # (b, L, E)
            dk = sum_to(ds.swapaxes(-1, -2) @ q_i, k_i.shape)          # (b, S, E)
            return sum_to(dq, q_i.shape), dk, dv                       # each shaped as this part's input

        grads = parallel.run(backprop, parts)                          # [(dQ, dK, dV) of each part]
        return tuple(parallel.join([g[n] for g in grads], x, parts)   # (..., L, E), (..., S, E), (..., S, Ev)
                     for n, x in enumerate((q_scaled, k, v)))


def _expand(x, like):
    """x (..., n, m) broadcast to like's batch axes — a view with zero strides, no copy — so that a matrix product
    can write straight into ``like``'s memory. x itself when it has them already (CuPy copies zero-stride inputs)."""
    if x.shape[:-2] == like.shape[:-2]:
        return x
    return xp.broadcast_to(x, like.shape[:-2] + x.shape[-2:])


def attention_reference(q, k, v, mask=None, bias=None, scale=1.0, keep=None):
    """The same attention composed from engine primitives: matmul, softmax_reference, mul, matmul."""
    scores = ops.matmul(q * scale, ops.transpose(k))                  # (..., L, S)
    p = softmax_reference(scores, mask, bias)                         # (..., L, S)
    if keep is not None:
        p = p * ops.lift(keep, p)                                     # (..., L, S)
    return ops.matmul(p, v)                                           # (..., L, Ev)
