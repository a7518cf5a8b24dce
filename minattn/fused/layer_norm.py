"""Layer normalisation over the last axis, fused, with the backward written by hand; and its twin from primitives."""
from autograd import parallel
from autograd.backend import colsum, rowdot, rowsum, xp
from autograd.function import Function


def layer_norm_forward(x, residual, gamma, beta, eps):
    """The forward of LayerNormFunction on whole arrays: returns (y, x̂, r). In place only on arrays made here."""
    if residual is not None:
        x = x + residual                                              # (..., D)  the sum that is normalised
    size = x.shape[-1]                                                # D
    mu = rowsum(x) / size                                             # (..., 1)  μ = mean(x)
    xc = x - mu                                                       # (..., D)  x − μ
    rstd = 1 / xp.sqrt(rowdot(xc, xc) / size + eps)                   # (..., 1)  r = 1/√(σ² + ε), σ² = mean((x − μ)²)
    x_hat = xc                                                        # (..., D)  x̂, in the memory of x − μ:
    x_hat *= rstd                                                     #           x̂ = (x − μ) r
    y = x_hat * gamma                                                 # (..., D)  γ ∘ x̂
    y += beta                                                         # (..., D)  y = γ ∘ x̂ + β
    return y, x_hat, rstd


def layer_norm_backward(x_hat, rstd, grad_y, gamma):
    """The backward of LayerNormFunction on whole arrays: returns (dx, dγ, dβ). In place only on arrays made here."""
    rows_g = grad_y.reshape(-1, grad_y.shape[-1])                     # (N, D)
    d_gamma = colsum(rows_g * x_hat.reshape(rows_g.shape))           # (D,)     dγ = Σ_rows dy ∘ x̂
    d_beta = colsum(rows_g)                                           # (D,)     dβ = Σ_rows dy
    size = x_hat.shape[-1]                                            # D
    d_xhat = grad_y * gamma                                           # (..., D) dx̂ = dy ∘ γ
    mean_dxhat = rowsum(d_xhat) / size                                # (..., 1) mean(dx̂)
    mean_dxhat_xhat = rowdot(d_xhat, x_hat) / size                    # (..., 1) mean(dx̂ ∘ x̂)
    dx = d_xhat                                                       # (..., D) dx, in the memory of dx̂:
    dx -= mean_dxhat                                                  # (..., D) dx̂ − mean(dx̂)
    dx -= x_hat * mean_dxhat_xhat                                     # (..., D)   − x̂ ∘ mean(dx̂ ∘ x̂)
    dx *= rstd                                                        # (..., D) dx = r (dx̂ − mean(dx̂)
                                                                      #                  − x̂ ∘ mean(dx̂ ∘ x̂))
    return dx, d_gamma, d_beta


class LayerNormFunction(Function):
    """y = γ ∘ (x − μ) / √(σ² + ε) + β over the last axis (size D), backward written by hand.

    Forward:  μ = mean(x),  σ² = mean((x − μ)²),  r = 1/√(σ² + ε),  x̂ = (x − μ) r,  y = γ ∘ x̂ + β
    Backward: dβ = Σ_rows dy,  dγ = Σ_rows dy ∘ x̂
              dx̂ = dy ∘ γ
              dx = r (dx̂ − mean(dx̂) − x̂ ∘ mean(dx̂ ∘ x̂))
              because x̂ depends on every x of its row through μ and σ²: ∂μ/∂x_j = 1/D and ∂σ²/∂x_j = 2(x_j − μ)/D
              give the two subtracted means (the components of dx̂ along 1 and along x̂ are projected out).
    Residual: with a fourth input ``residual``, y = LayerNorm(x + residual) (the Transformer's post-norm sublayer,
              Add & Norm, in one node): the sum's gradient dx reaches x and the residual alike (∂(x + res)/∂x = 1).
    Saved:    x̂ and r (not x): the backward needs nothing else.
    Executed by ``parallel.map_batch`` (rows cut into chunks; each chunk's dγ, dβ are its rows' share, added up).
    Shapes:   x, y: (..., D); γ, β: (D,)
    Source:   Ba, Kiros & Hinton 2016; PyTorch nn.LayerNorm (biased variance, ε inside the square root)
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, residual=None, eps=1e-5):
        y, x_hat, rstd = parallel.map_batch(layer_norm_forward, x, residual, core_ndim=1, gamma=gamma, beta=beta,
                                            eps=eps)
        ctx.save_for_backward(x_hat, rstd, gamma, beta)
        ctx.has_residual = residual is not None
        return y                                                      # (..., D)

    @staticmethod
    def backward(ctx, grad_y):
        x_hat, rstd, gamma, beta = ctx.saved
        dx, d_gamma, d_beta = parallel.map_batch(layer_norm_backward, x_hat, rstd, grad_y, core_ndim=1, gamma=gamma,
                                                 grads_for=(x_hat, gamma, beta))   # dx (shaped as x̂: as x), dγ, dβ
        return (dx, d_gamma, d_beta, dx) if ctx.has_residual else (dx, d_gamma, d_beta)   # d residual = dx


def layer_norm_reference(x, gamma, beta, eps=1e-5, *, residual=None):
    """The same normalisation composed from engine primitives (add, mean, sub, mul, pow)."""
    if residual is not None:
        x = x + residual
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    return xc * (var + eps) ** -0.5 * gamma + beta
