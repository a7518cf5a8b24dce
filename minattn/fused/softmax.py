"""Softmax and masked softmax, fused, with the backward written by hand; and its twin from engine primitives."""
from autograd import ops
from autograd.backend import xp
from autograd.function import Function
from autograd.tensor import Tensor
from minattn.masks import broadcasts_to


def masked_softmax_forward(scores, mask=None, bias=None, axis=-1, overwrite=False):
    """Array softmax of ``scores + bias`` over ``axis`` with entries where ``mask`` is False excluded.

    Masked scores become -inf BEFORE the max is subtracted, so they get weight exactly 0. A row with every entry
    masked has max -inf; we subtract 0 there instead (never -inf - -inf = NaN) and divide by 1 instead of 0, so the
    row's weights are all 0: it attends to nothing. (d2l fills with -1e6 instead, which makes such a row uniform:
    it silently attends to padding. PyTorch's SDPA has returned zeros here since 2024.)

    ``overwrite=True`` lets the function compute in ``scores``' own memory (the caller made it and needs it no
    more): four passes over the (..., L, S) array and no new one of that size, instead of four new arrays.
    """
    if scores.shape[axis] == 0:                                       # no keys at all: nothing to weigh
        return xp.zeros(scores.shape, dtype=scores.dtype)
    if bias is not None:
        if overwrite and broadcasts_to(bias.shape, scores.shape):
            scores += bias                                            # (..., L, S), in place
        else:
            scores, overwrite = scores + bias, True                   # (..., L, S), a new array we own
    if mask is not None:
        if overwrite and broadcasts_to(mask.shape, scores.shape):
            xp.copyto(scores, -xp.inf, where=~mask)                   # (..., L, S), in place
        else:
            scores, overwrite = xp.where(mask, scores, -xp.inf), True  # (..., L, S)
    m = scores.max(axis=axis, keepdims=True)                          # (..., L, 1)
    m = xp.where(xp.isfinite(m), m, 0)                                # fully masked rows: shift by 0
    e = scores if overwrite else xp.empty_like(scores)                # (..., L, S)
    xp.subtract(scores, m, out=e)
    xp.exp(e, out=e)                                                  # 0 where masked
    z = e.sum(axis=axis, keepdims=True)                               # (..., L, 1)
    e /= xp.where(z == 0, 1, z)                                       # (..., L, S)
    return e


def softmax_backward(p, grad_p, axis=-1, overwrite=False):
    """dS = P ∘ (dP − Σ_axis(dP ∘ P)), the vector-Jacobian product of softmax (see SoftmaxFunction).

    ``overwrite=True`` computes dS in ``grad_p``'s memory — only for a dP the caller made itself, never for the
    gradient the engine passed in (it may reach other inputs too).
    """
    dot = xp.einsum("...i,...i->...", xp.moveaxis(grad_p, axis, -1), xp.moveaxis(p, axis, -1))   # Σ dP ∘ P per row
    row = xp.expand_dims(dot, axis)                                   # (..., L, 1), no (..., L, S) temporary
    if not overwrite:
        return p * (grad_p - row)
    grad_p -= row
    grad_p *= p
    return grad_p


class SoftmaxFunction(Function):
    """Softmax over one axis, optionally masked, with its backward written by hand.

    Forward:  P = softmax(S + bias) over ``axis`` with masked entries set to -inf first:
              P_ij = exp(S_ij - m_i) / Σ_k exp(S_ik - m_i),  m_i = max_k S_ik   (the shift cancels; it prevents overflow)
    Backward: dS = P ∘ (dP − Σ_j dP_ij P_ij)       the Jacobian-vector product, computed from the saved P
              because ∂P_ij/∂S_ik = P_ij (δ_jk − P_ik)
    Masked entries and fully masked rows have P = 0, so their dS is exactly 0 too. ``mask`` and ``bias`` are
    constants (no gradient).
    Shapes:   S, P, dP, dS: (..., L, S); mask, bias: broadcastable to S.
    Source:   Bridle 1990; d2l §11.3; chainer functions/activation/softmax.py
    """

    @staticmethod
    def forward(ctx, scores, mask=None, bias=None, axis=-1):
        p = masked_softmax_forward(scores, mask, bias, axis)
        ctx.save_for_backward(p)
        ctx.axis = axis
        return p

    @staticmethod
    def backward(ctx, grad_p):
        (p,) = ctx.saved
        return (softmax_backward(p, grad_p, ctx.axis),)


def softmax_reference(scores, mask=None, bias=None, axis=-1):
    """The same softmax composed from engine primitives (its gradient comes from autograd, op by op).

    The max is taken from the data as a constant: softmax is invariant to a per-row shift, so holding m fixed changes
    no gradient.
    """
    if bias is not None:
        scores = scores + Tensor(bias)
    if mask is not None:
        scores = ops.masked_fill(scores, ~mask, -xp.inf)
    m = scores.data.max(axis=axis, keepdims=True)
    e = ops.exp(scores - xp.where(xp.isfinite(m), m, 0))
    z = e.sum(axis=axis, keepdims=True)
    return e / ops.where(z.data == 0, xp.ones((), dtype=z.dtype), z)
