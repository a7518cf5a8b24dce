"""The dtype policy (an API convenience, out of the learner's path): what array a Tensor is made of, and which dtype
a Python number takes when it meets a Tensor.

- ``as_data``: anything array-like → a backend array. Python floats become float32 (the default float type, as in
  PyTorch), Python ints int64; arrays keep their dtype.
- ``lift``: a Python or NumPy scalar meeting a Tensor takes the Tensor's dtype, so ``x * 2.0`` stays float32.
- Two floating dtypes never mix silently (``lift``, ``same_dtype``): cast explicitly with ``Tensor(x, dtype=...)``.
"""
import numbers

from autograd import backend
from autograd.backend import xp
from autograd.tensor import Tensor


def as_data(data, dtype=None):
    """``data`` (Tensor, backend or NumPy array, Python number or nested list) as a backend array.

    Python floats become float32 (the default float type, as in PyTorch), Python ints int64; arrays keep their dtype
    unless ``dtype`` is given. Raises TypeError for an array of the other backend (a CuPy array on NumPy).
    """
    if isinstance(data, Tensor):
        data = data.data
    if backend.is_array(data):
        return data if dtype is None or data.dtype == dtype else data.astype(dtype)
    if backend.is_foreign_array(data) and backend.BACKEND == "numpy":
        raise TypeError(f"got a {type(data).__module__} array while MINATTN_BACKEND=numpy; move it to the host first")
    if backend.is_foreign_array(data):  # a NumPy array on the CuPy backend: copy it to the device
        return backend.asarray(data, dtype=dtype)
    array = backend.asarray(data, dtype=dtype)
    if dtype is None and array.dtype == backend.float64 and not hasattr(data, "dtype"):
        array = array.astype(backend.float32)   # Python floats: float32 by default
    return array


def lift(x, like):
    """``x`` as a Tensor for a binary operation with the Tensor ``like``.

    Python and NumPy scalars take ``like``'s dtype (so ``float32 * 2.0`` stays float32). Raises TypeError when two
    floating tensors of different dtypes meet: minattn never casts silently (cast explicitly with
    ``Tensor(x, dtype=...)``).
    """
    if not isinstance(x, Tensor):
        if isinstance(x, numbers.Real) and not isinstance(x, numbers.Integral) and not backend.is_floating(like.dtype):
            raise TypeError(f"a float {x!r} meets a {like.dtype} tensor; convert the tensor to a float dtype first")
        if isinstance(x, numbers.Real) and getattr(x, "ndim", 0) == 0:   # Python and NumPy scalars
            return Tensor(xp.asarray(x, dtype=like.dtype))
        x = Tensor(x)                        # Tensor checks x: a clear error for strings, objects ...
    if x.dtype != like.dtype and (backend.is_floating(x.dtype) or backend.is_floating(like.dtype)):
        raise TypeError(f"operands have dtypes {like.dtype} and {x.dtype}; cast one explicitly")
    return x


def same_dtype(tensors, name):
    """``tensors`` (array-likes become Tensors) as a list, after checking they share one dtype.

    Raises ValueError for an empty sequence and TypeError for mixed dtypes, naming the operation ``name``.
    """
    tensors = [t if isinstance(t, Tensor) else Tensor(as_data(t)) for t in tensors]
    if not tensors:
        raise ValueError(f"{name}: need at least one tensor")
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise TypeError(f"{name}: tensors have dtypes {sorted(map(str, dtypes))}; cast them to one explicitly")
    return tensors
