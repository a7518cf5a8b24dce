"""minattn.functional: the stateless operations, checked and documented, as ``torch.nn.functional`` offers them.

Each function validates its arguments (shapes, dtypes, ranges) before computing anything — through the one vocabulary
of ``autograd.checks``, so every error names the function, the argument, what was expected and what was got — then
calls the fused Function from ``minattn/fused/`` whose backward is written by hand.
"""
import math

from autograd import backend, checks, ops
from autograd.backend import read_only, xp
from autograd.tensor import Tensor
from minattn import masks
from minattn.fused.attention import ScaledDotProductAttentionFunction
from minattn.fused.cross_entropy import CrossEntropyFunction
from minattn.fused.embedding import EmbeddingFunction
from minattn.fused.flash_attention import FlashAttentionFunction
from minattn.fused.layer_norm import LayerNormFunction
from minattn.fused.linear import LinearFunction, LinearReLUFunction
from minattn.fused.rotary import RotaryEmbeddingFunction
from minattn.fused.softmax import SoftmaxFunction


def linear(x, weight, bias=None):
    """y = x Wᵀ + b.  x: (..., in_features), weight: (out_features, in_features), bias: (out_features,) or None.

    Raises TypeError if the dtypes differ (no silent cast), ValueError if x's last axis is not in_features.
    """
    _check_linear("linear", x, weight, bias)
    return LinearFunction.apply(x, weight, *([bias] if bias is not None else []))


def linear_relu(x, weight, bias=None):
    """z = relu(x Wᵀ + b) in one node (LinearReLUFunction; PyTorch's torch.ao.nn.intrinsic.LinearReLU): the same
    values and gradients as ``linear(x, weight, bias).relu()``, with one array and one node fewer. Arguments, shapes
    and errors as ``linear``.
    """
    _check_linear("linear_relu", x, weight, bias)
    return LinearReLUFunction.apply(x, weight, *([bias] if bias is not None else []))


def _check_linear(where, x, weight, bias):
    """linear's and linear_relu's argument checks (see ``linear``)."""
    checks.tensor("x", x, where, floating=True)
    checks.tensor("weight", weight, where, floating=True)
    if weight.ndim != 2:
        checks.fail("weight", "(out_features, in_features)", weight, where)
    if bias is not None:
        checks.tensor("bias", bias, where, floating=True)
        if bias.shape != weight.shape[:1]:
            checks.fail("bias", f"({weight.shape[0]},) to match the weight", bias, where)
        checks.matching_dtype("bias", bias, weight.dtype, "weight's", where)
    checks.matching_dtype("x", x, weight.dtype, "weight's", where)
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        checks.fail("x", f"(..., in_features={weight.shape[1]})", x, where)


def _softmax_axis(where, x, axis):
    """``axis`` checked against x; a 0-d x is taken as one element on one axis, as PyTorch does (axis 0 or -1)."""
    checks.tensor("x", x, where, floating=True)
    return checks.axis("axis", axis, max(x.ndim, 1), where)


def softmax(x, axis=-1):
    """Softmax over ``axis``: P = exp(x − max) / Σ exp(x − max). Fused (see ``SoftmaxFunction``).

    A 0-d x is one element on one axis (axis 0 or -1), as in PyTorch: its softmax is 1.
    Raises TypeError for a non-float x or a non-int axis, ValueError for an axis x does not have.
    """
    axis = _softmax_axis("softmax", x, axis)
    if x.ndim == 0:
        return SoftmaxFunction.apply(x.reshape(1)).reshape(())
    return SoftmaxFunction.apply(x, axis=axis)


def log_softmax(x, axis=-1):
    """log softmax(x) = x − m − log Σ exp(x − m) over ``axis``, m = the max (a constant: the shift cancels).

    Composed from engine primitives (sub, exp, sum, log); stable for logits of any size. Errors and 0-d x as
    ``softmax``.
    """
    axis = _softmax_axis("log_softmax", x, axis)
    if x.ndim == 0:
        return log_softmax(x.reshape(1)).reshape(())
    if x.shape[axis] == 0:                                        # nothing to normalise: the empty result, as PyTorch
        return x * 1.0
    shifted = x - x.data.max(axis=axis, keepdims=True)
    return shifted - ops.log(ops.exp(shifted).sum(axis=axis, keepdims=True))


def masked_softmax(scores, valid_lens=None):
    """d2l's masked softmax: softmax over the last axis, keys at index >= valid_len excluded.

    Args:
        scores: (B, ..., L, S) float; typically (B, L, S) or (B, heads, L, S).
        valid_lens: None (no mask), integers (B,) — one length per sequence — or (B, L) — one per query.
    Returns (B, ..., L, S). A row with valid_len 0 is all zeros (no NaN; d2l's −1e6 fill would make it uniform).
    Raises TypeError / ValueError for bad valid_lens (see ``masks.valid_lens_mask``).
    Source: d2l §11.3.2 (``masked_softmax``).
    """
    where = "masked_softmax"
    checks.tensor("scores", scores, where, floating=True)
    if valid_lens is None:
        return softmax(scores)
    if scores.ndim < 3:
        checks.fail("scores", "(batch, ..., L, S) with valid_lens", scores, where)
    mask = masks.valid_lens_mask(valid_lens, scores.shape[-2], scores.shape[-1], scores.shape[0],
                                 where)                                              # (B, 1|L, S)
    mask = mask.reshape(mask.shape[:1] + (1,) * (scores.ndim - 3) + mask.shape[1:])   # (B, 1.., 1|L, S)
    return SoftmaxFunction.apply(scores, mask=mask)


def dropout(x, p=0.5, training=True):
    """Inverted dropout: each element zeroed with probability p, the rest scaled by 1/(1 − p); identity in eval.

    Composed from a constant mask and the engine's Mul, so its backward is Mul's (dx = dy ∘ mask).
    Raises ValueError unless 0 <= p < 1, TypeError for a non-float x or a non-bool training.
    Source: Srivastava et al. 2014.
    """
    checks.tensor("x", x, "dropout", floating=True)
    p = checks.probability("p", p, "dropout")
    training = checks.boolean("training", training, "dropout")
    if not training or p == 0:
        return x
    return x * Tensor(dropout_mask(x.shape, p, x.dtype))


def dropout_mask(shape, p, dtype):
    """The dropout multiplier D: an array of ``shape`` and ``dtype`` holding 0 (probability p) or 1/(1 − p).
    TypeError / ValueError, before anything is drawn, unless p is in [0, 1)."""
    p = checks.probability("p", p, "dropout_mask")
    u = backend.random_uniform(shape, dtype)
    return (u >= dtype.type(p)) * dtype.type(1 / (1 - p))


def layer_norm(x, weight=None, bias=None, eps=1e-5, *, residual=None):
    """LayerNorm over the last axis. x: (..., D); weight γ and bias β: (D,), or None for 1 and 0 (constants).

    ``residual``: optional, shaped as x: normalise x + residual in the same node (the Transformer's Add & Norm).
    Fused (see ``LayerNormFunction``). Raises ValueError if x's last axis or γ/β are not D, the residual is not
    shaped as x or eps is not a finite number >= 0, TypeError on a dtype mismatch.
    """
    where = "layer_norm"
    checks.tensor("x", x, where, floating=True)
    if x.ndim == 0:
        checks.fail("x", "(..., D) with at least one axis", x, where)
    eps = checks.nonnegative_float("eps", eps, where)
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            checks.tensor(name, p, where, floating=True)
            if p.ndim != 1:
                checks.fail(name, "(D,)", p, where)
            checks.matching_dtype(name, p, x.dtype, "x's", where)
    given = weight if weight is not None else bias                # the parameters fix D, as normalized_shape does
    size = x.shape[-1] if given is None else given.shape[0]
    if x.shape[-1] != size:
        checks.fail("x", f"(..., {size}) to match the {'weight' if weight is not None else 'bias'} of shape "
                    f"({size},)", x, where)
    if bias is not None and bias.shape != (size,):
        checks.fail("bias", f"({size},) to match the weight", bias, where)
    weight = Tensor(xp.ones(size, dtype=x.dtype)) if weight is None else weight
    bias = Tensor(xp.zeros(size, dtype=x.dtype)) if bias is None else bias
    if residual is None:
        return LayerNormFunction.apply(x, weight, bias, eps=eps)
    checks.tensor("residual", residual, where, floating=True)
    if residual.shape != x.shape:
        checks.fail("residual", f"of x's shape {x.shape}", residual, where)
    checks.matching_dtype("residual", residual, x.dtype, "x's", where)
    return LayerNormFunction.apply(x, weight, bias, residual, eps=eps)


def embedding(ids, weight):
    """Rows of ``weight`` (num_embeddings, D) picked by integer ``ids`` (any shape) → (*ids.shape, D).

    Fused (see ``EmbeddingFunction``): its backward adds each position's gradient to its token's row (a token used
    k times gets the sum of k gradients). Raises TypeError for non-integer ids and ValueError for an id outside
    [0, num_embeddings) — CuPy would silently wrap it (``checks.int_ids``).
    """
    checks.tensor("weight", weight, "embedding", floating=True)
    if weight.ndim != 2:
        checks.fail("weight", "(num_embeddings, D)", weight, "embedding")
    ids = checks.int_ids("ids", ids, weight.shape[0], "embedding")
    return EmbeddingFunction.apply(weight, ids=ids)


def cross_entropy(logits, target, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """Cross-entropy between unnormalised ``logits`` and integer class ``target``, as PyTorch's F.cross_entropy.

    Args:
        logits: (N, C) or (N, C, d1, ...) float (classes on axis 1, as PyTorch).
        target: (N,) or (N, d1, ...) integers in [0, C), or ``ignore_index`` (such rows add nothing and are not
            counted in the mean — use it for padding).
        label_smoothing: ε in [0, 1]: the target becomes (1 − ε) one-hot + ε / C.
        reduction: 'mean' (over rows not ignored), 'sum', or 'none' (shape of target).
    Raises TypeError / ValueError for a non-integer target, mismatched shapes, a class id out of range, a bad
    reduction, ignore_index or label_smoothing. Fused (see ``CrossEntropyFunction``).
    """
    where = "cross_entropy"
    checks.tensor("logits", logits, where, floating=True)
    reduction = checks.one_of("reduction", reduction, ("mean", "sum", "none"), where)
    label_smoothing = checks.probability("label_smoothing", label_smoothing, where, include_one=True)
    ignore_index = checks.integer("ignore_index", ignore_index, where=where)
    if logits.ndim < 2:
        checks.fail("logits", "(N, C) or (N, C, d1, ...)", logits, where)
    target = checks.integer_array("target", target, where)
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        checks.fail("target", f"{logits.shape[:1] + logits.shape[2:]} to match logits (N, C, ...) of shape "
                    f"{logits.shape}", target, where)
    num_classes = logits.shape[1]
    out_of_range = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if target.size and bool(out_of_range.any()):          # one read of the device, as checks.int_ids
        checks.fail("target", f"class ids in [0, {num_classes}) or ignore_index={ignore_index}", target, where,
                    received=checks.values_text(target[target != ignore_index]))
    out_shape = target.shape
    if logits.ndim > 2:   # classes last, then one row per position
        logits = ops.permute(logits, (0,) + tuple(range(2, logits.ndim)) + (1,)).reshape(-1, num_classes)
        target = target.reshape(-1)
    loss = CrossEntropyFunction.apply(logits, target=target, ignore_index=ignore_index,
                                      label_smoothing=label_smoothing, reduction=reduction)
    return loss.reshape(out_shape) if reduction == "none" else loss


def _check_qkv(where, query, key, value, enable_gqa=False):
    """Validate (..., L, E), (..., S, E), (..., S, Ev) float tensors of one dtype; return (batch shape, L, S).

    With ``enable_gqa``: query (..., Hq, L, E), key and value (..., Hkv, S, ·) with Hkv dividing Hq (ValueError
    otherwise); the batch returned has Hq heads (what a mask must broadcast to). E may be 0 (as in PyTorch).
    """
    axes = "(..., heads, length, features)" if enable_gqa else "(..., length, features)"
    for name, t in (("query", query), ("key", key), ("value", value)):
        checks.tensor(name, t, where, floating=True)
        if t.ndim < (3 if enable_gqa else 2):
            checks.fail(name, axes, t, where)
        checks.matching_dtype(name, t, query.dtype, "query's", where)
    if query.shape[-1] != key.shape[-1]:
        checks.fail("key", f"(..., S, {query.shape[-1]}): the last axis E of query {query.shape}", key, where)
    if key.shape[-2] != value.shape[-2]:
        checks.fail("value", f"(..., {key.shape[-2]}, Ev): the length axis S of key {key.shape}", value, where)
    if not enable_gqa:
        batches = (query.shape[:-2], key.shape[:-2], value.shape[:-2])
        heads = None
    else:
        heads, kv_heads = query.shape[-3], key.shape[-3]
        if kv_heads == 0 or value.shape[-3] != kv_heads or heads % kv_heads:
            checks.fail("key, value", f"one number of heads dividing query's {heads} (enable_gqa)", key, where,
                        received=f"key {key.shape}, value {value.shape}")
        batches = (query.shape[:-2], key.shape[:-3] + (heads,), value.shape[:-3] + (heads,))
    batch = checks.broadcastable("query, key, value", batches, "batch axes that broadcast together", query, where,
                                 received=f"query {query.shape}, key {key.shape}, value {value.shape}")
    return batch, query.shape[-2], key.shape[-2]


def group_heads(query, key, value, mask=None, bias=None):
    """Grouped-query attention without repeating K and V: query (..., Hq, L, E) → (..., Hkv, G, L, E), key and value
    (..., Hkv, S, ·) → (..., Hkv, 1, S, ·), G = Hq / Hkv; a mask or bias with Hq heads → (..., Hkv, G, L, S).

    Query head i = kv · G + g uses key/value head kv = i // G — the order of Llama's ``repeat_kv`` and of PyTorch's
    ``repeat_interleave`` under ``enable_gqa``. K and V now broadcast over the G query heads of their group, so the
    attention's backward sums those heads' gradients (sum_to): dK_kv = Σ_g dA_(kv,g)ᵀ Q_(kv,g) · scale and
    dV_kv = Σ_g P_(kv,g)ᵀ dO_(kv,g) — never a repeated copy of K or V, forward or backward.
    Every reshape is a view (a Reshape node for tensors). ``ungroup_heads`` undoes it on the output.
    """
    kv_heads = key.shape[-3]
    group = query.shape[-3] // kv_heads
    q = query.reshape(query.shape[:-3] + (kv_heads, group) + query.shape[-2:])      # (..., Hkv, G, L, E)
    k = key.reshape(key.shape[:-3] + (kv_heads, 1) + key.shape[-2:])               # (..., Hkv, 1, S, E)
    v = value.reshape(value.shape[:-3] + (kv_heads, 1) + value.shape[-2:])         # (..., Hkv, 1, S, Ev)

    def split(m):                                                                   # (..., Hq | 1, L, S)
        if m is None or m.ndim < 3:
            return m
        heads = (kv_heads, group) if m.shape[-3] != 1 else (1, 1)
        return m.reshape(m.shape[:-3] + heads + m.shape[-2:])                      # (..., Hkv | 1, G | 1, L, S)

    return q, k, v, split(mask), split(bias)


def ungroup_heads(x):
    """(..., Hkv, G, L, ·) → (..., Hkv · G, L, ·): the query heads back in one axis (``group_heads``' order)."""
    return x.reshape(x.shape[:-4] + (x.shape[-4] * x.shape[-3],) + x.shape[-2:])


def scaled_dot_product_attention(query, key, value, attn_mask=None, *, is_causal=False, scale=None, dropout_p=0.0,
                                 enable_gqa=False, window=None, need_weights=False):
    """softmax(Q Kᵀ · scale + mask) V, with PyTorch's semantics (``torch.nn.functional.scaled_dot_product_attention``).

    Args:
        query: (..., L, E); key: (..., S, E); value: (..., S, Ev) — batch axes broadcast.
        attn_mask: None; boolean, True = take part; or float, added to the scores. Broadcastable to (..., L, S).
        is_causal: mask keys after the query (top-left aligned lower triangle). An error together with attn_mask.
        scale: defaults to 1/√E.
        dropout_p: dropout on the attention weights (applied whenever > 0, as PyTorch's functional form does:
            pass 0.0 in evaluation).
        enable_gqa: grouped-query attention, as PyTorch ≥ 2.5: query (..., Hq, L, E), key and value (..., Hkv, S, ·)
            with Hkv dividing Hq; query head i attends with key/value head i // (Hq / Hkv) (``group_heads``: K and V
            are never repeated; their gradients sum over the query heads of their group). Hkv = 1 is multi-query
            attention. attn_mask broadcasts to (..., Hq, L, S).
        window: with is_causal=True, a sliding window: query i sees keys i − window + 1 … i (Mistral; Child et al.
            2019's local attention). minattn's addition.
        need_weights: minattn's addition: also return the attention weights (..., L, S) as a detached,
            read-only tensor (a copy on CuPy).
        Everything after attn_mask is keyword-only: PyTorch's positional order is (attn_mask, dropout_p, is_causal,
        scale), so a positional call ported from it fails loudly here instead of meaning something else.
    Returns:
        (..., L, Ev), or (output, weights) when ``need_weights``. A query whose keys are all masked gets output 0,
        weights 0 and gradient 0 — no NaN.
    Raises:
        TypeError for non-tensor or mismatched-dtype inputs or a bad mask dtype; ValueError for mismatched sizes,
        a mask that does not broadcast, attn_mask with is_causal, or (enable_gqa) head counts that do not divide.
    Source: Vaswani et al. 2017, eq. 1; Ainslie et al. 2023 (GQA), Shazeer 2019 (MQA). Backward:
    ``ScaledDotProductAttentionFunction``.
    """
    where = "scaled_dot_product_attention"
    dropout_p = checks.probability("dropout_p", dropout_p, where)
    is_causal = checks.boolean("is_causal", is_causal, where)
    enable_gqa = checks.boolean("enable_gqa", enable_gqa, where)
    need_weights = checks.boolean("need_weights", need_weights, where)
    scale = None if scale is None else checks.finite_float("scale", scale, where=where)
    window = masks.check_window(window, is_causal, where)
    batch, num_queries, num_keys = _check_qkv(where, query, key, value, enable_gqa)
    mask, bias = masks.split_attn_mask(attn_mask, is_causal, num_queries, num_keys, query.dtype, window, where)
    masks.check_batch_broadcast(mask if mask is not None else bias, batch + (num_queries, num_keys), "attn_mask",
                                where)
    return attention(query, key, value, mask, bias, scale, dropout_p, need_weights, enable_gqa)


def attention(query, key, value, mask=None, bias=None, scale=None, dropout_p=0.0, need_weights=False,
              enable_gqa=False):
    """The unchecked core shared by ``scaled_dot_product_attention`` and the attention layers.

    ``mask`` (bool, True = take part) and ``bias`` (float) are arrays already validated by the caller. With
    ``need_weights`` it also returns the attention weights (..., L, S) as they were BEFORE dropout, read-only
    (``backend.read_only``: on NumPy the very array the backward reads, no copy and no way to edit it; a copy on
    CuPy). ``enable_gqa``: key and value may have fewer heads than the query (axis -3, already checked to divide
    it): grouped-query attention through ``group_heads``.
    """
    if enable_gqa and key.shape[-3] not in (1, query.shape[-3]):                    # (one K/V head broadcasts)
        q, k, v, mask, bias = group_heads(query, key, value, mask, bias)
        result = attention(q, k, v, mask, bias, scale, dropout_p, need_weights)
        if need_weights:
            return ungroup_heads(result[0]), ungroup_heads(result[1])
        return ungroup_heads(result)
    scale = default_scale(query.shape[-1]) if scale is None else checks.finite_float("scale", scale, where="attention")
    drop = None
    if dropout_p > 0:
        batch = masks.batch_shape(query, key)                                     # (...)
        drop = dropout_mask(batch + (query.shape[-2], key.shape[-2]), dropout_p, query.dtype)   # (..., L, S)  D
    out, ctx = ScaledDotProductAttentionFunction.apply_with_ctx(query, key, value, mask=mask, bias=bias,
                                                                 scale=scale, dropout_mask=drop)   # (..., L, Ev)
    if need_weights:
        return out, Tensor(read_only(ctx.attention_weights))                        # (..., L, Ev), (..., L, S)
    return out


def default_scale(features):
    """1/√E, the scale of the scores when none is given; 1.0 for E = 0, where Q Kᵀ is all zeros whatever the scale
    (PyTorch returns softmax(0 + mask) V there, the masked mean of the values — so does minattn)."""
    return 1 / math.sqrt(features) if features else 1.0


def rotary_embedding(x, offset=0, base=10000.0, interleaved=False):
    """Rotary position embedding (RoPE): channel pair i of the vector at position m turned by the angle
    (offset + m)·base^(−2i/d), so that (rotated q_m) · (rotated k_n) depends on the positions only through n − m.

    Args:
        x: (..., L, d) float, d even; L positions along the second-to-last axis (e.g. q or k split into heads,
            (B, h, L, d_h)).
        offset: the position of the first row (an int ≥ 0): for cached decoding, the number of tokens before.
        base: 10000 by default (Su et al. 2021; Llama 3 uses 500000).
        interleaved: pair channels (2i, 2i+1) as Llama, gpt-fast and llm.c do; default False pairs (i, i + d/2) as
            GPT-NeoX, litgpt and Hugging Face do ("rotate_half"). One fixed permutation apart.
    Returns (..., L, d), same dtype. Raises TypeError for a non-float or non-tensor x, ValueError for an odd last axis,
    fewer than 2 axes, a negative or non-integer offset, or a base that is not a positive finite number.
    Source: Su et al. 2021 (RoFormer). Backward: ``RotaryEmbeddingFunction`` (the inverse rotation).
    """
    where = "rotary_embedding"
    checks.tensor("x", x, where, floating=True)
    if x.ndim < 2 or x.shape[-1] % 2:
        checks.fail("x", "(..., L, d) with d even", x, where)
    offset = checks.nonnegative_int("offset", offset, where)
    base = checks.positive_float("base", base, where)
    interleaved = checks.boolean("interleaved", interleaved, where)
    return RotaryEmbeddingFunction.apply(x, offset=offset, base=base, interleaved=interleaved)


def alibi_slopes(num_heads):
    """ALiBi's per-head slopes (Press et al. 2022): 2^(−8/n), 2^(−16/n), … for n heads a power of two; the paper's
    rule otherwise. A host NumPy float64 array (num_heads,); see ``masks.alibi_slopes`` (ValueError for a bad
    num_heads)."""
    return masks.alibi_slopes(num_heads)


def flash_attention(query, key, value, attn_mask=None, *, is_causal=False, scale=None, block_size=128,
                    dropout_p=0.0, window=None):
    """softmax(Q Kᵀ · scale + mask) V computed tile by tile (FlashAttention): ``scaled_dot_product_attention``'s result
    without ever holding the (..., L, S) matrix of weights.

    Args:
        query: (..., L, E); key: (..., S, E); value: (..., S, Ev) — batch axes broadcast.
        attn_mask: None; boolean, True = take part; or float, added to the scores. Broadcastable to (..., L, S).
        is_causal: mask keys after the query (top-left aligned lower triangle); tiles entirely above the diagonal are
            skipped, and no (L, S) mask is built. An error together with attn_mask.
        scale: defaults to 1/√E.
        block_size: rows per tile, for the query blocks and the key/value blocks alike (a positive integer).
            Memory beyond the inputs and output is O(block_size²) per batch element and head, plus O(L) for the
            saved logsumexp; the result does not depend on it (up to the order of floating-point additions).
        dropout_p: must be 0 — FlashAttention's fused dropout is not implemented here (use
            ``scaled_dot_product_attention`` for attention dropout).
        window: with is_causal=True, a sliding window (query i sees keys i − window + 1 … i); tiles outside every
            row's window are skipped, so the work grows as L·window instead of L².
        Everything after attn_mask is keyword-only, as in ``scaled_dot_product_attention``.
    Returns:
        (..., L, Ev). A query whose keys are all masked gets output 0 and gradient 0 — no NaN. There is no
        ``need_weights``: the weights are never materialised.
    Raises:
        TypeError / ValueError as ``scaled_dot_product_attention``; ValueError for a bad block_size or dropout_p > 0.
    Source: Dao et al. 2022 (FlashAttention); Dao 2023 (FlashAttention-2). Forward and backward:
    ``FlashAttentionFunction``.
    """
    where = "flash_attention"
    if checks.probability("dropout_p", dropout_p, where) != 0:
        checks.fail("dropout_p", "0 (FlashAttention's fused dropout is not implemented; use "
                    "scaled_dot_product_attention for attention dropout)", dropout_p, where)
    is_causal = checks.boolean("is_causal", is_causal, where)
    scale = None if scale is None else checks.finite_float("scale", scale, where=where)
    block_size = checks.positive_int("block_size", block_size, where)
    window = masks.check_window(window, is_causal, where)
    batch, num_queries, num_keys = _check_qkv(where, query, key, value)
    # is_causal is applied per tile by FlashAttentionFunction, so no (L, S) causal mask is built here; it reaches
    # split_attn_mask only together with an attn_mask, where split_attn_mask raises (not both).
    mask, bias = masks.split_attn_mask(attn_mask, is_causal and attn_mask is not None, num_queries, num_keys,
                                       query.dtype, where=where)
    masks.check_batch_broadcast(mask if mask is not None else bias, batch + (num_queries, num_keys), "attn_mask",
                                where)
    scale = default_scale(query.shape[-1]) if scale is None else scale
    return FlashAttentionFunction.apply(query, key, value, mask=mask, bias=bias, scale=scale, causal=is_causal,
                                        block_size=block_size, window=window)                   # (..., L, Ev)

