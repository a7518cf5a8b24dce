"""A key/value cache for incremental decoding: each new token computes only its own q, k, v and attends to the keys
and values of every token before it, kept here — O(T) work per generated token instead of recomputing the whole
prefix, O(T²).

Layout: keys and values are preallocated as (B, h_kv, T_max, d_h) arrays — batch, key/value heads, positions,
head dimension: the layout attention reads them in (``transpose_qkv``'s (B, h, L, d_h)), so the first ``length``
positions are a view, never a copy. With grouped-query attention the cache holds h_kv heads, not h: it shrinks by
h / h_kv. The cached arrays are constants: a cached call records no gradient into them (decode under ``no_grad``).
"""
from autograd import checks
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
        self.max_len = checks.positive_int("max_len", max_len, "KVCache")
        self.static = checks.boolean("static", static, "KVCache")
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

    def check_room(self, name, new, where="KVCache"):
        """ValueError naming ``name`` unless ``new`` more positions fit in max_len (checked before anything is
        computed or written). A static cache that already holds its keys writes nothing more: it always has room."""
        if not (self.static and self.length) and self.length + new > self.max_len:
            checks.fail(name, f"at most {self.max_len - self.length} new positions to fit in the cache (it holds "
                        f"{self.length} of max_len={self.max_len})", new, where, received=f"{new} positions")

    def append(self, k, v):
        """Write k, v (B, h_kv, t, d_h) at positions length … length + t − 1; return all keys and values so far.

        Raises TypeError for a k or v that is not an array; ValueError when they would not fit in max_len, or do not
        match what the cache holds (shapes and dtypes of both, k and v of one batch, heads and length), before
        anything is written.
        """
        where = "KVCache.append"
        for name, a in (("k", k), ("v", v)):
            if not hasattr(a, "ndim"):
                checks.fail(name, "a (B, h_kv, t, d_h) array", a, where, TypeError)
            if a.ndim != 4:
                checks.fail(name, "a (B, h_kv, t, d_h) array", a, where)
        if v.shape[:3] != k.shape[:3] or v.dtype != k.dtype:
            checks.fail("v", f"of k's (B, h_kv, t) = {k.shape[:3]} and dtype {k.dtype}", v, where)
        if self._keys is not None:
            for name, a, held in (("k", k, self._keys), ("v", v, self._values)):
                if a.shape[:2] + a.shape[3:] != held.shape[:2] + held.shape[3:] or a.dtype != held.dtype:
                    checks.fail(name, f"(B, h_kv, t, d) = {held.shape[:2]} + (t,) + {held.shape[3:]} of dtype "
                                f"{held.dtype}, as the cache holds", a, where)
        self.check_room("k", k.shape[2], where)
        batch, heads, new, head_dim = k.shape
        if self._keys is None:
            self._keys = xp.empty((batch, heads, self.max_len, head_dim), dtype=k.dtype)   # (B, h_kv, T_max, d_h)
            self._values = xp.empty((batch, heads, self.max_len, v.shape[-1]), dtype=v.dtype)
        self._keys[:, :, self.length:self.length + new] = k                # (B, h_kv, t, d_h) in place
        self._values[:, :, self.length:self.length + new] = v
        self.length += new
        return self.keys, self.values

    def reset(self):
        """Forget every position (the arrays are kept for the next sequence)."""
        self.length = self.position = 0


def check_caches(caches, count, expected, where, pairs=False):
    """The position of ``caches``: a list (or tuple) of ``count`` KVCaches, one per block — or, with ``pairs``, of
    ``count`` (self, cross) pairs of them — whose (self-attention) caches all stand at one position, the one the new
    tokens start from. ``expected`` words the list for the error. TypeError / ValueError naming the entry otherwise
    (GPT.forward, Transformer.decode)."""
    checks.instance("caches", caches, (list, tuple), expected, where)
    if len(caches) != count:
        checks.fail("caches", expected, caches, where)
    for i, entry in enumerate(caches):
        if not pairs:
            checks.instance(f"caches[{i}]", entry, KVCache, "a KVCache", where)
        elif not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(c, KVCache) for c in entry)):
            checks.fail(f"caches[{i}]", "a (self, cross) pair of KVCaches", entry, where, TypeError)
    own = [entry[0] for entry in caches] if pairs else list(caches)            # the caches the positions count in
    for i, cache in enumerate(own):
        if cache.position != own[0].position:
            name, first = (f"caches[{i}][0]", "caches[0][0]") if pairs else (f"caches[{i}]", "caches[0]")
            checks.fail(name, f"at {first}'s position {own[0].position}", cache, where,
                        received=f"a cache at position {cache.position}")
    return own[0].position if own else 0
