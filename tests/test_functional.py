"""The public, checked functions of minattn/functional.py against independent NumPy computations.

masked_softmax with d2l's valid_lens (1-D: one length per sequence; 2-D: one per query; length 0 → zeros);
scaled_dot_product_attention with PyTorch's semantics (bool mask True = take part, float mask added, default scale
1/√E, is_causal = top-left lower triangle), need_weights, a fully masked query row, and its argument errors;
cross_entropy's (N, C, d1) layout and range check; log_softmax; dropout; embedding's id check.
"""
import math

import numpy as np
import pytest

from autograd import Tensor, backend, gradcheck, manual_seed
from minattn import functional as F
from tests import numpy_reference as ref
from tests.conftest import host, t64

TIGHT = dict(rtol=1e-12, atol=1e-12)


def backward_grads(out, tensors, cotangent):
    out.backward(backend.asarray(np.asarray(cotangent, dtype=np.float64)))
    return [host(t.grad) if t.grad is not None else np.zeros(t.shape) for t in tensors]


# ---------------------------------------------------------------------------------------------------------------------
# masked_softmax (d2l)
# ---------------------------------------------------------------------------------------------------------------------
def d2l_masked_softmax(scores, lens_for):
    """Softmax over the first ``lens_for(index)`` keys of each row; the other keys get 0 (a 0-length row: all 0)."""
    out = np.zeros_like(scores)
    for idx in np.ndindex(*scores.shape[:-1]):
        n = lens_for(idx)
        if n:
            e = np.exp(scores[idx][:n] - scores[idx][:n].max())
            out[idx][:n] = e / e.sum()
    return out


def test_masked_softmax_d2l_example_1d_valid_lens(rng):
    scores = rng.random((2, 2, 4))
    out = F.masked_softmax(t64(scores), [2, 3])
    lens = [2, 3]
    expected = d2l_masked_softmax(scores, lambda idx: lens[idx[0]])
    np.testing.assert_allclose(host(out), expected, **TIGHT)
    assert np.all(host(out)[0, :, 2:] == 0) and np.all(host(out)[1, :, 3:] == 0)


def test_masked_softmax_2d_valid_lens(rng):
    scores = rng.random((2, 2, 4))
    lens = np.array([[1, 3], [2, 4]])
    out = F.masked_softmax(t64(scores), backend.asarray(lens))
    expected = d2l_masked_softmax(scores, lambda idx: lens[idx[0], idx[1]])
    np.testing.assert_allclose(host(out), expected, **TIGHT)


def test_masked_softmax_4d_scores_broadcast_over_heads(rng):
    scores = rng.standard_normal((2, 3, 4, 5))           # (B, h, L, S)
    lens_1d, lens_2d = np.array([5, 2]), np.array([[1, 2, 3, 4], [5, 0, 2, 1]])
    out1 = F.masked_softmax(t64(scores), lens_1d)
    np.testing.assert_allclose(host(out1), d2l_masked_softmax(scores, lambda idx: lens_1d[idx[0]]), **TIGHT)
    out2 = F.masked_softmax(t64(scores), lens_2d)
    np.testing.assert_allclose(host(out2), d2l_masked_softmax(scores, lambda idx: lens_2d[idx[0], idx[2]]), **TIGHT)


def test_masked_softmax_zero_valid_len_gives_zeros_and_zero_gradient(rng):
    scores = t64(rng.standard_normal((2, 3, 4)))
    with ref.strict_floats():
        out = F.masked_softmax(scores, [0, 2])
        (grad,) = backward_grads(out, [scores], rng.standard_normal((2, 3, 4)))
    np.testing.assert_array_equal(host(out)[0], 0.0)
    np.testing.assert_array_equal(grad[0], 0.0)
    assert np.all(np.isfinite(host(out))) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(host(out)[1].sum(axis=-1), 1.0, **TIGHT)


def test_masked_softmax_without_valid_lens_is_softmax(rng):
    scores = rng.standard_normal((2, 3, 4))
    np.testing.assert_allclose(host(F.masked_softmax(t64(scores))), ref.softmax_rows(scores), **TIGHT)


def test_masked_softmax_gradcheck(rng):
    assert gradcheck(lambda s: F.masked_softmax(s, [3, 1]), [t64(rng.standard_normal((2, 3, 4)))])
    assert gradcheck(lambda s: F.masked_softmax(s, [[1, 4, 0], [2, 2, 3]]), [t64(rng.standard_normal((2, 3, 4)))])


@pytest.mark.parametrize("lens", [[-1, 2], [5, 2], [[1, 2], [3, 4]]])
def test_masked_softmax_bad_valid_lens_raise_value_error(rng, lens):
    with pytest.raises(ValueError):
        F.masked_softmax(t64(rng.standard_normal((2, 3, 4))), lens)


def test_masked_softmax_float_valid_lens_raise_type_error(rng):
    with pytest.raises(TypeError):
        F.masked_softmax(t64(rng.standard_normal((2, 3, 4))), np.array([1.0, 2.0]))


def test_masked_softmax_valid_lens_batch_mismatch_raises(rng):
    with pytest.raises(ValueError):
        F.masked_softmax(t64(rng.standard_normal((2, 3, 4))), [1, 2, 3])


# ---------------------------------------------------------------------------------------------------------------------
# scaled_dot_product_attention (PyTorch semantics)
# ---------------------------------------------------------------------------------------------------------------------
def _qkv(rng, batch=(2,), num_q=3, num_k=5, e=4, ev=3):
    return (rng.standard_normal(batch + (num_q, e)), rng.standard_normal(batch + (num_k, e)),
            rng.standard_normal(batch + (num_k, ev)))


def _bool_mask(rng, shape):
    mask = rng.random(shape) > 0.4
    mask[..., 0] = True
    return mask


SDPA_CASES = {
    "no mask": lambda rng: dict(),
    "bool mask (L, S)": lambda rng: dict(attn_mask=_bool_mask(rng, (3, 5))),
    "bool mask (B, 1, L, S) over heads": lambda rng: dict(attn_mask=_bool_mask(rng, (2, 1, 3, 5)), heads=True),
    "bool mask (S,)": lambda rng: dict(attn_mask=np.array([True, False, True, True, False])),
    "float mask": lambda rng: dict(attn_mask=rng.standard_normal((2, 3, 5))),
    "float mask with -inf": lambda rng: dict(attn_mask=np.where(_bool_mask(rng, (3, 5)), 0.25, -np.inf)),
    "causal, L < S": lambda rng: dict(is_causal=True),
    "causal, L > S": lambda rng: dict(is_causal=True, num_q=6, num_k=4),
    "custom scale": lambda rng: dict(scale=0.3),
}


def _sdpa_setup(rng, case):
    kw = SDPA_CASES[case](rng)
    batch = (2, 2) if kw.pop("heads", False) else (2,)
    q, k, v = _qkv(rng, batch, kw.pop("num_q", 3), kw.pop("num_k", 5))
    return q, k, v, kw


def _numpy_sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None):
    mask = bias = None
    if attn_mask is not None:
        if attn_mask.dtype == bool:
            mask = attn_mask
        else:
            bias = attn_mask
    return ref.attention(q, k, v, mask=mask, bias=bias, scale=scale, is_causal=is_causal)


def _to_device_kw(kw):
    return {name: (backend.asarray(val) if isinstance(val, np.ndarray) else val) for name, val in kw.items()}


@pytest.mark.parametrize("case", list(SDPA_CASES))
def test_sdpa_matches_numpy_pytorch_semantics(rng, case):
    q, k, v, kw = _sdpa_setup(rng, case)
    with ref.strict_floats():
        out, weights = F.scaled_dot_product_attention(t64(q), t64(k), t64(v), need_weights=True,
                                                      **_to_device_kw(kw))
    expected, expected_weights = _numpy_sdpa(q, k, v, **kw)
    np.testing.assert_allclose(host(out), expected, **TIGHT)
    np.testing.assert_allclose(host(weights), expected_weights, **TIGHT)
    assert not weights.requires_grad


@pytest.mark.parametrize("case", list(SDPA_CASES))
def test_sdpa_gradcheck(rng, case):
    q, k, v, kw = _sdpa_setup(rng, case)
    dkw = _to_device_kw(kw)
    with ref.strict_floats():
        assert gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, **dkw), [t64(q), t64(k), t64(v)])


def test_sdpa_default_scale_is_one_over_sqrt_e(rng):
    q, k, v = _qkv(rng, e=9)
    out = F.scaled_dot_product_attention(t64(q), t64(k), t64(v))
    expected, _ = ref.attention(q, k, v, scale=1 / 3)
    np.testing.assert_allclose(host(out), expected, **TIGHT)


def test_sdpa_causal_is_top_left_lower_triangle(rng):
    q, k, v = _qkv(rng, num_q=3, num_k=5)
    _, weights = F.scaled_dot_product_attention(t64(q), t64(k), t64(v), is_causal=True, need_weights=True)
    w = host(weights)
    for i in range(3):
        assert np.all(w[:, i, i + 1:] == 0) and np.all(w[:, i, : i + 1] > 0)
    np.testing.assert_allclose(w[:, 0, 0], 1.0, **TIGHT)   # the first query sees only the first key


def test_sdpa_batch_broadcasting(rng):
    q = rng.standard_normal((2, 3, 4, 5))
    k, v = rng.standard_normal((1, 3, 6, 5)), rng.standard_normal((1, 3, 6, 5))
    out = F.scaled_dot_product_attention(t64(q), t64(k), t64(v))
    assert out.shape == (2, 3, 4, 5)
    expected, _ = ref.attention(q, k, v)
    np.testing.assert_allclose(host(out), expected, **TIGHT)


def test_sdpa_fully_masked_query_row(rng):
    q, k, v = _qkv(rng)
    mask = _bool_mask(rng, (2, 3, 5))
    mask[0, 1] = False                                     # query 1 of sequence 0 sees no key
    qt, kt, vt = t64(q), t64(k), t64(v)
    with ref.strict_floats():
        out, weights = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=backend.asarray(mask), need_weights=True)
        g = np.zeros(out.shape)
        g[0, 1] = rng.standard_normal(3)                   # a gradient only on that row
        grads = backward_grads(out, [qt, kt, vt], g)
    np.testing.assert_array_equal(host(out)[0, 1], 0.0)
    np.testing.assert_array_equal(host(weights)[0, 1], 0.0)
    for grad in grads:
        np.testing.assert_array_equal(grad, 0.0)
    expected, _ = ref.attention(q, k, v, mask=mask)
    np.testing.assert_allclose(host(out), expected, **TIGHT)


def test_sdpa_dropout_zero_is_deterministic_and_full_dropout_path_is_finite(rng):
    q, k, v = _qkv(rng)
    manual_seed(0)
    out = F.scaled_dot_product_attention(t64(q), t64(k), t64(v), dropout_p=0.5)
    assert np.all(np.isfinite(host(out)))
    expected, _ = ref.attention(q, k, v)
    assert not np.allclose(host(out), expected)             # dropout applied whenever dropout_p > 0 (PyTorch)
    out0 = F.scaled_dot_product_attention(t64(q), t64(k), t64(v), dropout_p=0.0)
    np.testing.assert_allclose(host(out0), expected, **TIGHT)


def test_sdpa_errors(rng):
    q, k, v = (t64(a) for a in _qkv(rng))
    with pytest.raises(ValueError):
        F.scaled_dot_product_attention(q, k, v, attn_mask=backend.asarray(np.ones((3, 5), bool)), is_causal=True)
    with pytest.raises(ValueError):                       # last axes do not broadcast to (L, S) = (3, 5)
        F.scaled_dot_product_attention(q, k, v, attn_mask=backend.asarray(np.ones((3, 4), bool)))
    with pytest.raises(ValueError):
        F.scaled_dot_product_attention(q, k, v, attn_mask=backend.asarray(np.ones((4, 5), bool)))
    with pytest.raises(ValueError):                       # batch axis 3 does not broadcast to 2
        F.scaled_dot_product_attention(q, k, v, attn_mask=backend.asarray(np.ones((3, 3, 5), bool)))
    with pytest.raises(TypeError):
        F.scaled_dot_product_attention(q, k, v, attn_mask=backend.asarray(np.ones((3, 5), np.int64)))
    with pytest.raises(TypeError):                        # float mask of another dtype: no silent cast
        F.scaled_dot_product_attention(q, k, v, attn_mask=backend.asarray(np.zeros((3, 5), np.float32)))
    with pytest.raises(ValueError):                       # E mismatch
        F.scaled_dot_product_attention(q, t64(rng.standard_normal((2, 5, 3))), v)
    with pytest.raises(ValueError):                       # S mismatch between key and value
        F.scaled_dot_product_attention(q, k, t64(rng.standard_normal((2, 4, 3))))
    with pytest.raises(TypeError):                        # dtype mismatch
        F.scaled_dot_product_attention(q, Tensor(rng.standard_normal((2, 5, 4)), dtype="float32"), v)
    with pytest.raises(TypeError):                        # not a Tensor
        F.scaled_dot_product_attention(q, backend.asarray(rng.standard_normal((2, 5, 4))), v)


# ---------------------------------------------------------------------------------------------------------------------
# cross_entropy, log_softmax, dropout, embedding
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_nc_d1_layout_equals_flat(rng, reduction, label_smoothing):
    n, c, d1 = 3, 4, 5
    logits = rng.standard_normal((n, c, d1))
    target = rng.integers(0, c, (n, d1))
    target[0, 2] = target[2, 4] = -100
    kw = dict(reduction=reduction, label_smoothing=label_smoothing)
    z3 = t64(logits)
    out3 = F.cross_entropy(z3, backend.asarray(target), **kw)
    flat_logits = logits.transpose(0, 2, 1).reshape(-1, c)                   # (N·d1, C)
    z2 = t64(flat_logits)
    out2 = F.cross_entropy(z2, backend.asarray(target.reshape(-1)), **kw)
    expected, _ = ref.cross_entropy(flat_logits, target.reshape(-1), **kw)
    if reduction == "none":
        assert out3.shape == (n, d1)
        np.testing.assert_allclose(host(out3), expected.reshape(n, d1), **TIGHT)
        np.testing.assert_allclose(host(out2), expected, **TIGHT)
        w = rng.standard_normal((n, d1))
        (g3,) = backward_grads(out3, [z3], w)
        (g2,) = backward_grads(out2, [z2], w.reshape(-1))
    else:
        assert out3.shape == ()
        np.testing.assert_allclose(host(out3), expected, **TIGHT)
        np.testing.assert_allclose(host(out2), expected, **TIGHT)
        (g3,) = backward_grads(out3, [z3], 1.0)
        (g2,) = backward_grads(out2, [z2], 1.0)
    np.testing.assert_allclose(g3, g2.reshape(n, d1, c).transpose(0, 2, 1), **TIGHT)


def test_cross_entropy_nc_d1_gradcheck(rng):
    target = backend.asarray(np.array([[0, 2, -100], [1, 1, 3]]))
    assert gradcheck(lambda z: F.cross_entropy(z, target, label_smoothing=0.1), [t64(rng.standard_normal((2, 4, 3)))])


@pytest.mark.parametrize("bad", [4, -1, 7])
def test_cross_entropy_target_out_of_range(rng, bad):
    target = np.array([0, bad, 2])
    with pytest.raises(ValueError):
        F.cross_entropy(t64(rng.standard_normal((3, 4))), backend.asarray(target))


def test_cross_entropy_other_errors(rng):
    z = t64(rng.standard_normal((3, 4)))
    with pytest.raises(TypeError):
        F.cross_entropy(z, backend.asarray(np.array([0.0, 1.0, 2.0])))
    with pytest.raises(ValueError):
        F.cross_entropy(z, backend.asarray(np.array([0, 1])))
    with pytest.raises(ValueError):
        F.cross_entropy(z, backend.asarray(np.array([0, 1, 2])), reduction="avg")
    with pytest.raises(ValueError):
        F.cross_entropy(z, backend.asarray(np.array([0, 1, 2])), label_smoothing=1.5)


def test_log_softmax_equals_log_of_softmax(rng):
    x = rng.standard_normal((3, 4, 5))
    np.testing.assert_allclose(host(F.log_softmax(t64(x))), np.log(ref.softmax_rows(x)), **TIGHT)
    np.testing.assert_allclose(host(F.log_softmax(t64(x), axis=1)),
                               np.log(ref.softmax_rows(np.moveaxis(x, 1, -1))).transpose(0, 2, 1), **TIGHT)
    assert gradcheck(lambda t: F.log_softmax(t), [t64(x)])


def test_log_softmax_large_logits_finite():
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4 + 1.0, -1e4], [1e4, 1e4, 1e4]])
    xt = t64(x)
    with ref.strict_floats():
        out = F.log_softmax(xt)
        (grad,) = backward_grads(out, [xt], np.ones(x.shape))
    assert np.all(np.isfinite(host(out))) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(host(out), ref.log_softmax_rows(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(out)[0], [0.0, -2e4, -1e4], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(out)[2], -math.log(3), **TIGHT)


def test_dropout_eval_is_identity(rng):
    x = t64(rng.standard_normal((4, 5)))
    out = F.dropout(x, p=0.5, training=False)
    np.testing.assert_array_equal(host(out), host(x))
    np.testing.assert_array_equal(host(F.dropout(x, p=0.0, training=True)), host(x))


def test_dropout_training_zeroes_about_p_and_scales(rng):
    manual_seed(3)
    p = 0.3
    x = Tensor(backend.asarray(np.ones((200, 200), dtype=np.float32)), requires_grad=True)
    out = F.dropout(x, p=p, training=True)
    values = host(out)
    assert values.dtype == np.float32
    dropped = values == 0
    assert abs(dropped.mean() - p) < 0.01                   # 40000 draws: 4 standard deviations
    np.testing.assert_allclose(values[~dropped], np.float32(1 / (1 - p)), rtol=1e-6)
    out.sum().backward()
    np.testing.assert_array_equal(host(x.grad), values)      # d out / d x is the same mask (x = 1)


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_dropout_bad_p(rng, p):
    with pytest.raises(ValueError):
        F.dropout(t64(rng.standard_normal(3)), p=p)


def test_embedding_lookup_and_errors(rng):
    table = rng.standard_normal((5, 3))
    w = t64(table)
    ids = np.array([[0, 4, 4], [2, 1, 0]])
    out = F.embedding(backend.asarray(ids), w)
    np.testing.assert_array_equal(host(out), table[ids])
    out.backward(backend.asarray(np.ones((2, 3, 3))))
    counts = np.bincount(ids.ravel(), minlength=5)[:, None] * np.ones((1, 3))
    np.testing.assert_array_equal(host(w.grad), counts)     # a repeated id receives the sum of its gradients
    for bad in ([0, 5], [-1, 2]):
        with pytest.raises(ValueError):
            F.embedding(backend.asarray(np.array(bad)), w)
    with pytest.raises(TypeError):
        F.embedding(backend.asarray(np.array([0.0, 1.0])), w)


def test_linear_and_layer_norm_argument_checks(rng):
    x = t64(rng.standard_normal((2, 3)))
    with pytest.raises(ValueError):
        F.linear(x, t64(rng.standard_normal((4, 5))))
    with pytest.raises(TypeError):
        F.linear(x, Tensor(rng.standard_normal((4, 3)), dtype="float32"))
    with pytest.raises(ValueError):
        F.layer_norm(x, t64(np.ones(4)), t64(np.zeros(4)))


# --- checks added after review: each bad argument is refused before anything is computed ---------------------------
def test_linear_rejects_a_misshaped_bias_or_weight():
    x = Tensor(np.ones((2, 3), dtype=np.float32))
    w = Tensor(np.ones((4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="bias must be \\(4,\\)"):
        F.linear(x, w, Tensor(np.ones(1, dtype=np.float32)))
    with pytest.raises(ValueError, match="weight must be"):
        F.linear(x, Tensor(np.ones(3, dtype=np.float32)))
    with pytest.raises(TypeError, match="bias must be of weight's dtype float32 .*dtype float64"):
        F.linear(x, w, Tensor(np.ones(4)))


def test_layer_norm_checks_weight_and_bias_and_allows_none():
    x = np.random.default_rng(0).standard_normal((2, 4))
    with pytest.raises(TypeError, match="bias"):
        F.layer_norm(Tensor(x.astype(np.float32)), Tensor(np.ones(4, dtype=np.float32)), Tensor(np.zeros(4)))
    with pytest.raises(ValueError, match="bias must be \\(4,\\) to match the weight, got Tensor of shape \\(1,\\)"):
        F.layer_norm(t64(x), t64(np.ones(4)), t64(np.zeros(1)))
    plain = F.layer_norm(t64(x))                                  # γ = 1, β = 0
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(host(plain), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_sdpa_rejects_a_bad_dropout_p(p):
    q = t64(np.ones((1, 2, 3)))
    with pytest.raises(ValueError, match="dropout_p"):
        F.scaled_dot_product_attention(q, q, q, dropout_p=p)


def test_sdpa_refuses_a_mask_that_would_silently_get_no_gradient():
    q = t64(np.ones((1, 2, 3)))
    with pytest.raises(TypeError, match="no gradient"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=t64(np.zeros((2, 2))))


def test_softmax_over_an_empty_axis_is_empty():
    out = F.softmax(t64(np.zeros((2, 0))))
    assert host(out).shape == (2, 0)


def test_returned_weights_cannot_be_edited_into_the_gradient():
    rng = np.random.default_rng(0)
    q, k, v = (t64(rng.standard_normal((1, 3, 4))) for _ in range(3))
    out, weights = F.scaled_dot_product_attention(q, k, v, need_weights=True)
    if backend.xp is np:      # NumPy: a read-only view of the very array the backward reads
        with pytest.raises(ValueError, match="read-only"):
            weights.data[...] = 0.0
    else:                     # CuPy cannot mark an array read-only: a copy, so the edit stays in the copy
        weights.data[...] = 0.0
    out.sum().backward()
    q2, k2, v2 = (t64(host(t)) for t in (q, k, v))
    F.scaled_dot_product_attention(q2, k2, v2).sum().backward()
    np.testing.assert_array_equal(host(q.grad), host(q2.grad))
