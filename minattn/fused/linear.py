"""The affine map of a Linear layer, fused, with the backward written by hand (also followed by a ReLU, in one node);
and their twins from primitives."""
from autograd import ops, parallel
from autograd.backend import colsum, xp
from autograd.function import Function


def linear_forward(x, weight, bias):
    """y = x Wᵀ + b on whole arrays, the leading axes of x taken as rows."""
    rows = x.reshape(-1, x.shape[-1])                                # (N, in)   every leading axis is a row
    y = rows @ weight.T                                              # (N, out)  one matrix product for all rows
    if bias is not None:
        y += bias                                                    # (N, out)
    return y.reshape(x.shape[:-1] + (weight.shape[0],))              # (..., out)


def linear_backward(x, grad_y, weight, needs):
    """(dx, dW, db) of y = x Wᵀ + b on whole arrays; None for those ``needs`` (three bools) does not ask for."""
    rows_x = x.reshape(-1, x.shape[-1])                              # (N, in)
    rows_g = grad_y.reshape(-1, grad_y.shape[-1])                    # (N, out)
    dx = (rows_g @ weight).reshape(x.shape) if needs[0] else None    # (..., in)   dx = dy W
    dw = rows_g.T @ rows_x if needs[1] else None                     # (out, in)   dW = Σ_rows dyᵀ x
    db = colsum(rows_g) if needs[2] else None                        # (out,)      db = Σ_rows dy
    return dx, dw, db


class LinearFunction(Function):
    """y = x Wᵀ + b with the backward written by hand (PyTorch's layout: W is (out_features, in_features)).

    Forward:  y = x Wᵀ + b                         x: (..., in), W: (out, in), b: (out,), y: (..., out)
    Backward: dx = dy W                            (..., in)
              dW = Σ_rows dyᵀ x                    (out, in): every row of x used W once; the gradients add
              db = Σ_rows dy                       (out,)
              because y_ri = Σ_j x_rj W_ij + b_i, so ∂y_ri/∂x_rj = W_ij, ∂y_ri/∂W_ij = x_rj, ∂y_ri/∂b_i = 1.
    The leading axes of x are flattened into rows so y, dx and dW are one matrix product each, db one sum.
    Executed by ``parallel.map_batch`` (rows cut into chunks; each chunk's dW and db are its rows' share of the
    sums Σ_rows, added up).
    Source:   PyTorch nn.Linear; d2l §3.4
    """

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        ctx.save_for_backward(x, weight, bias)
        return parallel.map_batch(linear_forward, x, core_ndim=1, weight=weight, bias=bias)   # (..., out)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, bias = ctx.saved
        needs = ctx.needs_input_grad + (False,) * (bias is None)    # (x, W, b): is each asked for?
        dx, dw, db = parallel.map_batch(linear_backward, x, grad_y, core_ndim=1, weight=weight, needs=needs,
                                        grads_for=(x, weight, bias))
        return (dx, dw) if bias is None else (dx, dw, db)


def linear_relu_forward(x, weight, bias):
    """z = max(x Wᵀ + b, 0) on whole arrays: the ReLU works in place in the product just made (as softmax_'s exp)."""
    y = linear_forward(x, weight, bias)                              # (..., out)  y = x Wᵀ + b
    return xp.maximum(y, 0, out=y)                                   # (..., out)  z = max(y, 0)


def linear_relu_backward(x, z, grad_z, weight, needs):
    """(dx, dW, db) of z = max(x Wᵀ + b, 0) on whole arrays; None for those ``needs`` does not ask for."""
    grad_y = grad_z * (z > 0)                                        # (..., out)  dy = dz ∘ [z > 0]
    return linear_backward(x, grad_y, weight, needs)                 # Linear's three gradients of dy


class LinearReLUFunction(Function):
    """z = max(x Wᵀ + b, 0): a Linear and the ReLU after it in one node — the first layer of a feed-forward block.

    Forward:  y = x Wᵀ + b,  z = max(y, 0)         x: (..., in), W: (out, in), b: (out,), z: (..., out)
    Backward: dy = dz ∘ [z > 0]                     ReLU's rule (subgradient 0 at 0, as ops.ReLU)
              dx = dy W,  dW = Σ_rows dyᵀ x,  db = Σ_rows dy    LinearFunction's rules applied to dy
              because z = relu(y(x, W, b)): the chain rule through the two, in one node.
    Why:      the ReLU works in place in the product the forward has just made: one (..., out) array and one engine
              node fewer per call than LinearFunction then ReLU (DESIGN §4b: fewer, larger operations).
    Saved:    x, W, b and z (the mask [z > 0] is read off the output, as ReLU's backward does).
    Executed by ``parallel.map_batch`` (rows cut into chunks, as LinearFunction).
    Source:   PyTorch torch.ao.nn.intrinsic.LinearReLU (the same fusion); Vaswani et al. 2017, eq. 2
    """

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        z = parallel.map_batch(linear_relu_forward, x, core_ndim=1, weight=weight, bias=bias)   # (..., out)
        ctx.save_for_backward(x, weight, bias, z)
        return z

    @staticmethod
    def backward(ctx, grad_z):
        x, weight, bias, z = ctx.saved
        needs = ctx.needs_input_grad + (False,) * (bias is None)    # (x, W, b): is each asked for?
        dx, dw, db = parallel.map_batch(linear_relu_backward, x, z, grad_z, core_ndim=1, weight=weight, needs=needs,
                                        grads_for=(x, weight, bias))
        return (dx, dw) if bias is None else (dx, dw, db)


def linear_reference(x, weight, bias=None):
    """x Wᵀ + b composed from engine primitives (matmul, transpose, add)."""
    y = ops.matmul(x, ops.transpose(weight))
    return y + bias if bias is not None else y


def linear_relu_reference(x, weight, bias=None):
    """max(x Wᵀ + b, 0) composed from engine primitives (matmul, transpose, add, relu)."""
    return ops.relu(linear_reference(x, weight, bias))
