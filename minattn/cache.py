"""A key/value cache for incremental decoding: each new token computes only its own q, k, v and attends to the keys
and values of every token before it, kept here — O(T) work per generated token instead of recomputing the whole
prefix, O(T²).

Layout: keys and values are preallocated as (B, h_kv, T_max, d_h) arrays — batch, key/value heads, positions,
head dimension: the layout attention reads them in (``transpose_qkv``'s (B, h, L, d_h)), so the first ``length``
positions are a view, never a copy. With grouped-query attention the cache holds h_kv heads, not h: it shrinks by
h / h_kv. The cached arrays are constants: a cached call records no gradient into them (decode under ``no_grad``).
"""
from autograd.backend import xp


class KVCache:
    """The keys and values one attention layer has seen so far.

    Args:
        max_len: positions to make room for (T_max); ValueError beyond it.
        static: for cross-attention over a fixed memory: the first call fills it from its key and value inputs,
            later calls reuse them as they are (the memory does not grow while decoding).
    Attributes:
        length: positions held; ``position``: query positions processed so far (the offset of the next query, for
        causal masks and rotary positions). ``keys``, ``values``: (B, h_kv, length, d_h) views, or None while empty.
    """

    def __init__(self, max_len, static=False):
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"KVCache: max_len must be a positive int, got {max_len!r}")
        self.max_len, self.static = max_len, static
        self.length = self.position = 0
        self._keys = self._values = None                               # (B, h_kv, T_max, d_h), made on first use

    @property
    def keys(self):
        """(B, h_kv, length, d_h): a view of the filled positions, or None while empty."""
        return None if self._keys is None else self._keys[:, :, :self.length]

    @property
    def values(self):
        """(B, h_kv, length, d_h): a view of the filled positions, or None while empty."""
        return None if self._values is None else self._values[:, :, :self.length]

    def append(self, k, v):
        """Write k, v (B, h_kv, t, d_h) at positions length … length + t − 1; return all keys and values so far.

        Raises ValueError when they would not fit in max_len, or do not match what the cache holds.
        """
        batch, heads, new, head_dim = k.shape
        if self._keys is None:
            self._keys = xp.empty((batch, heads, self.max_len, head_dim), dtype=k.dtype)   # (B, h_kv, T_max, d_h)
            self._values = xp.empty((batch, heads, self.max_len, v.shape[-1]), dtype=v.dtype)
        if self.length + new > self.max_len or k.shape[:2] != self._keys.shape[:2] or k.dtype != self._keys.dtype:
            raise ValueError(f"KVCache: cannot add keys {k.shape} {k.dtype} to a cache holding {self.length} of "
                             f"{self.max_len} positions of {self._keys.shape[:2]} {self._keys.dtype}")
        self._keys[:, :, self.length:self.length + new] = k                # (B, h_kv, t, d_h) in place
        self._values[:, :, self.length:self.length + new] = v
        self.length += new
        return self.keys, self.values

    def reset(self):
        """Forget every position (the arrays are kept for the next sequence)."""
        self.length = self.position = 0
