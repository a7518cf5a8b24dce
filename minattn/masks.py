"""Attention masks: turning ``valid_lens``, ``attn_mask`` and ``is_causal`` into what the softmax needs.

Conventions (../shared/DESIGN.md §3, and PyTorch's ``scaled_dot_product_attention``):
  * a boolean mask: True = this key takes part in attention for this query; False = masked;
  * a float mask: added to the scores (use -inf to mask, finite values to bias);
  * ``valid_lens`` (d2l): (batch,) one length per sequence, or (batch, queries) one per query; keys at index
    >= valid_len are masked (they are padding);
  * ``is_causal``: query i sees keys 0..i (a lower-triangular mask aligned to the top-left, as in PyTorch).
Every mask is checked here, before any arithmetic: a wrong shape or dtype raises with what was expected.
"""
from autograd import backend
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
    the queries are positions offset … offset + L − 1 (cached decoding: the keys before them are in the cache)."""
    offset = offset + xp.arange(num_queries)[:, None] - xp.arange(num_keys)[None, :]   # (L, S)  i − j
    near = offset >= 0
    return near if window is None else near & (offset < window)


def valid_lens_mask(valid_lens, num_queries, num_keys):
    """Boolean mask from d2l's ``valid_lens``: True where key index < valid length.

    Args:
        valid_lens: integers, (B,) — one length per sequence — or (B, L) — one per query. Tensor or array.
        num_queries (L), num_keys (S): sizes of the score matrix.
    Returns:
        bool (B, 1, S) for 1-D valid_lens, (B, L, S) for 2-D.
    Raises:
        TypeError for non-integer valid_lens; ValueError for another shape, or a length < 0 or > S.
    """
    lens = as_data(valid_lens)
    if lens.dtype.kind not in "iu":
        raise TypeError(f"valid_lens must be integers, got dtype {lens.dtype}")
    if lens.ndim == 2 and lens.shape[1] != num_queries:
        raise ValueError(f"valid_lens of shape {lens.shape} must be (batch,) or (batch, {num_queries} queries)")
    if lens.ndim not in (1, 2):
        raise ValueError(f"valid_lens must be (batch,) or (batch, queries); got shape {lens.shape}")
    if lens.size and (int(lens.min()) < 0 or int(lens.max()) > num_keys):
        raise ValueError(f"valid_lens must lie in [0, {num_keys}] (the number of keys); "
                         f"got values in [{int(lens.min())}, {int(lens.max())}]")
    lens = lens[:, None] if lens.ndim == 1 else lens                       # (B, 1) or (B, L)
    return xp.arange(num_keys)[None, None, :] < lens[:, :, None]          # (B, 1 or L, S)


def check_window(window, is_causal):
    """ValueError unless ``window`` is None, or a positive int given with is_causal=True (a sliding window is a
    causal mask that also forgets keys ``window`` or more positions back)."""
    if window is None:
        return
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int (keys i - window + 1 .. i), got {window!r}")
    if not is_causal:
        raise ValueError(f"window={window} is a sliding CAUSAL window: pass is_causal=True with it")


def split_attn_mask(attn_mask, is_causal, num_queries, num_keys, dtype, window=None):
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
        raise ValueError("pass either attn_mask or is_causal=True, not both (PyTorch raises the same)")
    if getattr(attn_mask, "requires_grad", False):
        raise TypeError("attn_mask is a constant here and would get no gradient; a learned bias is not supported "
                        "(pass attn_mask.detach() if no gradient is wanted)")
    mask = as_data(attn_mask)
    if (mask.ndim < 1 or mask.shape[-1] not in (1, num_keys)
            or (mask.ndim > 1 and mask.shape[-2] not in (1, num_queries))):
        raise ValueError(f"attn_mask of shape {mask.shape} does not broadcast to the scores' (L, S) = "
                         f"({num_queries}, {num_keys})")
    if mask.dtype == bool:
        return mask, None
    if not backend.is_floating(mask.dtype):
        raise TypeError(f"attn_mask must be boolean (True = take part) or float (added); got dtype {mask.dtype}")
    if mask.dtype != dtype:
        raise TypeError(f"a float attn_mask must have the scores' dtype {dtype}; got {mask.dtype}")
    return None, mask


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


def check_batch_broadcast(array, scores_shape, name):
    """ValueError naming ``name`` if ``array``'s shape does not broadcast to ``scores_shape``."""
    if array is None:
        return
    shape = array.shape
    if not broadcasts_to(shape, scores_shape):
        raise ValueError(f"{name} of shape {shape} does not broadcast to the scores' shape {scores_shape}")


def attention_masks(batch, num_heads, num_queries, num_keys, dtype, valid_lens=None, attn_mask=None,
                    is_causal=False, window=None):
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
        raise ValueError(f"a 3-D attn_mask {tuple(attn_mask.shape)} is ambiguous here (per head, or PyTorch's "
                         "(B·h, L, S)?): pass (L, S), (B, 1, L, S) or (B, h, L, S)")
    mask, bias = split_attn_mask(attn_mask, is_causal, num_queries, num_keys, dtype, window)
    check_batch_broadcast(mask if mask is not None else bias, scores_shape, "attn_mask")
    lens_mask = None
    if valid_lens is not None:
        lens_mask = valid_lens_mask(valid_lens, num_queries, num_keys)    # (B', 1|L, S)
        if lens_mask.shape[0] != batch:
            raise ValueError(f"valid_lens has {lens_mask.shape[0]} rows but the batch has {batch} sequences")
        lens_mask = lens_mask[:, None]                                      # (B, 1, 1|L, S)
    return combine(lens_mask, mask), bias


def alibi_slopes(num_heads):
    """ALiBi's per-head slopes m_h (Press et al. 2022, §3): a geometric sequence starting at 2^(−8/n) with that ratio,
    for n = num_heads a power of two (8 heads: 1/2, 1/4, …, 1/256). For other head counts, as the paper's reference
    code does: the slopes of the nearest power of two below, n', then every other slope of 2n' for the rest.

    Returns a host NumPy float64 array (num_heads,). Raises ValueError unless num_heads is a positive int.
    """
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"alibi_slopes: num_heads must be a positive int, got {num_heads!r}")

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
