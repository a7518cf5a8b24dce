"""Property-based checks (hypothesis) where shapes and masks vary: random sizes, random boolean masks (fully masked
rows included) and random valid_lens.

For scaled dot-product attention: the fused backward equals autograd through the composed primitives, to 1e-12 in
float64, for every drawn case; outputs and gradients are finite; a fully masked query row gives output 0. For
masked_softmax: every row sums to 1, or to 0 when its valid length is 0; masked keys get weight exactly 0.
"""
import numpy as np
from hypothesis import given, settings, strategies as st

from autograd import Tensor
from minattn import functional as F
from minattn.fused.attention import ScaledDotProductAttentionFunction, attention_reference
from tests.conftest import host, t64

SETTINGS = settings(max_examples=30, deadline=None)


@st.composite
def attention_case(draw):
    batch, length_q, length_k = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    e, ev = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    mask = rng.random((batch, length_q, length_k)) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))   # True = masked
    if draw(st.booleans()):
        mask[0, 0, :] = True                                                              # one fully masked row
    arrays = [rng.standard_normal((batch, length_q, e)), rng.standard_normal((batch, length_k, e)),
              rng.standard_normal((batch, length_k, ev))]
    return arrays, ~mask


@SETTINGS
@given(attention_case())
def test_fused_attention_equals_composed_on_random_shapes_and_masks(case):
    arrays, takes_part = case
    fused_in = [t64(a) for a in arrays]
    composed_in = [t64(a) for a in arrays]
    scale = 1 / np.sqrt(arrays[0].shape[-1])
    out_f = ScaledDotProductAttentionFunction.apply(*fused_in, mask=takes_part, scale=scale)
    out_c = attention_reference(*composed_in, mask=takes_part, scale=scale)
    cotangent = np.random.default_rng(0).standard_normal(host(out_f).shape)
    out_f.backward(cotangent)
    out_c.backward(cotangent)
    np.testing.assert_allclose(host(out_f), host(out_c), rtol=1e-12, atol=1e-12)
    for a, b in zip(fused_in, composed_in):
        assert np.isfinite(host(a.grad)).all()
        np.testing.assert_allclose(host(a.grad), host(b.grad), rtol=1e-12, atol=1e-12)
    dead = ~takes_part.any(-1)                                                            # (B, L) rows with no key
    np.testing.assert_array_equal(host(out_f)[dead], 0.0)


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), st.booleans(), st.integers(0, 2**31 - 1))
def test_masked_softmax_rows_sum_to_one_or_zero(batch, length_q, length_k, per_query, seed):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((batch, length_q, length_k)) * 10
    shape = (batch, length_q) if per_query else (batch,)
    valid_lens = rng.integers(0, length_k + 1, size=shape)
    weights = host(F.masked_softmax(Tensor(scores), valid_lens))
    lens = valid_lens[:, None] if not per_query else valid_lens                         # (B, 1|L)
    lens = np.broadcast_to(lens, (batch, length_q))
    np.testing.assert_allclose(weights.sum(-1), (lens > 0).astype(float), rtol=1e-12, atol=1e-12)
    masked = np.arange(length_k)[None, None, :] >= lens[:, :, None]
    np.testing.assert_array_equal(weights[masked], 0.0)
