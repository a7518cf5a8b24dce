"""Self-attention from one packed q/k/v projection, fused: the heads are split out of the packed array as views (no
copy; joining the output heads copies once, as in the three-product path) and their gradients are put back side by
side in one copy; and its twin from primitives."""
from autograd import ops, parallel
from autograd.backend import xp
from autograd.function import Function
from minattn.fused.attention import attention_backward, attention_forward, attention_reference


def split_heads(qkv, num_heads):
    """(B, L, 3·h·d) → Q, K, V, each (B, h, L, d): views into qkv's memory, no copy (d2l §11.5's transpose_qkv,
    three times at once)."""
    batch, length, features = qkv.shape                              # B, L, 3·h·d
    heads = qkv.reshape(batch, length, 3 * num_heads, features // (3 * num_heads))   # (B, L, 3h, d)
    heads = heads.swapaxes(1, 2)                                     # (B, 3h, L, d)
    return heads[:, :num_heads], heads[:, num_heads:2 * num_heads], heads[:, 2 * num_heads:]   # 3 × (B, h, L, d)


def join_heads(x):
    """(B, h, L, d) → (B, L, h·d): the heads side by side, as W_o takes them (d2l's transpose_output)."""
    batch, heads, length, head_dim = x.shape
    return x.swapaxes(1, 2).reshape(batch, length, heads * head_dim)   # (B, L, h·d)


class PackedSelfAttentionFunction(Function):
    """O = concat_heads(Attention(Q, K, V)) with [Q | K | V] one packed array: self-attention after ONE projection.

    Input:    qkv = X W_qkvᵀ + b_qkv, the packed projection (MultiHeadAttention stacks W_q, W_k, W_v into W_qkv)
    Forward:  Q, K, V = split_heads(qkv)                 each (B, h, L, d): views, no copy
              P_h = softmax(Q_h K_hᵀ · scale + bias, masked),  O_h = (P_h ∘ D_h) V_h    (D: dropout multiplier or 1)
              O = [O_1 | … | O_h]                          (B, L, h·d)
    Backward: dO_h = the h-th slice of dO                 (a view)
              dQ, dK, dV = ScaledDotProductAttentionFunction's backward (see there for the formulas)
              d(qkv) = [dQ | dK | dV] in the packed layout: a split's gradient is its parts' gradients put back
              where each part was taken from (∂ qkv_j / ∂ part_i = 1 on part i's slice, 0 elsewhere).
    Why:      one (3E × E) product instead of three (E × E) ones, and no head-splitting copies (DESIGN §4b).
    Shapes:   qkv (B, L, 3·h·d) (the caller guarantees 3·h divides its features); mask (bool) / bias broadcastable
              to (B, h, L, L); dropout_mask (B, h, L, L) or None.
    Source:   Vaswani et al. 2017, §3.2.2; PyTorch nn.MultiheadAttention's packed in_proj_weight
    """

    @staticmethod
    def forward(ctx, qkv, mask=None, bias=None, scale=1.0, dropout_mask=None, num_heads=1):
        q, k, v = split_heads(qkv, num_heads)                          # (B, h, L, d) each
        out, p = parallel.map_batch(attention_forward, q, k, v, mask, bias, dropout_mask, scale=scale)
        ctx.save_for_backward(qkv, p, dropout_mask)
        ctx.scale, ctx.num_heads, ctx.attention_weights = scale, num_heads, p
        return join_heads(out)                                         # (B, L, h·d)

    @staticmethod
    def backward(ctx, grad_out):
        qkv, p, dropout_mask = ctx.saved
        q, k, v = split_heads(qkv, ctx.num_heads)                      # (B, h, L, d) each
        batch, length, features = grad_out.shape
        heads = grad_out.reshape(batch, length, ctx.num_heads, features // ctx.num_heads)   # (B, L, h, d); no -1:
        grad_o = heads.swapaxes(1, 2)                                  # (B, h, L, d)  dO_h, views   B, L may be 0
        grads = parallel.map_batch(attention_backward, q, k, v, p, dropout_mask, grad_o, scale=ctx.scale,
                                   grads_for=(q, k, v))                # dQ, dK, dV: (B, h, L, d) each
        d_qkv = xp.empty_like(qkv)                                     # (B, L, 3·h·d)
        for d_part, grad in zip(split_heads(d_qkv, ctx.num_heads), grads):
            d_part[...] = grad                                         # each part's gradient where it was taken
        return (d_qkv,)


def packed_self_attention_reference(qkv, num_heads, mask=None, bias=None, scale=1.0, dropout_mask=None):
    """The same computation composed from engine primitives: reshape, permute, slices, attention_reference."""
    batch, length, features = qkv.shape
    heads = ops.permute(qkv.reshape(batch, length, 3 * num_heads, features // (3 * num_heads)), (0, 2, 1, 3))
    q, k, v = heads[:, :num_heads], heads[:, num_heads:2 * num_heads], heads[:, 2 * num_heads:]   # (B, h, L, d)
    out = attention_reference(q, k, v, mask, bias, scale, dropout_mask)                          # (B, h, L, d)
    return ops.permute(out, (0, 2, 1, 3)).reshape(batch, length, features // 3)                  # (B, L, h·d)
