"""The fused Functions of minattn/fused/, each checked three ways in float64.

For every fused operation (LinearFunction, SoftmaxFunction, ScaledDotProductAttentionFunction, LayerNormFunction,
CrossEntropyFunction):
  (a) gradcheck: its hand-written backward against central differences (autograd.gradcheck);
  (b) fused = composed: its forward values and every input gradient equal those of its ``*_reference`` twin, built
      from engine primitives, to ~1e-12;
  (c) its forward values equal an independent NumPy computation (tests/numpy_reference.py).
Plus the edge cases of DESIGN.md §5: broadcasting, masks, a fully masked row (weights 0, gradient 0, no NaN and no
RuntimeWarning), large logits, dropout multiplier, ignored rows and label smoothing.
"""
import numpy as np
import pytest

from autograd import backend, gradcheck
from minattn.fused.attention import ScaledDotProductAttentionFunction, attention_reference
from minattn.fused.cross_entropy import CrossEntropyFunction, cross_entropy_reference
from minattn.fused.layer_norm import LayerNormFunction, layer_norm_reference
from minattn.fused.linear import LinearFunction, linear_reference
from minattn.fused.softmax import SoftmaxFunction, softmax_reference
from tests import numpy_reference as ref
from tests.conftest import host, t64

TIGHT = dict(rtol=1e-12, atol=1e-12)


def dev(a):
    """A NumPy array moved to the backend (for masks, biases, dropout multipliers, targets)."""
    return backend.asarray(a)


def run(fn, arrays, cotangent):
    """fn on fresh float64 tensors of ``arrays``; backward with ``cotangent``. Returns (output, [grads])."""
    tensors = [t64(a) for a in arrays]
    out = fn(*tensors)
    out.backward(dev(np.asarray(cotangent, dtype=np.float64)))
    grads = [host(t.grad) if t.grad is not None else np.zeros(np.shape(a)) for t, a in zip(tensors, arrays)]
    return host(out), grads


def assert_fused_equals_composed(fused, composed, arrays, rng):
    """Forward values and all input gradients of ``fused`` and ``composed`` agree to ~1e-12 (float64)."""
    with_grad = [t64(a) for a in arrays]
    shape = fused(*with_grad).shape
    w = rng.standard_normal(shape)
    out_f, grads_f = run(fused, arrays, w)
    out_c, grads_c = run(composed, arrays, w)
    np.testing.assert_allclose(out_f, out_c, **TIGHT)
    for i, (gf, gc) in enumerate(zip(grads_f, grads_c)):
        np.testing.assert_allclose(gf, gc, **TIGHT, err_msg=f"gradient of input {i}")
    return out_f, grads_f


# ---------------------------------------------------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------------------------------------------------
LINEAR_CASES = [((5, 4), True), ((5, 4), False), ((2, 3, 4), True), ((2, 3, 4), False)]


@pytest.mark.parametrize("x_shape,with_bias", LINEAR_CASES)
def test_linear_gradcheck(rng, x_shape, with_bias):
    arrays = [rng.standard_normal(x_shape), rng.standard_normal((3, 4))]
    arrays += [rng.standard_normal(3)] if with_bias else []
    assert gradcheck(lambda *t: LinearFunction.apply(*t), [t64(a) for a in arrays])


@pytest.mark.parametrize("x_shape,with_bias", LINEAR_CASES)
def test_linear_fused_equals_composed_and_numpy(rng, x_shape, with_bias):
    x, w = rng.standard_normal(x_shape), rng.standard_normal((3, 4))
    arrays = [x, w] + ([rng.standard_normal(3)] if with_bias else [])
    out, grads = assert_fused_equals_composed(lambda *t: LinearFunction.apply(*t),
                                              lambda *t: linear_reference(*t), arrays, rng)
    expected = np.einsum("...i,oi->...o", x, w) + (arrays[2] if with_bias else 0.0)
    np.testing.assert_allclose(out, expected, **TIGHT)


def test_linear_gradients_against_numpy(rng):
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    g = rng.standard_normal((2, 3, 5))
    _, (dx, dw, db) = run(lambda *t: LinearFunction.apply(*t), [x, w, b], g)
    np.testing.assert_allclose(dx, np.einsum("bro,oi->bri", g, w), **TIGHT)
    np.testing.assert_allclose(dw, np.einsum("bro,bri->oi", g, x), **TIGHT)
    np.testing.assert_allclose(db, g.sum(axis=(0, 1)), **TIGHT)


def test_linear_only_weight_requires_grad(rng):
    x = t64(rng.standard_normal((4, 3)), requires_grad=False)
    w = t64(rng.standard_normal((2, 3)))
    LinearFunction.apply(x, w).sum().backward()
    np.testing.assert_allclose(host(w.grad), np.tile(host(x).sum(axis=0), (2, 1)), **TIGHT)


# ---------------------------------------------------------------------------------------------------------------------
# Softmax
# ---------------------------------------------------------------------------------------------------------------------
def _row_mask(shape, rng):
    mask = rng.random(shape) > 0.4
    mask[..., 0] = True          # every row keeps at least one entry (fully masked rows have their own tests)
    return mask


SOFTMAX_CASES = {
    "plain": lambda rng: (None, None),
    "bool mask, full shape": lambda rng: (_row_mask((2, 3, 5), rng), None),
    "bool mask (L, S) broadcast over batch": lambda rng: (_row_mask((3, 5), rng), None),
    "bool mask (B, 1, S) broadcast over queries": lambda rng: (_row_mask((2, 1, 5), rng), None),
    "bool mask (S,)": lambda rng: (np.array([True, False, True, True, False]), None),
    "float bias": lambda rng: (None, rng.standard_normal((2, 3, 5))),
    "float bias (1, 3, 5) with -inf": lambda rng: (None, np.where(_row_mask((1, 3, 5), rng), 0.5, -np.inf)),
    "mask and bias": lambda rng: (_row_mask((3, 5), rng), rng.standard_normal((5,))),
}


@pytest.mark.parametrize("case", list(SOFTMAX_CASES))
def test_softmax_gradcheck(rng, case):
    mask, bias = SOFTMAX_CASES[case](rng)
    mask, bias = (dev(mask) if mask is not None else None), (dev(bias) if bias is not None else None)
    assert gradcheck(lambda s: SoftmaxFunction.apply(s, mask=mask, bias=bias), [t64(rng.standard_normal((2, 3, 5)))])


@pytest.mark.parametrize("case", list(SOFTMAX_CASES))
def test_softmax_fused_equals_composed_and_numpy(rng, case):
    mask, bias = SOFTMAX_CASES[case](rng)
    mask_d, bias_d = (dev(mask) if mask is not None else None), (dev(bias) if bias is not None else None)
    scores = rng.standard_normal((2, 3, 5))
    out, _ = assert_fused_equals_composed(lambda s: SoftmaxFunction.apply(s, mask=mask_d, bias=bias_d),
                                          lambda s: softmax_reference(s, mask_d, bias_d), [scores], rng)
    expected = ref.softmax_rows(scores + (bias if bias is not None else 0.0), mask)
    np.testing.assert_allclose(out, expected, **TIGHT)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, **TIGHT)
    if mask is not None:
        assert np.all(out[~np.broadcast_to(mask, out.shape)] == 0.0)


def test_softmax_backward_against_numpy_jacobian(rng):
    scores, g = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    _, (ds,) = run(lambda s: SoftmaxFunction.apply(s), [scores], g)
    p = ref.softmax_rows(scores)
    for i in range(3):
        jac = np.diag(p[i]) - np.outer(p[i], p[i])          # ∂P_ij/∂S_ik = P_ij (δ_jk − P_ik)
        np.testing.assert_allclose(ds[i], jac.T @ g[i], **TIGHT)


def test_softmax_axis_0(rng):
    scores = rng.standard_normal((4, 3))
    out, _ = assert_fused_equals_composed(lambda s: SoftmaxFunction.apply(s, axis=0),
                                          lambda s: softmax_reference(s, axis=0), [scores], rng)
    np.testing.assert_allclose(out, ref.softmax_rows(scores.T).T, **TIGHT)
    assert gradcheck(lambda s: SoftmaxFunction.apply(s, axis=0), [t64(scores)])


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("how", ["bool mask", "bias -inf"])
def test_softmax_fully_masked_row(rng, impl, how):
    scores = rng.standard_normal((2, 3, 4))
    mask = np.ones((2, 3, 4), dtype=bool)
    mask[0, 1] = False                                      # row (0, 1): every key masked
    mask[1, 2, 3] = False
    if how == "bool mask":
        mask_d, bias_d = dev(mask), None
    else:
        mask_d, bias_d = None, dev(np.where(mask, 0.0, -np.inf))
    fn = ((lambda s: SoftmaxFunction.apply(s, mask=mask_d, bias=bias_d)) if impl == "fused"
          else (lambda s: softmax_reference(s, mask_d, bias_d)))
    g = rng.standard_normal((2, 3, 4))
    with ref.strict_floats():
        out, (ds,) = run(fn, [scores], g)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(ds))
    np.testing.assert_array_equal(out[0, 1], 0.0)
    np.testing.assert_array_equal(ds[0, 1], 0.0)
    assert out[1, 2, 3] == 0.0 and ds[1, 2, 3] == 0.0
    np.testing.assert_allclose(out, ref.softmax_rows(scores, mask), **TIGHT)


def test_softmax_fully_masked_row_gradcheck(rng):
    mask = np.ones((2, 3, 4), dtype=bool)
    mask[1, 0] = False
    mask_d = dev(mask)
    with ref.strict_floats():
        assert gradcheck(lambda s: SoftmaxFunction.apply(s, mask=mask_d), [t64(rng.standard_normal((2, 3, 4)))])


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_softmax_large_logits_finite(rng, impl):
    scores = np.array([[1e4, -1e4, 0.0, 1e4 - 1.0], [-1e4, -1e4, -1e4 + 2.0, -1e4], [1e4, 1e4, 1e4, 1e4]])
    fn = (lambda s: SoftmaxFunction.apply(s)) if impl == "fused" else (lambda s: softmax_reference(s))
    with ref.strict_floats():
        out, (ds,) = run(fn, [scores], rng.standard_normal(scores.shape))
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(ds))
    np.testing.assert_allclose(out, ref.softmax_rows(scores), **TIGHT)
    e = np.exp(np.array([0.0, -1.0]))
    np.testing.assert_allclose(out[0], [e[0] / e.sum(), 0.0, 0.0, e[1] / e.sum()], **TIGHT)
    np.testing.assert_allclose(out[2], 0.25, **TIGHT)


# ---------------------------------------------------------------------------------------------------------------------
# Scaled dot-product attention
# ---------------------------------------------------------------------------------------------------------------------
def _sdpa_case(name, rng):
    """(q, k, v, mask, bias, scale, dropout_mask) for a named case; host NumPy arrays."""
    q, k, v = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 3))
    mask = bias = dropout_mask = None
    scale = 0.6
    if name == "plain":
        pass
    elif name == "bool mask (L, S)":
        mask = _row_mask((4, 5), rng)
    elif name == "bool mask (B, 1, S)":
        mask = _row_mask((2, 1, 5), rng)
    elif name == "float bias":
        bias = rng.standard_normal((2, 4, 5))
    elif name == "causal":
        mask = np.tril(np.ones((4, 5), dtype=bool))
    elif name == "fully masked query row":
        mask = _row_mask((2, 4, 5), rng)
        mask[1, 2] = False
    elif name == "batch broadcast":
        q = rng.standard_normal((2, 3, 4, 5))
        k, v = rng.standard_normal((1, 3, 6, 5)), rng.standard_normal((1, 3, 6, 5))
        mask = _row_mask((2, 1, 4, 6), rng)
    elif name == "dropout mask":
        p = 0.3
        dropout_mask = (rng.random((2, 4, 5)) >= p) / (1 - p)
    elif name == "Ev != E, L != S":
        q, k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 6, 2))
        mask = _row_mask((2, 3, 6), rng)
    elif name == "k, v batch bigger than q":
        q = rng.standard_normal((1, 4, 3))
        k, v = rng.standard_normal((3, 5, 3)), rng.standard_normal((3, 5, 2))
        dropout_mask = (rng.random((3, 4, 5)) >= 0.25) / 0.75
    elif name == "v batch bigger than q, k":
        q, k = rng.standard_normal((1, 4, 3)), rng.standard_normal((1, 5, 3))
        v = rng.standard_normal((3, 5, 2))
        mask = _row_mask((3, 4, 5), rng)
    else:
        raise KeyError(name)
    return q, k, v, mask, bias, scale, dropout_mask


SDPA_CASES = ["plain", "bool mask (L, S)", "bool mask (B, 1, S)", "float bias", "causal", "fully masked query row",
              "batch broadcast", "dropout mask", "Ev != E, L != S", "k, v batch bigger than q",
              "v batch bigger than q, k"]


def _sdpa_fns(mask, bias, scale, dropout_mask):
    kw = dict(mask=None if mask is None else dev(mask), bias=None if bias is None else dev(bias), scale=scale,
              dropout_mask=None if dropout_mask is None else dev(dropout_mask))
    return (lambda q, k, v: ScaledDotProductAttentionFunction.apply(q, k, v, **kw),
            lambda q, k, v: attention_reference(q, k, v, **kw))


@pytest.mark.parametrize("case", SDPA_CASES)
def test_sdpa_gradcheck(rng, case):
    q, k, v, mask, bias, scale, dropout_mask = _sdpa_case(case, rng)
    fused, _ = _sdpa_fns(mask, bias, scale, dropout_mask)
    with ref.strict_floats():
        assert gradcheck(fused, [t64(q), t64(k), t64(v)])


@pytest.mark.parametrize("case", SDPA_CASES)
def test_sdpa_fused_equals_composed_and_numpy(rng, case):
    q, k, v, mask, bias, scale, dropout_mask = _sdpa_case(case, rng)
    fused, composed = _sdpa_fns(mask, bias, scale, dropout_mask)
    with ref.strict_floats():
        out, grads = assert_fused_equals_composed(fused, composed, [q, k, v], rng)
    expected, _ = ref.attention(q, k, v, mask=mask, bias=bias, scale=scale, dropout_mask=dropout_mask)
    np.testing.assert_allclose(out, expected, **TIGHT)
    assert all(g.shape == a.shape for g, a in zip(grads, (q, k, v)))


def test_sdpa_fully_masked_row_output_and_gradients_zero(rng):
    q, k, v, mask, bias, scale, dropout_mask = _sdpa_case("fully masked query row", rng)
    fused, _ = _sdpa_fns(mask, bias, scale, dropout_mask)
    g = np.zeros((2, 4, 3))
    g[1, 2] = rng.standard_normal(3)                       # only the fully masked row receives a gradient
    with ref.strict_floats():
        out, grads = run(fused, [q, k, v], g)
    np.testing.assert_array_equal(out[1, 2], 0.0)
    for grad in grads:
        np.testing.assert_array_equal(grad, 0.0)


def test_sdpa_gradients_against_numpy_formulas(rng):
    """dV = Pᵀ dO, dQ = dS K · scale, dK = dSᵀ Q · scale with dS from the softmax Jacobian, all in NumPy."""
    q, k, v = rng.standard_normal((4, 3)), rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    g, scale = rng.standard_normal((4, 2)), 0.8
    _, (dq, dk, dv) = run(lambda *t: ScaledDotProductAttentionFunction.apply(*t, scale=scale), [q, k, v], g)
    _, p = ref.attention(q, k, v, scale=scale)
    dp = g @ v.T
    ds = np.stack([(np.diag(p[i]) - np.outer(p[i], p[i])).T @ dp[i] for i in range(4)])
    np.testing.assert_allclose(dv, p.T @ g, **TIGHT)
    np.testing.assert_allclose(dq, ds @ k * scale, **TIGHT)
    np.testing.assert_allclose(dk, ds.T @ q * scale, **TIGHT)


# ---------------------------------------------------------------------------------------------------------------------
# LayerNorm
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x_shape", [(4, 5), (2, 3, 5)])
def test_layer_norm_gradcheck(rng, x_shape):
    arrays = [rng.standard_normal(x_shape), 1 + 0.3 * rng.standard_normal(5), rng.standard_normal(5)]
    assert gradcheck(lambda x, g, b: LayerNormFunction.apply(x, g, b, eps=1e-5), [t64(a) for a in arrays])


@pytest.mark.parametrize("x_shape", [(4, 5), (2, 3, 5)])
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_layer_norm_fused_equals_composed_and_numpy(rng, x_shape, eps):
    x, gamma, beta = 3 * rng.standard_normal(x_shape) + 1, 1 + 0.3 * rng.standard_normal(5), rng.standard_normal(5)
    out, _ = assert_fused_equals_composed(lambda *t: LayerNormFunction.apply(*t, eps=eps),
                                          lambda *t: layer_norm_reference(*t, eps=eps), [x, gamma, beta], rng)
    np.testing.assert_allclose(out, ref.layer_norm(x, gamma, beta, eps), **TIGHT)


def test_layer_norm_parameter_gradients_against_numpy(rng):
    x, gamma, beta = rng.standard_normal((2, 3, 5)), rng.standard_normal(5), rng.standard_normal(5)
    g = rng.standard_normal((2, 3, 5))
    _, (dx, dgamma, dbeta) = run(lambda *t: LayerNormFunction.apply(*t), [x, gamma, beta], g)
    x_hat = ref.layer_norm(x, 1.0, 0.0)
    np.testing.assert_allclose(dgamma, (g * x_hat).sum(axis=(0, 1)), **TIGHT)
    np.testing.assert_allclose(dbeta, g.sum(axis=(0, 1)), **TIGHT)
    # dx is orthogonal to the constant direction: LayerNorm's output does not change when a row is shifted
    np.testing.assert_allclose(dx.sum(axis=-1), 0.0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Cross-entropy
# ---------------------------------------------------------------------------------------------------------------------
CE_CASES = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(label_smoothing=0.1),
    dict(label_smoothing=0.1, reduction="sum"),
    dict(label_smoothing=0.1, reduction="none"),
    dict(ignore_index=-100, with_ignored=True),
    dict(ignore_index=0, with_ignored=True, label_smoothing=0.1),
    dict(ignore_index=-1, with_ignored=True, reduction="none"),
    dict(ignore_index=-1, with_ignored=True, reduction="sum", label_smoothing=0.1),
]


def _ce_inputs(rng, case, n=6, c=4):
    logits = 2 * rng.standard_normal((n, c))
    target = rng.integers(0, c, n)
    ignore_index = case.get("ignore_index", -100)
    if case.get("with_ignored"):
        target[[1, 4]] = ignore_index
    kw = dict(ignore_index=ignore_index, label_smoothing=case.get("label_smoothing", 0.0),
              reduction=case.get("reduction", "mean"))
    return logits, target, kw


@pytest.mark.parametrize("case", CE_CASES, ids=str)
def test_cross_entropy_gradcheck(rng, case):
    logits, target, kw = _ce_inputs(rng, case)
    t = dev(target)
    assert gradcheck(lambda z: CrossEntropyFunction.apply(z, target=t, **kw), [t64(logits)])


@pytest.mark.parametrize("case", CE_CASES, ids=str)
def test_cross_entropy_fused_equals_composed_and_numpy(rng, case):
    logits, target, kw = _ce_inputs(rng, case)
    t = dev(target)
    out, (dz,) = assert_fused_equals_composed(lambda z: CrossEntropyFunction.apply(z, target=t, **kw),
                                              lambda z: cross_entropy_reference(z, t, **kw), [logits], rng)
    expected, expected_grad = ref.cross_entropy(logits, target, **kw)
    np.testing.assert_allclose(out, expected, **TIGHT)
    if kw["reduction"] != "none":       # with a unit cotangent the gradient is the closed form (p − q) / count
        _, (dz1,) = run(lambda z: CrossEntropyFunction.apply(z, target=t, **kw), [logits], 1.0)
        np.testing.assert_allclose(dz1, expected_grad, **TIGHT)
    else:
        w = rng.standard_normal(logits.shape[0])
        _, (dzw,) = run(lambda z: CrossEntropyFunction.apply(z, target=t, **kw), [logits], w)
        np.testing.assert_allclose(dzw, expected_grad * w[:, None], **TIGHT)
    if case.get("with_ignored"):
        ignored = target == kw["ignore_index"]
        np.testing.assert_array_equal(dz[ignored], 0.0)
        if kw["reduction"] == "none":
            np.testing.assert_array_equal(out[ignored], 0.0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_cross_entropy_all_rows_ignored(rng, reduction, impl):
    logits = rng.standard_normal((3, 4))
    t = dev(np.full(3, -100))
    fn = ((lambda z: CrossEntropyFunction.apply(z, target=t, reduction=reduction)) if impl == "fused"
          else (lambda z: cross_entropy_reference(z, t, reduction=reduction)))
    cot = np.ones(3) if reduction == "none" else 1.0
    with ref.strict_floats():
        out, (dz,) = run(fn, [logits], cot)
    np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_array_equal(dz, 0.0)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_cross_entropy_large_logits_finite(rng, impl):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4 + 1.0], [1e4, 1e4, -1e4]])
    target = np.array([1, 2, 0])
    t = dev(target)
    fn = ((lambda z: CrossEntropyFunction.apply(z, target=t, label_smoothing=0.1)) if impl == "fused"
          else (lambda z: cross_entropy_reference(z, t, label_smoothing=0.1)))
    with ref.strict_floats():
        out, (dz,) = run(fn, [logits], 1.0)
    assert np.isfinite(out) and np.all(np.isfinite(dz))
    expected, expected_grad = ref.cross_entropy(logits, target, label_smoothing=0.1)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    np.testing.assert_allclose(dz, expected_grad, **TIGHT)


# ---------------------------------------------------------------------------------------------------------------------
# Embedding
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ids_shape", [(7,), (3, 5), ()])
@pytest.mark.parametrize("path", ["one-hot", "scatter_add"])
def test_embedding_gradcheck_and_fused_equals_composed(rng, monkeypatch, ids_shape, path):
    """EmbeddingFunction's dW = onehot(ids)ᵀ dy passes gradcheck and equals getitem's scatter-add backward, on both of
    its paths (the one-hot product, and adding rows one by one past ONE_HOT_LIMIT); repeated ids add up."""
    from minattn.fused import embedding
    from minattn.fused.embedding import EmbeddingFunction, embedding_reference
    if path == "scatter_add":
        monkeypatch.setattr(embedding, "ONE_HOT_LIMIT", 0)
    ids = dev(rng.integers(0, 4, size=ids_shape))                   # 4 tokens: repeats are certain in (3, 5)
    w = rng.standard_normal((4, 3))
    assert gradcheck(lambda t: EmbeddingFunction.apply(t, ids=ids), [t64(w)])
    assert_fused_equals_composed(lambda t: EmbeddingFunction.apply(t, ids=ids),
                                 lambda t: embedding_reference(t, ids), [w], rng)


def test_embedding_gradient_by_hand(rng):
    """ids [2, 0, 2] with dy rows r0, r1, r2: dW row 2 = r0 + r2, row 0 = r1, the others 0 (an independent count)."""
    from minattn.fused.embedding import EmbeddingFunction
    w, g = rng.standard_normal((4, 3)), rng.standard_normal((3, 3))
    _, (dw,) = run(lambda t: EmbeddingFunction.apply(t, ids=dev(np.array([2, 0, 2]))), [w], g)
    np.testing.assert_allclose(dw, np.stack([g[1], np.zeros(3), g[0] + g[2], np.zeros(3)]), **TIGHT)


def test_layer_norm_with_a_residual_gradcheck_and_fused_equals_composed(rng):
    """LayerNorm(x + R) in one node: gradcheck, and equal to Add then LayerNorm from primitives in value and in the
    gradients of x, γ, β and R (the sum's gradient reaches x and R alike)."""
    x, r = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 5))
    gamma, beta = rng.standard_normal(5), rng.standard_normal(5)
    fused = lambda x, g, b, r: LayerNormFunction.apply(x, g, b, r, eps=1e-5)              # noqa: E731
    assert gradcheck(fused, [t64(a) for a in (x, gamma, beta, r)])
    _, grads = assert_fused_equals_composed(fused, lambda x, g, b, r: layer_norm_reference(x, g, b, residual=r),
                                            [x, gamma, beta, r], rng)
    np.testing.assert_array_equal(grads[0], grads[3])
