"""The public functions of the engine (an API convenience, out of the learner's path): ``add`` … ``matmul``.

Each checks its arguments (through the vocabulary of checks.py: ``axes``, ``shape``, ``permutation`` ...), applies
the dtype policy (dtypes.py: a Python number takes the other operand's dtype, two
float dtypes never mix) and calls one primitive Function of ops.py, where the math is. Tensor's operators are these
functions (``x + y`` is ``add(x, y)``, attached by tensor_methods.py); ops.py re-exports them (``ops.matmul``).

These names shadow the builtins ``sum``, ``max`` and ``pow`` inside this module, as in NumPy.
"""
from autograd import backend, checks
from autograd.backend import xp
from autograd.dtypes import as_data, lift, same_dtype
from autograd.ops import (Add, Sub, Mul, Div, Neg, Pow, Exp, Log, Tanh, ReLU, Sum, Mean, Max, Reshape, Permute,
                          GetItem, Concatenate, Stack, Where, MatMul)
from autograd.tensor import Tensor


def _binary(function, a, b):
    if isinstance(a, Tensor):
        b = lift(b, a)
    else:
        b = lift(b, Tensor(0.0)) if not isinstance(b, Tensor) else b
        a = lift(a, b)
    try:
        return function.apply(a, b)
    except ValueError:                   # NumPy's "could not be broadcast" names no argument: say which shapes
        _check_broadcast(function.__name__.lower(), a, b)
        raise


def _check_broadcast(where, a, b):
    """ValueError in the checks' format when the shapes of ``a`` and ``b`` do not broadcast (NumPy's rule)."""
    checks.broadcastable("b", (a.shape, b.shape), f"broadcastable with a of shape {a.shape}", b, where)


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
    return Pow.apply(x, exponent=checks.number("exponent", exponent, "pow"))


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


def _reduction(function, where, x, axis, keepdims):
    checks.tensor("x", x, where)
    axes = checks.axes("axis", axis, x.ndim, where)
    return function.apply(x, axes=axes, keepdims=checks.boolean("keepdims", keepdims, where))


def sum(x, axis=None, keepdims=False):
    """Sum over ``axis`` (int, tuple, or None for every axis). TypeError for a bool or float axis (``axis=True`` is
    not axis 1), ValueError for an axis out of range or given twice."""
    return _reduction(Sum, "sum", x, axis, keepdims)


def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (int, tuple, or None for every axis); errors as ``sum``."""
    return _reduction(Mean, "mean", x, axis, keepdims)


def max(x, axis=None, keepdims=False):
    """Maximum over ``axis``; tied maxima share the gradient equally; errors as ``sum``, and ValueError over an
    axis of length 0 (a maximum of nothing has no value; PyTorch refuses it too)."""
    checks.tensor("x", x, "max")
    axes = checks.axes("axis", axis, x.ndim, "max")
    if any(x.shape[a] == 0 for a in axes):
        checks.fail("axis", "axes of non-zero length (the maximum of nothing has no value)", axis, "max",
                    received=f"{axis!r} over x of shape {x.shape}")
    return Max.apply(x, axes=axes, keepdims=checks.boolean("keepdims", keepdims, "max"))


def reshape(x, shape):
    """``x`` with a new shape (one entry may be -1). TypeError for non-int sizes, ValueError for a shape that does not
    hold x's elements."""
    checks.tensor("x", x, "reshape")
    return Reshape.apply(x, shape=checks.shape("shape", shape, x.size, "reshape"))


def permute(x, axes):
    """``x`` with its axes reordered; ``axes`` must be a permutation of range(x.ndim) (ValueError otherwise)."""
    checks.tensor("x", x, "permute")
    return Permute.apply(x, axes=checks.permutation("axes", axes, x.ndim, "permute"))


def transpose(x, axis0=-2, axis1=-1):
    """``x`` with two axes swapped (TypeError / ValueError as ``checks.axis`` for a bad axis)."""
    checks.tensor("x", x, "transpose")
    axes = list(range(x.ndim))
    axis0 = checks.axis("axis0", axis0, x.ndim, "transpose")
    axis1 = checks.axis("axis1", axis1, x.ndim, "transpose")
    axes[axis0], axes[axis1] = axes[axis1], axes[axis0]
    return Permute.apply(x, axes=tuple(axes))


def getitem(x, index):
    """``x[index]``: slices, ints, None, Ellipsis, integer or boolean arrays (Tensors allowed as index arrays)."""
    if isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    elif isinstance(index, Tensor):
        index = index.data
    return GetItem.apply(x, index=index)


def concatenate(tensors, axis=0):
    """Join tensors of one dtype along an existing axis (TypeError for mixed dtypes; ValueError for a bad axis or
    shapes that differ elsewhere than on it)."""
    tensors = same_dtype(tensors, "concatenate")
    ndim = tensors[0].ndim
    axis = checks.axis("axis", axis, ndim, "concatenate")
    shapes = [t.shape for t in tensors]
    if any(len(s) != ndim or s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:] for s in shapes):
        checks.fail("tensors", f"tensors whose shapes agree except on axis {axis}", tensors, "concatenate",
                    received=f"shapes {shapes}")
    return Concatenate.apply(*tensors, axis=axis)


def stack(tensors, axis=0):
    """Join tensors of one shape and dtype along a new axis (TypeError for mixed dtypes; ValueError for a bad axis
    or differing shapes)."""
    tensors = same_dtype(tensors, "stack")
    axis = checks.axis("axis", axis, tensors[0].ndim + 1, "stack")
    shapes = [t.shape for t in tensors]
    if any(s != shapes[0] for s in shapes):
        checks.fail("tensors", "tensors of one shape", tensors, "stack", received=f"shapes {shapes}")
    return Stack.apply(*tensors, axis=axis)


def where(condition, a, b):
    """Elementwise ``a`` where the boolean ``condition`` is True, else ``b`` (all three broadcast).

    Raises TypeError if ``condition`` is not boolean.
    """
    condition = as_data(condition)
    if condition.dtype != backend.dtype_of("bool"):
        checks.fail("condition", "a boolean array", condition, "where", TypeError)
    if isinstance(a, Tensor):
        b = lift(b, a)
    else:
        b = b if isinstance(b, Tensor) else Tensor(as_data(b))
        a = lift(a, b)
    checks.broadcastable("condition, a, b", (condition.shape, a.shape, b.shape), "shapes that broadcast together",
                         condition, "where", received=f"shapes {condition.shape}, {a.shape}, {b.shape}")
    return Where.apply(a, b, condition=condition)


def masked_fill(x, mask, value):
    """A copy of ``x`` with ``value`` (a Python number, -inf allowed) where the boolean ``mask`` is True."""
    checks.tensor("x", x, "masked_fill")
    return where(mask, xp.asarray(checks.number("value", value, "masked_fill"), dtype=x.dtype), x)


def matmul(a, b):
    """Matrix product with NumPy's rules: (..., n, k) @ (..., k, m) → (..., n, m), batch axes broadcast; a 1-D
    operand is a vector (its axis is added, then removed). Raises ValueError on mismatched inner sizes or batch axes
    that do not broadcast.
    """
    a = a if isinstance(a, Tensor) else lift(a, b)
    b = lift(b, a)
    for name, t in (("a", a), ("b", b)):
        if t.ndim == 0:
            checks.fail(name, "a tensor with at least one axis", t, "matmul")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        checks.fail("b", f"(..., {a.shape[-1]}, m) or ({a.shape[-1]},) to match a of shape {a.shape}", b, "matmul")
    if a.ndim > 2 and b.ndim > 2:
        checks.broadcastable("b", (a.shape[:-2], b.shape[:-2]), f"batch axes that broadcast with a's {a.shape[:-2]}",
                             b, "matmul")
    if a.ndim == 1:
        return reshape(matmul(reshape(a, (1, -1)), b), b.shape[:-2] + b.shape[-1:] if b.ndim > 1 else ())
    if b.ndim == 1:
        return reshape(matmul(a, reshape(b, (-1, 1))), a.shape[:-1])
    return MatMul.apply(a, b)

