"""The affine map of a Linear layer, fused, with the backward written by hand; and its twin from primitives."""
from autograd import ops, parallel
from autograd.backend import xp
from autograd.function import Function


class LinearFunction(Function):
    """y = x Wᵀ + b with the backward written by hand (PyTorch's layout: W is (out_features, in_features)).

    Forward:  y = x Wᵀ + b                         x: (..., in), W: (out, in), b: (out,), y: (..., out)
    Backward: dx = dy W                            (..., in)
              dW = Σ_rows dyᵀ x                    (out, in): every row of x used W once; the gradients add
              db = Σ_rows dy                       (out,)
              because y_ri = Σ_j x_rj W_ij + b_i, so ∂y_ri/∂x_rj = W_ij, ∂y_ri/∂W_ij = x_rj, ∂y_ri/∂b_i = 1.
    The leading axes of x are flattened into rows so dW and db are one matrix product and one sum.
    On several CPU cores (autograd/parallel.py) each product is cut into blocks of rows: rows r of y and dx need
    only rows r of x and dy; rows i of dW need only column i of dy. Each block is the formula above on a slice, so
    nothing is summed across blocks and the result is the same.
    Source:   PyTorch nn.Linear; d2l §3.4
    """

    @staticmethod
    def forward(ctx, x, weight, *bias):
        ctx.save_for_backward(x, weight)
        rows = x.reshape(-1, x.shape[-1])                            # (N, in): every leading axis is a row
        y = xp.empty((rows.shape[0], weight.shape[0]), dtype=x.dtype)   # (N, out)
        parts = parallel.batch_parts(rows.shape[:1], y.size * rows.shape[1], core_ndim=1)   # blocks of rows

        def affine(part):                                            # y = x Wᵀ + b on one block of rows
            y_i = part.take(y)                                       # (n, out)
            xp.matmul(part.take(rows), weight.T, out=y_i)            # one matrix product for all its rows
            if bias:
                y_i += bias[0]                                       # in place: y is ours

        parallel.run(affine, parts)
        return y.reshape(x.shape[:-1] + (weight.shape[0],))          # (..., out)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved
        rows_g = grad_y.reshape(-1, grad_y.shape[-1])                # (N, out)
        rows_x = x.reshape(-1, x.shape[-1])                          # (N, in)
        needs = ctx.needs_input_grad
        dx = xp.empty(rows_x.shape, dtype=x.dtype) if needs[0] else None   # (N, in)
        dw = xp.empty(weight.shape, dtype=weight.dtype) if needs[1] else None   # (out, in)
        madds = rows_g.size * rows_x.shape[1]                        # multiply-adds of each product
        row_parts = parallel.batch_parts(rows_g.shape[:1], madds, core_ndim=1)   # blocks of rows of dx
        out_parts = parallel.batch_parts(weight.shape[:1], madds, core_ndim=1)   # blocks of rows of dW

        def backprop(n):                                             # part n of dx and part n of dW
            if dx is not None and n < len(row_parts):
                xp.matmul(row_parts[n].take(rows_g), weight, out=row_parts[n].take(dx))    # dx = dy W
            if dw is not None and n < len(out_parts):
                part = out_parts[n]
                xp.matmul(part.take(rows_g.T), rows_x, out=part.take(dw))               # dW = dyᵀ x

        parallel.run(backprop, list(range(max(len(row_parts), len(out_parts)))))
        dx = dx.reshape(x.shape) if dx is not None else None         # (..., in)
        if len(needs) == 2:
            return dx, dw
        db = rows_g.sum(axis=0) if needs[2] else None                # (out,)
        return dx, dw, db


def linear_reference(x, weight, bias=None):
    """x Wᵀ + b composed from engine primitives (matmul, transpose, add)."""
    y = ops.matmul(x, ops.transpose(weight))
    return y + bias if bias is not None else y
