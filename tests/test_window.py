"""Sliding-window (local) attention: query i sees keys i − window + 1 … i (causal).

  (a) the dense mask; scaled_dot_product_attention(is_causal=True, window=w) = the same attention with that boolean
      mask; flash attention with a window = dense, in value and every gradient, over block sizes and windows, with
      tiles skipped (fewer tile products than without a window); gradcheck;
  (b) MultiHeadAttention(window=w): dense = flash; a window at least L long is plain causal attention;
  (c) errors: a window without is_causal, a window that is not a positive int.
"""
import numpy as np
import pytest

from autograd import Tensor, backend, gradcheck
from minattn import MultiHeadAttention, masks
from minattn import functional as F
from minattn.fused import flash_attention as flash_module
from tests.conftest import host, mha_dense_and_flash, t64

TIGHT = dict(rtol=1e-12, atol=1e-12)


def test_window_mask():
    """True exactly where 0 <= i − j < w."""
    mask = host(masks.causal_mask(5, 6, window=2))
    i, j = np.arange(5)[:, None], np.arange(6)[None, :]
    np.testing.assert_array_equal(mask, (i - j >= 0) & (i - j < 2))
    np.testing.assert_array_equal(host(masks.causal_mask(5, 6)), i >= j)


def _run(fn, arrays, cotangent):
    tensors = [t64(a) for a in arrays]
    out = fn(*tensors)
    out.backward(backend.asarray(cotangent))
    return [host(out)] + [host(t.grad) for t in tensors]


@pytest.mark.parametrize("window, block_size", [(1, 4), (3, 4), (5, 2), (16, 8), (40, 8)])
def test_flash_and_dense_windows_equal_the_explicit_mask(rng, window, block_size):
    """Dense SDPA with window=w, flash with window=w (any block size) and SDPA with the explicit boolean mask agree in
    value and in dq, dk, dv (window ≥ L: plain causal attention)."""
    q, k, v = rng.standard_normal((2, 3, 20, 4)), rng.standard_normal((2, 3, 20, 4)), rng.standard_normal((2, 3, 20, 5))
    g = rng.standard_normal((2, 3, 20, 5))
    explicit = backend.asarray(np.tril(np.ones((20, 20), bool)) & ~np.tril(np.ones((20, 20), bool), -window))
    expected = _run(lambda *t: F.scaled_dot_product_attention(*t, attn_mask=explicit), (q, k, v), g)
    for fn in (lambda *t: F.scaled_dot_product_attention(*t, is_causal=True, window=window),
               lambda *t: F.flash_attention(*t, is_causal=True, window=window, block_size=block_size)):
        for got, want in zip(_run(fn, (q, k, v), g), expected):
            np.testing.assert_allclose(got, want, **TIGHT)


def test_flash_skips_the_tiles_outside_the_window(rng, monkeypatch):
    """At L = 64, block 8, window 8: each query block needs at most 2 key blocks, so the forward computes 15 tiles
    instead of the 36 of plain causal attention."""
    calls = []
    original = flash_module._tile_scores

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(flash_module, "_tile_scores", counting)
    q = Tensor(backend.asarray(rng.standard_normal((1, 64, 4))))
    F.flash_attention(q, q, q, is_causal=True, block_size=8)
    causal = len(calls)
    calls.clear()
    F.flash_attention(q, q, q, is_causal=True, block_size=8, window=8)
    assert (causal, len(calls)) == (36, 15)


def test_gradcheck_flash_window(rng):
    """float64 gradcheck of the flash backward with a window crossing tiles."""
    arrays = [rng.standard_normal((1, 9, 3)) for _ in range(3)]
    assert gradcheck(lambda *t: F.flash_attention(*t, is_causal=True, window=3, block_size=2),
                     [t64(a) for a in arrays])


def test_multi_head_attention_window_dense_equals_flash(rng):
    """MultiHeadAttention(window=4): the dense and the flash path give the same output and input gradient."""
    runs = mha_dense_and_flash(rng.standard_normal((2, 11, 8)), 8, 2, seed=0, window=4, block_size=3)
    results = [(out, x_grad) for out, x_grad, _ in runs]
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_window_errors(rng):
    """A window without is_causal, or not a positive int: ValueError naming it; a windowed layer called without
    is_causal raises too."""
    q = Tensor(backend.asarray(rng.standard_normal((1, 5, 4))))
    with pytest.raises(ValueError, match=r"window must be given with is_causal=True \(a sliding window is causal\), "
                                         r"got 3"):
        F.scaled_dot_product_attention(q, q, q, window=3)
    with pytest.raises(ValueError, match=r"window must be an int >= 1, got 0"):
        F.flash_attention(q, q, q, is_causal=True, window=0)
    with pytest.raises(TypeError, match=r"window must be an int >= 1, got 2.5"):
        MultiHeadAttention(8, 2, window=2.5)
    layer = MultiHeadAttention(4, 2, window=2)
    x = Tensor(backend.asarray(rng.standard_normal((1, 5, 4)).astype(np.float32)))
    with pytest.raises(ValueError, match=r"is_causal must be True for this layer's sliding window \(2\), which is "
                                         r"causal"):
        layer(x, x, x)
