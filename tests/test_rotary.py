"""Rotary position embedding (RoPE): functional.rotary_embedding, RotaryEmbeddingFunction,
MultiHeadAttention(rope=True).

  (a) float64 gradcheck, and fused = composed from primitives, for both layouts and an offset;
  (b) the defining identity: the score of rotated q at position m and rotated k at position n depends only on n − m
      (to 1e-12); rotation keeps norms; the backward is the inverse rotation;
  (c) an independent transcription: Llama's complex-number form for the interleaved layout; the two layouts are one
      channel permutation apart; an offset is the same as the positions further along;
  (d) MultiHeadAttention(rope=True) = the same layer computed by hand with rotary_embedding on q and k;
  (e) errors.
"""
import numpy as np
import pytest

from autograd import Tensor, backend, gradcheck
from minattn import MultiHeadAttention, manual_seed
from minattn import functional as F
from minattn.fused.rotary import RotaryEmbeddingFunction, rotary_reference
from tests.conftest import host, t64

TIGHT = dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
@pytest.mark.parametrize("offset", [0, 5])
def test_gradcheck_and_fused_equals_composed(rng, interleaved, offset):
    """gradcheck of the hand-written backward (the inverse rotation); value and gradient equal the composition from
    getitem, mul, sub, add and concatenate / stack."""
    x = rng.standard_normal((2, 3, 4, 6))
    fused = lambda t: RotaryEmbeddingFunction.apply(t, offset=offset, interleaved=interleaved)       # noqa: E731
    assert gradcheck(fused, [t64(x)])
    g = backend.asarray(rng.standard_normal(x.shape))
    a, b = t64(x), t64(x)
    out_f, out_c = fused(a), rotary_reference(b, offset=offset, interleaved=interleaved)
    out_f.backward(g)
    out_c.backward(g)
    np.testing.assert_allclose(host(out_f), host(out_c), **TIGHT)
    np.testing.assert_allclose(host(a.grad), host(b.grad), **TIGHT)


@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
def test_scores_depend_only_on_the_offset_between_positions(rng, interleaved):
    """The same q at every position and the same k at every position: after RoPE, q_m · k_n is a function of n − m
    alone (s[m, n] = s[m + 1, n + 1]), while without it all scores are equal; norms are kept."""
    length, dim = 12, 8
    q = np.tile(rng.standard_normal(dim), (length, 1))
    k = np.tile(rng.standard_normal(dim), (length, 1))
    rq = host(F.rotary_embedding(t64(q, False), interleaved=interleaved))
    rk = host(F.rotary_embedding(t64(k, False), interleaved=interleaved))
    s = rq @ rk.T                                                                 # (L, L)
    np.testing.assert_allclose(s[1:, 1:], s[:-1, :-1], **TIGHT)
    assert np.ptp(np.diagonal(s, 3)) < 1e-12 and np.ptp(s[0]) > 1e-3       # constant along a diagonal, not a row
    np.testing.assert_allclose(np.linalg.norm(rq, axis=-1), np.linalg.norm(q, axis=-1), **TIGHT)


def test_backward_is_the_inverse_rotation(rng):
    """Pushing a gradient equal to the output back gives the input: dx = R_mᵀ (R_m x) = x."""
    x = rng.standard_normal((3, 7, 4))
    t = t64(x)
    y = RotaryEmbeddingFunction.apply(t, offset=2)
    y.backward(y.data)
    np.testing.assert_allclose(host(t.grad), x, **TIGHT)


def test_interleaved_matches_llamas_complex_form(rng):
    """Llama's apply_rotary_emb: view the pairs (x_2i, x_2i+1) as complex numbers and multiply by exp(i m θ_i)."""
    x = rng.standard_normal((2, 9, 8))
    theta = 10000.0 ** (-np.arange(0, 8, 2) / 8)                                 # (4,)
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * np.arange(9)[:, None] * theta)
    expected = np.stack([z.real, z.imag], axis=-1).reshape(x.shape)
    np.testing.assert_allclose(host(F.rotary_embedding(t64(x, False), interleaved=True)), expected, **TIGHT)


def test_layouts_are_one_permutation_apart_and_offset_is_a_shift(rng):
    """interleaved(x) = P⁻¹ rotate_half(P x), P = even channels then odd ones; rotary_embedding(x, offset=o) equals
    the rows o … of rotary_embedding on o more positions before them."""
    x = rng.standard_normal((5, 8))
    perm = np.r_[0:8:2, 1:8:2]                                                   # P: evens first
    half = host(F.rotary_embedding(t64(x[:, perm], False)))
    np.testing.assert_allclose(host(F.rotary_embedding(t64(x, False), interleaved=True)),
                               half[:, np.argsort(perm)], **TIGHT)
    longer = np.concatenate([rng.standard_normal((3, 8)), x])
    np.testing.assert_allclose(host(F.rotary_embedding(t64(x, False), offset=3)),
                               host(F.rotary_embedding(t64(longer, False)))[3:], **TIGHT)


def test_multi_head_attention_with_rope_equals_the_layer_by_hand(rng):
    """MultiHeadAttention(rope=True) = W_q, W_k, W_v, split into heads, RoPE on q and k, attention, W_o — by hand;
    its float32 output stays float32."""
    manual_seed(0)
    layer = MultiHeadAttention(8, 2, rope=True, dtype="float64")
    x = t64(rng.standard_normal((2, 6, 8)), requires_grad=False)
    def heads(t):
        return t.reshape(2, 6, 2, 4).permute(0, 2, 1, 3)                          # (B, h, L, d_h)
    q = F.rotary_embedding(heads(layer.W_q(x)))
    k = F.rotary_embedding(heads(layer.W_k(x)))
    out = F.scaled_dot_product_attention(q, k, heads(layer.W_v(x)))
    expected = layer.W_o(out.permute(0, 2, 1, 3).reshape(2, 6, 8))
    np.testing.assert_allclose(host(layer(x, x, x)), host(expected), **TIGHT)
    manual_seed(0)
    layer32 = MultiHeadAttention(8, 2, rope=True)
    x32 = Tensor(backend.asarray(rng.standard_normal((2, 6, 8)).astype(np.float32)))
    assert layer32(x32, x32, x32).dtype == np.float32


@pytest.mark.parametrize("call, error, message", [
    (lambda x: F.rotary_embedding(x[..., :5]), ValueError, r"d even, got Tensor of shape \(2, 4, 5\)"),
    (lambda x: F.rotary_embedding(x, offset=-1), ValueError, r"offset must be an int >= 0, got -1"),
    (lambda x: F.rotary_embedding(x, offset=1.5), TypeError, r"offset must be an int >= 0, got 1.5"),
    (lambda x: F.rotary_embedding(x, base=0.0), ValueError, r"base must be a finite number > 0, got 0.0"),
    (lambda x: MultiHeadAttention(6, 2, rope=True), ValueError, r"head dimension embed_dim / num_heads is even for "
                                                                r"rope .* = 3\), got 2"),
])
def test_errors(rng, call, error, message):
    """ValueError naming the argument and the value received (TypeError for a float where an int is meant)."""
    with pytest.raises(error, match=message):
        call(Tensor(backend.asarray(rng.standard_normal((2, 4, 6)))))
