"""Optimizers (SGD with momentum, Adam), the Transformer's warm-up schedule and gradient-norm clipping.

Each optimizer updates ``Parameter.data`` in place from ``Parameter.grad`` under the rules PyTorch documents for
``torch.optim.SGD`` and ``torch.optim.Adam``; a parameter whose grad is None is skipped.
"""
from autograd.backend import xp


class Optimizer:
    """Holds the parameter list and the learning rate; ``zero_grad()`` clears the gradients."""

    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        self.lr = lr
        self.step_count = 0

    def zero_grad(self):
        """Set every parameter's ``.grad`` to None."""
        for p in self.params:
            p.grad = None

    def step(self):
        """Apply one update from the current gradients."""
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and weight decay (PyTorch's formulation).

        g ← grad + λ θ;   v ← μ v + g (v = g at the first step);   θ ← θ − lr · v   (Nesterov: θ ← θ − lr (g + μ v))
    """

    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr)
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        self.velocity = [None] * len(self.params)

    def step(self):
        """θ ← θ − lr · v (see the class docstring)."""
        self.step_count += 1
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            if self.momentum:
                v = self.velocity[i]
                if v is None:
                    v = self.velocity[i] = g.copy()
                else:
                    v *= self.momentum
                    v += g
                g = g + self.momentum * v if self.nesterov else v
            p.data -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction; ``weight_decay`` adds λθ to the gradient (L2, not AdamW).

        m ← β₁ m + (1 − β₁) g;   v ← β₂ v + (1 − β₂) g²;   θ ← θ − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.m = [xp.zeros_like(p.data) for p in self.params]
        self.v = [xp.zeros_like(p.data) for p in self.params]

    def step(self):
        """One Adam update of every parameter that has a gradient."""
        self.step_count += 1
        beta1, beta2 = self.betas
        correction1 = 1 - beta1 ** self.step_count
        correction2 = 1 - beta2 ** self.step_count
        step_size = self.lr / correction1
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * (g * g)
            p.data -= step_size * m / (xp.sqrt(v / correction2) + self.eps)


class WarmupSchedule:
    """The Transformer's learning rate: lr = factor · d^(-1/2) · min(t^(-1/2), t · warmup^(-3/2)).

    Rises linearly for ``warmup_steps`` steps, then decays as 1/√t (Vaswani et al. 2017, eq. 3). Call ``step()``
    once per optimizer step, before ``optimizer.step()``; it sets ``optimizer.lr`` and returns it.
    """

    def __init__(self, optimizer, embed_dim, warmup_steps=4000, factor=1.0):
        if warmup_steps <= 0:
            raise ValueError(f"warmup_steps must be > 0, got {warmup_steps}")
        self.optimizer, self.embed_dim, self.warmup_steps, self.factor = optimizer, embed_dim, warmup_steps, factor
        self.t = 0

    def lr_at(self, t):
        """The learning rate at step t >= 1."""
        return self.factor * self.embed_dim ** -0.5 * min(t ** -0.5, t * self.warmup_steps ** -1.5)

    def step(self):
        """Advance one step and set the optimizer's lr."""
        self.t += 1
        self.optimizer.lr = self.lr_at(self.t)
        return self.optimizer.lr


def clip_grad_norm_(parameters, max_norm):
    """Scale all gradients together so that their joint L2 norm is at most ``max_norm``; return the norm before.

    total = √(Σ_p ‖grad_p‖²); if total > max_norm, every grad is multiplied by max_norm / total (in place), which
    keeps the update's direction. Parameters without a gradient are skipped. Source: Pascanu et al. 2013; PyTorch's
    ``clip_grad_norm_``. Returns a Python float (one device sync on CuPy).
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    total = float(xp.sqrt(sum((g * g).sum() for g in grads)))
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g *= g.dtype.type(scale)
    return total
