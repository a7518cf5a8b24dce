"""ALiBi (Press et al. 2022): the slopes, the bias, and MultiHeadAttention(alibi=True).

  (a) ``alibi_slopes`` = the paper's reference code (transcribed below) for powers of two and other head counts;
  (b) ``alibi_bias`` = −m_h |i − j|; under a causal mask the paper's −m_h (i − j);
  (c) MultiHeadAttention(alibi=True) = the same layer by hand with the bias as a float attn_mask (dense and flash,
      causal, GQA); errors.
"""
import math

import numpy as np
import pytest

from autograd import backend
from minattn import MultiHeadAttention, manual_seed, masks
from minattn import functional as F
from tests.conftest import host, t64

TIGHT = dict(rtol=1e-12, atol=1e-12)


def paper_slopes(n):
    """The reference code of Press et al. (github.com/ofirpress/attention_with_linear_biases), written out."""
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + paper_slopes(2 * closest)[0::2][:n - closest]


@pytest.mark.parametrize("heads", [1, 2, 4, 6, 8, 12, 16, 20])
def test_slopes_are_the_papers(heads):
    """8 heads: 1/2, 1/4, …, 1/256; other counts by the paper's rule."""
    np.testing.assert_allclose(F.alibi_slopes(heads), paper_slopes(heads), rtol=1e-15)
    if heads == 8:
        np.testing.assert_array_equal(F.alibi_slopes(8), 0.5 ** np.arange(1, 9))


def test_bias_is_minus_slope_times_distance():
    """−m_h |i − j| for queries i < 3 and keys j < 5; causally masked it is the paper's −m_h (i − j)."""
    bias = host(masks.alibi_bias(2, 3, 5, np.float64))                     # (2, 3, 5)
    distance = np.abs(np.arange(3)[:, None] - np.arange(5))
    np.testing.assert_array_equal(bias, -np.array([0.0625, 0.00390625])[:, None, None] * distance)
    lower = np.tril(np.ones((3, 5), dtype=bool))
    np.testing.assert_array_equal(bias[:, lower], (-np.array([0.0625, 0.00390625])[:, None]
                                                   * (np.arange(3)[:, None] - np.arange(5))[lower]))


@pytest.mark.parametrize("attn_impl, num_kv_heads", [("dense", None), ("flash", None), ("dense", 2)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_multi_head_attention_with_alibi_equals_the_layer_by_hand(rng, attn_impl, num_kv_heads, is_causal):
    """MultiHeadAttention(alibi=True) = W_q, W_k, W_v, heads, attention with −m_h |i − j| added, W_o."""
    manual_seed(0)
    layer = MultiHeadAttention(8, 4, alibi=True, dtype="float64", attn_impl=attn_impl, block_size=3,
                               num_kv_heads=num_kv_heads)
    x = t64(rng.standard_normal((2, 7, 8)), requires_grad=False)
    kv = layer.num_kv_heads

    def heads(t, n):
        return t.reshape(2, 7, n, 8 // 4).permute(0, 2, 1, 3)                  # (B, n, L, d_h)

    bias = masks.alibi_bias(4, 7, 7, np.float64)                                # (h, L, S)
    if is_causal:
        bias = np.where(np.tril(np.ones((7, 7), dtype=bool)), bias, -np.inf)
    out = F.scaled_dot_product_attention(heads(layer.W_q(x), 4), heads(layer.W_k(x), kv), heads(layer.W_v(x), kv),
                                         attn_mask=backend.asarray(bias), enable_gqa=kv != 4)
    expected = layer.W_o(out.permute(0, 2, 1, 3).reshape(2, 7, 8))
    np.testing.assert_allclose(host(layer(x, x, x, is_causal=is_causal)), host(expected), **TIGHT)


def test_alibi_errors():
    """alibi_slopes refuses a head count that is not a positive int (TypeError for a float or a bool)."""
    for bad, error in ((0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(error, match=r"alibi_slopes: num_heads must be an int >= 1"):
            F.alibi_slopes(bad)
