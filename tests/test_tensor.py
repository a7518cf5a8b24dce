"""Tensor semantics and the backward engine: default dtypes and dtype mixing, gradient accumulation (across backward
calls and across uses of one tensor in a graph), topological order on diamond graphs, no recursion limit on deep
chains, the errors of ``backward`` (non-scalar without grad, twice without retain_graph, wrong-shape grad), no_grad,
detach, and the engine's check of the gradient shapes a Function's backward returns.

Every expected gradient here is worked out by hand from the formula in the test, never by the engine.
"""
import sys

import numpy as np
import pytest

import autograd
from autograd import Function, Tensor, backend, no_grad
from tests.conftest import host, t64


# --- construction and dtypes -----------------------------------------------------------------------------------------
def test_python_float_becomes_float32():
    assert Tensor(1.5).dtype == np.float32
    assert Tensor([1.0, 2.5]).dtype == np.float32
    assert Tensor([[1.0], [2.0]]).dtype == np.float32


def test_python_int_becomes_int64():
    assert Tensor(3).dtype == np.int64
    assert Tensor([1, 2, 3]).dtype == np.int64


def test_arrays_keep_their_dtype():
    assert Tensor(backend.asarray(np.zeros(2, dtype=np.float64))).dtype == np.float64
    assert Tensor(np.zeros(2, dtype=np.float64)).dtype == np.float64     # a host array (moved on CuPy)
    assert Tensor(1.5, dtype="float64").dtype == np.float64


def test_shape_facts():
    x = Tensor(np.zeros((2, 3, 4), dtype=np.float32))
    assert (x.shape, x.ndim, x.size, len(x)) == ((2, 3, 4), 3, 24, 2)


def test_requires_grad_on_int_tensor_raises():
    with pytest.raises(TypeError):
        Tensor([1, 2, 3], requires_grad=True)


def test_requires_grad_on_float_tensor_ok():
    x = Tensor([1.0, 2.0], requires_grad=True)
    assert x.requires_grad and x.is_leaf and x.grad is None


@pytest.mark.parametrize("expr", [lambda x: x * 2.0, lambda x: 2.0 * x, lambda x: x + 1, lambda x: 1 - x,
                                  lambda x: x / 3.0, lambda x: 3.0 / x, lambda x: x ** 2.0, lambda x: -x])
def test_python_numbers_keep_float32(expr):
    x = Tensor(np.array([1.0, 2.0, 4.0], dtype=np.float32), requires_grad=True)
    y = expr(x)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_float32_times_python_float_values():
    x = Tensor(np.array([1.0, 2.0], dtype=np.float32))
    np.testing.assert_array_equal(host(x * 2.5), np.array([2.5, 5.0], dtype=np.float32))


@pytest.mark.parametrize("op", [lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b, lambda a, b: a / b,
                                lambda a, b: a @ b])
def test_mixing_float32_and_float64_raises(op):
    a = Tensor(np.ones((2, 2), dtype=np.float32))
    b = Tensor(np.ones((2, 2), dtype=np.float64))
    with pytest.raises(TypeError):
        op(a, b)
    with pytest.raises(TypeError):
        op(b, a)


def test_int_tensor_times_python_float_is_not_truncated():
    """3 * 2.5 is 7.5: the float must not be silently cast to the int tensor's dtype (2.5 -> 2 gives 6).

    Either a float result or a TypeError ("minattn never casts silently", DESIGN §2) is acceptable; 6 is not.
    """
    i = Tensor(3)
    try:
        y = i * 2.5
    except TypeError:
        return
    assert float(host(y)) == 7.5, f"int64 tensor 3 * 2.5 gave {host(y)!r} (dtype {y.dtype})"


# --- gradient accumulation -------------------------------------------------------------------------------------------
def test_grad_accumulates_across_backward_calls():
    x = t64([1.0, -2.0, 3.0])
    (x * x).sum().backward()
    np.testing.assert_allclose(host(x.grad), [2.0, -4.0, 6.0])
    (x * x).sum().backward()                                      # a new graph; .grad sums (2x + 2x)
    np.testing.assert_allclose(host(x.grad), [4.0, -8.0, 12.0])
    (x * 5.0).sum().backward()
    np.testing.assert_allclose(host(x.grad), [9.0, -3.0, 17.0])


def test_tensor_used_twice_in_one_graph():
    x = t64([0.5, -1.0, 2.0])
    y = x * x + x                                                  # dy/dx = 2x + 1
    y.sum().backward()
    np.testing.assert_allclose(host(x.grad), [2.0, -1.0, 5.0])


def test_same_tensor_both_operands():
    x = t64([1.5, -3.0])
    (x + x).sum().backward()
    np.testing.assert_allclose(host(x.grad), [2.0, 2.0])
    x.grad = None
    (x * x * x).sum().backward()                                   # 3x^2
    np.testing.assert_allclose(host(x.grad), [6.75, 27.0])


def test_backward_with_explicit_grad():
    x = t64([[1.0, 2.0], [3.0, 4.0]])
    w = np.array([[0.5, -1.0], [2.0, 0.25]])
    (x * 3.0).backward(backend.asarray(w))
    np.testing.assert_allclose(host(x.grad), 3.0 * w)


# --- topological order -----------------------------------------------------------------------------------------------
def test_diamond():
    a = t64([1.0, -2.0, 0.5])
    b = a * 2.0               # b = 2a
    c = b * 3.0               # c = 6a      (consumes b)
    d = b + c                 # d = 8a      (consumes b again)
    d.sum().backward()
    np.testing.assert_allclose(host(a.grad), [8.0, 8.0, 8.0])


def test_nested_diamonds_need_a_topological_order():
    """b feeds c, e and f, and c feeds e and f: b's gradient is complete only after all three consumers ran.

    b = 2a, c = 3b = 6a, e = c + b = 8a, f = e * b + c = 16a² + 6a   =>   df/da = 32a + 6.
    Visiting b before c or e have contributed (a wrong order) would lose part of its gradient.
    """
    a = t64([1.0, -0.5, 2.0])
    b = a * 2.0
    c = b * 3.0
    e = c + b
    f = e * b + c
    f.sum().backward()
    np.testing.assert_allclose(host(a.grad), 32.0 * np.array([1.0, -0.5, 2.0]) + 6.0)


def test_ladder_of_diamonds():
    """h_{k+1} = h_k + 0.5 h_k uses h_k twice at every level: d h_n / d h_0 = 1.5^n."""
    a = t64([1.0, 2.0])
    h = a
    for _ in range(30):
        h = h + h * 0.5
    h.sum().backward()
    np.testing.assert_allclose(host(a.grad), [1.5 ** 30, 1.5 ** 30], rtol=1e-12)


class CountingIdentity(Function):
    """out = x; counts how often its backward runs."""
    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.copy()

    @staticmethod
    def backward(ctx, g):
        CountingIdentity.calls += 1
        return (g,)


def test_each_node_backward_runs_once():
    CountingIdentity.calls = 0
    a = t64([1.0, 2.0])
    b = CountingIdentity.apply(a)            # one node with three consumers
    out = b * 2.0 + b * b + b
    out.sum().backward()
    assert CountingIdentity.calls == 1
    np.testing.assert_allclose(host(a.grad), 2.0 + 2.0 * np.array([1.0, 2.0]) + 1.0)


def test_deep_chain_has_no_recursion_limit():
    depth = max(5000, 5 * sys.getrecursionlimit())
    x = t64([1.0, 2.0])
    h = x
    for _ in range(depth):
        h = h + 1.0
    h.sum().backward()
    np.testing.assert_allclose(host(x.grad), [1.0, 1.0])
    np.testing.assert_allclose(host(h), [1.0 + depth, 2.0 + depth])


def test_deep_chain_of_products():
    depth = 5000
    x = t64([1.0])
    h = x
    for _ in range(depth):
        h = h * 1.0001
    h.backward()
    np.testing.assert_allclose(host(x.grad), [1.0001 ** depth], rtol=1e-9)


# --- backward errors -------------------------------------------------------------------------------------------------
def test_backward_on_non_scalar_without_grad_raises():
    x = t64([1.0, 2.0, 3.0])
    with pytest.raises(RuntimeError):
        (x * 2.0).backward()


def test_backward_on_one_element_non_0d_is_fine():
    x = t64([[3.0]])
    (x * x).backward()
    np.testing.assert_allclose(host(x.grad), [[6.0]])


def test_backward_on_tensor_without_grad_raises():
    with pytest.raises(RuntimeError):
        Tensor(np.array(1.0)).backward()


def test_backward_twice_raises_and_mentions_retain_graph():
    x = t64([1.0, 2.0])
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_backward_twice_through_shared_subgraph_raises():
    x = t64([1.0, 2.0])
    h = x.exp()
    (h * 2.0).sum().backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        (h * 3.0).sum().backward()


def test_retain_graph_allows_a_second_backward():
    x = t64([1.0, 2.0])
    y = (x * x * x).sum()                                    # dy/dx = 3x^2
    y.backward(retain_graph=True)
    np.testing.assert_allclose(host(x.grad), [3.0, 12.0])
    y.backward()
    np.testing.assert_allclose(host(x.grad), [6.0, 24.0])  # accumulated


@pytest.mark.parametrize("shape", [(3,), (2, 1), (2,), (1, 1, 2), ()], ids=str)
def test_backward_with_wrong_shape_grad_raises(shape):
    x = t64([[1.0, 2.0]])                                    # (1, 2)
    y = x * 2.0
    with pytest.raises(RuntimeError):
        y.backward(backend.asarray(np.ones(shape)))


# --- no_grad and detach ----------------------------------------------------------------------------------------------
def test_no_grad_records_no_graph():
    x = t64([1.0, 2.0])
    with no_grad():
        assert not autograd.is_grad_enabled()
        y = (x * 3.0).exp().sum()
    assert autograd.is_grad_enabled()
    assert not y.requires_grad
    assert y.is_leaf
    np.testing.assert_allclose(host(y), np.exp(3.0) + np.exp(6.0))
    with pytest.raises(RuntimeError):
        y.backward()


def test_no_grad_nests_and_restores_after_an_exception():
    with no_grad():
        with no_grad():
            pass
        assert not autograd.is_grad_enabled()
    assert autograd.is_grad_enabled()
    with pytest.raises(KeyError):
        with no_grad():
            raise KeyError("boom")
    assert autograd.is_grad_enabled()


def test_detach_shares_data_and_stops_gradient():
    x = t64([1.0, -2.0])
    d = x.detach()
    assert not d.requires_grad and d.is_leaf
    assert d.data is x.data
    y = (d * x).sum()                                        # d is a constant: dy/dx = d
    y.backward()
    np.testing.assert_allclose(host(x.grad), [1.0, -2.0])
    assert d.grad is None


def test_detach_of_an_intermediate():
    x = t64([2.0])
    h = x * x
    y = (h.detach() * x).sum()                               # dy/dx = h = x^2 = 4 (no path through h)
    y.backward()
    np.testing.assert_allclose(host(x.grad), [4.0])


# --- the engine checks every gradient a Function returns --------------------------------------------------------------
class BadShapeBackward(Function):
    """out = 2x, but backward forgets to sum a broadcast: returns a gradient with an extra axis."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return (backend.xp.stack([g, g]),)


class BadDtypeBackward(Function):
    """out = 2x, backward returns a float32 gradient for a float64 input."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return ((2 * g).astype(backend.float32),)


@pytest.mark.parametrize("bad", [BadShapeBackward, BadDtypeBackward])
def test_wrong_gradient_from_a_function_names_it(bad):
    x = t64([1.0, 2.0, 3.0])
    y = bad.apply(x).sum()
    with pytest.raises(RuntimeError, match=bad.__name__):
        y.backward()


class TwoInputs(Function):
    """out = a * b with a backward that skips inputs that need no gradient."""
    seen = None

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        TwoInputs.seen = ctx.needs_input_grad
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        return (g * b if ctx.needs_input_grad[0] else None, g * a if ctx.needs_input_grad[1] else None)


def test_function_apply_with_a_constant_input():
    a = t64([1.0, 2.0])
    y = TwoInputs.apply(a, backend.asarray(np.array([3.0, 4.0])))
    assert TwoInputs.seen == (True, False)
    y.sum().backward()
    np.testing.assert_allclose(host(a.grad), [3.0, 4.0])


class _ForgetsOneGradient(autograd.ops.Mul):
    """The engine's Mul forward, with a backward that forgets db."""

    @staticmethod
    def backward(ctx, g):
        return (g * ctx.saved[1],)          # db forgotten


def test_backward_returning_too_few_gradients_raises():
    a, b = t64([1.0, 2.0]), t64([3.0, 4.0])
    with pytest.raises(RuntimeError, match="_ForgetsOneGradient.backward returned 1 gradients for 2 inputs"):
        _ForgetsOneGradient.apply(a, b).sum().backward()


def test_numpy_scalars_are_weak_like_python_numbers():
    x = Tensor([1.0, 2.0])
    assert (x * np.float64(2.5)).dtype == np.float32 and (x + np.int64(1)).dtype == np.float32
    np.testing.assert_array_equal(host(x * np.float64(2.5)), [2.5, 5.0])


def test_tensor_shares_a_backend_array_like_from_numpy():
    a = backend.asarray(np.zeros(3, dtype=np.float32))
    t = Tensor(a)
    assert t.data is a
