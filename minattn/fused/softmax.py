"""Softmax and masked softmax, fused, with the backward written by hand; and its twin from engine primitives."""
from autograd import ops, parallel
from autograd.backend import broadcast_shape, rowdot, rowmax, rowsum, xp
from autograd.function import Function
from autograd.ops import sum_to
from autograd.tensor import Tensor


def softmax_(a, mask=None, bias=None):
    """P = softmax(A + bias) over the last axis, entries where ``mask`` is False excluded, computed IN PLACE in the
    scores ``a`` (PyTorch's trailing underscore) — for scores a formula has just made and needs no more. Only a mask
    or bias wider than A (more batch axes) makes a new array, of their broadcast shape.

    Masked scores become -inf BEFORE the max is subtracted, so they get weight exactly 0 (replaced, not added to: a
    NaN or inf score under the mask is gone too). A row with every entry masked has max -inf; we subtract 0 there
    instead (never -inf - -inf = NaN) and divide by 1 instead of 0, so the row's weights are all 0: it attends to
    nothing. (d2l fills with -1e6 instead, which makes such a row uniform: it silently attends to padding. PyTorch's
    SDPA has returned zeros here since 2024.)
    """
    if a.shape[-1] == 0:                                              # no keys at all: nothing to weigh
        return a
    full = broadcast_shape(a.shape, *(x.shape for x in (mask, bias) if x is not None))
    if full != a.shape:                                               # a mask or bias wider than A
        a = xp.broadcast_to(a, full).copy()                           # (..., L, S)
    if bias is not None:
        a += bias                                                     # (..., L, S)  A + bias
    if mask is not None:
        xp.copyto(a, -xp.inf, where=~mask)                            # (..., L, S)  masked → −∞
    m = rowmax(a)                                                     # (..., L, 1)  m_i = max_k A_ik
    a -= xp.where(m == -xp.inf, 0, m)                                 # (..., L, S)  fully masked row: shift by 0
    xp.exp(a, out=a)                                                  # (..., L, S)  exp(A_ik − m_i), 0 where masked
    z = rowsum(a)                                                     # (..., L, 1)  Σ_k exp(A_ik − m_i)
    a /= xp.where(z == 0, 1, z)                                       # (..., L, S)  P (a fully masked row: / 1)
    return a


def softmax_forward(a, mask=None, bias=None, axis=-1):
    """``softmax_`` over ``axis`` on a copy of ``a``, which is left as it was."""
    axis = axis - a.ndim if axis >= 0 else axis                       # from the right: one axis in every operand

    def last(x):                                                      # x with the softmax axis last (a view)
        return None if x is None else xp.moveaxis(x.reshape((1,) * max(a.ndim - x.ndim, 0) + x.shape), axis, -1)

    p = softmax_(last(a).copy(), last(mask), last(bias))              # (..., L, S)  the softmax axis last
    return xp.moveaxis(p, -1, axis)


def softmax_backward_(p, grad_p):
    """dA = P ∘ (dP − Σ_j dP_ij P_ij) over the last axis, computed IN PLACE in ``grad_p`` — for a dP a formula has
    just made (never the gradient the engine passed in: it may reach other inputs too). See SoftmaxFunction."""
    grad_p -= rowdot(grad_p, p)                                       # (..., L, S)  dP − Σ_j dP_ij P_ij
    grad_p *= p                                                       # (..., L, S)  dA
    return grad_p


def softmax_backward(p, grad_p, axis=-1):
    """``softmax_backward_`` over ``axis`` on a copy of ``grad_p``, which is left as it was."""
    da = softmax_backward_(xp.moveaxis(p, axis, -1), xp.moveaxis(grad_p, axis, -1).copy())   # (..., L, S)
    return xp.moveaxis(da, -1, axis)


class SoftmaxFunction(Function):
    """Softmax over one axis, optionally masked, with its backward written by hand.

    Forward:  P = softmax(A + bias) over ``axis`` with masked entries set to -inf first:
              P_ij = exp(A_ij - m_i) / Σ_k exp(A_ik - m_i),  m_i = max_k A_ik  (the shift cancels; it prevents overflow)
    Backward: dA = P ∘ (dP − Σ_j dP_ij P_ij)       the vector-Jacobian product, computed from the saved P
              because ∂P_ij/∂A_ik = P_ij (δ_jk − P_ik)
    Masked entries and fully masked rows have P = 0, so their dA is exactly 0 too. ``mask`` and ``bias`` are
    constants (no gradient).
    Shapes:   A, P, dP, dA: (..., L, S) for L queries and S keys (any axis; the last by default); mask, bias:
              broadcastable to A.
    ``softmax_`` and ``softmax_backward_`` compute in the scores' / dP's own memory (``-=``, ``exp(out=)``, ``/=``,
    ``*=``), as chainer's softmax does: the fused attentions call them on the arrays their formulas have just made.
    ``softmax_forward`` / ``softmax_backward`` do the same on a copy, for an input that is not ours to change.
    Source:   Bridle 1990; d2l §11.3; chainer functions/activation/softmax.py
    """

    @staticmethod
    def forward(ctx, a, mask=None, bias=None, axis=-1):
        core = a.ndim - axis % a.ndim                                 # the softmax axis and those after it
        p = parallel.map_batch(softmax_forward, a, mask, bias, core_ndim=core, axis=axis)
        ctx.save_for_backward(p)
        ctx.axis, ctx.core, ctx.shape = axis, core, a.shape
        return p

    @staticmethod
    def backward(ctx, grad_p):
        (p,) = ctx.saved
        da = parallel.map_batch(softmax_backward, p, grad_p, core_ndim=ctx.core, axis=ctx.axis)   # (..., L, S)
        return sum_to(da, ctx.shape)                       # summed over the axes a mask or bias broadcast A along


def softmax_reference(a, mask=None, bias=None, axis=-1):
    """The same softmax composed from engine primitives (its gradient comes from autograd, op by op).

    The max is taken from the data as a constant: softmax is invariant to a per-row shift, so holding m fixed changes
    no gradient.
    """
    if bias is not None:
        a = a + Tensor(bias)
    if mask is not None:
        a = ops.masked_fill(a, ~mask, -xp.inf)
    m = a.data.max(axis=axis, keepdims=True)
    e = ops.exp(a - xp.where(m == -xp.inf, 0, m))
    z = e.sum(axis=axis, keepdims=True)
    return e / ops.where(z.data == 0, xp.ones((), dtype=z.dtype), z)
