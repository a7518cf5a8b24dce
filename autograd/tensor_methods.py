"""Tensor's operators and conveniences (an API convenience, out of the learner's path), attached at import.

tensor.py holds only what reverse mode needs: ``data``, ``grad``, ``requires_grad`` and ``backward``. What a user
types on a tensor — ``x + y``, ``x @ w``, ``x[i]``, ``x.sum()``, ``x.T``, ``x.shape``, ``repr(x)``, ``x.numpy()`` —
is written here, in the body of ``TensorMethods``, and copied onto ``Tensor`` by the loop at the bottom (importing
``autograd`` runs it). The operators are the checked functions of api.py themselves (``Tensor.__add__`` is
``api.add``), so ``x + y`` costs no call beyond ``add(x, y)``.
"""
from autograd import api, backend
from autograd.tensor import Tensor


class TensorMethods:
    """The properties, methods and operators attached to ``Tensor`` (see the module docstring)."""

    __array_priority__ = 1000   # so that ndarray + Tensor calls Tensor.__radd__ rather than NumPy broadcasting

    # --- array facts -------------------------------------------------------------------------------------------
    shape = property(lambda self: self.data.shape, doc="Tuple of axis lengths.")
    dtype = property(lambda self: self.data.dtype, doc="The array's dtype.")
    ndim = property(lambda self: self.data.ndim, doc="Number of axes.")
    size = property(lambda self: self.data.size, doc="Number of elements.")

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({backend.to_numpy(self.data)!r}{grad})"

    def numpy(self):
        """The data as a host NumPy array: on NumPy the array itself, no copy (as PyTorch's ``.numpy()`` shares memory;
        read-only where the data is, e.g. attention weights); on CuPy a device → host copy."""
        return backend.to_numpy(self.data)

    def item(self):
        """The value of a one-element tensor as a Python number (a device sync on CuPy)."""
        return self.data.item()

    def detach(self):
        """A tensor sharing this data that records no history and requires no grad."""
        return Tensor(self.data)

    @property
    def is_leaf(self):
        """True for a tensor not made by a recorded operation (parameters, inputs)."""
        return self._node is None

    # --- operators: the functions of api.py, self as the left operand (right operand for the reflected ones) ------
    __add__, __sub__, __mul__, __truediv__, __matmul__ = api.add, api.sub, api.mul, api.div, api.matmul
    __neg__, __pow__, __getitem__ = api.neg, api.pow, api.getitem

    def __radd__(self, other): return api.add(other, self)
    def __rsub__(self, other): return api.sub(other, self)
    def __rmul__(self, other): return api.mul(other, self)
    def __rtruediv__(self, other): return api.div(other, self)
    def __rmatmul__(self, other): return api.matmul(other, self)

    # --- methods: the same functions, or thin wrappers where the method's signature differs --------------------
    sum, mean, max, transpose, masked_fill = api.sum, api.mean, api.max, api.transpose, api.masked_fill
    exp, log, tanh, relu = api.exp, api.log, api.tanh, api.relu

    def reshape(self, *shape):
        """The same elements in a new shape (one -1 allowed): ``x.reshape(2, 3)`` or ``x.reshape((2, 3))``."""
        return api.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    def permute(self, *axes):
        """Reorder the axes: ``x.permute(0, 2, 1, 3)`` or ``x.permute((0, 2, 1, 3))``."""
        return api.permute(self, axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes)

    T = property(lambda self: api.transpose(self, -2, -1), doc="The last two axes swapped.")


_CLASS_BOILERPLATE = set(vars(type("Empty", (), {})))   # __module__, __dict__, __weakref__, __doc__ ...
for _name, _value in vars(TensorMethods).items():
    if _name not in _CLASS_BOILERPLATE:
        setattr(Tensor, _name, _value)
