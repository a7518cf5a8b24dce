"""Every primitive of autograd/ops.py: its forward value against NumPy computed from the same inputs, and its backward
by ``autograd.gradcheck`` in float64 (central differences, element by element at these sizes).

Covered: add, sub, mul, div (with broadcasting, ()-shaped and size-1 operands, Python numbers on either side, backend
arrays on the left), neg, pow, exp, log, tanh, relu, sum / mean / max (every axis form, keepdims both ways), reshape,
permute, transpose, getitem (slices, ints, None/Ellipsis, repeated integer indices, boolean masks), concatenate,
stack, where, masked_fill, matmul (2-D, batched, broadcast batch axes, 1-D operands). Plus ``sum_to`` with explicit
values, max's tie rule, where's routing of the gradient, and masked_fill(-inf) followed by exp.

Forward values are compared with rtol = atol = 1e-12: both sides compute the same float64 expression.
"""
import numpy as np
import pytest

import autograd
from autograd import Tensor, backend, gradcheck
from tests.conftest import host, t64


# --- helpers ---------------------------------------------------------------------------------------------------------
def _close(actual, expected):
    expected = np.asarray(expected)
    assert host(actual).shape == expected.shape
    np.testing.assert_allclose(host(actual), expected, rtol=1e-12, atol=1e-12)


def _check(fn, arrays, expected, requires=None):
    """Forward of ``fn`` on float64 tensors of ``arrays`` equals ``expected``; then gradcheck those in ``requires``."""
    requires = requires or (True,) * len(arrays)
    inputs = [t64(a, requires_grad=r) for a, r in zip(arrays, requires)]
    _close(fn(*inputs), expected)
    assert gradcheck(fn, inputs)


def _away_from_zero(rng, shape):
    """Values with 0.5 <= |v| <= 2 and random signs (divisors, negative powers, relu inputs)."""
    magnitude = np.asarray(rng.uniform(0.5, 2.0, shape))
    return np.where(np.asarray(rng.random(shape)) < 0.5, -magnitude, magnitude)


def _positive(rng, shape):
    return np.asarray(rng.uniform(0.5, 2.0, shape))


def _normal(rng, shape):
    return np.asarray(rng.standard_normal(shape))


def _distinct(rng, shape):
    """Values at least 0.3 apart, so that a max has one winner and ε-perturbations never change it."""
    n = int(np.prod(shape, dtype=int))
    return (rng.permutation(n) * 0.3 + rng.uniform(0.0, 0.01, n)).reshape(shape)


def _dev(index):
    """``index`` with its NumPy arrays moved to the backend (lists, slices, ints, None, Ellipsis unchanged)."""
    if isinstance(index, tuple):
        return tuple(_dev(i) for i in index)
    if isinstance(index, np.ndarray):
        return backend.asarray(index)
    return index


# --- binary elementwise ----------------------------------------------------------------------------------------------
BINARY = [("add", autograd.add, np.add), ("sub", autograd.sub, np.subtract),
          ("mul", autograd.mul, np.multiply), ("div", autograd.div, np.divide)]
BROADCAST_SHAPES = [((3, 4), (3, 4)), ((3, 1), (4, 3, 5)), ((4, 3, 5), (3, 1)), ((), (2, 3)), ((2, 3), ()),
                    ((), ()), ((1, 4), (3, 1)), ((2, 1, 4), (1, 3, 1)), ((4, 3, 5), (5,)), ((1,), (3, 1)),
                    ((1, 1), (2, 3))]


@pytest.mark.parametrize("requires", [(True, True), (True, False), (False, True)], ids=["both", "a", "b"])
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
@pytest.mark.parametrize("name, op, np_op", BINARY, ids=[b[0] for b in BINARY])
def test_binary(name, op, np_op, shapes, requires, rng):
    a = _normal(rng, shapes[0])
    b = _away_from_zero(rng, shapes[1])
    _check(op, [a, b], np_op(a, b), requires)


@pytest.mark.parametrize("name, op, np_op", BINARY, ids=[b[0] for b in BINARY])
def test_binary_operators_match_functions(name, op, np_op, rng):
    operator = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b,
                "mul": lambda a, b: a * b, "div": lambda a, b: a / b}[name]
    a, b = _normal(rng, (2, 3)), _away_from_zero(rng, (3,))
    _check(operator, [a, b], np_op(a, b))


# The same expression runs on a NumPy array (the expected value) and on a Tensor (the code under test).
PYTHON_NUMBER_EXPRS = {
    "2.0 - x": lambda x: 2.0 - x, "x - 2.0": lambda x: x - 2.0, "2 - x": lambda x: 2 - x,
    "3.0 + x": lambda x: 3.0 + x, "x + 3": lambda x: x + 3, "-1.5 * x": lambda x: -1.5 * x,
    "x * 4": lambda x: x * 4, "1.0 / x": lambda x: 1.0 / x, "x / 4.0": lambda x: x / 4.0,
    "3 / x": lambda x: 3 / x, "(1.0 - x) / (2.0 + x * x)": lambda x: (1.0 - x) / (2.0 + x * x),
}


@pytest.mark.parametrize("shape", [(), (3,), (2, 3)], ids=str)
@pytest.mark.parametrize("expr", list(PYTHON_NUMBER_EXPRS), ids=list(PYTHON_NUMBER_EXPRS))
def test_python_number_operands(expr, shape, rng):
    f = PYTHON_NUMBER_EXPRS[expr]
    x = _away_from_zero(rng, shape)
    _check(f, [x], f(x))


@pytest.mark.parametrize("op, np_op", [(lambda c, x: c + x, np.add), (lambda c, x: c - x, np.subtract),
                                       (lambda c, x: c * x, np.multiply), (lambda c, x: c / x, np.divide)],
                         ids=["add", "sub", "mul", "div"])
def test_backend_array_on_the_left(op, np_op, rng):
    """array OP Tensor goes to Tensor's reflected operator (``__array_priority__``) and gives a Tensor."""
    c, x = _normal(rng, (2, 3)), _away_from_zero(rng, (3,))
    out = op(backend.asarray(c), t64(x, requires_grad=False))
    assert isinstance(out, Tensor)
    _close(out, np_op(c, x))
    assert gradcheck(lambda t: op(backend.asarray(c), t), [t64(x)])


# --- unary elementwise -----------------------------------------------------------------------------------------------
UNARY = [("neg", autograd.neg, np.negative, _normal), ("neg operator", lambda x: -x, np.negative, _normal),
         ("exp", autograd.exp, np.exp, _normal), ("exp method", lambda x: x.exp(), np.exp, _normal),
         ("log", autograd.log, np.log, _positive), ("log method", lambda x: x.log(), np.log, _positive),
         ("tanh", autograd.tanh, np.tanh, _normal), ("tanh method", lambda x: x.tanh(), np.tanh, _normal),
         ("relu", autograd.relu, lambda a: np.maximum(a, 0.0), _away_from_zero),
         ("relu method", lambda x: x.relu(), lambda a: np.maximum(a, 0.0), _away_from_zero)]


@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4)], ids=str)
@pytest.mark.parametrize("name, op, np_op, draw", UNARY, ids=[u[0] for u in UNARY])
def test_unary(name, op, np_op, draw, shape, rng):
    x = draw(rng, shape)
    _check(op, [x], np_op(x))


def test_relu_zeroes_negatives_and_their_gradient():
    x = t64([-2.0, -0.5, 0.5, 3.0])
    y = autograd.relu(x)
    _close(y, [0.0, 0.0, 0.5, 3.0])
    y.sum().backward()
    _close(x.grad, [0.0, 0.0, 1.0, 1.0])


@pytest.mark.parametrize("exponent", [2, 3, -1, -2, 0, 1, 0.5, 1.5, -0.5, 2.5])
def test_pow_positive_input(exponent, rng):
    x = _positive(rng, (2, 3))
    _check(lambda t: t ** exponent, [x], np.power(x, exponent))
    _check(lambda t: autograd.pow(t, exponent), [x], np.power(x, exponent))


@pytest.mark.parametrize("exponent", [2, 3, -1, -2, 2.0, -3.0])
def test_pow_integral_exponent_signed_input(exponent, rng):
    x = _away_from_zero(rng, (2, 3))
    _check(lambda t: t ** exponent, [x], np.power(x, exponent))


def test_pow_tensor_exponent_is_rejected():
    with pytest.raises(TypeError):
        autograd.pow(t64([1.0, 2.0]), t64(2.0))


# --- matmul ----------------------------------------------------------------------------------------------------------
MATMUL_SHAPES = [((3, 4), (4, 2)), ((1, 4), (4, 1)), ((2, 3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 2)),
                 ((3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((1, 3, 4), (2, 4, 2)), ((4,), (4, 2)), ((3, 4), (4,)),
                 ((2, 3, 4), (4,)), ((4,), (2, 4, 3)), ((4,), (4,))]


@pytest.mark.parametrize("requires", [(True, True), (True, False), (False, True)], ids=["both", "a", "b"])
@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul(shapes, requires, rng):
    a, b = _normal(rng, shapes[0]), _normal(rng, shapes[1])
    _check(lambda x, y: x @ y, [a, b], np.matmul(a, b), requires)
    _check(autograd.matmul, [a, b], np.matmul(a, b), requires)


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((4,), (3,)), ((2, 3), (2,)), ((2, 3, 4), (3, 4, 2))], ids=str)
def test_matmul_mismatched_sizes_raise(shapes):
    a, b = t64(np.ones(shapes[0])), t64(np.ones(shapes[1]))
    with pytest.raises(ValueError):
        a @ b


# --- reductions ------------------------------------------------------------------------------------------------------
AXES = [None, 0, 1, 2, -1, -3, (0, 2), (2, 0), (-1, 0), (0, 1, 2), ()]
REDUCTIONS = [("sum", autograd.sum, np.sum, _normal), ("mean", autograd.mean, np.mean, _normal),
              ("max", autograd.max, np.max, _distinct)]


@pytest.mark.parametrize("keepdims", [False, True], ids=["drop", "keep"])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("name, op, np_op, draw", REDUCTIONS, ids=[r[0] for r in REDUCTIONS])
def test_reduction(name, op, np_op, draw, axis, keepdims, rng):
    x = draw(rng, (2, 3, 4))
    expected = np_op(x, axis=None if axis == () else axis, keepdims=keepdims)   # axis=(): every axis, as PyTorch
    _check(lambda t: op(t, axis=axis, keepdims=keepdims), [x], expected)
    _check(lambda t: getattr(t, name)(axis=axis, keepdims=keepdims), [x], expected)


@pytest.mark.parametrize("name, op, np_op, draw", REDUCTIONS, ids=[r[0] for r in REDUCTIONS])
def test_reduction_of_0d_and_1d(name, op, np_op, draw, rng):
    for shape in [(), (1,), (5,)]:
        x = draw(rng, shape)
        _check(op, [x], np_op(x))


@pytest.mark.parametrize("axis", [3, -4, (0, 3)], ids=str)
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_reduction_axis_out_of_range(name, axis):
    with pytest.raises(ValueError):
        getattr(autograd, name)(t64(np.ones((2, 3, 4))), axis=axis)


def test_max_ties_share_the_gradient():
    x = t64([1.0, 3.0, 3.0])
    y = autograd.max(x)
    _close(y, 3.0)
    y.backward()
    _close(x.grad, [0.0, 0.5, 0.5])


def test_max_ties_along_an_axis():
    x = t64([[2.0, 2.0, 1.0], [0.0, 5.0, 5.0], [4.0, 4.0, 4.0]])
    y = autograd.max(x, axis=1)
    _close(y, [2.0, 5.0, 4.0])
    y.backward(backend.asarray(np.array([1.0, 10.0, 3.0])))
    _close(x.grad, [[0.5, 0.5, 0.0], [0.0, 5.0, 5.0], [1.0, 1.0, 1.0]])


def test_max_ties_keepdims_and_tuple_axis():
    x = t64([[[1.0, 7.0], [7.0, 0.0]], [[2.0, 2.0], [2.0, 2.0]]])    # (2, 2, 2)
    y = x.max(axis=(1, 2), keepdims=True)
    _close(y, [[[7.0]], [[2.0]]])
    y.sum().backward()
    _close(x.grad, [[[0.0, 0.5], [0.5, 0.0]], [[0.25, 0.25], [0.25, 0.25]]])


# --- shape -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 6), (-1,), (2, -1, 2), (24, 1), (1, 2, 12), (2, 3, 4)], ids=str)
def test_reshape(shape, rng):
    x = _normal(rng, (2, 3, 4))
    _check(lambda t: autograd.reshape(t, shape), [x], x.reshape(shape))
    _check(lambda t: t.reshape(*shape), [x], x.reshape(shape))
    _check(lambda t: t.reshape(shape), [x], x.reshape(shape))


@pytest.mark.parametrize("axes", [(2, 0, 1), (0, 2, 1), (1, 0, 2), (0, 1, 2), (-1, 0, 1), (2, 1, 0)], ids=str)
def test_permute(axes, rng):
    x = _normal(rng, (2, 3, 4))
    expected = np.transpose(x, axes)
    _check(lambda t: autograd.permute(t, axes), [x], expected)
    _check(lambda t: t.permute(*axes), [x], expected)


@pytest.mark.parametrize("axes", [(0, 0, 1), (0, 1), (0, 1, 3)], ids=str)
def test_permute_rejects_non_permutations(axes):
    with pytest.raises((ValueError, IndexError)):
        autograd.permute(t64(np.ones((2, 3, 4))), axes)


@pytest.mark.parametrize("pair", [(-2, -1), (0, 2), (-3, -1), (1, 1), (0, 1)], ids=str)
def test_transpose(pair, rng):
    x = _normal(rng, (2, 3, 4))
    _check(lambda t: autograd.transpose(t, *pair), [x], np.swapaxes(x, *pair))
    _check(lambda t: t.transpose(*pair), [x], np.swapaxes(x, *pair))


def test_transpose_defaults_and_T(rng):
    x = _normal(rng, (2, 3, 4))
    _check(lambda t: t.transpose(), [x], np.swapaxes(x, -2, -1))
    _check(lambda t: t.T, [x], np.swapaxes(x, -2, -1))


# --- getitem ---------------------------------------------------------------------------------------------------------
MASK = np.array([[True, False, True, True], [False, False, False, True], [True, True, False, False]])
INDICES = {
    "int": 1, "negative int": -1, "int pair": (1, 2), "slices": (slice(1, None), slice(None, None, 2)),
    "reversed": slice(None, None, -1), "column": (slice(None), 1), "empty slice": slice(2, 2),
    "ellipsis, None": (Ellipsis, None), "None, ellipsis, int": (None, Ellipsis, 1), "None": None,
    "repeated rows": np.array([0, 0, 2, 1, 0]), "repeated pairs": (np.array([0, 0, 1, 2]), np.array([3, 3, 0, 3])),
    "repeated cols list": (slice(None), [3, 3, 0]), "2-D index array": np.array([[0, 2], [2, 2]]),
    "negative repeated": np.array([-1, 2, -3]), "array and slice": (np.array([2, 0, 2]), slice(1, 3)),
    "bool mask": MASK, "bool rows": np.array([True, False, True]), "bool cols": (slice(None), MASK[0]),
}


@pytest.mark.parametrize("name", list(INDICES), ids=list(INDICES))
def test_getitem(name, rng):
    index = INDICES[name]
    x = _normal(rng, (3, 4))
    _check(lambda t: t[_dev(index)], [x], x[index])
    _check(lambda t: autograd.getitem(t, _dev(index)), [x], x[index])


def test_getitem_repeated_indices_sum_their_gradients():
    x = t64([10.0, 20.0, 30.0])
    y = x[backend.asarray(np.array([0, 0, 2, 0]))]
    _close(y, [10.0, 10.0, 30.0, 10.0])
    y.backward(backend.asarray(np.array([1.0, 2.0, 4.0, 8.0])))
    _close(x.grad, [11.0, 0.0, 4.0])


def test_getitem_with_a_tensor_index(rng):
    x = _normal(rng, (3, 4))
    index = np.array([1, 1, 0])
    _check(lambda t: t[Tensor(backend.asarray(index))], [x], x[index])
    _check(lambda t: t[Tensor(backend.asarray(index)), 2], [x], x[index, 2])


# --- concatenate and stack -------------------------------------------------------------------------------------------
CONCAT_CASES = [(0, [(2, 3), (1, 3), (3, 3)]), (1, [(2, 1), (2, 3), (2, 2)]), (-1, [(2, 3, 1), (2, 3, 2)]),
                (-2, [(2, 1, 2), (2, 3, 2)]), (0, [(4,)]), (0, [(2,), (3,)])]


@pytest.mark.parametrize("axis, shapes", CONCAT_CASES, ids=str)
def test_concatenate(axis, shapes, rng):
    arrays = [_normal(rng, s) for s in shapes]
    expected = np.concatenate(arrays, axis=axis)
    _check(lambda *ts: autograd.concatenate(ts, axis=axis), arrays, expected)
    if len(arrays) > 1:    # one input a constant: only the others are checked
        requires = (False,) + (True,) * (len(arrays) - 1)
        _check(lambda *ts: autograd.concatenate(list(ts), axis=axis), arrays, expected, requires)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_stack(axis, rng):
    arrays = [_normal(rng, (2, 3)) for _ in range(3)]
    expected = np.stack(arrays, axis=axis)
    _check(lambda *ts: autograd.stack(ts, axis=axis), arrays, expected)
    _check(lambda *ts: autograd.stack(list(ts), axis=axis), arrays, expected, (True, False, True))


def test_stack_of_one(rng):
    x = _normal(rng, (2, 3))
    _check(lambda t: autograd.stack([t], axis=1), [x], np.stack([x], axis=1))


# --- where and masked_fill -------------------------------------------------------------------------------------------
WHERE_SHAPES = [((3, 4), (3, 4), (3, 4)), ((3, 4), (3, 1), (4,)), ((3, 1), (1, 4), ()), ((2, 3, 4), (3, 4), (2, 1, 1)),
                ((4,), (3, 4), (3, 4)), ((2, 1, 1), (3, 1), (1, 4))]


@pytest.mark.parametrize("requires", [(True, True), (True, False), (False, True)], ids=["both", "a", "b"])
@pytest.mark.parametrize("shapes", WHERE_SHAPES, ids=str)
def test_where(shapes, requires, rng):
    condition = np.asarray(rng.random(shapes[0]) < 0.5)
    a, b = _normal(rng, shapes[1]), _normal(rng, shapes[2])
    cond = backend.asarray(condition)
    _check(lambda x, y: autograd.where(cond, x, y), [a, b], np.where(condition, a, b), requires)


def test_where_with_python_numbers(rng):
    condition = np.asarray(rng.random((3, 4)) < 0.5)
    x = _normal(rng, (3, 4))
    cond = backend.asarray(condition)
    _check(lambda t: autograd.where(cond, 0.5, t), [x], np.where(condition, 0.5, x))
    _check(lambda t: autograd.where(cond, t, -2.0), [x], np.where(condition, x, -2.0))


def test_where_rejects_a_non_boolean_condition():
    with pytest.raises(TypeError):
        autograd.where(backend.asarray(np.array([1, 0])), t64([1.0, 2.0]), t64([3.0, 4.0]))


def test_where_gradient_goes_only_to_the_chosen_branch():
    condition = np.array([[True, False, True], [False, False, True]])
    a = t64([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    b = t64([10.0, 20.0, 30.0])                                       # broadcast over the rows
    y = autograd.where(backend.asarray(condition), a, b)
    _close(y, [[1.0, 20.0, 3.0], [10.0, 20.0, 6.0]])
    y.backward(backend.asarray(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])))
    _close(a.grad, [[1.0, 0.0, 3.0], [0.0, 0.0, 6.0]])
    _close(b.grad, [4.0, 7.0, 0.0])                                  # column sums of the unchosen positions


@pytest.mark.parametrize("mask_shape", [(3, 4), (3, 1), (4,), ()], ids=str)
@pytest.mark.parametrize("value", [0.5, -30.0, 0])   # finite: a fill of -1e9 would swamp the difference quotient
def test_masked_fill(mask_shape, value, rng):
    mask = np.asarray(rng.random(mask_shape) < 0.5)
    x = _normal(rng, (3, 4))
    expected = np.where(mask, value, x)
    m = backend.asarray(mask)
    _check(lambda t: autograd.masked_fill(t, m, value), [x], expected)
    _check(lambda t: t.masked_fill(m, value), [x], expected)


def test_masked_fill_minus_inf_then_exp_has_zero_gradient_and_no_nan():
    x_host = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5], [3.0, 1.5, 0.25]])
    mask = np.array([[False, True, False], [True, True, True], [False, False, False]])   # row 1 fully masked
    x = t64(x_host)
    filled = autograd.masked_fill(x, backend.asarray(mask), float("-inf"))
    assert np.all(np.isneginf(host(filled)[mask]))
    y = filled.exp()
    _close(y, np.where(mask, 0.0, np.exp(x_host)))
    y.sum().backward()
    grad = host(x.grad)
    assert not np.any(np.isnan(grad))
    np.testing.assert_array_equal(grad[mask], 0.0)
    np.testing.assert_allclose(grad[~mask], np.exp(x_host[~mask]), rtol=1e-12)


# --- sum_to ----------------------------------------------------------------------------------------------------------
G = np.arange(6.0).reshape(2, 3)           # [[0, 1, 2], [3, 4, 5]]
SUM_TO_CASES = [
    ((2, 3), G),
    ((3,), [3.0, 5.0, 7.0]),
    ((1, 3), [[3.0, 5.0, 7.0]]),
    ((2, 1), [[3.0], [12.0]]),
    ((1, 1), [[15.0]]),
    ((1,), [15.0]),
    ((), 15.0),
]


@pytest.mark.parametrize("shape, expected", SUM_TO_CASES, ids=[str(c[0]) for c in SUM_TO_CASES])
def test_sum_to_values(shape, expected):
    out = autograd.sum_to(backend.asarray(G), shape)
    assert out.shape == shape
    np.testing.assert_array_equal(backend.to_numpy(out), expected)


def test_sum_to_leading_and_stretched_axes():
    g = backend.asarray(np.ones((4, 3, 5)))
    out = autograd.sum_to(g, (3, 1))                   # sums the added axis 0 and the stretched axis 2: 4 * 5
    assert out.shape == (3, 1)
    np.testing.assert_array_equal(backend.to_numpy(out), np.full((3, 1), 20.0))


def test_sum_to_keeps_size_1_axes_that_were_not_stretched():
    g = backend.asarray(np.arange(6.0).reshape(2, 1, 3))
    out = autograd.sum_to(g, (1, 3))                   # only the leading axis is summed
    assert out.shape == (1, 3)
    np.testing.assert_array_equal(backend.to_numpy(out), [[3.0, 5.0, 7.0]])
    out = autograd.sum_to(g, (2, 1, 1))
    np.testing.assert_array_equal(backend.to_numpy(out), [[[3.0]], [[12.0]]])


def test_sum_to_same_shape_is_unchanged():
    g = backend.asarray(G)
    assert autograd.sum_to(g, (2, 3)) is g


# --- float32 stays float32, through forward and backward -------------------------------------------------------------
FLOAT32_OPS = {
    "add": lambda x: x + x * 0.5, "div": lambda x: 1.0 / (x * x + 1.0), "pow": lambda x: (x * x + 1.0) ** 0.5,
    "exp": lambda x: x.exp(), "log": lambda x: (x * x + 1.0).log(), "tanh": lambda x: x.tanh(),
    "relu": lambda x: x.relu(), "sum": lambda x: x.sum(axis=0), "mean": lambda x: x.mean(axis=1, keepdims=True),
    "max": lambda x: x.max(axis=-1), "reshape": lambda x: x.reshape(-1), "permute": lambda x: x.permute(1, 0),
    "getitem": lambda x: x[backend.asarray(np.array([0, 0, 1]))], "matmul": lambda x: x @ x.T,
    "concatenate": lambda x: autograd.concatenate([x, x], axis=1), "stack": lambda x: autograd.stack([x, x]),
    "masked_fill": lambda x: x.masked_fill(backend.asarray(np.array([True, False, True])), float("-inf")).exp(),
}


@pytest.mark.parametrize("name", list(FLOAT32_OPS), ids=list(FLOAT32_OPS))
def test_float32_in_float32_out(name, rng):
    x = Tensor(backend.asarray(rng.standard_normal((2, 3)).astype(np.float32)), requires_grad=True)
    y = FLOAT32_OPS[name](x)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32 and x.grad.shape == (2, 3)


# --- each operator records the primitive Function whose backward the tests above check -------------------------------
_A, _B = np.arange(1.0, 7.0).reshape(2, 3), np.arange(2.0, 8.0).reshape(2, 3)
_RECORDS = [
    (autograd.ops.Add, lambda a, b: a + b), (autograd.ops.Sub, lambda a, b: a - b),
    (autograd.ops.Mul, lambda a, b: a * b), (autograd.ops.Div, lambda a, b: a / b),
    (autograd.ops.Neg, lambda a, b: -a), (autograd.ops.Pow, lambda a, b: a ** 2),
    (autograd.ops.Exp, lambda a, b: a.exp()), (autograd.ops.Log, lambda a, b: a.log()),
    (autograd.ops.Tanh, lambda a, b: a.tanh()), (autograd.ops.ReLU, lambda a, b: a.relu()),
    (autograd.ops.Sum, lambda a, b: a.sum()), (autograd.ops.Mean, lambda a, b: a.mean(0)),
    (autograd.ops.Max, lambda a, b: a.max(1)), (autograd.ops.Reshape, lambda a, b: a.reshape(3, 2)),
    (autograd.ops.Permute, lambda a, b: a.T), (autograd.ops.GetItem, lambda a, b: a[0]),
    (autograd.ops.Concatenate, lambda a, b: autograd.concatenate([a, b])),
    (autograd.ops.Stack, lambda a, b: autograd.stack([a, b])),
    (autograd.ops.Where, lambda a, b: autograd.where(backend.asarray(_A > 3), a, b)),
    (autograd.ops.MatMul, lambda a, b: a @ b.T),
]


@pytest.mark.parametrize("function, call", _RECORDS, ids=[f.__name__ for f, _ in _RECORDS])
def test_operator_records_its_primitive_function(function, call):
    """The node of the result is the Function named here, so the gradchecks above test that class's backward."""
    out = call(t64(_A), t64(_B))
    assert out._node.function is function


def test_permute_rejects_out_of_range_axes():
    with pytest.raises(ValueError, match=r"permute: axes\[2\] must be an axis of a tensor with 3 axes, an int in "
                                         r"\[-3, 3\), got 5"):
        autograd.permute(t64(np.zeros((2, 3, 4))), (0, 1, 5))


def test_reduction_accepts_numpy_integer_axis():
    x = np.arange(6.0).reshape(2, 3)
    _close(t64(x).sum(axis=np.int64(0)), x.sum(axis=0))


def test_gradcheck_leaves_a_non_contiguous_input_as_it_was():
    base = t64(np.arange(12.0).reshape(3, 4))
    x = Tensor(base.data.T, requires_grad=True)          # a transposed view
    before = x.data
    assert gradcheck(lambda t: t * t, [x])
    assert x.data is before and x.grad is None
