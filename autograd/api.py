"""The public functions of the engine (an API convenience, out of the learner's path): ``add`` … ``matmul``.

Each checks its arguments, applies the dtype policy (dtypes.py: a Python number takes the other operand's dtype, two
float dtypes never mix) and calls one primitive Function of ops.py, where the math is. Tensor's operators are these
functions (``x + y`` is ``add(x, y)``, attached by tensor_methods.py); ops.py re-exports them (``ops.matmul``).

These names shadow the builtins ``sum``, ``max`` and ``pow`` inside this module, as in NumPy.
"""
import operator

from autograd import backend
from autograd.backend import xp
from autograd.dtypes import as_data, lift, same_dtype
from autograd.ops import (Add, Sub, Mul, Div, Neg, Pow, Exp, Log, Tanh, ReLU, Sum, Mean, Max, Reshape, Permute,
                          GetItem, Concatenate, Stack, Where, MatMul)
from autograd.tensor import Tensor


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


def _normalize_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (operator.index(axis),) if not isinstance(axis, (tuple, list)) else tuple(map(operator.index, axis))
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} axes")
    return tuple(sorted(a % ndim for a in axes))


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


def concatenate(tensors, axis=0):
    """Join tensors of one dtype along an existing axis (TypeError for mixed dtypes)."""
    tensors = same_dtype(tensors, "concatenate")
    return Concatenate.apply(*tensors, axis=axis)


def stack(tensors, axis=0):
    """Join tensors of one shape and dtype along a new axis (TypeError for mixed dtypes)."""
    tensors = same_dtype(tensors, "stack")
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

