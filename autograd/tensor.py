"""Tensor: an array that remembers how it was made, and ``backward()`` that walks that record in reverse.

A Tensor made by a differentiable operation keeps ``_node``: the Function that made it, its context (what the forward
saved) and its input tensors. ``loss.backward()`` sorts those nodes topologically (iteratively, so a deep graph cannot
hit Python's recursion limit), then visits them once each from the output back to the leaves, calling each Function's
hand-written ``backward`` and summing the gradients that reach the same tensor (the multivariate chain rule). Leaves
that require grad accumulate into ``.grad`` with ``+=``, as in PyTorch, until ``zero_grad()``.
"""
import contextlib

from autograd import backend
from autograd.backend import xp

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Context manager: inside it, operations record no graph (for evaluation, decoding and optimizer steps)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    """True unless inside ``no_grad()``."""
    return _grad_enabled


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


class Tensor:
    """An n-dimensional array of the backend in use (``xp``) with reverse-mode automatic differentiation.

    Args:
        data: array-like. Python floats → float32, Python ints → int64; arrays keep their dtype.
        requires_grad: record operations on it so that ``backward`` fills ``.grad``. Only floating tensors may.
        dtype: optional dtype to convert ``data`` to ('float32', 'float64', ...).
    A backend array of the right dtype is used as it is, not copied (like ``torch.from_numpy``): writing to
    ``tensor.data`` writes to that array. ``Parameter`` always copies.

    Attributes:
        data: the backend array.  grad: None, or an array of the same shape and dtype, summed over backward calls.
        shape, dtype, ndim, size: those of ``data``.

    Raises:
        TypeError if ``requires_grad`` is asked of a non-floating tensor.
    """

    __array_priority__ = 1000   # so that ndarray + Tensor calls Tensor.__radd__ rather than NumPy broadcasting

    def __init__(self, data, requires_grad=False, dtype=None):
        data = as_data(data, dtype)
        if requires_grad and not backend.is_floating(data.dtype):
            raise TypeError(f"only floating tensors can require grad; got dtype {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._node = None   # (function class, ctx, input tensors) when made by an operation that needs a gradient

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

    # --- reverse mode ------------------------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

        Args:
            grad: d(final)/d(self), same shape as self; may be omitted only when self has one element (then 1).
            retain_graph: keep the saved arrays so backward can run through this graph again. By default they are
                freed as soon as each node is used, which is what keeps memory flat during training.

        Raises:
            RuntimeError if self does not require grad, if ``grad`` is omitted for a non-scalar, if ``grad`` has the
            wrong shape, or if the graph was already freed by an earlier backward.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no graph was recorded)")
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a one-element tensor; got shape {self.shape}")
            grad = xp.ones_like(self.data)
        else:
            grad = as_data(grad, self.dtype)
            if grad.shape != self.shape:
                raise RuntimeError(f"backward(grad): grad has shape {grad.shape}, expected {self.shape}")

        order = _topological_order(self)
        for tensor in order:      # refuse before any leaf's .grad changes, not half-way through
            if tensor._node is not None and tensor._node[1].freed:
                raise RuntimeError(f"backward through {tensor._node[0].__name__} a second time: its saved arrays were "
                                   "freed by the first backward; pass retain_graph=True to the first call")
        grads = {id(self): grad}
        for position, tensor in enumerate(order):      # outputs first, leaves last
            order[position] = None                     # let each intermediate array go as soon as it is used
            g = grads.pop(id(tensor), None)
            if g is None:
                continue
            if tensor._node is None:                   # a leaf: keep its gradient
                tensor.grad = g.copy() if tensor.grad is None else _accumulate(tensor.grad, g)
                continue
            function, ctx, inputs = tensor._node
            input_grads = function.backward(ctx, g)
            input_grads = tuple(input_grads) if isinstance(input_grads, (tuple, list)) else (input_grads,)
            if len(input_grads) != len(inputs):
                raise RuntimeError(f"{function.__name__}.backward returned {len(input_grads)} gradients for "
                                   f"{len(inputs)} inputs (return None for an input that needs none)")
            if not retain_graph:                       # drop saved arrays and the links to the inputs; keep a
                ctx.free()                             # freed marker so a second backward raises, not misleads
                tensor._node = (function, ctx, ())
            for x, gx in zip(inputs, input_grads):
                if gx is None or not x.requires_grad:
                    continue
                if gx.shape != x.shape or gx.dtype != x.dtype:
                    raise RuntimeError(f"{function.__name__}.backward returned a gradient of shape {gx.shape} "
                                       f"{gx.dtype} for an input of shape {x.shape} {x.dtype}")
                grads[id(x)] = gx if id(x) not in grads else grads[id(x)] + gx

    # --- operators: defined in autograd/ops.py, attached below --------------------------------------------------
    def __add__(self, other): return _ops.add(self, other)
    def __radd__(self, other): return _ops.add(other, self)
    def __sub__(self, other): return _ops.sub(self, other)
    def __rsub__(self, other): return _ops.sub(other, self)
    def __mul__(self, other): return _ops.mul(self, other)
    def __rmul__(self, other): return _ops.mul(other, self)
    def __truediv__(self, other): return _ops.div(self, other)
    def __rtruediv__(self, other): return _ops.div(other, self)
    def __neg__(self): return _ops.neg(self)
    def __pow__(self, exponent): return _ops.pow(self, exponent)
    def __matmul__(self, other): return _ops.matmul(self, other)
    def __rmatmul__(self, other): return _ops.matmul(other, self)
    def __getitem__(self, index): return _ops.getitem(self, index)

    def sum(self, axis=None, keepdims=False):
        """Sum over ``axis`` (int, tuple or None for all). See ``autograd.ops.sum``."""
        return _ops.sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        """Mean over ``axis``. See ``autograd.ops.mean``."""
        return _ops.mean(self, axis, keepdims)

    def max(self, axis=None, keepdims=False):
        """Maximum over ``axis``; ties share the gradient. See ``autograd.ops.max``."""
        return _ops.max(self, axis, keepdims)

    def reshape(self, *shape):
        """The same elements in a new shape (one -1 allowed)."""
        return _ops.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    def permute(self, *axes):
        """Reorder the axes: ``x.permute(0, 2, 1, 3)``."""
        return _ops.permute(self, axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes)

    def transpose(self, axis0=-2, axis1=-1):
        """Swap two axes (the last two by default)."""
        return _ops.transpose(self, axis0, axis1)

    @property
    def T(self):
        """The last two axes swapped."""
        return _ops.transpose(self, -2, -1)

    def exp(self):
        """Elementwise e**x."""
        return _ops.exp(self)

    def log(self):
        """Elementwise natural logarithm."""
        return _ops.log(self)

    def tanh(self):
        """Elementwise tanh."""
        return _ops.tanh(self)

    def relu(self):
        """Elementwise max(x, 0)."""
        return _ops.relu(self)

    def masked_fill(self, mask, value):
        """A copy with ``value`` where the boolean ``mask`` (broadcastable to self) is True."""
        return _ops.masked_fill(self, mask, value)


def _accumulate(total, g):
    total += g
    return total


def _topological_order(root):
    """Tensors reachable from ``root`` through recorded nodes, each after every tensor that consumes it."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:                                   # depth-first, post-order: a tensor is listed after its inputs
        tensor, inputs_done = stack.pop()
        if inputs_done:
            order.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        if tensor._node is not None:
            stack.extend((x, False) for x in tensor._node[2] if x.requires_grad and id(x) not in visited)
    order.reverse()
    return order


from autograd import ops as _ops  # noqa: E402  (ops needs Tensor defined first)
