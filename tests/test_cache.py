"""The key/value cache (minattn/cache.py): incremental decoding equals recomputing the whole prefix.

  (a) MultiHeadAttention, causal self-attention fed one token at a time (and a prompt of several first) through a
      KVCache = the full causal call, row by row, to 1e-12 in float64 — plain, with GQA, rotary positions, ALiBi and
      a sliding window;
  (b) a static cache for cross-attention computes the memory's keys and values once;
  (c) Transformer.greedy_decode with the cache = without it (the same tokens), and decode's logits step by step =
      the full decode's;
  (d) errors: a cache while gradients are recorded, an attn_mask with a cache, more positions than max_len.
"""
import numpy as np
import pytest

from autograd import Tensor, backend
from minattn import MultiHeadAttention, Transformer, manual_seed, no_grad, tasks
from minattn.cache import KVCache
from tests.conftest import host, t64

TIGHT = dict(rtol=1e-12, atol=1e-12)
VARIANTS = {"plain": {}, "gqa": dict(num_kv_heads=2), "rope": dict(rope=True), "alibi": dict(alibi=True),
            "window": dict(window=3), "all": dict(num_kv_heads=1, rope=True, alibi=True, window=4)}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cached_self_attention_equals_the_full_causal_call(rng, variant):
    """A prompt of 3 tokens, then 5 tokens one by one: each output row equals the full causal call's."""
    manual_seed(0)
    layer = MultiHeadAttention(8, 4, dtype="float64", **VARIANTS[variant])
    x = rng.standard_normal((2, 8, 8))
    with no_grad():
        full = host(layer(t64(x, False), t64(x, False), t64(x, False), is_causal=True))   # (B, L, E)
        cache = KVCache(8)
        prompt = t64(x[:, :3], False)
        rows = [host(layer(prompt, prompt, prompt, is_causal=True, cache=cache))]
        for t in range(3, 8):
            token = t64(x[:, t:t + 1], False)
            rows.append(host(layer(token, token, token, is_causal=True, cache=cache)))
    np.testing.assert_allclose(np.concatenate(rows, axis=1), full, **TIGHT)
    assert cache.length == cache.position == 8
    assert cache.keys.shape == (2, layer.num_kv_heads, 8, 2)                 # (B, h_kv, T, d_h): h_kv heads kept


def test_static_cache_computes_the_memory_once(rng, monkeypatch):
    """Cross-attention with a static cache: the memory's keys and values are projected on the first call only, and
    every call equals the uncached one."""
    manual_seed(0)
    layer = MultiHeadAttention(8, 2, dtype="float64")
    memory = t64(rng.standard_normal((2, 6, 8)), False)
    queries = [t64(rng.standard_normal((2, 1, 8)), False) for _ in range(3)]
    calls = []
    original = layer.W_k.forward
    monkeypatch.setattr(layer.W_k, "forward", lambda x: (calls.append(x.shape), original(x))[1])
    cache = KVCache(6, static=True)
    with no_grad():
        for q in queries:
            np.testing.assert_allclose(host(layer(q, memory, memory, cache=cache)),
                                       host(layer(q, memory, memory)), **TIGHT)
    assert calls.count((2, 6, 8)) == 1 + len(queries)                       # once cached, once per uncached call


def _trained_looking_model():
    manual_seed(1)
    model = Transformer(12, 12, 16, 4, 32, 2, 2, max_len=10, dtype="float64")
    return model


def test_greedy_decode_with_and_without_the_cache_agree(rng):
    """The same tokens, for every sequence of a batch (float64 model, random weights: long, varied outputs)."""
    model = _trained_looking_model()
    batch = tasks.make_batch(rng, 6, 12, 2, 9)
    src, lens = Tensor(backend.asarray(batch.src)), backend.asarray(batch.src_valid_lens)
    cached = model.greedy_decode(src, lens, tasks.BOS, tasks.EOS, 10)
    full = model.greedy_decode(src, lens, tasks.BOS, tasks.EOS, 10, use_cache=False)
    np.testing.assert_array_equal(cached, full)


def test_decode_logits_step_by_step_equal_the_full_decode(rng):
    """decode on the newest token with caches gives, at every step, the full decode's logits for that position."""
    model = _trained_looking_model()
    batch = tasks.make_batch(rng, 3, 12, 2, 9)
    src, lens = Tensor(backend.asarray(batch.src)), backend.asarray(batch.src_valid_lens)
    tgt = backend.asarray(batch.tgt_in)                                      # (B, T)
    model.eval()
    with no_grad():
        memory = model.encode(src, lens)
        full = host(model.decode(Tensor(tgt), memory, lens))                 # (B, T, V)
        caches = [(KVCache(tgt.shape[1]), KVCache(tgt.shape[1], static=True)) for _ in model.decoder_blocks]
        steps = [host(model.decode(Tensor(tgt[:, t:t + 1]), memory, lens, caches)) for t in range(tgt.shape[1])]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, **TIGHT)


def test_decode_refuses_self_caches_at_different_positions(rng):
    """Each block's self-attention counts its own cache's position: caches that disagree would give wrong masks
    silently. Transformer.decode refuses them by name, as GPT.forward does, with no cache written."""
    model = _trained_looking_model()
    batch = tasks.make_batch(rng, 2, 12, 2, 9)
    src, lens = Tensor(backend.asarray(batch.src)), backend.asarray(batch.src_valid_lens)
    tgt = backend.asarray(batch.tgt_in)
    model.eval()
    with no_grad():
        memory = model.encode(src, lens)
        caches = [(KVCache(10), KVCache(memory.shape[1], static=True)) for _ in model.decoder_blocks]
        model.decode(Tensor(tgt[:, :1]), memory, lens, caches[:1] + [caches[1]])          # both at position 1
        caches[1] = (KVCache(10), KVCache(memory.shape[1], static=True))                  # block 1's at 0
        with pytest.raises(ValueError, match=r"caches\[1\]\[0\] must be at caches\[0\]\[0\]'s position 1"):
            model.decode(Tensor(tgt[:, 1:2]), memory, lens, caches)
        assert [own.position for own, _ in caches] == [1, 0]


def test_cache_errors(rng):
    """A cache while gradients are recorded (its contents would get none): RuntimeError; an attn_mask with a cache,
    or more positions than max_len: ValueError naming what is wrong."""
    layer = MultiHeadAttention(4, 2, dtype="float64")
    x = t64(rng.standard_normal((1, 2, 4)))
    with pytest.raises(RuntimeError, match=r"a KVCache is for decoding: its keys and values are constants"):
        layer(x, x, x, is_causal=True, cache=KVCache(4))
    with no_grad():
        with pytest.raises(ValueError, match=r"attn_mask must be None with a cache"):
            layer(x, x, x, attn_mask=backend.asarray(np.ones((2, 2), bool)), cache=KVCache(4))
        cache = KVCache(3)
        layer(x, x, x, is_causal=True, cache=cache)
        with pytest.raises(ValueError, match=r"key must be at most 1 new positions to fit in the cache \(it holds 2 "
                                             r"of max_len=3\), got 2 positions"):
            layer(x, x, x, is_causal=True, cache=cache)
    with pytest.raises(ValueError, match=r"KVCache: max_len must be an int >= 1, got 0"):
        KVCache(0)
