"""The affine map of a Linear layer, fused, with the backward written by hand; and its twin from primitives."""
from autograd import ops
from autograd.function import Function


class LinearFunction(Function):
    """y = x Wᵀ + b with the backward written by hand (PyTorch's layout: W is (out_features, in_features)).

    Forward:  y = x Wᵀ + b                         x: (..., in), W: (out, in), b: (out,), y: (..., out)
    Backward: dx = dy W                            (..., in)
              dW = Σ_rows dyᵀ x                    (out, in): every row of x used W once; the gradients add
              db = Σ_rows dy                       (out,)
              because y_ri = Σ_j x_rj W_ij + b_i, so ∂y_ri/∂x_rj = W_ij, ∂y_ri/∂W_ij = x_rj, ∂y_ri/∂b_i = 1.
    The leading axes of x are flattened into rows so dW and db are one matrix product and one sum.
    Source:   PyTorch nn.Linear; d2l §3.4
    """

    @staticmethod
    def forward(ctx, x, weight, *bias):
        ctx.save_for_backward(x, weight)
        y = x.reshape(-1, x.shape[-1]) @ weight.T                     # (N, out): one matrix product for all rows
        if bias:
            y += bias[0]                                              # in place: y is ours
        return y.reshape(x.shape[:-1] + (weight.shape[0],))           # (..., out)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved
        rows_g = grad_y.reshape(-1, grad_y.shape[-1])                # (N, out)
        dx = (rows_g @ weight).reshape(x.shape) if ctx.needs_input_grad[0] else None   # (..., in)
        dw = rows_g.T @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None   # (out, in)
        if len(ctx.needs_input_grad) == 2:
            return dx, dw
        db = rows_g.sum(axis=0) if ctx.needs_input_grad[2] else None  # (out,)
        return dx, dw, db


def linear_reference(x, weight, bias=None):
    """x Wᵀ + b composed from engine primitives (matmul, transpose, add)."""
    y = ops.matmul(x, ops.transpose(weight))
    return y + bias if bias is not None else y
