"""Additive (Bahdanau) attention: the fused core (minattn/fused/additive.py) and the layer (minattn/additive.py).

The core, AdditiveAttentionFunction, checked as every fused op is (tests/test_fused.py), in float64:
  (a) gradcheck of its hand-written backward against central differences, with masks that broadcast, a fully
      masked query row, a float bias, a fixed dropout multiplier and broadcast batch axes;
  (b) fused = composed: forward values and all four input gradients equal those of additive_attention_reference
      (engine primitives) to 1e-12;
  (c) forward values equal an independent NumPy computation, and the gradients equal the backward formulas of the
      docstring evaluated in NumPy with the softmax Jacobian written out.
The layer, AdditiveAttention: d2l §11.3.2's example (queries (2, 1, 20), keys (2, 10, 2), values (2, 10, 4),
valid_lens [2, 6]), equality with NumPy for every way of masking, a gradcheck w.r.t. inputs and parameters,
dropout only in training, and clear errors for mismatched sizes.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from autograd import Tensor, backend, gradcheck, manual_seed
from minattn import AdditiveAttention
from minattn.fused.additive import AdditiveAttentionFunction, additive_attention_reference
from tests import numpy_reference as ref
from tests.conftest import host, t64

TIGHT = dict(rtol=1e-12, atol=1e-12)


def dev(a):
    """A NumPy array moved to the backend (masks, biases, dropout multipliers, valid_lens); None stays None."""
    return None if a is None else backend.asarray(a)


def numpy_additive(qp, kp, w_v, v, mask=None, bias=None, dropout_mask=None):
    """Additive attention in NumPy, pair by pair: A_ij = w_v · tanh(Qp_i + Kp_j); returns (output, weights)."""
    batch = np.broadcast_shapes(qp.shape[:-2], kp.shape[:-2])
    qp = np.broadcast_to(qp, batch + qp.shape[-2:])
    kp = np.broadcast_to(kp, batch + kp.shape[-2:])
    scores = np.zeros(batch + (qp.shape[-2], kp.shape[-2]))
    for idx in np.ndindex(*batch):
        for i in range(qp.shape[-2]):
            for j in range(kp.shape[-2]):
                scores[idx + (i, j)] = w_v @ np.tanh(qp[idx + (i,)] + kp[idx + (j,)])
    if bias is not None:
        scores = scores + bias
    weights = ref.softmax_rows(scores, mask)
    used = weights * dropout_mask if dropout_mask is not None else weights
    return np.matmul(used, v), weights


def _row_mask(shape, rng):
    mask = rng.random(shape) > 0.4
    mask[..., 0] = True          # every row keeps at least one key (fully masked rows are their own cases)
    return mask


def _case(name, rng):
    """(qp, kp, w_v, v, mask, bias, dropout_mask) for a named case; host NumPy arrays."""
    qp, kp = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    w_v, v = rng.standard_normal(4), rng.standard_normal((2, 5, 2))
    mask = bias = dropout_mask = None
    if name == "plain":
        pass
    elif name == "bool mask (B, 1, S), as valid_lens":
        mask = np.arange(5)[None, None, :] < np.array([2, 4])[:, None, None]
    elif name == "bool mask (L, S)":
        mask = _row_mask((3, 5), rng)
    elif name == "fully masked query row":
        mask = _row_mask((2, 3, 5), rng)
        mask[1, 2] = False
    elif name == "float bias":
        bias = rng.standard_normal((2, 3, 5))
    elif name == "mask, dropout mask and a fully masked row":
        mask = _row_mask((2, 3, 5), rng)
        mask[0, 1] = False
        dropout_mask = (rng.random((2, 3, 5)) >= 0.3) / 0.7
    elif name == "batch broadcast (qp batch 1)":
        qp = rng.standard_normal((1, 3, 4))
        mask = _row_mask((2, 1, 5), rng)
    elif name == "heads axis (B, h, L, H), Ev != H":
        qp, kp = rng.standard_normal((2, 2, 3, 3)), rng.standard_normal((2, 2, 4, 3))
        w_v, v = rng.standard_normal(3), rng.standard_normal((2, 2, 4, 5))
        mask = _row_mask((2, 1, 3, 4), rng)
    elif name == "L = 1, S = 1, H = 1":
        qp, kp, w_v, v = (rng.standard_normal(s) for s in ((2, 1, 1), (2, 1, 1), (1,), (2, 1, 3)))
    elif name == "saturated tanh":
        qp, kp = 4 * qp, 4 * kp
    else:
        raise KeyError(name)
    return qp, kp, w_v, v, mask, bias, dropout_mask


CASES = ["plain", "bool mask (B, 1, S), as valid_lens", "bool mask (L, S)", "fully masked query row", "float bias",
         "mask, dropout mask and a fully masked row", "batch broadcast (qp batch 1)",
         "heads axis (B, h, L, H), Ev != H", "L = 1, S = 1, H = 1", "saturated tanh"]


def _fns(mask, bias, dropout_mask):
    kw = dict(mask=dev(mask), bias=dev(bias), dropout_mask=dev(dropout_mask))
    return (lambda *t: AdditiveAttentionFunction.apply(*t, **kw),
            lambda *t: additive_attention_reference(*t, **kw))


def run(fn, arrays, cotangent):
    """fn on fresh float64 tensors of ``arrays``; backward with ``cotangent``. Returns (output, [grads])."""
    tensors = [t64(a) for a in arrays]
    out = fn(*tensors)
    out.backward(dev(np.asarray(cotangent, dtype=np.float64)))
    return host(out), [host(t.grad) for t in tensors]


# ---------------------------------------------------------------------------------------------------------------------
# The fused core
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_additive_gradcheck(rng, case):
    qp, kp, w_v, v, mask, bias, dropout_mask = _case(case, rng)
    fused, _ = _fns(mask, bias, dropout_mask)
    with ref.strict_floats():
        assert gradcheck(fused, [t64(qp), t64(kp), t64(w_v), t64(v)])


@pytest.mark.parametrize("case", CASES)
def test_additive_fused_equals_composed_and_numpy(rng, case):
    qp, kp, w_v, v, mask, bias, dropout_mask = _case(case, rng)
    fused, composed = _fns(mask, bias, dropout_mask)
    arrays = [qp, kp, w_v, v]
    with ref.strict_floats():
        shape = fused(*[t64(a) for a in arrays]).shape
        cotangent = rng.standard_normal(shape)
        out_f, grads_f = run(fused, arrays, cotangent)
        out_c, grads_c = run(composed, arrays, cotangent)
    np.testing.assert_allclose(out_f, out_c, **TIGHT)
    for i, (gf, gc, a) in enumerate(zip(grads_f, grads_c, arrays)):
        assert gf.shape == a.shape
        np.testing.assert_allclose(gf, gc, **TIGHT, err_msg=f"gradient of input {i}")
    expected, _ = numpy_additive(qp, kp, w_v, v, mask, bias, dropout_mask)
    np.testing.assert_allclose(out_f, expected, **TIGHT)


def test_additive_gradients_against_numpy_formulas(rng):
    """dV = Pᵀ dO; dA from the softmax Jacobian; dw_v = Σ dA F; dZ = dA w_v (1 − F²); dQp = Σ_j dZ; dKp = Σ_i dZ."""
    qp, kp, w_v, v = (rng.standard_normal(shape) for shape in ((3, 4), (5, 4), (4,), (5, 2)))
    g = rng.standard_normal((3, 2))
    _, (dqp, dkp, dw_v, dv) = run(lambda *t: AdditiveAttentionFunction.apply(*t), [qp, kp, w_v, v], g)
    f = np.tanh(qp[:, None, :] + kp[None, :, :])                                  # (L, S, H)
    _, p = numpy_additive(qp, kp, w_v, v)                                          # (L, S)
    dp = g @ v.T
    da = np.stack([(np.diag(p[i]) - np.outer(p[i], p[i])).T @ dp[i] for i in range(3)])
    dz = da[:, :, None] * w_v * (1 - f ** 2)
    np.testing.assert_allclose(dv, p.T @ g, **TIGHT)
    np.testing.assert_allclose(dw_v, np.einsum("ij,ijh->h", da, f), **TIGHT)
    np.testing.assert_allclose(dqp, dz.sum(axis=1), **TIGHT)
    np.testing.assert_allclose(dkp, dz.sum(axis=0), **TIGHT)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_fully_masked_row_gives_zero_output_and_zero_gradients(rng, impl):
    qp, kp, w_v, v, mask, bias, dropout_mask = _case("fully masked query row", rng)
    fn = _fns(mask, bias, dropout_mask)[0 if impl == "fused" else 1]
    g = np.zeros((2, 3, 2))
    g[1, 2] = rng.standard_normal(2)                       # only the fully masked row (1, 2) receives a gradient
    with ref.strict_floats():
        out, grads = run(fn, [qp, kp, w_v, v], g)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[1, 2], 0.0)
    for grad in grads:
        np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("wanted", [(0,), (1,), (2,), (3,), (0, 3)])
def test_gradients_when_only_some_inputs_require_grad(rng, wanted):
    qp, kp, w_v, v, mask, bias, dropout_mask = _case("mask, dropout mask and a fully masked row", rng)
    fused, _ = _fns(mask, bias, dropout_mask)
    arrays = [qp, kp, w_v, v]
    g = rng.standard_normal((2, 3, 2))
    _, all_grads = run(fused, arrays, g)
    tensors = [t64(a, requires_grad=i in wanted) for i, a in enumerate(arrays)]
    fused(*tensors).backward(dev(g))
    for i, t in enumerate(tensors):
        if i in wanted:
            np.testing.assert_allclose(host(t.grad), all_grads[i], **TIGHT)
        else:
            assert t.grad is None


def test_float32_stays_float32(rng):
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((2, 3, 4), (2, 5, 4), (4,), (2, 5, 2))]
    mask = _row_mask((2, 3, 5), rng)
    tensors = [Tensor(backend.asarray(a), requires_grad=True) for a in arrays]
    out = AdditiveAttentionFunction.apply(*tensors, mask=dev(mask))
    assert out.dtype == np.float32
    out.sum().backward()
    assert all(t.grad.dtype == np.float32 for t in tensors)
    expected, _ = numpy_additive(*[a.astype(np.float64) for a in arrays], mask=mask)
    np.testing.assert_allclose(host(out), expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3),
       st.sampled_from([0.0, 0.3, 0.7, 1.0]), st.booleans(), st.integers(0, 2**31 - 1))
def test_fused_equals_composed_on_random_shapes_and_masks(batch, length_q, length_k, hidden, ev, p_masked,
                                                         dead_row, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((batch, length_q, length_k)) >= p_masked                   # True = take part
    if dead_row:
        mask[0, 0, :] = False                                                     # one fully masked row
    arrays = [rng.standard_normal((batch, length_q, hidden)), rng.standard_normal((batch, length_k, hidden)),
              rng.standard_normal(hidden), rng.standard_normal((batch, length_k, ev))]
    fused, composed = _fns(mask, None, None)
    cotangent = rng.standard_normal((batch, length_q, ev))
    with ref.strict_floats():
        out_f, grads_f = run(fused, arrays, cotangent)
        out_c, grads_c = run(composed, arrays, cotangent)
    np.testing.assert_allclose(out_f, out_c, **TIGHT)
    for gf, gc in zip(grads_f, grads_c):
        assert np.isfinite(gf).all()
        np.testing.assert_allclose(gf, gc, **TIGHT)
    np.testing.assert_array_equal(out_f[~mask.any(-1)], 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------------------------------
def numpy_layer(layer, queries, keys, values, mask=None, bias=None):
    """The layer in NumPy from its parameters: Qp = q W_qᵀ, Kp = k W_kᵀ, then numpy_additive with w_v's row."""
    p = {name: host(t) for name, t in layer.named_parameters()}
    return numpy_additive(queries @ p["W_q.weight"].T, keys @ p["W_k.weight"].T, p["w_v.weight"][0], values,
                          mask, bias)


def lens_mask(valid_lens, num_q, num_k):
    """bool (B, L, S) from d2l valid_lens ((B,) or (B, L)), key by key."""
    valid_lens = np.asarray(valid_lens)
    out = np.zeros((len(valid_lens), num_q, num_k), dtype=bool)
    for b in range(len(valid_lens)):
        for i in range(num_q):
            n = valid_lens[b] if valid_lens.ndim == 1 else valid_lens[b, i]
            out[b, i, :n] = True
    return out


def test_d2l_example(rng):
    """d2l §11.3.2: queries (2, 1, 20), keys (2, 10, 2) all ones, values (2, 10, 4), valid_lens [2, 6], H = 8.

    Every key is the same vector, so every valid key gets the same score: the weights are uniform over the first 2
    (then 6) keys and the outputs are the means of those value rows — d2l prints [[2, 3, 4, 5]], [[10, 11, 12, 13]].
    """
    manual_seed(0)
    queries = Tensor(rng.normal(0, 1, (2, 1, 20)), dtype="float32")
    keys = Tensor(np.ones((2, 10, 2)), dtype="float32")
    values = Tensor(np.tile(np.arange(40, dtype=np.float32).reshape(1, 10, 4), (2, 1, 1)))
    attention = AdditiveAttention(query_size=20, key_size=2, num_hiddens=8, dropout=0.1)
    attention.eval()
    out = attention(queries, keys, values, valid_lens=dev(np.array([2, 6])))
    assert out.shape == (2, 1, 4) and out.dtype == np.float32
    np.testing.assert_allclose(host(out), [[[2, 3, 4, 5]], [[10, 11, 12, 13]]], rtol=1e-6)
    w = host(attention.attention_weights)
    assert w.shape == (2, 1, 10)
    assert np.all(w[0, :, 2:] == 0) and np.all(w[1, :, 6:] == 0)
    np.testing.assert_allclose(w[0, 0, :2], 0.5, rtol=1e-6)
    np.testing.assert_allclose(w[1, 0, :6], 1 / 6, rtol=1e-6)
    assert not attention.attention_weights.requires_grad


LAYER_CASES = {
    "no mask": dict(),
    "valid_lens (B,)": dict(valid_lens=np.array([4, 2])),
    "valid_lens (B, L) with a 0": dict(valid_lens=np.array([[1, 2, 3], [5, 0, 4]])),
    "bool attn_mask (L, S)": dict(attn_mask="bool (L, S)"),
    "bool attn_mask (B, L, S)": dict(attn_mask="bool (B, L, S)"),
    "bool attn_mask (B, 1, L, S)": dict(attn_mask="bool (B, 1, L, S)"),
    "float attn_mask (L, S)": dict(attn_mask="float"),
    "valid_lens and bool attn_mask (L, S)": dict(valid_lens=np.array([3, 5]), attn_mask="bool (L, S)"),
}


def _layer_inputs(rng, case, num_q=3, num_k=5):
    """(queries, keys, values, layer kwargs, NumPy mask (B, L, S), NumPy bias or None) for a named case."""
    kw = dict(LAYER_CASES[case])
    mask = np.ones((2, num_q, num_k), dtype=bool)
    bias = None
    kind = kw.get("attn_mask")
    if kind is not None and kind.startswith("bool"):
        shape = {"bool (L, S)": (num_q, num_k), "bool (B, L, S)": (2, num_q, num_k),
                 "bool (B, 1, L, S)": (2, 1, num_q, num_k)}[kind]
        m = rng.random(shape) > 0.3
        m[..., 0] = True
        kw["attn_mask"] = dev(m)
        mask &= m.reshape(m.shape[:1] + m.shape[2:]) if m.ndim == 4 else m
    elif kind == "float":
        bias = rng.standard_normal((num_q, num_k))
        kw["attn_mask"] = dev(bias)
    if kw.get("valid_lens") is not None:
        mask &= lens_mask(kw["valid_lens"], num_q, num_k)
        kw["valid_lens"] = dev(kw["valid_lens"])
    arrays = rng.standard_normal((2, num_q, 4)), rng.standard_normal((2, num_k, 3)), rng.standard_normal((2, num_k, 2))
    return (*arrays, kw, mask, bias)


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_equals_numpy(rng, case):
    manual_seed(1)
    layer = AdditiveAttention(4, 3, 6, dtype="float64")
    q, k, v, kw, mask, bias = _layer_inputs(rng, case)
    with ref.strict_floats():
        out = layer(t64(q), t64(k), t64(v), **kw)
    expected, expected_w = numpy_layer(layer, q, k, v, mask, bias)
    assert out.shape == (2, 3, 2) and out.dtype == np.float64
    np.testing.assert_allclose(host(out), expected, **TIGHT)
    np.testing.assert_allclose(host(layer.attention_weights), expected_w, **TIGHT)
    np.testing.assert_array_equal(host(layer.attention_weights)[~mask], 0.0)


@pytest.mark.parametrize("case", ["valid_lens (B,)", "valid_lens (B, L) with a 0", "float attn_mask (L, S)"])
def test_layer_gradcheck_inputs_and_parameters(rng, case):
    manual_seed(2)
    layer = AdditiveAttention(4, 3, 5, dtype="float64")
    q, k, v, kw, _, _ = _layer_inputs(rng, case)
    params = list(layer.parameters())
    assert [tuple(p.shape) for p in params] == [(5, 4), (5, 3), (1, 5)]
    with ref.strict_floats():
        assert gradcheck(lambda q_, k_, v_, *ps: layer(q_, k_, v_, **kw), [t64(q), t64(k), t64(v)] + params)


def test_layer_query_with_no_key_gets_zero(rng):
    manual_seed(3)
    layer = AdditiveAttention(4, 3, 6, dtype="float64")
    q, k, v, kw, _, _ = _layer_inputs(rng, "valid_lens (B, L) with a 0")     # query 1 of sequence 1 sees no key
    with ref.strict_floats():
        out = layer(t64(q), t64(k), t64(v), **kw)
    np.testing.assert_array_equal(host(out)[1, 1], 0.0)
    np.testing.assert_array_equal(host(layer.attention_weights)[1, 1], 0.0)


def test_layer_dropout_only_in_training(rng):
    manual_seed(4)
    layer = AdditiveAttention(4, 3, 6, dropout=0.5, dtype="float64")
    q, k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 2))
    expected, expected_w = numpy_layer(layer, q, k, v)
    layer.eval()
    np.testing.assert_allclose(host(layer(t64(q), t64(k), t64(v))), expected, **TIGHT)
    layer.train()
    assert not np.allclose(host(layer(t64(q), t64(k), t64(v))), expected)
    np.testing.assert_allclose(host(layer.attention_weights), expected_w, **TIGHT)   # kept before dropout


def test_layer_errors(rng):
    for bad, error in ((dict(query_size=0), ValueError), (dict(key_size=-1), ValueError),
                       (dict(num_hiddens=2.5), TypeError), (dict(dropout=1.0), ValueError)):
        with pytest.raises(error, match=f"AdditiveAttention: {next(iter(bad))} must be"):
            AdditiveAttention(**{**dict(query_size=4, key_size=3, num_hiddens=5), **bad})
    layer = AdditiveAttention(4, 3, 5, dtype="float64")
    q, k, v = (t64(rng.standard_normal(shape)) for shape in ((2, 3, 4), (2, 5, 3), (2, 5, 2)))
    cases = [
        ((t64(rng.standard_normal((2, 3, 3))), k, v), ValueError, ["queries", "(2, 3, 3)", "4"]),   # query_size
        ((q, t64(rng.standard_normal((2, 5, 4))), v), ValueError, ["keys", "(2, 5, 4)", "3"]),      # key_size
        ((q, k, t64(rng.standard_normal((2, 4, 2)))), ValueError, ["keys", "values", "(2, 4, 2)"]),  # S differs
        ((q, t64(rng.standard_normal((3, 5, 3))), v), ValueError, ["batch", "(3, 5, 3)"]),         # batch differs
        ((t64(rng.standard_normal((3, 4))), k, v), ValueError, ["queries", "(3, 4)"]),              # not 3-D
        ((host(q), k, v), TypeError, ["queries", "Tensor"]),                                         # not a Tensor
        ((Tensor(host(q), dtype="float32"), k, v), TypeError, ["queries", "float32", "float64"]),   # dtype
    ]
    for args, error, words in cases:
        with pytest.raises(error) as err:
            layer(*args)
        for word in words:
            assert word in str(err.value), (word, str(err.value))
    for lens in ([6, 1], [-1, 2], [1, 2, 3]):              # > S, < 0, wrong batch
        with pytest.raises(ValueError):
            layer(q, k, v, valid_lens=dev(np.array(lens)))
    with pytest.raises(TypeError):
        layer(q, k, v, valid_lens=dev(np.array([1.0, 2.0])))
    with pytest.raises(ValueError):                        # attn_mask does not broadcast to (B, L, S)
        layer(q, k, v, attn_mask=dev(np.ones((3, 4), dtype=bool)))
    with pytest.raises(ValueError):
        layer(q, k, v, attn_mask=dev(np.ones((3, 1, 3, 5), dtype=bool)))
