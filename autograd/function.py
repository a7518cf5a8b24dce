"""Function: one differentiable operation, its forward and its hand-written backward side by side.

A subclass writes two static methods on plain backend arrays:

    forward(ctx, *arrays, **params) -> array        compute the output; ctx.save_for_backward(...) what backward needs
    backward(ctx, grad_out) -> tuple of arrays      one gradient per array input (None where none is needed)

``MyFunction.apply(*tensors, **params)`` runs forward on the tensors' data and, when any input requires grad (and
grad mode is on), records the node that ``Tensor.backward`` will visit. Arrays in, arrays out: a backward builds no
graph (first-order only, like PyTorch's ``once_differentiable``) and must not modify ``grad_out`` in place (the same
array may reach several inputs). The engine checks that each returned gradient has its input's shape and dtype.
"""
from autograd.backend import quiet_floats
from autograd.grad_mode import is_grad_enabled
from autograd.tensor import Node, Tensor


class Context:
    """What a forward leaves for its backward.

    Attributes:
        saved: the arrays given to ``save_for_backward`` (a tuple).
        needs_input_grad: one bool per input tensor: does it require a gradient? (skip work for those that don't)
        Any other attribute a forward sets (shapes, flags) is kept too.
    """

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad
        self.freed = False
        self._saved = ()

    def save_for_backward(self, *arrays):
        """Keep ``arrays`` for the backward pass."""
        self._saved = arrays

    @property
    def saved(self):
        """The saved arrays. Raises RuntimeError once a backward has freed them."""
        if self.freed:
            raise RuntimeError("the saved arrays of this node were freed by an earlier backward")
        return self._saved

    def free(self):
        """Drop every saved array (called by the engine once this node's backward has run)."""
        self.freed = True
        self._saved = ()
        for name in [k for k in vars(self) if k not in ("needs_input_grad", "freed", "_saved")]:
            delattr(self, name)


class Function:
    """Base class of every differentiable operation (see the module docstring)."""

    @staticmethod
    def forward(ctx, *arrays, **params):
        """Compute the output array from the input arrays."""
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad_out):
        """Return one gradient array (or None) per input, given d(loss)/d(output)."""
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **params):
        """Run the operation on tensors (or array-likes, taken as constants); returns the output Tensor."""
        return cls.apply_with_ctx(*inputs, **params)[0]

    @classmethod
    def apply_with_ctx(cls, *inputs, **params):
        """Like ``apply``, and also return the Context (to read what the forward saved, e.g. attention weights)."""
        tensors = tuple([x if isinstance(x, Tensor) else Tensor(x) for x in inputs])   # lists: faster than generators
        needs = tuple([t.requires_grad for t in tensors])
        ctx = Context(needs)
        with quiet_floats():                       # NaN / inf propagate without NumPy's warnings, as in PyTorch
            out = Tensor(cls.forward(ctx, *[t.data for t in tensors], **params))
        if is_grad_enabled() and any(needs):
            out.requires_grad = True
            out._node = Node(cls, ctx, tensors)
        return out, ctx
