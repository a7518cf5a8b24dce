"""The primitive operations, each a Function with its forward and hand-written backward.

Every backward is the chain rule for one operation: given g = dL/d(out), return dL/d(input) for each input. Binary
operations broadcast like NumPy, so their backward ends with ``sum_to``: a gradient must be summed over every axis the
broadcast stretched (one input value was used at many output positions, so its gradient is the sum of theirs).

The functions at the bottom (``add``, ``matmul``, ``where`` ...) are what Tensor's operators call; they lift Python
numbers to tensors of the other operand's dtype (so ``x * 2.0`` stays float32) and refuse to mix float dtypes.
"""
import numbers
import operator

from autograd import backend
from autograd.backend import xp
from autograd.function import Function
from autograd.tensor import Tensor, as_data


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
def _normalize_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (operator.index(axis),) if not isinstance(axis, (tuple, list)) else tuple(map(operator.index, axis))
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} axes")
    return tuple(sorted(a % ndim for a in axes))


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
    """out = (1/n) Σ_axes x, n = number of elements averaged.   dx = g / n broadcast back over the axes."""

    @staticmethod
    def forward(ctx, x, axes, keepdims):
        ctx.shape, ctx.axes = x.shape, axes
        ctx.count = 1
        for a in axes:
            ctx.count *= x.shape[a]
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
        inverse = [0] * len(ctx.axes)
        for i, a in enumerate(ctx.axes):
            inverse[a] = i
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
        ctx.bounds = list(_cumsum([x.shape[axis] for x in xs])[:-1])
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


def _cumsum(values):
    total, out = 0, []
    for v in values:
        total += v
        out.append(total)
    return out


# --- the functions Tensor's operators call ---------------------------------------------------------------------------
def lift(x, like):
    """``x`` as a Tensor for a binary operation with the Tensor ``like``.

    Python and NumPy scalars take ``like``'s dtype (so ``float32 * 2.0`` stays float32). Raises TypeError when two floating
    tensors of different dtypes meet: minattn never casts silently (cast explicitly with ``Tensor(x, dtype=...)``).
    """
    if not isinstance(x, Tensor):
        if isinstance(x, numbers.Real) and not isinstance(x, numbers.Integral) and not backend.is_floating(like.dtype):
            raise TypeError(f"a float {x!r} meets a {like.dtype} tensor; convert the tensor to a float dtype first")
        if isinstance(x, numbers.Real) and getattr(x, "ndim", 0) == 0:   # Python and NumPy scalars
            return Tensor(xp.asarray(x, dtype=like.dtype))
        x = Tensor(as_data(x))
    if x.dtype != like.dtype and (backend.is_floating(x.dtype) or backend.is_floating(like.dtype)):
        raise TypeError(f"operands have dtypes {like.dtype} and {x.dtype}; cast one explicitly")
    return x


def _binary(function, a, b):
    if isinstance(a, Tensor):
        return function.apply(a, lift(b, a))
    b = lift(b, Tensor(0.0)) if not isinstance(b, Tensor) else b
    return function.apply(lift(a, b), b)


def add(a, b):
    """a + b, broadcasting."""
    return _binary(Add, a, b)


def sub(a, b):
    """a - b, broadcasting."""
    return _binary(Sub, a, b)


def mul(a, b):
    """a * b, broadcasting."""
    return _binary(Mul, a, b)


def div(a, b):
    """a / b, broadcasting."""
    return _binary(Div, a, b)


def neg(x):
    """-x."""
    return Neg.apply(x)


def pow(x, exponent):
    """x ** exponent for a Python number ``exponent`` (TypeError for a tensor exponent)."""
    if not isinstance(exponent, (int, float)):
        raise TypeError(f"pow: the exponent must be a Python number, got {type(exponent).__name__}")
    return Pow.apply(x, exponent=exponent)


def exp(x):
    """Elementwise e**x."""
    return Exp.apply(x)


def log(x):
    """Elementwise natural logarithm."""
    return Log.apply(x)


def tanh(x):
    """Elementwise tanh."""
    return Tanh.apply(x)


def relu(x):
    """Elementwise max(x, 0)."""
    return ReLU.apply(x)


def sum(x, axis=None, keepdims=False):
    """Sum over ``axis`` (int, tuple, or None for every axis)."""
    return Sum.apply(x, axes=_normalize_axes(axis, x.ndim), keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (int, tuple, or None for every axis)."""
    return Mean.apply(x, axes=_normalize_axes(axis, x.ndim), keepdims=keepdims)


def max(x, axis=None, keepdims=False):
    """Maximum over ``axis``; tied maxima share the gradient equally."""
    return Max.apply(x, axes=_normalize_axes(axis, x.ndim), keepdims=keepdims)


def reshape(x, shape):
    """``x`` with a new shape (one entry may be -1)."""
    return Reshape.apply(x, shape=tuple(shape))


def permute(x, axes):
    """``x`` with its axes reordered; ``axes`` must be a permutation of range(x.ndim) (ValueError otherwise)."""
    if any(not -x.ndim <= a < x.ndim for a in axes):
        raise ValueError(f"permute: axes {tuple(axes)} out of range for shape {x.shape}")
    axes = tuple(a % x.ndim for a in axes)
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"permute: axes {axes} are not a permutation of the {x.ndim} axes of shape {x.shape}")
    return Permute.apply(x, axes=axes)


def transpose(x, axis0=-2, axis1=-1):
    """``x`` with two axes swapped."""
    axes = list(range(x.ndim))
    axes[axis0], axes[axis1] = axes[axis1], axes[axis0]
    return permute(x, axes)


def getitem(x, index):
    """``x[index]``: slices, ints, None, Ellipsis, integer or boolean arrays (Tensors allowed as index arrays)."""
    if isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    elif isinstance(index, Tensor):
        index = index.data
    return GetItem.apply(x, index=index)


def _same_dtype(tensors, name):
    tensors = [t if isinstance(t, Tensor) else Tensor(as_data(t)) for t in tensors]
    if not tensors:
        raise ValueError(f"{name}: need at least one tensor")
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise TypeError(f"{name}: tensors have dtypes {sorted(map(str, dtypes))}; cast them to one explicitly")
    return tensors


def concatenate(tensors, axis=0):
    """Join tensors of one dtype along an existing axis (TypeError for mixed dtypes)."""
    tensors = _same_dtype(tensors, "concatenate")
    return Concatenate.apply(*tensors, axis=axis)


def stack(tensors, axis=0):
    """Join tensors of one shape and dtype along a new axis (TypeError for mixed dtypes)."""
    tensors = _same_dtype(tensors, "stack")
    return Stack.apply(*tensors, axis=axis)


def where(condition, a, b):
    """Elementwise ``a`` where the boolean ``condition`` is True, else ``b`` (all three broadcast).

    Raises TypeError if ``condition`` is not boolean.
    """
    condition = as_data(condition)
    if condition.dtype != backend.dtype_of("bool"):
        raise TypeError(f"where: condition must be boolean, got {condition.dtype}")
    if isinstance(a, Tensor):
        b = lift(b, a)
    else:
        b = b if isinstance(b, Tensor) else Tensor(as_data(b))
        a = lift(a, b)
    return Where.apply(a, b, condition=condition)


def masked_fill(x, mask, value):
    """A copy of ``x`` with ``value`` (a Python number, -inf allowed) where the boolean ``mask`` is True."""
    return where(mask, xp.asarray(value, dtype=x.dtype), x)


def matmul(a, b):
    """Matrix product with NumPy's rules: (..., n, k) @ (..., k, m) → (..., n, m), batch axes broadcast; a 1-D
    operand is a vector (its axis is added, then removed). Raises ValueError on mismatched inner sizes.
    """
    a = a if isinstance(a, Tensor) else lift(a, b)
    b = lift(b, a)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: operands must have at least one axis")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ValueError(f"matmul: inner sizes differ: {a.shape} @ {b.shape}")
    if a.ndim == 1:
        return reshape(matmul(reshape(a, (1, -1)), b), b.shape[:-2] + b.shape[-1:] if b.ndim > 1 else ())
    if b.ndim == 1:
        return reshape(matmul(a, reshape(b, (-1, 1))), a.shape[:-1])
    return MatMul.apply(a, b)

