"""Attention masks: turning ``valid_lens``, ``attn_mask`` and ``is_causal`` into what the softmax needs.

Conventions (../shared/DESIGN.md §3, and PyTorch's ``scaled_dot_product_attention``):
  * a boolean mask: True = this key takes part in attention for this query; False = masked;
  * a float mask: added to the scores (use -inf to mask, finite values to bias);
  * ``valid_lens`` (d2l): (batch,) one length per sequence, or (batch, queries) one per query; keys at index
    >= valid_len are masked (they are padding);
  * ``is_causal``: query i sees keys 0..i (a lower-triangular mask aligned to the top-left, as in PyTorch).
Every mask is checked here, before any arithmetic, through ``autograd.checks`` (``lengths`` for valid_lens, ``fail``
for a mask that does not fit): a wrong shape or dtype raises naming the argument, what was expected and what was got.
"""
from autograd import backend, checks
from autograd.backend import broadcast_shape  # noqa: F401  (masks.broadcast_shape: the same rule)
from autograd.backend import xp
from autograd.tensor import as_data


def batch_shape(*arrays):
    """The broadcast of the batch axes (all but the last two) of the arrays that are not None: for q (..., L, E),
    k (..., S, E), masks (..., L, S), the batch the attention runs over. ValueError as ``broadcast_shape``."""
    return broadcast_shape(*(x.shape[:-2] for x in arrays if x is not None))


def causal_mask(num_queries, num_keys, window=None, offset=0):
    """Boolean (L, S), True where key j <= query i (top-left aligned, as PyTorch's ``is_causal``); with a sliding
    ``window`` w also i − j < w: query i sees keys i − w + 1 … i (Mistral's sliding-window attention). ``offset``:
    the queries are positions offset … offset + L − 1 (cached decoding: the keys before them are in the cache).
    TypeError / ValueError (``autograd.checks``) for sizes or an offset that are not ints >= 0, a window not >= 1."""
    where = "causal_mask"
    num_queries = checks.nonnegative_int("num_queries", num_queries, where)
    num_keys = checks.nonnegative_int("num_keys", num_keys, where)
    window = None if window is None else checks.positive_int("window", window, where)
    offset = checks.nonnegative_int("offset", offset, where)
    offset = offset + xp.arange(num_queries)[:, None] - xp.arange(num_keys)[None, :]   # (L, S)  i − j
    near = offset >= 0
    return near if window is None else near & (offset < window)


def valid_lens_mask(valid_lens, num_queries, num_keys, batch=None, where=None):
    """Boolean mask from d2l's ``valid_lens``: True where key index < valid length.

    Args:
        valid_lens: integers, (B,) — one length per sequence — or (B, L) — one per query. Tensor or array.
        num_queries (L), num_keys (S): sizes of the score matrix.
        batch (B): the number of sequences valid_lens must have (None: not checked); where: the caller, for messages.
    Returns:
        bool (B, 1, S) for 1-D valid_lens, (B, L, S) for 2-D.
    Raises:
        TypeError for non-integer valid_lens; ValueError for another shape, or a length < 0 or > S
        (``checks.lengths``).
    """
    lens = checks.lengths("valid_lens", valid_lens, batch, num_keys, queries=num_queries, where=where)
    lens = lens[:, None] if lens.ndim == 1 else lens                       # (B, 1) or (B, L)
    return xp.arange(num_keys)[None, None, :] < lens[:, :, None]          # (B, 1 or L, S)


def check_window(window, is_causal, where=None):
    """``window``, after checking it is None, or a positive int given with is_causal=True (a sliding window is a
    causal mask that also forgets keys ``window`` or more positions back). TypeError / ValueError otherwise."""
    if window is None:
        return None
    window = checks.positive_int("window", window, where)
    if not is_causal:
        checks.fail("window", "given with is_causal=True (a sliding window is causal)", window, where)
    return window


def split_attn_mask(attn_mask, is_causal, num_queries, num_keys, dtype, window=None, where=None):
    """Normalise PyTorch-style ``attn_mask`` / ``is_causal`` into ``(mask, bias)`` for the softmax.

    Returns:
        mask: boolean array (True = take part) broadcastable to (..., L, S), or None.
        bias: float array of ``dtype`` added to the scores, or None.
    Raises:
        ValueError if both ``attn_mask`` and ``is_causal`` are given (as PyTorch does), or if the mask's last two
        axes do not broadcast to (L, S). TypeError for an integer mask, a float mask of another dtype, or a mask
        tensor that requires grad (it would silently get none).
    """
    if attn_mask is None:
        return (causal_mask(num_queries, num_keys, window) if is_causal else None), None
    if is_causal:
        checks.fail("attn_mask", "None with is_causal=True (pass either attn_mask or is_causal=True, not both, as "
                    "PyTorch)", attn_mask, where)
    if getattr(attn_mask, "requires_grad", False):
        checks.fail("attn_mask", "a constant (it would get no gradient; a learned bias is not supported: pass "
                    "attn_mask.detach() if no gradient is wanted)", attn_mask, where, TypeError)
    try:
        mask = as_data(attn_mask)
    except (TypeError, ValueError) as err:
        checks.fail("attn_mask", "a boolean or float array", attn_mask, where, TypeError,
                    received=f"{checks.describe(attn_mask)} ({err})")
    if mask.dtype != bool and not backend.is_floating(mask.dtype):
        checks.fail("attn_mask", "boolean (True = take part) or float (added to the scores)", attn_mask, where,
                    TypeError)
    if backend.is_floating(mask.dtype) and mask.dtype != dtype:
        checks.fail("attn_mask", f"boolean, or float of the scores' dtype {dtype}", attn_mask, where, TypeError)
    if (mask.ndim < 1 or mask.shape[-1] not in (1, num_keys)
            or (mask.ndim > 1 and mask.shape[-2] not in (1, num_queries))):
        checks.fail("attn_mask", f"broadcastable to the scores' (L, S) = ({num_queries}, {num_keys})", attn_mask,
                    where)
    return (mask, None) if mask.dtype == bool else (None, mask)


def combine(*masks):
    """Logical AND of boolean masks, ignoring None (None if all are None)."""
    out = None
    for m in masks:
        if m is not None:
            out = m if out is None else out & m
    return out


def broadcasts_to(shape, target):
    """True if an array of ``shape`` broadcasts to ``target`` without enlarging it (so it can also be applied in
    place to an array of ``target``'s shape)."""
    return len(shape) <= len(target) and all(a in (1, b) for a, b in zip(shape[::-1], target[::-1]))


def check_batch_broadcast(array, scores_shape, name, where=None):
    """ValueError naming ``name`` if ``array``'s shape does not broadcast to ``scores_shape``."""
    if array is not None and not broadcasts_to(array.shape, scores_shape):
        checks.fail(name, f"broadcastable to the scores' shape {scores_shape}", array, where)


def attention_masks(batch, num_heads, num_queries, num_keys, dtype, valid_lens=None, attn_mask=None,
                    is_causal=False, window=None, where=None):
    """Every way of masking a multi-head layer, merged into one ``(mask, bias)`` for scores (B, h, L, S).

    Args:
        batch (B), num_heads (h), num_queries (L), num_keys (S): the scores' shape; dtype: the scores' dtype.
        valid_lens: None, (B,) or (B, L) integers (d2l).
        attn_mask: None, or a boolean / float mask broadcastable to (B, h, L, S) — an (L, S) mask serves every
            sequence and head; a (B, 1, L, S) mask is per sequence. A 3-D mask is refused as ambiguous
            (PyTorch's ``nn.MultiheadAttention`` reads it as (B·h, L, S): reshape such a mask to (B, h, L, S)).
        is_causal: add the causal mask (query i sees keys 0..i). An error together with attn_mask.
    Returns:
        mask: bool broadcastable to (B, h, L, S), True = take part, or None; bias: float or None.
    Raises:
        TypeError / ValueError as ``valid_lens_mask`` and ``split_attn_mask`` do, and ValueError naming the
        shapes when a mask does not broadcast to (B, h, L, S).
    """
    scores_shape = (batch, num_heads, num_queries, num_keys)
    if attn_mask is not None and getattr(attn_mask, "ndim", 0) == 3:
        checks.fail("attn_mask", "(L, S), (B, 1, L, S) or (B, h, L, S): a 3-D mask is ambiguous here (per head, or "
                    "PyTorch's (B·h, L, S)?)", attn_mask, where)
    mask, bias = split_attn_mask(attn_mask, is_causal, num_queries, num_keys, dtype, window, where)
    check_batch_broadcast(mask if mask is not None else bias, scores_shape, "attn_mask", where)
    lens_mask = None
    if valid_lens is not None:
        lens_mask = valid_lens_mask(valid_lens, num_queries, num_keys, batch, where)   # (B, 1|L, S)
        lens_mask = lens_mask[:, None]                                      # (B, 1, 1|L, S)
    return combine(lens_mask, mask), bias


def alibi_slopes(num_heads):
    """ALiBi's per-head slopes m_h (Press et al. 2022, §3): a geometric sequence starting at 2^(−8/n) with that ratio,
    for n = num_heads a power of two (8 heads: 1/2, 1/4, …, 1/256). For other head counts, as the paper's reference
    code does: the slopes of the nearest power of two below, n', then every other slope of 2n' for the rest.

    Returns a host NumPy float64 array (num_heads,). Raises TypeError / ValueError unless num_heads is an int >= 1.
    """
    num_heads = checks.positive_int("num_heads", num_heads, "alibi_slopes")

    def power_of_two(n):                                               # n = 2^k: 2^(−8/n), 2^(−16/n), …
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    below = 2 ** (num_heads.bit_length() - 1)                         # the largest power of two ≤ num_heads
    slopes = power_of_two(below) + power_of_two(2 * below)[0::2][:num_heads - below]
    return backend.host.asarray(slopes, dtype=backend.float64)


def alibi_bias(num_heads, num_queries, num_keys, dtype, offset=0):
    """ALiBi's additive bias (num_heads, L, S): −m_h · |i − j| for query i and key j, both counted from 0 — a
    penalty growing linearly with the distance, steeper for some heads than others (``alibi_slopes``). With a causal
    mask only j ≤ i remain, where it is the paper's −m_h (i − j). A constant: added to the scores, no gradient.
    Source: Press et al. 2022, "Train Short, Test Long", eq. in §3.
    """
    slopes = xp.asarray(alibi_slopes(num_heads), dtype=dtype)                          # (h,)
    distance = xp.abs(offset + xp.arange(num_queries)[:, None] - xp.arange(num_keys)[None, :])   # (L, S)
    return -slopes[:, None, None] * distance.astype(dtype)                             # (h, L, S)
