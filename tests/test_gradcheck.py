"""gradcheck itself: it passes on correct backwards and raises GradcheckError, naming input, index, analytic and
numeric, on deliberately wrong ones — off by a factor 1.1, of the wrong sign, or wrong in a single element — in both
modes: small inputs (element by element, at most ``max_elements`` elements) and large inputs (random directions).
It rejects float32 inputs with TypeError and leaves its inputs as it found them.
"""
import numpy as np
import pytest

import autograd
from autograd import Function, GradcheckError, Tensor, backend, gradcheck
from tests.conftest import host, t64

SMALL = (3, 4)      # 12 elements: element-by-element mode (default max_elements = 400)
LARGE = (30, 30)    # 900 elements: random-directions mode


class Square(Function):
    """out = x², dx = 2x g (correct)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        return (2 * x * g,)


class SquareOffBy10Percent(Square):
    """out = x², backward 1.1 · 2x g (wrong)."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        return (1.1 * 2 * x * g,)


class SquareWrongSign(Square):
    """out = x², backward −2x g (wrong)."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        return (-2 * x * g,)


class SquareWrongAtOneElement(Square):
    """out = x², backward correct except at index (1, 2) of a (3, 4) input, where it is doubled."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        dx = 2 * x * g
        dx[1, 2] *= 2
        return (dx,)


class Product(autograd.ops.Mul):
    """out = a * b (the engine's Mul forward) with a correct da and a wrong db (= 1.1 · g a)."""

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        return g * b, 1.1 * g * a


def _input(rng, shape):
    return t64(rng.uniform(0.5, 2.0, shape) * np.where(rng.random(shape) < 0.5, -1.0, 1.0))


# --- passes ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [SMALL, LARGE, ()], ids=["small", "large", "scalar"])
def test_passes_on_a_correct_backward(shape, rng):
    assert gradcheck(Square.apply, [_input(rng, shape)]) is True


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small", "large"])
def test_passes_on_composed_primitives(shape, rng):
    x, y = _input(rng, shape), _input(rng, shape)
    assert gradcheck(lambda a, b: (a * b + a.tanh() / b).sum(axis=0), [x, y])


def test_only_inputs_that_require_grad_are_checked(rng):
    x, c = _input(rng, SMALL), _input(rng, SMALL)
    c.requires_grad = False
    assert gradcheck(Product.apply, [x, c])    # Product's wrong db is never used


# --- fails -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [SquareOffBy10Percent, SquareWrongSign], ids=["factor 1.1", "wrong sign"])
@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small", "large"])
def test_raises_on_a_wrong_backward(bad, shape, rng):
    with pytest.raises(GradcheckError) as info:
        gradcheck(bad.apply, [_input(rng, shape)])
    message = str(info.value)
    for word in ("input", "index", "analytic", "numeric"):
        assert word in message, message


def test_small_mode_names_the_wrong_element(rng):
    with pytest.raises(GradcheckError, match=r"input 0, index \(1, 2\)"):
        gradcheck(SquareWrongAtOneElement.apply, [_input(rng, SMALL)])


def test_small_mode_names_the_wrong_input(rng):
    with pytest.raises(GradcheckError, match=r"input 1, index \(\d+, \d+\)"):
        gradcheck(Product.apply, [_input(rng, SMALL), _input(rng, SMALL)])


def test_large_mode_names_a_direction(rng):
    with pytest.raises(GradcheckError, match=r"index direction \d+"):
        gradcheck(Product.apply, [_input(rng, LARGE), _input(rng, LARGE)])


def test_max_elements_selects_the_mode(rng):
    """The same small input, forced into random-directions mode, still catches the error."""
    with pytest.raises(GradcheckError, match="direction"):
        gradcheck(SquareOffBy10Percent.apply, [_input(rng, SMALL)], max_elements=0)


def test_gradcheck_error_is_an_assertion_error():
    assert issubclass(GradcheckError, AssertionError)


# --- refuses ---------------------------------------------------------------------------------------------------------
def test_rejects_float32_inputs(rng):
    x = Tensor(backend.asarray(rng.standard_normal(SMALL).astype(np.float32)), requires_grad=True)
    with pytest.raises(TypeError):
        gradcheck(Square.apply, [x])


def test_rejects_inputs_none_of_which_require_grad(rng):
    with pytest.raises(ValueError):
        gradcheck(Square.apply, [_input(rng, SMALL).detach()])


def test_output_independent_of_checked_inputs_fails(rng):
    x = _input(rng, SMALL)
    with pytest.raises(GradcheckError):
        gradcheck(lambda t: t.detach() * 2.0, [x])


# --- side effects ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small", "large"])
def test_leaves_inputs_unchanged(shape, rng):
    x = _input(rng, shape)
    before = host(x).copy()
    gradcheck(Square.apply, [x])
    np.testing.assert_array_equal(host(x), before)
    assert x.grad is None
