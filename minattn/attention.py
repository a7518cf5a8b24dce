"""Multi-head attention (Vaswani et al. 2017, §3.2.2), built on the fused scaled dot-product attention."""
import math

from autograd import checks, ops
from autograd.backend import read_only
from autograd.grad_mode import is_grad_enabled
from autograd.tensor import Tensor
from minattn import functional as F
from minattn import masks
from minattn.cache import KVCache
from minattn.fused.flash_attention import FlashAttentionFunction
from minattn.fused.packed_attention import PackedSelfAttentionFunction
from minattn.layers import LayerNorm, Linear, is_plain_linear, parameter_dtype
from minattn.module import Module


ATTN_IMPLS = ("dense", "flash")
"""The valid values of MultiHeadAttention's ``attn_impl``."""


def transpose_qkv(x, num_heads):
    """(B, L, h·d_h) → (B, h, L, d_h): split the features into h heads and move the head axis forward (d2l §11.5).
    TypeError / ValueError unless x is (B, L, features) with features divisible by num_heads (an int >= 1)."""
    num_heads = checks.positive_int("num_heads", num_heads, "transpose_qkv")
    if x.ndim != 3 or x.shape[-1] % num_heads:
        checks.fail("x", f"(batch, length, h·d_h) with h = num_heads = {num_heads}", x, "transpose_qkv")
    batch, length, features = x.shape
    x = x.reshape(batch, length, num_heads, features // num_heads)     # (B, L, h, d_h)
    return ops.permute(x, (0, 2, 1, 3))                                 # (B, h, L, d_h)


def transpose_output(x):
    """(B, h, L, d_h) → (B, L, h·d_h): the inverse of ``transpose_qkv`` (concatenate the heads)."""
    batch, heads, length, head_dim = x.shape
    x = ops.permute(x, (0, 2, 1, 3))                                    # (B, L, h, d_h)
    return x.reshape(batch, length, heads * head_dim)                   # (B, L, h·d_h)


def check_qkv(query, key, value, embed_dim, kdim, vdim, where=None, dtype=None):
    """ValueError / TypeError naming the argument when query, key, value are not (B, L, E), (B, S, kdim),
    (B, S, vdim) tensors of one dtype (``dtype``, the layer's parameters', when given)."""
    checks.sequences("query", query, embed_dim, dtype, where=where)
    dtype, whose = (query.dtype, "query's") if dtype is None else (dtype, "the parameters'")
    checks.sequences("key", key, kdim, dtype, whose, where)
    checks.sequences("value", value, vdim, dtype, whose, where)
    if not query.shape[0] == key.shape[0] == value.shape[0]:
        checks.fail("key, value", f"of query's batch size {query.shape[0]}", key, where,
                    received=f"key {key.shape}, value {value.shape}")
    if key.shape[1] != value.shape[1]:
        checks.fail("value", f"(batch, {key.shape[1]}, vdim): the length S of key {key.shape}", value, where)


class MultiHeadAttention(Module):
    """h heads of scaled dot-product attention on learned projections, concatenated and projected.

        head_i = Attention(Q W_q^(i), K W_k^(i), V W_v^(i)),   MultiHead(Q, K, V) = concat(head_1..head_h) W_o

    The h projections of size d_h = embed_dim / h are computed as ONE Linear each (W_q: embed_dim → embed_dim)
    whose output is split into heads (``transpose_qkv``), which is the same thing and one matrix product.

    Args:
        embed_dim (E): model width; num_heads (h): must divide E.
        dropout: dropout on the attention weights, in training mode.
        bias: whether W_q, W_k, W_v, W_o have biases.
        kdim, vdim: feature sizes of key and value inputs (default E), for cross-attention between widths.
        qk_norm: LayerNorm over the head dimension of q and of k, after the split into heads and before the
            scaled dot product (``q_norm``, ``k_norm``, each with its own γ, β of size d_h), as timm's ``Attention``
            does; it bounds the logits (Dehghani et al. 2023, ViT-22B).
        share_qk: tie the key projection to the query projection (W_k is W_q; no W_k parameter). Then in
            self-attention the scores s = Q Kᵀ = (X W_qᵀ + b)(X W_qᵀ + b)ᵀ form a symmetric positive semi-definite
            matrix per head: i scores j exactly as j scores i, and s_ii + s_jj >= 2 s_ij, so no token can prefer
            another over both their own self-scores (``python -m demos.lesson_tied_qk``). Needs kdim = embed_dim.
            With qk_norm, q and k then share one LayerNorm (``q_norm``; no ``k_norm``), which keeps the symmetry.
        dtype: of the parameters (float32 by default).
        attn_impl: how the attention of the heads is computed: "dense" (default; ScaledDotProductAttentionFunction,
            which holds the (B, h, L, S) weights) or "flash" (FlashAttentionFunction: tile by tile, memory O(L + S)
            per head instead of O(L·S); same result up to rounding, masks combined the same way). With "flash" the
            weights are never materialised, so ``attention_weights`` stays None, and attention dropout is not
            supported (dropout > 0 raises ValueError).
        block_size: rows per tile of the "flash" path (queries and keys alike); ignored by "dense".
        num_kv_heads (h_kv): key/value heads, shared by groups of h / h_kv query heads (grouped-query attention,
            Ainslie et al. 2023; h_kv = 1 is multi-query attention, Shazeer 2019). Default None: h_kv = h, plain
            multi-head attention. W_k and W_v project to h_kv·d_h; query head i uses key/value head i // (h / h_kv),
            the order of Llama's ``repeat_kv``. K and V are never repeated (``functional.group_heads``): the
            backward sums the gradients of the query heads that share them. A key/value cache shrinks by h / h_kv.
        rope: rotary position embedding on q and k of every head, after the split into heads (and after qk_norm):
            ``functional.rotary_embedding`` with ``rope_base`` and the rotate_half layout; query and key positions
            both start at 0. Scores then depend on positions only through their difference (Su et al. 2021).
        alibi: ALiBi (Press et al. 2022): −m_h · |i − j| added to head h's scores, with the paper's geometric slopes
            m_h (``functional.alibi_slopes``) — position as a linear distance penalty, no position vectors at all.
        window: a sliding window for causal calls (``is_causal=True``): query i sees keys i − window + 1 … i
            (Mistral). The flash path skips the tiles outside it. A call that is not causal raises ValueError.
    Shapes (batch first):
        query (B, L, E), key (B, S, kdim), value (B, S, vdim) → (B, L, E)
        ``attention_weights`` after a call: (B, h, L, S), before dropout, kept for plotting (detached and read-only:
        ``backend.read_only``; a copy on CuPy);
        None with attn_impl="flash".
    Computes what PyTorch's ``nn.MultiheadAttention(E, h, batch_first=True)`` computes with
        in_proj_weight = concat(W_q.weight, W_k.weight, W_v.weight) (in that order), in_proj_bias likewise,
        out_proj = W_o (with kdim/vdim ≠ E PyTorch keeps separate q/k/v_proj_weight instead). Two mask differences:
        PyTorch's MHA reads a boolean mask with True = MASKED (its ``key_padding_mask`` too), while here, as in
        ``scaled_dot_product_attention``, True = TAKE PART — invert a ported mask with ``~``; and its 3-D mask is
        (B·h, L, S), which this layer refuses (pass (B, h, L, S)).
    Raises:
        ValueError if embed_dim % num_heads != 0 (naming both), if num_kv_heads does not divide num_heads (or is
        set with share_qk), or for inputs / masks of the wrong shape, for an unknown attn_impl (listing the valid
        ones), or for attn_impl="flash" with dropout > 0;
        TypeError for inputs of another dtype.
    Source: Vaswani et al. 2017, §3.2.2; d2l §11.5; the "flash" path: Dao et al. 2022, Dao 2023; num_kv_heads:
    Ainslie et al. 2023 (GQA), Shazeer 2019 (MQA).
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, kdim=None, vdim=None, qk_norm=False,
                 share_qk=False, dtype=None, attn_impl="dense", block_size=128, num_kv_heads=None, rope=False,
                 rope_base=10000.0, alibi=False, window=None):
        super().__init__()
        self.check_arguments(embed_dim, num_heads, dropout, bias, kdim, vdim, qk_norm, share_qk, dtype, attn_impl,
                             block_size, num_kv_heads, rope, rope_base, alibi, window)   # before any parameter draw
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.num_kv_heads = num_kv_heads
        self.rope, self.rope_base, self.alibi, self.window = rope, float(rope_base), alibi, window
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout = float(dropout)
        self.attn_impl, self.block_size = attn_impl, block_size
        self.W_q = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype)
        kv_dim = num_kv_heads * self.head_dim                          # h_kv·d_h (embed_dim without GQA)
        self.W_k = None if share_qk else Linear(self.kdim, kv_dim, bias=bias, dtype=dtype)
        self.W_v = Linear(self.vdim, kv_dim, bias=bias, dtype=dtype)
        self.W_o = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype)
        self.q_norm = LayerNorm(self.head_dim, dtype=dtype) if qk_norm else None
        # tied Q/K keeps its symmetry only if q and k are normalised alike: one LayerNorm for both
        self.k_norm = LayerNorm(self.head_dim, dtype=dtype) if qk_norm and not share_qk else None
        self.attention_weights = None

    @staticmethod
    def check_arguments(embed_dim, num_heads, dropout=0.0, bias=True, kdim=None, vdim=None, qk_norm=False,
                        share_qk=False, dtype=None, attn_impl="dense", block_size=128, num_kv_heads=None, rope=False,
                        rope_base=10000.0, alibi=False, window=None):
        """Check the constructor's arguments (the same signature) without building anything: TypeError /
        ValueError naming the first bad one (``autograd.checks``). The constructor calls it before drawing a
        parameter; so do the models that build these layers (Transformer, GPT), before drawing theirs."""
        where = "MultiHeadAttention"
        embed_dim = checks.positive_int("embed_dim", embed_dim, where)
        num_heads = checks.positive_int("num_heads", num_heads, where)
        if embed_dim % num_heads:
            checks.fail("num_heads", f"a divisor of embed_dim={embed_dim}", num_heads, where)
        dropout = checks.probability("dropout", dropout, where)
        for name, flag in (("bias", bias), ("qk_norm", qk_norm), ("share_qk", share_qk), ("rope", rope),
                           ("alibi", alibi)):
            checks.boolean(name, flag, where)
        kdim = embed_dim if kdim is None else checks.positive_int("kdim", kdim, where)
        if vdim is not None:
            checks.positive_int("vdim", vdim, where)
        parameter_dtype(dtype, where)
        attn_impl = checks.one_of("attn_impl", attn_impl, ATTN_IMPLS, where)
        checks.positive_int("block_size", block_size, where)
        if attn_impl == "flash" and dropout > 0:
            checks.fail("dropout", "0 with attn_impl='flash' (no attention dropout there; use attn_impl='dense')",
                        dropout, where)
        if num_kv_heads is not None:
            num_kv_heads = checks.positive_int("num_kv_heads", num_kv_heads, where)
            if num_heads % num_kv_heads:
                checks.fail("num_kv_heads", f"a divisor of num_heads={num_heads}", num_kv_heads, where)
            if share_qk and num_kv_heads != num_heads:
                checks.fail("num_kv_heads", f"num_heads={num_heads} with share_qk (W_k is W_q)", num_kv_heads, where)
        if share_qk and kdim != embed_dim:
            checks.fail("kdim", f"embed_dim={embed_dim} with share_qk (W_k is W_q)", kdim, where)
        if rope and (embed_dim // num_heads) % 2:
            checks.fail("num_heads", f"such that the head dimension embed_dim / num_heads is even for rope (it "
                        f"rotates channel pairs; here {embed_dim} / {num_heads} = {embed_dim // num_heads})",
                        num_heads, where)
        checks.positive_float("rope_base", rope_base, where)
        masks.check_window(window, True, where)

    def forward(self, query, key, value, valid_lens=None, attn_mask=None, is_causal=False, cache=None):
        """Attend from each query position to the key/value positions.

        Args:
            query (B, L, E), key (B, S, kdim), value (B, S, vdim): Tensors (the same for self-attention). When
                they are one tensor (``x, x, x``), q, k and v come from ONE product with W_q, W_k, W_v stacked
                (PyTorch's packed ``in_proj``; fused/packed_attention.py): the values, gradients and attention
                weights of three products (up to the rounding of one product against three), the same dropout
                draws, with less work.
            valid_lens: None, (B,) or (B, L) integers: keys at index >= valid_len are padding (d2l).
            attn_mask: None, boolean (True = take part) or float (added), broadcastable to (B, h, L, S).
            is_causal: query i sees keys 0..i only; an error together with attn_mask.
            cache: a ``minattn.cache.KVCache`` for incremental decoding (under ``no_grad``): the L new tokens'
                keys and values are appended to it (or, for a ``static`` cache, the memory's are computed once) and
                the queries attend to every key held; causal masks, rotary positions and ALiBi count the new
                queries from ``cache.position``. No attn_mask with a cache.
        Returns:
            (B, L, E). A query with every key masked gets 0 from attention (then W_o's bias).
        Raises:
            RuntimeError for a cache while gradients are recorded; ValueError as listed in the class docstring.
            Everything is checked before anything changes (no dropout drawn, no cache written, no weights kept).
        """
        where = "MultiHeadAttention"
        check_qkv(query, key, value, self.embed_dim, self.kdim, self.vdim, where, self.W_q.weight.dtype)
        is_causal = checks.boolean("is_causal", is_causal, where)
        if self.window is not None and not is_causal:
            checks.fail("is_causal", f"True for this layer's sliding window ({self.window}), which is causal",
                        is_causal, where)
        if cache is not None:
            checks.instance("cache", cache, KVCache, "a KVCache or None", where)
            return self._forward_cached(query, key, value, valid_lens, attn_mask, is_causal, cache)
        batch, num_queries, num_keys = query.shape[0], query.shape[1], key.shape[1]
        flash = self.attn_impl == "flash"
        causal_tiles = flash and is_causal and attn_mask is None   # flash applies is_causal per tile: no (L, S) mask
        mask, bias = masks.attention_masks(batch, self.num_heads, num_queries, num_keys, query.dtype,
                                           valid_lens, attn_mask, is_causal and not causal_tiles,
                                           self.window if is_causal else None, where)   # -> (B, h, L, S)
        if self.alibi:
            slopes = masks.alibi_bias(self.num_heads, num_queries, num_keys, query.dtype)   # (h, L, S)
            bias = slopes if bias is None else bias + slopes                              # (B | 1, h, L, S)
        if self._packs(query, key, value):
            return self._packed_self_attention(query, mask, bias)    # (B, L, E)
        q = transpose_qkv(self.W_q(query), self.num_heads)             # (B, h, L, d_h)
        W_k = self.W_q if self.W_k is None else self.W_k               # tied Q/K: the same projection
        k = transpose_qkv(W_k(key), self.num_kv_heads)                 # (B, h_kv, S, d_h)
        v = transpose_qkv(self.W_v(value), self.num_kv_heads)          # (B, h_kv, S, d_h)
        grouped = self.num_kv_heads != self.num_heads
        if self.q_norm is not None:
            k_norm = self.q_norm if self.k_norm is None else self.k_norm
            q, k = self.q_norm(q), k_norm(k)                           # (B, h, L, d_h), (B, h_kv, S, d_h)
        if self.rope:
            q = F.rotary_embedding(q, base=self.rope_base)             # (B, h, L, d_h)     q_m turned by m θ
            k = F.rotary_embedding(k, base=self.rope_base)             # (B, h_kv, S, d_h)  k_n turned by n θ
        if flash:
            q_g, k_g, v_g, mask_g, bias_g = F.group_heads(q, k, v, mask, bias) if grouped else (q, k, v, mask, bias)
            out = FlashAttentionFunction.apply(q_g, k_g, v_g, mask=mask_g, bias=bias_g,
                                               scale=1 / math.sqrt(self.head_dim), causal=causal_tiles,
                                               block_size=self.block_size, window=self.window if causal_tiles else None,
                                               dropout_p=self.dropout if self.training else 0.0)   # (B, h, L, d_h)
            out = F.ungroup_heads(out) if grouped else out             # (B, h, L, d_h)
            self.attention_weights = None                              # never materialised
            return self.W_o(transpose_output(out))                     # (B, L, E)
        out, weights = F.attention(q, k, v, mask, bias, dropout_p=self.dropout if self.training else 0.0,
                                   need_weights=True, enable_gqa=grouped)   # (B, h, L, d_h), (B, h, L, S)
        self.attention_weights = weights                               # (B, h, L, S)
        return self.W_o(transpose_output(out))                         # (B, L, E)

    def _packs(self, query, key, value):
        """Can q, k, v come from ONE packed product? Dense self-attention (one tensor for all three; flash keeps its
        own path) with separate W_q, W_k, W_v, as many K/V heads as query heads, and nothing applied to q, k between
        the projection and the scores (no q/k norm, no rotation); and W_q, W_k, W_v still the layer's own kind: plain
        (E, E) Linears (``is_plain_linear``: a module put in their place keeps its forward), of one dtype, all with a
        bias or none."""
        if not (query is key is value and self.attn_impl == "dense" and self.W_k is not None
                and self.num_kv_heads == self.num_heads and self.q_norm is None and not self.rope):
            return False
        projections = (self.W_q, self.W_k, self.W_v)
        return (all(is_plain_linear(m) and m.weight.shape == (self.embed_dim, self.embed_dim) for m in projections)
                and len({(m.weight.dtype, m.bias is None) for m in projections}) == 1)

    def _packed_self_attention(self, x, mask, bias):
        """``forward``'s self-attention with ONE q/k/v product: W_q, W_k, W_v stacked into a (3E, E) weight, the
        heads split out of its (B, L, 3E) output as views (DESIGN §4b). The values and attention weights of the
        three-product path up to rounding, and the same random draws."""
        batch, length = x.shape[0], x.shape[1]
        weight = ops.concatenate([self.W_q.weight, self.W_k.weight, self.W_v.weight], axis=0)   # (3E, E)
        bias_qkv = (None if self.W_q.bias is None else
                    ops.concatenate([self.W_q.bias, self.W_k.bias, self.W_v.bias], axis=0))      # (3E,)
        qkv = F.linear(x, weight, bias_qkv)                            # (B, L, 3E)   [Q | K | V]
        drop = None
        if self.training and self.dropout > 0:
            drop = F.dropout_mask((batch, self.num_heads, length, length), self.dropout, qkv.dtype)   # (B, h, L, L)
        out, ctx = PackedSelfAttentionFunction.apply_with_ctx(qkv, mask=mask, bias=bias,
                                                              scale=F.default_scale(self.head_dim),
                                                              dropout_mask=drop, num_heads=self.num_heads)
        self.attention_weights = Tensor(read_only(ctx.attention_weights))   # (B, h, L, L)
        return self.W_o(out)                                           # (B, L, E)

    def _forward_cached(self, query, key, value, valid_lens, attn_mask, is_causal, cache):
        """``forward`` with a KVCache: only the new tokens' q, k, v are computed (see minattn/cache.py)."""
        where = "MultiHeadAttention"
        if is_grad_enabled():
            raise RuntimeError("a KVCache is for decoding: its keys and values are constants, so call under "
                               "minattn.no_grad()")
        if attn_mask is not None:
            checks.fail("attn_mask", "None with a cache (the causal mask is built from cache.position)", attn_mask,
                        where)
        batch, new = query.shape[0], query.shape[1]
        offset = cache.position                                        # the first new query's position
        reuse = cache.static and cache.length                          # cross-attention: the memory's, once
        num_keys = cache.length if reuse else cache.length + key.shape[1]
        cache.check_room("key", key.shape[1], where)                  # a static cache in reuse: always room
        causal = masks.causal_mask(new, num_keys, self.window, offset) if is_causal else None   # (t, S)
        mask, bias = masks.attention_masks(batch, self.num_heads, new, num_keys, query.dtype, valid_lens, causal,
                                           where=where)                # checked before the cache changes
        q = transpose_qkv(self.W_q(query), self.num_heads)             # (B, h, t, d_h)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.rope:
            q = F.rotary_embedding(q, offset=offset, base=self.rope_base)   # (B, h, t, d_h)  positions offset …
        if reuse:
            k, v = Tensor(cache.keys), Tensor(cache.values)            # (B, h_kv, S, d_h)
        else:
            W_k = self.W_q if self.W_k is None else self.W_k
            k = transpose_qkv(W_k(key), self.num_kv_heads)             # (B, h_kv, t, d_h) the new keys only
            v = transpose_qkv(self.W_v(value), self.num_kv_heads)      # (B, h_kv, t, d_h)
            if self.q_norm is not None:
                k = (self.q_norm if self.k_norm is None else self.k_norm)(k)
            if self.rope:
                k = F.rotary_embedding(k, offset=0 if cache.static else cache.length, base=self.rope_base)
            k, v = (Tensor(a) for a in cache.append(k.data, v.data))   # (B, h_kv, S, d_h): every key so far
        cache.position += new
        if self.alibi:
            slopes = masks.alibi_bias(self.num_heads, new, num_keys, query.dtype, offset)   # (h, t, S)
            bias = slopes if bias is None else bias + slopes
        out, weights = F.attention(q, k, v, mask, bias, need_weights=True,
                                   enable_gqa=self.num_kv_heads != self.num_heads)   # (B, h, t, d_h), (B, h, t, S)
        self.attention_weights = weights
        return self.W_o(transpose_output(out))                         # (B, t, E)

    def extra_repr(self):
        """The constructor arguments, for repr."""
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                + (f"num_kv_heads={self.num_kv_heads}, " if self.num_kv_heads != self.num_heads else "")
                + f"dropout={self.dropout}, "
                f"qk_norm={self.q_norm is not None}, share_qk={self.W_k is None}"
                + (f", rope=True, rope_base={self.rope_base:g}" if self.rope else "")
                + (", alibi=True" if self.alibi else "")
                + (f", window={self.window}" if self.window is not None else "")
                + (f", attn_impl={self.attn_impl!r}, block_size={self.block_size}"
                   if self.attn_impl != "dense" else ""))
