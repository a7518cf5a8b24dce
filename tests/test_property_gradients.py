"""Property-based gradient checks (hypothesis): every primitive of autograd/ops.py and every fused Function of
minattn/fused/, plus MultiHeadAttention as a whole layer, on RANDOM shapes — size-1 axes, ()-shaped operands and
broadcast batch axes included — and random masks (fully masked rows, valid_lens, -inf biases, dropout multipliers).

For every drawn case, in float64:
  * ``autograd.gradcheck``: the hand-written backward against central differences (element by element at these
    sizes; tolerances atol 1e-5, rtol 1e-3 — gradcheck's defaults, orders above the ~1e-10 rounding of a correct
    derivative and orders below the error of a wrong one);
  * primitives: the forward equals NumPy's on the same inputs (rtol = atol = 1e-12: the same float64 expression);
  * fused Functions and the layer: forward values AND every input gradient equal those of the ``*_reference`` twin
    composed from engine primitives, to 1e-10 (the two differ only in the order of float64 operations).

test_ops.py / test_fused.py / test_properties.py check hand-picked shapes; this file lets hypothesis pick them.
Inputs are drawn by NumPy from a seed that hypothesis chooses (so a failure shrinks to a seed and a shape, and
reproduces), with values kept where the derivative is smooth: divisors and log arguments away from 0, relu inputs
away from its kink, max inputs without near-ties. ``max_examples`` is small and ``deadline=None`` so the file stays
at a few seconds on two cores; MINATTN_PROPERTY_SCALE=20 multiplies the examples for a deeper sweep.
"""
import os

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import autograd
from autograd import backend, gradcheck, ops
from minattn import MultiHeadAttention
from minattn import masks as mask_lib
from minattn.fused.additive import AdditiveAttentionFunction, additive_attention_reference
from minattn.fused.attention import ScaledDotProductAttentionFunction, attention_reference
from minattn.fused.cross_entropy import CrossEntropyFunction, cross_entropy_reference
from minattn.fused.layer_norm import LayerNormFunction, layer_norm_reference
from minattn.fused.linear import LinearFunction, LinearReLUFunction, linear_reference, linear_relu_reference
from minattn.fused.packed_attention import PackedSelfAttentionFunction, packed_self_attention_reference
from minattn.fused.softmax import SoftmaxFunction, softmax_reference
from minattn.fused.talking_heads import TalkingHeadsFunction, talking_heads_reference
from tests.conftest import host, t64

SCALE = float(os.environ.get("MINATTN_PROPERTY_SCALE", "1"))   # e.g. 20 for a deeper sweep than the suite's
CHEAP = settings(max_examples=max(1, int(12 * SCALE)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
COSTLY = settings(max_examples=max(1, int(6 * SCALE)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
SIDE = dict(min_side=1, max_side=3)
SEEDS = st.integers(0, 2**32 - 1)
AGREE = dict(rtol=1e-10, atol=1e-10)


# --- helpers ---------------------------------------------------------------------------------------------------------
def dev(a):
    """A host array moved to the backend (masks, biases, dropout multipliers, targets)."""
    return backend.asarray(a)


def dev_index(i):
    """An index part with its NumPy arrays moved to the backend (ints, slices, None, Ellipsis as they are)."""
    return backend.asarray(i) if isinstance(i, np.ndarray) else i


def tensors(arrays, requires):
    return [t64(a, requires_grad=r) for a, r in zip(arrays, requires)]


def check_primitive(fn, arrays, expected, requires=None):
    """Forward equals NumPy's ``expected``; gradcheck of every input in ``requires`` (default: all)."""
    requires = requires or [True] * len(arrays)
    inputs = tensors(arrays, requires)
    out = fn(*inputs)
    expected = np.asarray(expected)
    assert host(out).shape == expected.shape
    np.testing.assert_allclose(host(out), expected, rtol=1e-12, atol=1e-12)
    assert gradcheck(fn, inputs)


def check_fused(fused, composed, arrays, requires, seed):
    """gradcheck of ``fused``; then fused and composed agree in value and in every input gradient."""
    assert gradcheck(fused, tensors(arrays, requires), seed=seed % 1000)
    a, b = tensors(arrays, requires), tensors(arrays, requires)
    out_a, out_b = fused(*a), composed(*b)
    assert out_a.shape == out_b.shape
    np.testing.assert_allclose(host(out_a), host(out_b), **AGREE)
    assert np.isfinite(host(out_a)).all()
    w = np.random.default_rng(seed).standard_normal(out_a.shape)
    out_a.backward(dev(w))
    out_b.backward(dev(w))
    for i, (x, y, r) in enumerate(zip(a, b, requires)):
        if not r:
            continue
        gx = host(x.grad) if x.grad is not None else np.zeros(x.shape)
        gy = host(y.grad) if y.grad is not None else np.zeros(y.shape)
        assert np.isfinite(gx).all(), f"gradient of input {i} is not finite"
        np.testing.assert_allclose(gx, gy, **AGREE, err_msg=f"gradient of input {i}")


def normal(rng, shape, scale=1.0):
    return np.asarray(rng.standard_normal(shape) * scale, dtype=np.float64)


def away_from_zero(rng, shape, low=0.5, high=2.0):
    magnitude = np.asarray(rng.uniform(low, high, shape))
    return np.where(np.asarray(rng.random(shape)) < 0.5, -magnitude, magnitude)


def reduced_shape(draw, shape, min_dims=0):
    """A shape that broadcasts to ``shape`` without growing it: some leading axes dropped, some axes set to 1."""
    drop = draw(st.integers(0, max(0, len(shape) - min_dims)))
    kept = shape[drop:]
    return tuple(1 if draw(st.booleans()) else n for n in kept)


def requires_some(draw, n):
    """n flags, at least one True: which inputs require grad (the others take the needs_input_grad=False path)."""
    flags = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    if not any(flags):
        flags[draw(st.integers(0, n - 1))] = True
    return flags


# --- primitives: elementwise binary ----------------------------------------------------------------------------------
BINARY = {
    "add": (autograd.add, np.add), "sub": (autograd.sub, np.subtract),
    "mul": (autograd.mul, np.multiply), "div": (autograd.div, np.divide),
}


@CHEAP
@given(st.sampled_from(sorted(BINARY)), hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, **SIDE),
       st.data(), SEEDS)
def test_binary_ops_broadcast(name, shapes, data, seed):
    op, np_op = BINARY[name]
    rng = np.random.default_rng(seed)
    a = normal(rng, shapes.input_shapes[0])
    b = away_from_zero(rng, shapes.input_shapes[1]) if name == "div" else normal(rng, shapes.input_shapes[1])
    check_primitive(op, [a, b], np_op(a, b), requires_some(data.draw, 2))


@CHEAP
@given(st.sampled_from(sorted(BINARY)), hnp.array_shapes(min_dims=0, max_dims=3, **SIDE), st.booleans(),
       st.floats(0.5, 2.0), SEEDS)
def test_binary_ops_with_a_python_number(name, shape, number_first, number, seed):
    op, np_op = BINARY[name]
    rng = np.random.default_rng(seed)
    x = away_from_zero(rng, shape) if name == "div" and number_first else normal(rng, shape)
    if number_first:
        check_primitive(lambda t: op(number, t), [x], np_op(number, x))
    else:
        check_primitive(lambda t: op(t, number), [x], np_op(x, number))


# --- primitives: elementwise unary -----------------------------------------------------------------------------------
UNARY = {
    "neg": (autograd.neg, np.negative, normal),
    "exp": (autograd.exp, np.exp, lambda rng, s: rng.uniform(-3, 3, s)),
    "log": (autograd.log, np.log, lambda rng, s: rng.uniform(0.3, 3, s)),
    "tanh": (autograd.tanh, np.tanh, lambda rng, s: rng.uniform(-3, 3, s)),
    "relu": (autograd.relu, lambda x: np.maximum(x, 0), lambda rng, s: away_from_zero(rng, s, 0.1, 2.0)),
}


@CHEAP
@given(st.sampled_from(sorted(UNARY)), hnp.array_shapes(min_dims=0, max_dims=3, **SIDE), SEEDS)
def test_unary_ops(name, shape, seed):
    op, np_op, draw_values = UNARY[name]
    x = np.asarray(draw_values(np.random.default_rng(seed), shape), dtype=np.float64)
    check_primitive(op, [x], np_op(x))


@CHEAP
@given(hnp.array_shapes(min_dims=0, max_dims=3, **SIDE), st.sampled_from([2, 3, -1, -2, 0.5, 1.5, -0.5]), SEEDS)
def test_pow(shape, exponent, seed):
    rng = np.random.default_rng(seed)
    # a non-integral exponent needs a positive base; an integral one is checked on both signs
    x = rng.uniform(0.5, 2.0, shape) if not float(exponent).is_integer() else away_from_zero(rng, shape)
    x = np.asarray(x, dtype=np.float64)
    check_primitive(lambda t: autograd.pow(t, exponent), [x], x ** exponent)


# --- primitives: reductions ------------------------------------------------------------------------------------------
@st.composite
def reduction_case(draw):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, **SIDE))
    ndim = len(shape)
    if ndim == 0:
        axis = draw(st.sampled_from([None, ()]))
    else:
        axis = draw(st.one_of(
            st.none(),
            st.integers(-ndim, ndim - 1),
            st.lists(st.integers(0, ndim - 1), unique=True, max_size=ndim).map(
                lambda axes: tuple(a - ndim if i % 2 else a for i, a in enumerate(axes)))))   # mix signs
    return shape, axis, draw(st.booleans()), draw(SEEDS)


@CHEAP
@given(st.sampled_from(["sum", "mean", "max"]), reduction_case())
def test_reductions(name, case):
    shape, axis, keepdims, seed = case
    rng = np.random.default_rng(seed)
    if name == "max":   # distinct values at least 0.05 apart: no tie within the finite-difference step
        x = (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.05 + rng.uniform(0, 0.01, shape)).astype(float)
    else:
        x = normal(rng, shape)
    op = {"sum": autograd.sum, "mean": autograd.mean, "max": autograd.max}[name]
    np_op = {"sum": np.sum, "mean": np.mean, "max": np.max}[name]
    every = None if axis == () else axis                               # axis=(): every axis, as PyTorch's dim=()
    check_primitive(lambda t: op(t, axis, keepdims), [x], np_op(x, axis=every, keepdims=keepdims))


# --- primitives: shape -----------------------------------------------------------------------------------------------
@CHEAP
@given(hnp.array_shapes(min_dims=0, max_dims=3, **SIDE), st.data(), SEEDS)
def test_reshape(shape, data, seed):
    sides = data.draw(st.permutations(list(shape)))
    for _ in range(data.draw(st.integers(0, 2))):                       # size-1 axes inserted anywhere
        sides.insert(data.draw(st.integers(0, len(sides))), 1)
    if sides and data.draw(st.booleans()):
        sides[data.draw(st.integers(0, len(sides) - 1))] = -1            # one inferred side
    x = normal(np.random.default_rng(seed), shape)
    check_primitive(lambda t: autograd.reshape(t, sides), [x], x.reshape(sides))


@CHEAP
@given(hnp.array_shapes(min_dims=1, max_dims=4, **SIDE), st.data(), SEEDS)
def test_permute(shape, data, seed):
    axes = data.draw(st.permutations(range(len(shape))))
    axes = [a - len(shape) if data.draw(st.booleans()) else a for a in axes]   # negative axes too
    x = normal(np.random.default_rng(seed), shape)
    check_primitive(lambda t: autograd.permute(t, axes), [x], np.transpose(x, axes))


@CHEAP
@given(hnp.array_shapes(min_dims=2, max_dims=4, **SIDE), st.data(), SEEDS)
def test_transpose(shape, data, seed):
    axis0, axis1 = (data.draw(st.integers(-len(shape), len(shape) - 1)) for _ in range(2))
    x = normal(np.random.default_rng(seed), shape)
    check_primitive(lambda t: autograd.transpose(t, axis0, axis1), [x], np.swapaxes(x, axis0, axis1))


@st.composite
def index_for(draw, shape):
    """An index of one of the kinds getitem documents, valid for ``shape`` (numpy semantics)."""
    kinds = ["slices", "int", "int_array", "bool", "none_ellipsis"] + (["array_and_slice"] if len(shape) > 1 else [])
    kind = draw(st.sampled_from(kinds))
    rng = np.random.default_rng(draw(SEEDS))
    if kind == "slices":
        def one(n):
            start, stop = draw(st.integers(-n, n)), draw(st.one_of(st.none(), st.integers(-n, n)))
            return slice(start, stop, draw(st.sampled_from([1, 2, -1])))
        return tuple(one(n) for n in shape[:draw(st.integers(1, len(shape)))])
    if kind == "int":
        return draw(st.integers(-shape[0], shape[0] - 1))
    if kind == "int_array":   # repeated indices: their gradients must add up
        return rng.integers(-shape[0], shape[0], size=draw(hnp.array_shapes(min_dims=1, max_dims=2, **SIDE)))
    if kind == "bool":
        return rng.random(shape[:draw(st.integers(1, len(shape)))]) < 0.5
    if kind == "none_ellipsis":
        return (Ellipsis, None, draw(st.integers(-shape[-1], shape[-1] - 1)))
    return (rng.integers(0, shape[0], size=draw(st.integers(1, 4))), slice(None, None, -1))


@CHEAP
@given(hnp.array_shapes(min_dims=1, max_dims=3, **SIDE), st.data(), SEEDS)
def test_getitem(shape, data, seed):
    index = data.draw(index_for(shape))
    x = normal(np.random.default_rng(seed), shape)
    on_device = tuple(map(dev_index, index)) if isinstance(index, tuple) else dev_index(index)
    check_primitive(lambda t: autograd.getitem(t, on_device), [x], x[index])


@CHEAP
@given(hnp.array_shapes(min_dims=1, max_dims=3, **SIDE), st.data(), SEEDS)
def test_concatenate(shape, data, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    count = data.draw(st.integers(1, 3))
    rng = np.random.default_rng(seed)
    arrays = []
    for _ in range(count):
        part = list(shape)
        part[axis] = data.draw(st.integers(1, 3))
        arrays.append(normal(rng, tuple(part)))
    check_primitive(lambda *ts: autograd.concatenate(ts, axis=axis), arrays, np.concatenate(arrays, axis=axis),
                    requires_some(data.draw, count))


@CHEAP
@given(hnp.array_shapes(min_dims=0, max_dims=3, **SIDE), st.data(), SEEDS)
def test_stack(shape, data, seed):
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    count = data.draw(st.integers(1, 3))
    rng = np.random.default_rng(seed)
    arrays = [normal(rng, shape) for _ in range(count)]
    check_primitive(lambda *ts: autograd.stack(ts, axis=axis), arrays, np.stack(arrays, axis=axis),
                    requires_some(data.draw, count))


# --- primitives: selection and masks ---------------------------------------------------------------------------------
@CHEAP
@given(hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, **SIDE), st.data(), SEEDS)
def test_where(shapes, data, seed):
    cond_shape, a_shape, b_shape = shapes.input_shapes
    rng = np.random.default_rng(seed)
    condition = rng.random(cond_shape) < 0.5
    a, b = normal(rng, a_shape), normal(rng, b_shape)
    check_primitive(lambda x, y: autograd.where(dev(condition), x, y), [a, b], np.where(condition, a, b),
                    requires_some(data.draw, 2))


@CHEAP
@given(hnp.array_shapes(min_dims=0, max_dims=3, **SIDE), st.data(), st.floats(-1e3, 1e3), SEEDS)
def test_masked_fill(shape, data, value, seed):
    mask_shape = reduced_shape(data.draw, shape)                          # broadcasts to x's shape
    rng = np.random.default_rng(seed)
    mask = rng.random(mask_shape) < data.draw(st.sampled_from([0.0, 0.5, 1.0]))
    x = normal(rng, shape)
    check_primitive(lambda t: autograd.masked_fill(t, dev(mask), value), [x], np.where(mask, value, x))


# --- primitives: matmul ----------------------------------------------------------------------------------------------
@st.composite
def matmul_case(draw):
    n, k, m = (draw(st.integers(1, 3)) for _ in range(3))
    kind = draw(st.sampled_from(["batched", "vector_left", "vector_right", "dot"]))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, **SIDE)).input_shapes
    if kind == "batched":
        return batch[0] + (n, k), batch[1] + (k, m)
    if kind == "vector_left":
        return (k,), batch[1] + (k, m)
    if kind == "vector_right":
        return batch[0] + (n, k), (k,)
    return (k,), (k,)


@CHEAP
@given(matmul_case(), st.data(), SEEDS)
def test_matmul(shapes, data, seed):
    rng = np.random.default_rng(seed)
    a, b = normal(rng, shapes[0]), normal(rng, shapes[1])
    check_primitive(autograd.matmul, [a, b], np.matmul(a, b), requires_some(data.draw, 2))


# --- fused: Linear ---------------------------------------------------------------------------------------------------
@CHEAP
@given(hnp.array_shapes(min_dims=0, max_dims=2, **SIDE), st.integers(1, 3), st.integers(1, 3), st.booleans(),
       st.data(), SEEDS)
def test_linear_function(lead, in_features, out_features, with_bias, data, seed):
    rng = np.random.default_rng(seed)
    arrays = [normal(rng, lead + (in_features,)), normal(rng, (out_features, in_features))]
    if with_bias:
        arrays.append(normal(rng, (out_features,)))
    requires = requires_some(data.draw, len(arrays))
    check_fused(LinearFunction.apply, lambda x, w, *b: linear_reference(x, w, b[0] if b else None), arrays,
                requires, seed)


@CHEAP
@given(hnp.array_shapes(min_dims=0, max_dims=2, **SIDE), st.integers(1, 3), st.integers(1, 3), st.booleans(),
       st.data(), SEEDS)
def test_linear_relu_function(lead, in_features, out_features, with_bias, data, seed):
    rng = np.random.default_rng(seed)
    for _ in range(1000):   # redrawn until every pre-activation x Wᵀ + b is at least 0.1 from relu's kink
        arrays = [normal(rng, lead + (in_features,)), normal(rng, (out_features, in_features))]
        if with_bias:
            arrays.append(normal(rng, (out_features,)))
        pre = arrays[0] @ arrays[1].T + (arrays[2] if with_bias else 0.0)
        if np.abs(pre).min() >= 0.1:
            break
    else:
        raise AssertionError("no draw away from relu's kink")
    requires = requires_some(data.draw, len(arrays))
    check_fused(LinearReLUFunction.apply, lambda x, w, *b: linear_relu_reference(x, w, b[0] if b else None), arrays,
                requires, seed)


# --- fused: softmax --------------------------------------------------------------------------------------------------
@st.composite
def softmax_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, **SIDE))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(draw(SEEDS))
    mask = bias = None
    if draw(st.booleans()):   # True = take part; density 0 masks every entry: every row fully masked
        mask = rng.random(reduced_shape(draw, shape)) < draw(st.sampled_from([0.0, 0.4, 0.8, 1.0]))
    if draw(st.booleans()):   # a float bias, sometimes -inf (PyTorch's float mask)
        bias = normal(rng, reduced_shape(draw, shape))
        bias[rng.random(bias.shape) < draw(st.sampled_from([0.0, 0.3]))] = -np.inf
    return shape, axis, mask, bias, draw(SEEDS)


@CHEAP
@given(softmax_case())
def test_softmax_function(case):
    shape, axis, mask, bias, seed = case
    scores = normal(np.random.default_rng(seed), shape, scale=3.0)
    mask_d = None if mask is None else dev(mask)
    bias_d = None if bias is None else dev(bias)
    check_fused(lambda s: SoftmaxFunction.apply(s, mask=mask_d, bias=bias_d, axis=axis),
                lambda s: softmax_reference(s, mask_d, bias_d, axis), [scores], [True], seed)
    p = host(SoftmaxFunction.apply(t64(scores, False), mask=mask_d, bias=bias_d, axis=axis))
    taking_part = np.ones(shape, dtype=bool)
    if mask is not None:
        taking_part &= np.broadcast_to(mask, shape)
    if bias is not None:
        taking_part &= np.broadcast_to(np.isfinite(bias), shape)
    live = taking_part.any(axis=axis)
    np.testing.assert_allclose(p.sum(axis=axis), live.astype(float), rtol=1e-12, atol=1e-12)   # 1, or 0 if dead
    np.testing.assert_array_equal(p[~taking_part], 0.0)


# --- fused: scaled dot-product attention -----------------------------------------------------------------------------
@st.composite
def attention_case(draw):
    """q (*bq, L, E), k (*bk, S, E), v (*bv, S, Ev) with broadcast batch axes; a mask of one of several kinds."""
    length_q, length_k, e, ev = (draw(st.integers(1, 3)) for _ in range(4))
    kind = draw(st.sampled_from(["none", "bool", "valid_lens", "valid_lens_per_query", "float", "causal"]))
    rng = np.random.default_rng(draw(SEEDS))
    if kind.startswith("valid_lens"):   # (B, h) batch: the mask is (B, 1, 1|L, S), as MultiHeadAttention builds it
        b, h = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        batch_shapes = [(b, h), (b, h), (b, h)]
        lens = rng.integers(0, length_k + 1, size=(b,) if kind == "valid_lens" else (b, length_q))
        mask, bias = mask_lib.valid_lens_mask(dev(lens), length_q, length_k)[:, None], None
    else:
        batch_shapes = list(draw(hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=2,
                                                                    **SIDE)).input_shapes)
        full = mask_lib.broadcast_shape(*batch_shapes) + (length_q, length_k)
        mask = bias = None
        if kind == "bool":
            mask = dev(rng.random(reduced_shape(draw, full, min_dims=2)) < draw(st.sampled_from([0.3, 0.7, 1.0])))
        elif kind == "float":
            bias = normal(rng, reduced_shape(draw, full, min_dims=2))
            bias[rng.random(bias.shape) < 0.3] = -np.inf
            bias = dev(bias)
        elif kind == "causal":
            mask = mask_lib.causal_mask(length_q, length_k)
    shapes = [batch_shapes[0] + (length_q, e), batch_shapes[1] + (length_k, e), batch_shapes[2] + (length_k, ev)]
    arrays = [normal(rng, s) for s in shapes]
    dropout_mask = None
    if draw(st.booleans()):   # a dropout multiplier: 0 or 1/(1 - p)
        full = mask_lib.broadcast_shape(*batch_shapes) + (length_q, length_k)
        dropout_mask = dev((rng.random(full) >= 0.3) / 0.7)
    scale = draw(st.sampled_from([None, 0.5, 2.0]))
    return (arrays, mask, bias, dropout_mask, (1 / np.sqrt(e) if scale is None else scale), requires_some(draw, 3),
            draw(SEEDS))


@CHEAP
@given(attention_case())
def test_scaled_dot_product_attention_function(case):
    arrays, mask, bias, dropout_mask, scale, requires, seed = case
    params = dict(mask=mask, bias=bias, scale=scale, dropout_mask=dropout_mask)
    check_fused(lambda q, k, v: ScaledDotProductAttentionFunction.apply(q, k, v, **params),
                lambda q, k, v: attention_reference(q, k, v, **params), arrays, requires, seed)


# --- fused: LayerNorm ------------------------------------------------------------------------------------------------
@CHEAP
@given(hnp.array_shapes(min_dims=0, max_dims=2, **SIDE), st.integers(1, 4), st.sampled_from([1e-5, 1e-2, 1.0]),
       st.data(), SEEDS)
def test_layer_norm_function(lead, size, eps, data, seed):
    rng = np.random.default_rng(seed)
    arrays = [normal(rng, lead + (size,)), 1 + normal(rng, (size,), 0.3), normal(rng, (size,))]
    check_fused(lambda x, g, b: LayerNormFunction.apply(x, g, b, eps=eps),
                lambda x, g, b: layer_norm_reference(x, g, b, eps), arrays, requires_some(data.draw, 3), seed)


# --- fused: cross-entropy --------------------------------------------------------------------------------------------
@CHEAP
@given(st.integers(1, 5), st.integers(1, 4), st.sampled_from([-100, -1, 0]), st.sampled_from([0.0, 0.1, 0.5, 1.0]),
       st.sampled_from(["mean", "sum", "none"]), st.sampled_from([0.0, 0.3, 1.0]), SEEDS)
def test_cross_entropy_function(rows, classes, ignore_index, smoothing, reduction, ignored, seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, classes, size=rows)
    target[rng.random(rows) < ignored] = ignore_index            # random ignored rows; ignored = 1.0: all of them
    target_d = dev(target)
    params = dict(target=target_d, ignore_index=ignore_index, label_smoothing=smoothing, reduction=reduction)
    check_fused(lambda z: CrossEntropyFunction.apply(z, **params),
                lambda z: cross_entropy_reference(z, target_d, ignore_index, smoothing, reduction),
                [normal(rng, (rows, classes), 3.0)], [True], seed)


# --- fused: talking heads --------------------------------------------------------------------------------------------
@st.composite
def talking_heads_case(draw):
    """h_k, h, h_v pairwise different; a mask and a float bias shared by the heads, (B|1, 1, L|1, S|1)."""
    h_k, h, h_v = draw(st.lists(st.integers(1, 4), min_size=3, max_size=3, unique=True))
    b, length_q, length_k, d, dv = (draw(st.integers(1, 3)) for _ in range(5))
    rng = np.random.default_rng(draw(SEEDS))
    arrays = [normal(rng, (b, h_k, length_q, d)), normal(rng, (b, h_k, length_k, d)),
              normal(rng, (b, h_v, length_k, dv)), normal(rng, (h, h_k)), normal(rng, (h_v, h))]
    if draw(st.booleans()):
        arrays += [normal(rng, (h,)), normal(rng, (h_v,))]        # b_l, b_w (timm's CaiT has them)
    full = (b, 1, length_q, length_k)
    mask, bias = draw_mask_and_bias(draw, rng, full)
    dropout_mask = None
    if draw(st.booleans()):
        dropout_mask = dev((rng.random((b, h_v, length_q, length_k)) >= 0.3) / 0.7)
    scale = 1 / np.sqrt(d)
    return arrays, mask, bias, dropout_mask, scale, requires_some(draw, len(arrays)), draw(SEEDS)


def draw_mask_and_bias(draw, rng, full):
    """Maybe a boolean mask and maybe a float bias with some −inf entries, each broadcastable to ``full``."""
    mask = bias = None
    if draw(st.booleans()):
        mask = dev(rng.random(reduced_shape(draw, full, min_dims=2)) < draw(st.sampled_from([0.3, 0.7, 1.0])))
    if draw(st.booleans()):
        bias = normal(rng, reduced_shape(draw, full, min_dims=2))
        bias[rng.random(bias.shape) < 0.2] = -np.inf
        bias = dev(bias)
    return mask, bias


@COSTLY
@given(talking_heads_case())
def test_talking_heads_function(case):
    arrays, mask, bias, dropout_mask, scale, requires, seed = case
    params = dict(mask=mask, attn_bias=bias, scale=scale, dropout_mask=dropout_mask)

    def composed(q, k, v, w_l, w_w, *biases):
        b_l, b_w = biases if biases else (None, None)
        return talking_heads_reference(q, k, v, w_l, w_w, b_l, b_w, **params)

    check_fused(lambda *ts: TalkingHeadsFunction.apply(*ts, **params), composed, arrays, requires, seed)


# --- fused: additive attention ---------------------------------------------------------------------------------------
@COSTLY
@given(st.data(), SEEDS)
def test_additive_attention_function(data, seed):
    draw = data.draw
    length_q, length_k, hidden, ev = (draw(st.integers(1, 3)) for _ in range(4))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=2, **SIDE)).input_shapes
    rng = np.random.default_rng(seed)
    arrays = [normal(rng, batch[0] + (length_q, hidden)), normal(rng, batch[1] + (length_k, hidden)),
              normal(rng, (hidden,)), normal(rng, batch[2] + (length_k, ev))]
    full = mask_lib.broadcast_shape(*batch) + (length_q, length_k)
    mask, bias = draw_mask_and_bias(draw, rng, full)
    dropout_mask = None
    if draw(st.booleans()):
        dropout_mask = dev((rng.random(full) >= 0.3) / 0.7)
    params = dict(mask=mask, bias=bias, dropout_mask=dropout_mask)
    check_fused(lambda *ts: AdditiveAttentionFunction.apply(*ts, **params),
                lambda *ts: additive_attention_reference(*ts, **params), arrays, requires_some(draw, 4), seed)


# --- fused: packed self-attention -----------------------------------------------------------------------------------
@st.composite
def packed_attention_case(draw):
    """qkv (B, L, 3·h·d); a causal mask, or maybe a boolean mask and maybe a float bias with -inf entries, each
    broadcastable to (B, h, L, L); maybe a dropout multiplier (B, h, L, L)."""
    b, length, h, d = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3)),
                       draw(st.integers(1, 2)))
    rng = np.random.default_rng(draw(SEEDS))
    full = (b, h, length, length)
    if draw(st.booleans()):
        mask, bias = mask_lib.causal_mask(length, length), None
    else:
        mask, bias = draw_mask_and_bias(draw, rng, full)
    dropout_mask = dev((rng.random(full) >= 0.3) / 0.7) if draw(st.booleans()) else None
    params = dict(mask=mask, bias=bias, scale=draw(st.sampled_from([1 / np.sqrt(d), 0.5, 2.0])),
                  dropout_mask=dropout_mask)
    return normal(rng, (b, length, 3 * h * d)), h, params, draw(SEEDS)


@CHEAP
@given(packed_attention_case())
def test_packed_self_attention_function(case):
    qkv, heads, params, seed = case
    check_fused(lambda x: PackedSelfAttentionFunction.apply(x, num_heads=heads, **params),
                lambda x: packed_self_attention_reference(x, heads, **params), [qkv], [True], seed)


# --- the layer: MultiHeadAttention -----------------------------------------------------------------------------------
def mha_composed(layer, query, key, value, mask, bias):
    """MultiHeadAttention's forward rebuilt from the ``*_reference`` twins and engine primitives only."""
    h = layer.num_heads

    def heads(x):                                                           # (B, T, E) → (B, h, T, d_h)
        batch, length, features = x.shape
        return ops.permute(ops.reshape(x, (batch, length, h, features // h)), (0, 2, 1, 3))

    def project(linear, x):
        return linear_reference(x, linear.weight, linear.bias)

    W_k = layer.W_q if layer.W_k is None else layer.W_k
    q, k, v = heads(project(layer.W_q, query)), heads(project(W_k, key)), heads(project(layer.W_v, value))
    if layer.q_norm is not None:
        k_norm = layer.q_norm if getattr(layer, "k_norm", None) is None else layer.k_norm
        q = layer_norm_reference(q, layer.q_norm.weight, layer.q_norm.bias, layer.q_norm.eps)
        k = layer_norm_reference(k, k_norm.weight, k_norm.bias, k_norm.eps)
    out = attention_reference(q, k, v, mask=mask, bias=bias, scale=1 / np.sqrt(layer.head_dim))   # (B, h, L, d_h)
    batch, _, length, head_dim = out.shape
    out = ops.reshape(ops.permute(out, (0, 2, 1, 3)), (batch, length, h * head_dim))
    return project(layer.W_o, out)


@st.composite
def mha_case(draw):
    h = draw(st.integers(1, 2))
    embed_dim = h * draw(st.integers(1, 2))
    share_qk = draw(st.booleans())
    kdim = embed_dim if share_qk else draw(st.sampled_from([None, 1, 3]))
    vdim = draw(st.sampled_from([None, 2]))
    b, length_q, length_k = (draw(st.integers(1, 2)) for _ in range(3))
    kind = draw(st.sampled_from(["none", "valid_lens", "valid_lens_per_query", "bool", "float", "causal"]))
    return dict(h=h, embed_dim=embed_dim, share_qk=share_qk, kdim=kdim, vdim=vdim, qk_norm=draw(st.booleans()),
                bias=draw(st.booleans()), b=b, length_q=length_q, length_k=length_k, kind=kind, seed=draw(SEEDS))


@COSTLY
@given(mha_case())
def test_multi_head_attention_layer(case):
    c = case
    rng = np.random.default_rng(c["seed"])
    layer = MultiHeadAttention(c["embed_dim"], c["h"], bias=c["bias"], kdim=c["kdim"], vdim=c["vdim"],
                               qk_norm=c["qk_norm"], share_qk=c["share_qk"], dtype="float64")
    for p in layer.parameters():                                  # LayerNorm's γ = 1, β = 0 would hide mistakes
        p.data[...] = dev(normal(rng, p.shape, 0.7))
    b, length_q, length_k = c["b"], c["length_q"], c["length_k"]
    arrays = [normal(rng, (b, length_q, c["embed_dim"])), normal(rng, (b, length_k, layer.kdim)),
              normal(rng, (b, length_k, layer.vdim))]
    call = {}
    if c["kind"] == "valid_lens":
        call["valid_lens"] = dev(rng.integers(0, length_k + 1, size=b))
    elif c["kind"] == "valid_lens_per_query":
        call["valid_lens"] = dev(rng.integers(0, length_k + 1, size=(b, length_q)))
    elif c["kind"] == "bool":
        call["attn_mask"] = dev(rng.random((b, 1, length_q, length_k)) < 0.6)
    elif c["kind"] == "float":
        bias = normal(rng, (length_q, length_k))
        bias[rng.random(bias.shape) < 0.3] = -np.inf
        call["attn_mask"] = dev(bias)
    elif c["kind"] == "causal":
        call["is_causal"] = True
    mask, bias = mask_lib.attention_masks(b, c["h"], length_q, length_k, layer.W_q.weight.dtype,
                                          call.get("valid_lens"), call.get("attn_mask"), call.get("is_causal", False))
    inputs = tensors(arrays, [True] * 3)
    params = list(layer.parameters())
    assert gradcheck(lambda q, k, v, *ps: layer(q, k, v, **call), inputs + params, seed=c["seed"] % 1000)

    fused_in, composed_in = tensors(arrays, [True] * 3), tensors(arrays, [True] * 3)
    out_f = layer(*fused_in, **call)
    w = dev(rng.standard_normal(out_f.shape))
    layer.zero_grad()
    out_f.backward(w)
    fused_grads = [host(x.grad) for x in fused_in] + [host(p.grad) for p in params]
    layer.zero_grad()
    out_c = mha_composed(layer, *composed_in, mask, bias)
    np.testing.assert_allclose(host(out_f), host(out_c), **AGREE)
    out_c.backward(w)
    composed_grads = [host(x.grad) for x in composed_in] + [host(p.grad) for p in params]
    for i, (gf, gc) in enumerate(zip(fused_grads, composed_grads)):
        assert np.isfinite(gf).all()
        np.testing.assert_allclose(gf, gc, **AGREE, err_msg=f"gradient {i}")
