"""The talking-heads attention core, fused, with the backward written by hand; and its twin from primitives.

Talking heads (Shazeer et al. 2020, arXiv 2003.02436) lets the heads exchange information twice: the attention
logits of the h_k query/key heads are mixed into h softmax heads by P_l BEFORE the softmax, and the h softmax
weights are mixed into h_v value heads by P_w AFTER it. Each mix is a matrix product over the heads axis.
"""
from autograd import ops, parallel
from autograd.backend import xp
from autograd.function import Function
from autograd.ops import sum_to
from minattn.fused.softmax import softmax_, softmax_backward_, softmax_reference


def mix_heads(weight, x):
    """Mix the heads axis: out[..., o, l, s] = Σ_i weight[o, i] · x[..., i, l, s].

    weight: (h_out, h_in) (PyTorch's Linear layout); x: (..., h_in, L, S) → (..., h_out, L, S). One matrix product:
    the (L, S) plane is flattened so that weight multiplies a (h_in, L·S) matrix per batch element.
    """
    *batch, h_in, length_q, length_k = x.shape
    flat = x.reshape(*batch, h_in, length_q * length_k)                         # (..., h_in, L·S)
    return (weight @ flat).reshape(*batch, weight.shape[0], length_q, length_k)  # (..., h_out, L, S)


def mix_heads_backward(weight, x, grad_out, need_x=True):
    """The two matrix products of ``mix_heads``' backward: (d weight, d x).

    out = W x over the heads axis, so d x = Wᵀ d out (mix back with the transpose) and
    d W[o, i] = Σ_{batch, l, s} d out[..., o, l, s] · x[..., i, l, s] — a matrix product over every other axis.
    """
    axes = tuple(a for a in range(grad_out.ndim) if a != grad_out.ndim - 3)     # all but the heads axis
    d_weight = xp.tensordot(grad_out, x, axes=(axes, axes))                     # (h_out, h_in)
    d_x = mix_heads(weight.T, grad_out) if need_x else None                     # (..., h_in, L, S)
    return d_weight, d_x


def talking_heads_forward(q, k, v, mask, attn_bias, dropout_mask, w_l, w_w, b_l, b_w, scale):
    """The forward of TalkingHeadsFunction on whole arrays: returns (O, J, W, U)."""
    logits = (q * scale) @ k.swapaxes(-1, -2)                                # (..., h_k, L, S)  J = (Q · scale) Kᵀ
    mixed = mix_heads(w_l, logits)                                           # (..., h, L, S)    P_l J
    if b_l is not None:
        mixed += b_l[:, None, None]                                          # (..., h, L, S)    A = P_l J + b_l
    weights = softmax_(mixed, mask, attn_bias)                               # (..., h, L, S)    W = softmax(A + bias)
    value_weights = mix_heads(w_w, weights)                                  # (..., h_v, L, S)  P_w W
    if b_w is not None:
        value_weights += b_w[:, None, None]                                  # (..., h_v, L, S)  P_w W + b_w
    post_mask = _post_mask(mask, attn_bias)                                  # (..., 1, L, S) or None
    if post_mask is not None:
        value_weights = xp.where(post_mask, value_weights, 0)                # (..., h_v, L, S)  U: masked keys → 0
    used = value_weights if dropout_mask is None else value_weights * dropout_mask   # (..., h_v, L, S)  U ∘ D
    return used @ v, logits, weights, value_weights                          # O (..., h_v, L, d_v), J, W, U


def talking_heads_backward(q, k, v, mask, attn_bias, dropout_mask, logits, weights, value_weights, grad_o,
                           w_l, w_w, needs_bias, scale):
    """The backward of TalkingHeadsFunction on whole arrays: (dQ, dK, dV, dP_l, dP_w, db_l, db_w)."""
    used = value_weights if dropout_mask is None else value_weights * dropout_mask   # (..., h_v, L, S)  U ∘ D
    dv = used.swapaxes(-1, -2) @ grad_o                                      # (..., h_v, S, d_v)  dV = (U ∘ D)ᵀ dO
    d_u = grad_o @ v.swapaxes(-1, -2)                                        # (..., h_v, L, S)  dO Vᵀ
    if dropout_mask is not None:
        d_u *= dropout_mask                                                  # (..., h_v, L, S)  (dO Vᵀ) ∘ D
    post_mask = _post_mask(mask, attn_bias)                                  # (..., 1, L, S) or None
    if post_mask is not None:
        d_u = xp.where(post_mask, d_u, 0)                                    # (..., h_v, L, S)  dU: re-mask passes none
    d_w_w, d_weights = mix_heads_backward(w_w, weights, d_u)                 # (h_v, h), (..., h, L, S)  dP_w, dW
    d_mixed = softmax_backward_(weights, d_weights)                          # (..., h, L, S)  dA = W ∘ (dW − Σ dW ∘ W)
    d_w_l, d_logits = mix_heads_backward(w_l, logits, d_mixed)               # (h, h_k), (..., h_k, L, S)  dP_l, dJ
    dq = (d_logits @ k) * scale                                              # (..., h_k, L, d_k)  dQ = dJ K · scale
    dk = (d_logits.swapaxes(-1, -2) @ q) * scale                             # (..., h_k, S, d_k)  dK = dJᵀ Q · scale
    heads = tuple(a for a in range(d_mixed.ndim) if a != d_mixed.ndim - 3)   # every axis but the heads axis
    db_l = d_mixed.sum(axis=heads) if needs_bias else None                   # (h,)   db_l = Σ dA
    db_w = d_u.sum(axis=heads) if needs_bias else None                       # (h_v,) db_w = Σ dU
    return sum_to(dq, q.shape), sum_to(dk, k.shape), sum_to(dv, v.shape), d_w_l, d_w_w, db_l, db_w


class TalkingHeadsFunction(Function):
    """The talking-heads core — mix → mask → softmax → mix → re-mask → weighted sum — in one node.

    Inputs:   Q (..., h_k, L, d_k), K (..., h_k, S, d_k), V (..., h_v, S, d_v); P_l (h, h_k), P_w (h_v, h) in
              PyTorch's (out, in) layout; optionally biases b_l (h,), b_w (h_v,). ``mask`` (bool, True = take part)
              and ``attn_bias`` (float, added) broadcast to (..., 1, L, S): the same for every head.
    Forward:  J = (Q · scale) Kᵀ                    (..., h_k, L, S)  dot-product logits per query/key head
              A = P_l J + b_l + attn_bias            (..., h, L, S)    logits mixed across heads, BEFORE the mask
              W = softmax(A) over S, masked          (..., h, L, S)    masked keys → 0; fully masked rows → 0
              U = mask ∘ (P_w W + b_w)               (..., h_v, L, S)  weights mixed across heads, then RE-masked:
                                                                        b_w would otherwise give masked keys weight
              O = (U ∘ D) V                          (..., h_v, L, d_v) D = dropout keep-mask / (1 − p), or 1
    Backward: dV = (U ∘ D)ᵀ dO,  dU = mask ∘ ((dO Vᵀ) ∘ D)
              dP_w = Σ dU Wᵀ (over batch, L, S),  db_w = Σ dU,  dW = P_wᵀ dU          (mix_heads_backward)
              dA = W ∘ (dW − Σ_s dW ∘ W)                                              (softmax's backward)
              dP_l = Σ dA Jᵀ,  db_l = Σ dA,  dJ = P_lᵀ dA
              dQ = dJ K · scale,  dK = dJᵀ (Q · scale)
              each line the rule for a product (∂(XY) = ∂X Y + X ∂Y) or for the softmax, in reverse order.
    Saved:    Q, K, V, J, W, U (three (..., ·, L, S) arrays; J could be recomputed, kept for clarity), the masks
              and D.
    Executed by ``parallel.map_batch`` (chunks of the batch B; P_l, P_w and their biases given whole to each chunk,
    their gradients added up).
    With h_k = h = h_v, P_l = P_w = I and no biases this is exactly scaled dot-product attention per head.
    Source:   Shazeer et al. 2020, "Talking-Heads Attention", Algorithm 2; mesh_tensorflow
              TalkingHeadsSelfAttention (no biases); timm CaiT TalkingHeadAttn (square, with biases, no mask).
    """

    @staticmethod
    def forward(ctx, q, k, v, w_l, w_w, *proj_biases, mask=None, attn_bias=None, scale=1.0, dropout_mask=None):
        b_l, b_w = proj_biases if proj_biases else (None, None)
        out, logits, weights, value_weights = parallel.map_batch(
            talking_heads_forward, q, k, v, mask, attn_bias, dropout_mask, core_ndim=3,
            w_l=w_l, w_w=w_w, b_l=b_l, b_w=b_w, scale=scale)                  # (..., h_v, L, d_v), J, W, U
        ctx.save_for_backward(q, k, v, mask, attn_bias, dropout_mask, logits, weights, value_weights,
                              w_l, w_w, b_l, b_w)
        ctx.scale, ctx.attention_weights, ctx.mixed_weights = scale, weights, value_weights
        return out

    @staticmethod
    def backward(ctx, grad_o):
        q, k, v, mask, attn_bias, dropout_mask, logits, weights, value_weights, w_l, w_w, b_l, b_w = ctx.saved
        grads = parallel.map_batch(talking_heads_backward, q, k, v, mask, attn_bias, dropout_mask, logits, weights,
                                   value_weights, grad_o, core_ndim=3, w_l=w_l, w_w=w_w, needs_bias=b_l is not None,
                                   scale=ctx.scale, grads_for=(q, k, v, w_l, w_w, b_l, b_w))
        return grads if b_l is not None else grads[:5]                       # dQ, dK, dV, dP_l, dP_w (, db_l, db_w)


def _post_mask(mask, attn_bias):
    """Where a key takes part after P_w: not masked, and not given -inf by a float mask."""
    finite = None if attn_bias is None else attn_bias != -xp.inf
    if mask is None:
        return finite
    return mask if finite is None else mask & finite


def talking_heads_reference(q, k, v, w_l, w_w, b_l=None, b_w=None, mask=None, attn_bias=None, scale=1.0,
                            dropout_mask=None):
    """The same core composed from engine primitives (matmul, reshape, add, softmax_reference, where, mul)."""

    def mix(weight, x):                                                      # (..., h_in, L, S) → (..., h_out, L, S)
        *batch, h_in, length_q, length_k = x.shape
        flat = ops.reshape(x, (*batch, h_in, length_q * length_k))
        return ops.reshape(ops.matmul(weight, flat), (*batch, weight.shape[0], length_q, length_k))

    logits = ops.matmul(q * scale, ops.transpose(k))                         # (..., h_k, L, S)
    mixed = mix(w_l, logits)                                                 # (..., h, L, S)
    if b_l is not None:
        mixed = mixed + ops.reshape(b_l, (-1, 1, 1))                         # (..., h, L, S)
    weights = softmax_reference(mixed, mask, attn_bias)                      # (..., h, L, S)
    value_weights = mix(w_w, weights)                                        # (..., h_v, L, S)
    if b_w is not None:
        value_weights = value_weights + ops.reshape(b_w, (-1, 1, 1))         # (..., h_v, L, S)
    post_mask = _post_mask(mask, attn_bias)                                  # (..., 1, L, S) or None
    if post_mask is not None:
        value_weights = ops.where(post_mask, value_weights, xp.zeros((), dtype=value_weights.dtype))   # re-mask
    if dropout_mask is not None:
        value_weights = value_weights * ops.lift(dropout_mask, value_weights)        # (..., h_v, L, S)
    return ops.matmul(value_weights, v)                                      # (..., h_v, L, d_v)
