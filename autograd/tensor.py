"""Tensor: an array that remembers how it was made, and ``backward()`` that walks that record in reverse.

A Tensor made by a differentiable operation keeps ``_node``, a ``Node``: the Function that made it, its context (what
the forward saved) and its input tensors. ``loss.backward()`` sorts those nodes topologically (iteratively, so a deep
graph cannot hit Python's recursion limit), then visits them once each from the output back to the leaves, calling
each Function's hand-written ``backward`` and summing the gradients that reach the same tensor (the multivariate chain
rule). Leaves that require grad accumulate into ``.grad`` with ``+=``, as in PyTorch, until ``zero_grad()``.

This file is the engine only. API conveniences, out of the learner's path: the dtype policy (``as_data``: Python
floats → float32) is in dtypes.py, ``no_grad`` in grad_mode.py (both re-exported here), and the operators and methods
(``x + y``, ``x.sum()``, ``x.T``, ``x.shape``, ``repr``) are attached to Tensor by tensor_methods.py.
"""
from autograd import backend
from autograd.backend import xp
from autograd.grad_mode import no_grad, is_grad_enabled  # noqa: F401  (re-exported: autograd.tensor.no_grad)


class Node:
    """How a tensor was made: ``function`` (the Function class), ``ctx`` (its Context: what the forward saved) and
    ``inputs`` (the input tensors, a tuple). After the node's backward has run without ``retain_graph``, ``inputs`` is
    () and ``ctx.freed`` is True.
    """
    __slots__ = ("function", "ctx", "inputs")

    def __init__(self, function, ctx, inputs):
        self.function, self.ctx, self.inputs = function, ctx, inputs


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
        shape, dtype, ndim, size: those of ``data`` (attached, with the operators, by tensor_methods.py).

    Raises:
        TypeError if ``requires_grad`` is asked of a non-floating tensor, or is not True or False, if ``dtype`` is not
        a dtype, or ``data`` holds no numbers (strings, objects); ValueError for ragged nested lists.
    """

    def __init__(self, data, requires_grad=False, dtype=None):
        if requires_grad is not False and requires_grad is not True:    # the common cases cost one identity test
            requires_grad = checks.boolean("requires_grad", requires_grad, "Tensor")
        given = data
        try:
            data = as_data(data, None if dtype is None else checks.dtype("dtype", dtype, "Tensor"))
        except ValueError as err:        # NumPy's "inhomogeneous shape", "could not convert string to float" ...
            checks.fail("data", "numbers: a Tensor, an array, a number or nested lists of one shape", given, "Tensor",
                        received=f"{checks.describe(given)} ({err})")
        if data.dtype.kind not in "biuf":                      # strings, objects, complex: no arithmetic here
            described = checks.describe(given)
            checks.fail("data", "numbers (bool, int or float)", given, "Tensor", TypeError,
                        received=described if "dtype" in described else f"{described}, dtype {data.dtype}")
        if requires_grad and not backend.is_floating(data.dtype):
            checks.fail("requires_grad", f"False for a tensor of dtype {data.dtype} (only floating tensors can "
                        "require grad)", requires_grad, "Tensor", TypeError)
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self._node = None   # a Node(function, ctx, inputs) when made by an operation that needs a gradient

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
        retain_graph = checks.boolean("retain_graph", retain_graph, "backward")
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no graph was recorded)")
        if grad is None and self.data.size != 1:
            raise RuntimeError(f"backward() without a gradient needs a one-element tensor; got shape {self.data.shape}")
        grad = xp.ones_like(self.data) if grad is None else as_data(grad, self.data.dtype)   # d(self)/d(self) = 1
        if grad.shape != self.data.shape:
            raise RuntimeError(f"backward(grad): grad has shape {grad.shape}, expected {self.data.shape}")

        order = _topological_order(self)   # raises for a freed graph before any leaf's .grad changes
        with backend.quiet_floats():       # NaN / inf propagate without NumPy's warnings, as in PyTorch
            _propagate(order, {id(self): grad}, retain_graph)


def _propagate(order, grads, retain_graph):
    """The chain rule over ``order`` (outputs first): each node's backward turns its output's gradient (``grads``,
    by id) into its inputs' gradients, summed where an input is used twice; a leaf keeps its sum in ``.grad``."""
    for position, tensor in enumerate(order):      # outputs first, leaves last
        order[position] = None                     # let each intermediate array go as soon as it is used
        g = grads.pop(id(tensor), None)
        if g is None:
            continue
        node = tensor._node
        if node is None:                           # a leaf: keep its gradient
            if tensor.grad is None:
                tensor.grad = xp.array(g, copy=True)   # an array even where a reduction gave a NumPy scalar (0-d)
            else:
                tensor.grad += g
            continue
        function, inputs = node.function, node.inputs
        input_grads = function.backward(node.ctx, g)
        input_grads = tuple(input_grads) if isinstance(input_grads, (tuple, list)) else (input_grads,)
        if len(input_grads) != len(inputs):
            raise RuntimeError(f"{function.__name__}.backward returned {len(input_grads)} gradients for "
                               f"{len(inputs)} inputs (return None for an input that needs none)")
        if not retain_graph:                       # drop saved arrays and the links to the inputs; keep a
            node.ctx.free()                        # freed marker so a second backward raises, not misleads
            node.inputs = ()
        for x, gx in zip(inputs, input_grads):
            if gx is None or not x.requires_grad:
                continue
            if gx.shape != x.data.shape or gx.dtype != x.data.dtype:
                raise RuntimeError(f"{function.__name__}.backward returned a gradient of shape {gx.shape} "
                                   f"{gx.dtype} for an input of shape {x.data.shape} {x.data.dtype}")
            grads[id(x)] = gx if id(x) not in grads else grads[id(x)] + gx


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
            if tensor._node.ctx.freed:
                raise RuntimeError(f"backward through {tensor._node.function.__name__} a second time: its saved "
                                   "arrays were freed by the first backward; pass retain_graph=True to the first call")
            stack.extend((x, False) for x in tensor._node.inputs if x.requires_grad and id(x) not in visited)
    order.reverse()
    return order


from autograd.dtypes import as_data  # noqa: E402  (the dtype policy; dtypes.py needs Tensor defined first)
from autograd import checks  # noqa: E402  (the argument checks; checks.py needs Tensor and as_data defined first)
