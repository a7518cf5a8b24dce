"""Layer normalisation over the last axis, fused, with the backward written by hand; and its twin from primitives."""
from autograd.backend import xp
from autograd.function import Function


class LayerNormFunction(Function):
    """y = γ ∘ (x − μ) / √(σ² + ε) + β over the last axis (size D), backward written by hand.

    Forward:  μ = mean(x),  σ² = mean((x − μ)²),  r = 1/√(σ² + ε),  x̂ = (x − μ) r,  y = γ ∘ x̂ + β
    Backward: dβ = Σ_rows dy,  dγ = Σ_rows dy ∘ x̂
              dx̂ = dy ∘ γ
              dx = r (dx̂ − mean(dx̂) − x̂ ∘ mean(dx̂ ∘ x̂))
              because x̂ depends on every x of its row through μ and σ²: ∂μ/∂x_j = 1/D and ∂σ²/∂x_j = 2(x_j − μ)/D
              give the two subtracted means (the components of dx̂ along 1 and along x̂ are projected out).
    Saved:    x̂ and r (not x): the backward needs nothing else.
    Shapes:   x, y: (..., D); γ, β: (D,)
    Source:   Ba, Kiros & Hinton 2016; PyTorch nn.LayerNorm (biased variance, ε inside the square root)
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, eps=1e-5):
        mu = x.mean(axis=-1, keepdims=True)                           # (..., 1)
        xc = x - mu                                                   # (..., D)
        rstd = 1 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + x.dtype.type(eps))   # (..., 1)
        x_hat = xc * rstd                                             # (..., D)
        ctx.save_for_backward(x_hat, rstd, gamma)
        return x_hat * gamma + beta                                   # (..., D)

    @staticmethod
    def backward(ctx, grad_y):
        x_hat, rstd, gamma = ctx.saved
        rows_g = grad_y.reshape(-1, grad_y.shape[-1])                # (N, D)
        d_gamma = (rows_g * x_hat.reshape(rows_g.shape)).sum(axis=0)  # (D,)
        d_beta = rows_g.sum(axis=0)                                   # (D,)
        d_xhat = grad_y * gamma                                       # (..., D)
        dx = rstd * (d_xhat - d_xhat.mean(axis=-1, keepdims=True)
                     - x_hat * (d_xhat * x_hat).mean(axis=-1, keepdims=True))   # (..., D)
        return dx, d_gamma, d_beta


def layer_norm_reference(x, gamma, beta, eps=1e-5):
    """The same normalisation composed from engine primitives (mean, sub, mul, pow, add)."""
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    return xc * (var + eps) ** -0.5 * gamma + beta
