"""The primitive operations, each a Function with its forward and hand-written backward.

Every backward is the chain rule for one operation: given g = dL/d(out), return dL/d(input) for each input. Binary
operations broadcast like NumPy, so their backward ends with ``sum_to``: a gradient must be summed over every axis the
broadcast stretched (one input value was used at many output positions, so its gradient is the sum of theirs).

The checked public functions that Tensor's operators call (``add``, ``matmul``, ``where`` ..., with their argument
checks and the dtype policy of ``lift``) are API conveniences, out of the learner's path, in api.py and dtypes.py;
they are re-exported at the bottom of this file, so ``ops.matmul`` and ``ops.lift`` work as before.
"""
import itertools
import math

from autograd import backend
from autograd.backend import xp
from autograd.function import Function


def sum_to(grad, shape):
    """Sum ``grad`` down to ``shape``: the backward of broadcasting ``shape`` up to ``grad.shape``.

    Sums the leading axes the broadcast added and, keeping them, the axes where ``shape`` has size 1 but grad not.
    Example: x (3, 1) + y (4, 3, 5) → out (4, 3, 5); sum_to(g, (3, 1)) = g.sum(axis=(0, 2)) reshaped to (3, 1).
    """
    shape = tuple(shape)
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1)
    return grad.sum(axis=axes).reshape(shape) if axes else grad.reshape(shape)


# --- elementwise, binary ---------------------------------------------------------------------------------------------
class Add(Function):
    """out = a + b.   da = sum_to(g, a.shape), db = sum_to(g, b.shape)   (∂out/∂a = ∂out/∂b = 1)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a + b

    @staticmethod
    def backward(ctx, g):
        needs = ctx.needs_input_grad
        return (sum_to(g, ctx.shapes[0]) if needs[0] else None), (sum_to(g, ctx.shapes[1]) if needs[1] else None)


class Sub(Function):
    """out = a - b.   da = sum_to(g), db = -sum_to(g)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a - b

    @staticmethod
    def backward(ctx, g):
        needs = ctx.needs_input_grad
        return (sum_to(g, ctx.shapes[0]) if needs[0] else None), (-sum_to(g, ctx.shapes[1]) if needs[1] else None)


class Mul(Function):
    """out = a * b.   da = sum_to(g * b), db = sum_to(g * a)   (product rule)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        da = sum_to(g * b, a.shape) if ctx.needs_input_grad[0] else None
        db = sum_to(g * a, b.shape) if ctx.needs_input_grad[1] else None
        return da, db


class Div(Function):
    """out = a / b.   da = sum_to(g / b), db = sum_to(-g * out / b)   (∂(a/b)/∂b = -a/b² = -out/b)."""

    @staticmethod
    def forward(ctx, a, b):
        out = a / b
        ctx.save_for_backward(b, out)
        ctx.a_shape = a.shape
        return out

    @staticmethod
    def backward(ctx, g):
        b, out = ctx.saved
        da = sum_to(g / b, ctx.a_shape) if ctx.needs_input_grad[0] else None
        db = sum_to(-g * out / b, b.shape) if ctx.needs_input_grad[1] else None
        return da, db


# --- elementwise, unary ----------------------------------------------------------------------------------------------
class Neg(Function):
    """out = -x.   dx = -g."""

    @staticmethod
    def forward(ctx, x):
        return -x

    @staticmethod
    def backward(ctx, g):
        return (-g,)


class Pow(Function):
    """out = x ** p for a constant Python number p.   dx = g * p * x ** (p - 1)."""

    @staticmethod
    def forward(ctx, x, exponent):
        ctx.save_for_backward(x)
        ctx.exponent = exponent
        return x ** exponent

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        p = ctx.exponent
        return (g * (p * x ** (p - 1)),)


class Exp(Function):
    """out = e^x.   dx = g * out   (e^x is its own derivative; reuse the saved output)."""

    @staticmethod
    def forward(ctx, x):
        out = xp.exp(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (g * out,)


class Log(Function):
    """out = ln x.   dx = g / x."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return xp.log(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        return (g / x,)


class Tanh(Function):
    """out = tanh x.   dx = g * (1 - out²)."""

    @staticmethod
    def forward(ctx, x):
        out = xp.tanh(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (g * (1 - out * out),)


class ReLU(Function):
    """out = max(x, 0).   dx = g * [x > 0]   (the subgradient 0 is taken at x = 0)."""

    @staticmethod
    def forward(ctx, x):
        out = xp.maximum(x, 0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (g * (out > 0),)


# --- reductions ------------------------------------------------------------------------------------------------------
def _keepdims_shape(shape, axes):
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


class Sum(Function):
    """out = Σ_axes x.   dx = g broadcast back over the summed axes   (each x_i enters the sum once, with weight 1)."""

    @staticmethod
    def forward(ctx, x, axes, keepdims):
        ctx.shape, ctx.axes = x.shape, axes
        return x.sum(axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        g = g.reshape(_keepdims_shape(ctx.shape, ctx.axes))
        return (xp.broadcast_to(g, ctx.shape),)


class Mean(Function):
    """out = (1/n) Σ_axes x, n = number of elements averaged.   dx = g / n broadcast back over the axes.
    A mean over no element (n = 0) is NaN, as PyTorch's, without NumPy's "Mean of empty slice" warning (a warning of
    its own, which the engine's quiet floating-point state does not cover); its x has no element, so dx is empty."""

    @staticmethod
    def forward(ctx, x, axes, keepdims):
        ctx.shape, ctx.axes, ctx.count = x.shape, axes, math.prod(x.shape[a] for a in axes)
        if ctx.count == 0:
            return x.sum(axis=axes, keepdims=keepdims) / x.dtype.type(0)   # 0 / 0: NaN of the result's shape and dtype
        return x.mean(axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        g = g.reshape(_keepdims_shape(ctx.shape, ctx.axes)) / g.dtype.type(ctx.count)
        return (xp.broadcast_to(g, ctx.shape),)


class Max(Function):
    """out = max_axes x.   dx = g * [x == out] / (number of maxima)   (ties share the gradient equally, like amax)."""

    @staticmethod
    def forward(ctx, x, axes, keepdims):
        out = x.max(axis=axes, keepdims=True)
        is_max = x == out
        ctx.save_for_backward(is_max)
        ctx.axes = axes
        return out if keepdims else out.reshape([n for i, n in enumerate(out.shape) if i not in axes])

    @staticmethod
    def backward(ctx, g):
        (is_max,) = ctx.saved
        g = g.reshape(_keepdims_shape(is_max.shape, ctx.axes))
        share = is_max.astype(g.dtype) / is_max.sum(axis=ctx.axes, keepdims=True, dtype=g.dtype)
        return (g * share,)


# --- shape -----------------------------------------------------------------------------------------------------------
class Reshape(Function):
    """out = x viewed with a new shape.   dx = g reshaped back   (the elements are the same, only relabelled)."""

    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return (g.reshape(ctx.shape),)


class Permute(Function):
    """out = x with axes reordered, out.shape[i] = x.shape[axes[i]].   dx = g permuted by the inverse order."""

    @staticmethod
    def forward(ctx, x, axes):
        ctx.axes = axes
        return x.transpose(axes)

    @staticmethod
    def backward(ctx, g):
        inverse = [ctx.axes.index(i) for i in range(len(ctx.axes))]   # where each axis of x went
        return (g.transpose(inverse),)


class GetItem(Function):
    """out = x[index] (slices, integers, integer or boolean arrays).

    dx = zeros like x, then dx[index] += g with scatter_add: an element picked k times (a repeated integer index, as in
    an embedding lookup) receives the sum of its k gradients; plain assignment would keep only one of them.
    """

    @staticmethod
    def forward(ctx, x, index):
        ctx.shape, ctx.dtype, ctx.index = x.shape, x.dtype, index
        return x[index]

    @staticmethod
    def backward(ctx, g):
        dx = xp.zeros(ctx.shape, dtype=ctx.dtype)
        return (backend.scatter_add(dx, ctx.index, g),)


class Concatenate(Function):
    """out = concatenate(xs, axis).   dx_i = the slice of g that x_i filled (split g at the same boundaries)."""

    @staticmethod
    def forward(ctx, *xs, axis):
        ctx.axis = axis
        ctx.bounds = list(itertools.accumulate(x.shape[axis] for x in xs))[:-1]
        return xp.concatenate(xs, axis=axis)

    @staticmethod
    def backward(ctx, g):
        return tuple(xp.split(g, ctx.bounds, axis=ctx.axis))


class Stack(Function):
    """out = stack(xs, axis) (a new axis).   dx_i = g taken at index i of that axis."""

    @staticmethod
    def forward(ctx, *xs, axis):
        ctx.axis, ctx.count = axis, len(xs)
        return xp.stack(xs, axis=axis)

    @staticmethod
    def backward(ctx, g):
        return tuple(xp.take(g, i, axis=ctx.axis) for i in range(ctx.count))


class Where(Function):
    """out = where(condition, a, b), condition a constant boolean array.

    da = sum_to(g where condition else 0), db = sum_to(0 where condition else g): each output element came from
    exactly one of the two inputs, and only that one receives its gradient. ``masked_fill`` is where(mask, value, x).
    """

    @staticmethod
    def forward(ctx, a, b, condition):
        ctx.save_for_backward(condition)
        ctx.shapes = a.shape, b.shape
        return xp.where(condition, a, b)

    @staticmethod
    def backward(ctx, g):
        (condition,) = ctx.saved
        zero = xp.zeros((), dtype=g.dtype)
        da = sum_to(xp.where(condition, g, zero), ctx.shapes[0]) if ctx.needs_input_grad[0] else None
        db = sum_to(xp.where(condition, zero, g), ctx.shapes[1]) if ctx.needs_input_grad[1] else None
        return da, db


class MatMul(Function):
    """out = a @ b, a (..., n, k), b (..., k, m) → (..., n, m), batch axes broadcast.

    da = g @ bᵀ, db = aᵀ @ g (ᵀ swaps the last two axes), each summed over broadcast batch axes:
    out_ij = Σ_k a_ik b_kj, so ∂out_ij/∂a_ik = b_kj and ∂out_ij/∂b_kj = a_ik.
    """

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        da = sum_to(g @ b.swapaxes(-1, -2), a.shape) if ctx.needs_input_grad[0] else None
        db = sum_to(a.swapaxes(-1, -2) @ g, b.shape) if ctx.needs_input_grad[1] else None
        return da, db


# --- re-exported from dtypes.py and api.py: the library calls ops.lift, ops.matmul, ops.where ... ---------------------
from autograd.dtypes import lift  # noqa: E402,F401
from autograd.api import (add, sub, mul, div, neg, pow, exp, log, tanh, relu, sum, mean, max,  # noqa: E402,F401
                          reshape, permute, transpose, getitem, concatenate, stack, where, masked_fill, matmul)
