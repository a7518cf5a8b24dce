"""Softmax and masked softmax, fused, with the backward written by hand; and its twin from engine primitives."""
from autograd import ops, parallel
from autograd.backend import rowdot, rowmax, rowsum, xp
from autograd.function import Function
from autograd.tensor import Tensor


def softmax_forward(a, mask=None, bias=None, axis=-1):
    """P = softmax(A + bias) over ``axis``, entries where ``mask`` is False excluded (see SoftmaxFunction).

    Masked scores become -inf BEFORE the max is subtracted, so they get weight exactly 0. A row with every entry
    masked has max -inf; we subtract 0 there instead (never -inf - -inf = NaN) and divide by 1 instead of 0, so the
    row's weights are all 0: it attends to nothing. (d2l fills with -1e6 instead, which makes such a row uniform:
    it silently attends to padding. PyTorch's SDPA has returned zeros here since 2024.)
    """
    if a.shape[axis] == 0:                                            # no keys at all: nothing to weigh
        return xp.zeros(a.shape, dtype=a.dtype)
    if bias is not None:
        a = a + bias                                                  # (..., L, S)
    if mask is not None:
        a = xp.where(mask, a, -xp.inf)                                # (..., L, S)  masked → −∞
    last = axis in (-1, a.ndim - 1)
    a = a if last else xp.moveaxis(a, axis, -1)                       # (..., L, S)  the softmax axis last (a view)
    m = rowmax(a)                                                     # (..., L, 1)  m_i = max_k A_ik
    e = a - xp.where(xp.isfinite(m), m, 0)                            # (..., L, S)  fully masked row: shift by 0
    xp.exp(e, out=e)                                                  # (..., L, S)  exp(A_ik − m_i), 0 where masked
    z = rowsum(e)                                                     # (..., L, 1)  Σ_k exp(A_ik − m_i)
    e /= xp.where(z == 0, 1, z)                                       # (..., L, S)  P (a fully masked row: / 1)
    return e if last else xp.moveaxis(e, -1, axis)


def softmax_backward(p, grad_p, axis=-1):
    """dA = P ∘ (dP − Σ_j dP_ij P_ij): the vector-Jacobian product of softmax (see SoftmaxFunction)."""
    last = axis in (-1, p.ndim - 1)
    if not last:
        p, grad_p = xp.moveaxis(p, axis, -1), xp.moveaxis(grad_p, axis, -1)   # (..., L, S)  the softmax axis last
    da = grad_p - rowdot(grad_p, p)                                   # (..., L, S)  dP − Σ_j dP_ij P_ij
    da *= p                                                           # (..., L, S)  dA
    return da if last else xp.moveaxis(da, -1, axis)


class SoftmaxFunction(Function):
    """Softmax over one axis, optionally masked, with its backward written by hand.

    Forward:  P = softmax(A + bias) over ``axis`` with masked entries set to -inf first:
              P_ij = exp(A_ij - m_i) / Σ_k exp(A_ik - m_i),  m_i = max_k A_ik   (the shift cancels; it prevents overflow)
    Backward: dA = P ∘ (dP − Σ_j dP_ij P_ij)       the vector-Jacobian product, computed from the saved P
              because ∂P_ij/∂A_ik = P_ij (δ_jk − P_ik)
    Masked entries and fully masked rows have P = 0, so their dA is exactly 0 too. ``mask`` and ``bias`` are
    constants (no gradient).
    Shapes:   A, P, dP, dA: (..., L, S) for L queries and S keys (any axis; the last by default); mask, bias:
              broadcastable to A.
    The arrays a formula line makes are its own: exp, the division and the product with P work in them in place
    (``out=e``, ``/=``, ``*=``), as chainer's softmax does — the same values, one (..., L, S) array fewer each.
    Source:   Bridle 1990; d2l §11.3; chainer functions/activation/softmax.py
    """

    @staticmethod
    def forward(ctx, a, mask=None, bias=None, axis=-1):
        core = a.ndim - axis % a.ndim                                 # the softmax axis and those after it
        p = parallel.map_batch(softmax_forward, a, mask, bias, core_ndim=core, axis=axis)
        ctx.save_for_backward(p)
        ctx.axis, ctx.core = axis, core
        return p

    @staticmethod
    def backward(ctx, grad_p):
        (p,) = ctx.saved
        return parallel.map_batch(softmax_backward, p, grad_p, core_ndim=ctx.core, axis=ctx.axis)


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
    e = ops.exp(a - xp.where(xp.isfinite(m), m, 0))
    z = e.sum(axis=axis, keepdims=True)
    return e / ops.where(z.data == 0, xp.ones((), dtype=z.dtype), z)
