"""Optimizers (SGD with momentum, Adam), learning-rate schedules (the Transformer's warm-up, nanoGPT's cosine) and
gradient-norm clipping.

Each optimizer updates ``Parameter.data`` in place from ``Parameter.grad`` under the rules PyTorch documents for
``torch.optim.SGD`` and ``torch.optim.Adam``; a parameter whose grad is None is skipped.

``state_dict()`` / ``load_state_dict()`` save and restore what an optimizer has learned (SGD's velocity, Adam's m, v,
the step count, the learning rate and the hyperparameters) so that a run resumed from a checkpoint continues exactly;
``minattn.checkpoint`` writes them to disk with the model.

Hyperparameters follow PyTorch's rules (``torch.optim.SGD`` / ``Adam`` raise for the same values): lr, momentum,
weight_decay and eps finite and >= 0, betas in [0, 1), Nesterov only with a momentum. The constructors and
``load_state_dict`` check them with the same function (``check_hyperparameters``), so every optimizer that can be
built can be saved and loaded again, and no state that could not be built is ever loaded.
"""
import math

from autograd import backend, checks
from autograd.backend import xp
from autograd.tensor import Tensor, as_data


class Optimizer:
    """Holds the parameter list and the learning rate; ``zero_grad()`` clears the gradients.

    Raises TypeError unless ``params`` is an iterable of Tensors (not one Tensor), ValueError for an empty list or
    a parameter listed twice, TypeError / ValueError unless lr is a finite number >= 0.
    """

    def __init__(self, params, lr):
        where = type(self).__name__
        expected = "an iterable of Tensors (e.g. model.parameters())"
        if isinstance(params, Tensor) or not hasattr(params, "__iter__"):
            checks.fail("params", expected, params, where, TypeError)
        params = list(params)
        if not params:
            checks.fail("params", "a non-empty list of Tensors (a spent generator is empty)", params, where)
        seen = {}
        for position, p in enumerate(params):
            if not isinstance(p, Tensor) or not p.is_leaf:
                checks.fail(f"params[{position}]", "a leaf Tensor (a Parameter)", p, where, TypeError)
            if id(p) in seen:
                checks.fail(f"params[{position}]", f"a parameter not listed before (it is params[{seen[id(p)]}], "
                            "and would be updated twice per step)", p, where)
            seen[id(p)] = position
        self.lr = checks.nonnegative_float("lr", lr, where)
        self.params = params
        self.step_count = 0

    def zero_grad(self):
        """Set every parameter's ``.grad`` to None."""
        for p in self.params:
            p.grad = None

    def step(self):
        """Apply one update from the current gradients."""
        raise NotImplementedError

    # --- state, for checkpoints --------------------------------------------------------------------------------------
    hyperparameters = ()
    """Names of the attributes saved with the state besides lr (each subclass lists its own)."""
    buffers = ()
    """Names of the per-parameter state lists (one array, or None, per parameter, in the order of ``params``)."""
    optional_buffers = ()
    """Buffers whose entries may be None (SGD's velocity before a parameter's first momentum step)."""

    def state_dict(self):
        """What this optimizer needs to continue exactly where it stands, as plain host data.

        Returns {"type": class name, "lr": float, "step_count": int, each hyperparameter, each buffer: [host NumPy
        copy, or None, per parameter]} — e.g. Adam: {"type": "Adam", "lr", "step_count", "betas", "eps",
        "weight_decay", "m": [...], "v": [...]}. The parameters themselves are not included (``Module.state_dict``
        holds them); the buffers follow the order of ``params``, as PyTorch's optimizer state does.
        """
        state = {"type": type(self).__name__, "lr": float(self.lr), "step_count": int(self.step_count)}
        for name in self.hyperparameters:
            value = getattr(self, name)
            state[name] = list(value) if isinstance(value, tuple) else value
        for name in self.buffers:
            state[name] = [None if a is None else backend.to_numpy(a).copy() for a in getattr(self, name)]
        return state

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned (the saved lr and hyperparameters win, as in PyTorch).

        Everything is checked before anything is written: KeyError for missing or unexpected keys; ValueError, listing
        every problem, for another optimizer type, another number of parameters, a buffer array whose shape or dtype
        is not its parameter's, or a bad lr, step count or hyperparameters (checked as the constructor checks them).
        On error the optimizer is left unchanged.
        """
        self._apply_state(self._checked_state(state))

    def _apply_state(self, checked):
        """Set what ``_checked_state`` returned (it cannot fail: everything was checked)."""
        for name, value in checked.items():
            setattr(self, name, value)

    def _checked_state(self, state):
        """{attribute: value} to set from ``state``, every value checked and copied to the backend; raises if bad."""
        where = f"{type(self).__name__}.load_state_dict"
        checks.instance("state", state, dict, "a dict (from state_dict())", where)
        if "type" in state and state["type"] != type(self).__name__:
            checks.fail("state", f"the state of an optimizer of this one's type, {type(self).__name__}", state, where,
                        received=f"the state of an optimizer of type {state['type']}")
        expected = {"type", "lr", "step_count", *self.hyperparameters, *self.buffers}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        problems, out = [], {}

        def collect(check, *args, **kwargs):
            """Run one check; on TypeError / ValueError note its message (every problem is listed) and return None."""
            try:
                return check(*args, **kwargs)
            except (TypeError, ValueError) as err:
                problems.append(str(err))
                return None

        out["lr"] = collect(checks.nonnegative_float, "lr", state["lr"])
        out["step_count"] = collect(checks.nonnegative_int, "step_count", state["step_count"])
        hyper = collect(self.check_hyperparameters, **{name: state[name] for name in self.hyperparameters}, where="")
        out.update(hyper or {})
        for name in self.buffers:
            arrays = state[name]
            expected = f"a list of {len(self.params)} arrays (one per parameter)"
            if not isinstance(arrays, (list, tuple)) or len(arrays) != len(self.params):
                collect(checks.fail, name, expected, arrays)
                continue
            out[name] = []
            for i, (p, a) in enumerate(zip(self.params, arrays)):
                expected = f"an array of {p.shape} {p.dtype} (its parameter's)"
                if a is None:
                    if name not in self.optional_buffers:
                        collect(checks.fail, f"{name}[{i}]", expected, a)
                    out[name].append(None)
                    continue
                try:
                    a = as_data(a)
                except (TypeError, ValueError) as err:
                    collect(checks.fail, f"{name}[{i}]", expected, a, received=f"{checks.describe(a)} ({err})")
                    continue
                if a.shape != p.shape or a.dtype != p.dtype:
                    collect(checks.fail, f"{name}[{i}]", expected, a)
                out[name].append(a.copy())   # never share an array with the caller's state
        if problems:
            raise ValueError(f"load_state_dict ({type(self).__name__}): " + "; ".join(problems))
        return out

    @staticmethod
    def check_hyperparameters(where=None):
        """{name: checked value} for the hyperparameters a subclass lists (none here); TypeError / ValueError
        naming the first bad one. The constructor and ``load_state_dict`` both call it."""
        return {}


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and weight decay (PyTorch's formulation).

        g ← grad + λ θ;   v ← μ v + g (v = g at the first step);   θ ← θ − lr · v   (Nesterov: θ ← θ − lr (g + μ v))

    State (``state_dict``): ``velocity`` v, one array per parameter (None until its first momentum step).
    Raises as PyTorch's SGD does: lr, momentum or weight_decay not a finite number >= 0, nesterov not a bool, or
    nesterov=True without a momentum > 0 (TypeError / ValueError naming the argument).
    """

    hyperparameters = ("momentum", "weight_decay", "nesterov")
    buffers = ("velocity",)
    optional_buffers = ("velocity",)

    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0, nesterov=False):
        hyper = self.check_hyperparameters(momentum, weight_decay, nesterov)
        super().__init__(params, lr)
        self.momentum, self.weight_decay, self.nesterov = hyper["momentum"], hyper["weight_decay"], hyper["nesterov"]
        self.velocity = [None] * len(self.params)

    @staticmethod
    def check_hyperparameters(momentum=0.0, weight_decay=0.0, nesterov=False, where="SGD"):
        """{"momentum", "weight_decay", "nesterov"} checked by PyTorch's rules (see the class docstring)."""
        momentum = checks.nonnegative_float("momentum", momentum, where)
        weight_decay = checks.nonnegative_float("weight_decay", weight_decay, where)
        nesterov = checks.boolean("nesterov", nesterov, where)
        if nesterov and momentum == 0:
            checks.fail("momentum", "> 0 with nesterov=True (Nesterov momentum needs a momentum)", momentum, where)
        return {"momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov}

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
                    v = self.velocity[i] = xp.array(g, copy=True)       # an array even for a 0-d parameter
                else:
                    v *= self.momentum
                    v += g
                g = g + self.momentum * v if self.nesterov else v
            p.data -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction; ``weight_decay`` adds λθ to the gradient (L2, not AdamW).

        m ← β₁ m + (1 − β₁) g;   v ← β₂ v + (1 − β₂) g²;   θ ← θ − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)

    State (``state_dict``): ``m``, ``v`` (one array per parameter) and ``step_count`` t, which the bias corrections
    read — all three must be restored for a resumed run to take the same steps.
    Unlike PyTorch, t is counted once per ``step()`` for the whole optimizer, not per parameter: the two agree
    whenever every parameter has a gradient at every step, and part for a parameter that missed one (PyTorch's
    corrections would use that parameter's own, smaller count).
    The per-parameter ``m[i]``, ``v[i]`` are views of two flat buffers, so that a step whose every parameter has a
    gradient updates all of them with a handful of array operations on the flat buffers (not a handful per
    parameter), in place in two more parameter-sized flat buffers kept for it (the gradients side by side, and a
    scratch): a step allocates no parameter-sized array, as PyTorch's in-place Adam (measured on the character-level
    GPT: −1 to −2% per step). The arithmetic is the same as the per-parameter loop's, element by element, in the same
    order: the two give the same bits (tested).
    Raises as PyTorch's Adam does: lr, eps or weight_decay not a finite number >= 0, betas not two numbers in [0, 1)
    (TypeError / ValueError naming the argument).
    """

    hyperparameters = ("betas", "eps", "weight_decay")
    buffers = ("m", "v")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        hyper = self.check_hyperparameters(betas, eps, weight_decay)
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = hyper["betas"], hyper["eps"], hyper["weight_decay"]
        dtypes = {p.dtype for p in self.params}
        self._flat_dtype = dtypes.pop() if len(dtypes) == 1 else None     # one flat buffer needs one dtype
        self.m, self._m_flat = self._buffer()
        self.v, self._v_flat = self._buffer()
        self._g_flat = self._s_flat = None      # the flat step's gradient and scratch, made at its first use

    def _buffer(self):
        """Zeros for every parameter: (list of per-parameter views, the flat array they view, or None)."""
        if self._flat_dtype is None:
            return [xp.zeros_like(p.data) for p in self.params], None
        flat = xp.zeros(sum(p.size for p in self.params), dtype=self._flat_dtype)
        views, start = [], 0
        for p in self.params:
            views.append(flat[start:start + p.size].reshape(p.shape))
            start += p.size
        return views, flat

    def step(self):
        """One Adam update of every parameter that has a gradient."""
        self.step_count += 1
        beta1, beta2 = self.betas
        correction1 = 1 - beta1 ** self.step_count
        correction2 = 1 - beta2 ** self.step_count
        step_size = self.lr / correction1
        if self._m_flat is not None and all(p.grad is not None for p in self.params):
            if self._g_flat is None:                 # two more flat buffers, reused at every step: no allocation
                self._g_flat, self._s_flat = xp.empty_like(self._m_flat), xp.empty_like(self._m_flat)
            g, s = self._g_flat, self._s_flat        # s: scratch for the temporaries of the formulas below
            xp.concatenate([p.grad.reshape(-1) for p in self.params], out=g)   # every gradient, one flat array
            if self.weight_decay:
                xp.concatenate([p.data.reshape(-1) for p in self.params], out=s)
                s *= self.weight_decay
                g += s                                               # g + λθ
            m, v = self._m_flat, self._v_flat
            m *= beta1
            m += xp.multiply(g, 1 - beta1, out=s)                 # m ← β₁ m + (1 − β₁) g
            v *= beta2
            xp.multiply(g, g, out=s)
            s *= 1 - beta2
            v += s                                               # v ← β₂ v + (1 − β₂) g²
            xp.sqrt(xp.divide(v, correction2, out=s), out=s)
            s += self.eps                                        # √(v / (1 − β₂ᵗ)) + ε
            xp.divide(xp.multiply(m, step_size, out=g), s, out=s)  # lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε),
            for p, u in zip(self.params, self._views(s)):       # in the per-parameter loop's order of operations
                p.data -= u
            return
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * (g * g)
            p.data -= step_size * m / (xp.sqrt(v / correction2) + self.eps)

    def _views(self, flat):
        """``flat`` cut into one view per parameter, shaped like it."""
        start = 0
        for p in self.params:
            yield flat[start:start + p.size].reshape(p.shape)
            start += p.size

    def _apply_state(self, checked):
        """As ``Optimizer._apply_state``; m and v are copied into the flat buffers, which stay shared."""
        checked = dict(checked)
        for name in ("m", "v"):
            arrays = checked.pop(name)
            if self._m_flat is None:
                setattr(self, name, arrays)
                continue
            for view, a in zip(getattr(self, name), arrays):
                view[...] = a
        super()._apply_state(checked)

    @staticmethod
    def check_hyperparameters(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, where="Adam"):
        """{"betas", "eps", "weight_decay"} checked by PyTorch's rules (see the class docstring)."""
        betas = tuple(checks.finite_float(f"betas[{i}]", b, 0, 1, high_open=True, where=where)
                      for i, b in enumerate(checks.pair("betas", betas, where)))
        eps = checks.nonnegative_float("eps", eps, where)
        weight_decay = checks.nonnegative_float("weight_decay", weight_decay, where)
        return {"betas": betas, "eps": eps, "weight_decay": weight_decay}


def check_optimizer(optimizer, where):
    """``optimizer``, after checking it has the ``lr`` a schedule sets (an SGD, an Adam, or any object like them);
    TypeError otherwise."""
    if not hasattr(optimizer, "lr"):
        checks.fail("optimizer", "an optimizer (SGD, Adam: an object with an lr attribute)", optimizer, where,
                    TypeError)
    return optimizer


class LRSchedule:
    """A learning rate that is a function of the step alone: a subclass defines ``lr_at(t)``; ``step()``, called once
    per optimizer step before ``optimizer.step()``, advances t (the steps taken; set by the subclass, 0 at first) and
    sets ``optimizer.lr`` to ``lr_at(t)``."""

    def step(self):
        """Advance one step and set the optimizer's lr."""
        self.t += 1
        self.optimizer.lr = self.lr_at(self.t)
        return self.optimizer.lr


class WarmupSchedule(LRSchedule):
    """The Transformer's learning rate: lr = factor · d^(-1/2) · min(t^(-1/2), t · warmup^(-3/2)).

    Rises linearly for ``warmup_steps`` steps, then decays as 1/√t (Vaswani et al. 2017, eq. 3). Call ``step()``
    once per optimizer step, before ``optimizer.step()``; it sets ``optimizer.lr`` and returns it.
    Raises TypeError / ValueError unless optimizer has an lr (SGD, Adam), embed_dim and warmup_steps are ints >= 1
    and factor a finite number >= 0 (so every lr it sets is a finite number >= 0).
    """

    def __init__(self, optimizer, embed_dim, warmup_steps=4000, factor=1.0):
        where = "WarmupSchedule"
        self.optimizer = check_optimizer(optimizer, where)
        self.embed_dim = checks.positive_int("embed_dim", embed_dim, where)
        self.warmup_steps = checks.positive_int("warmup_steps", warmup_steps, where)
        self.factor = checks.nonnegative_float("factor", factor, where)
        self.t = 0

    def lr_at(self, t):
        """The learning rate at step t >= 1 (an int)."""
        t = checks.positive_int("t", t, "WarmupSchedule.lr_at")
        return self.factor * self.embed_dim ** -0.5 * min(t ** -0.5, t * self.warmup_steps ** -1.5)


class CosineSchedule(LRSchedule):
    """nanoGPT's learning rate: a linear warm-up to ``max_lr``, then half a cosine down to ``min_lr``, then flat.

        lr(t) = max_lr · t / warmup_steps                                                   1 ≤ t ≤ warmup_steps
        lr(t) = min_lr + ½ (max_lr − min_lr) (1 + cos(π (t − warmup_steps) / (decay_steps − warmup_steps)))
                                                                                            up to t = decay_steps
        lr(t) = min_lr                                                                      t > decay_steps

    Call ``step()`` once per optimizer step, before ``optimizer.step()``: it advances t, sets ``optimizer.lr`` and
    returns it. ``lr_at(t)`` depends on t alone, so a resumed run sets ``t`` to the steps already taken.
    Raises TypeError / ValueError unless optimizer has an lr (SGD, Adam), 0 ≤ warmup_steps < decay_steps (ints) and
    0 ≤ min_lr ≤ max_lr (finite numbers).
    Source: Loshchilov & Hutter 2017 (SGDR, one cycle without restarts); nanoGPT train.py ``get_lr``.
    """

    def __init__(self, optimizer, max_lr, warmup_steps, decay_steps, min_lr=0.0):
        where = "CosineSchedule"
        optimizer = check_optimizer(optimizer, where)
        max_lr = checks.nonnegative_float("max_lr", max_lr, where)
        min_lr = checks.nonnegative_float("min_lr", min_lr, where)
        if min_lr > max_lr:
            checks.fail("min_lr", f"a finite number in [0, max_lr={max_lr:g}]", min_lr, where)
        warmup_steps = checks.nonnegative_int("warmup_steps", warmup_steps, where)
        decay_steps = checks.integer("decay_steps", decay_steps, where=where)
        if decay_steps <= warmup_steps:
            checks.fail("decay_steps", f"an int > warmup_steps={warmup_steps}", decay_steps, where)
        self.optimizer, self.max_lr, self.min_lr = optimizer, max_lr, min_lr
        self.warmup_steps, self.decay_steps = warmup_steps, decay_steps
        self.t = 0

    def lr_at(self, t):
        """The learning rate of step t >= 1 (an int)."""
        t = checks.positive_int("t", t, "CosineSchedule.lr_at")
        if t <= self.warmup_steps:
            return self.max_lr * t / self.warmup_steps
        if t > self.decay_steps:
            return self.min_lr
        progress = (t - self.warmup_steps) / (self.decay_steps - self.warmup_steps)     # 0 → 1
        return self.min_lr + 0.5 * (self.max_lr - self.min_lr) * (1 + math.cos(math.pi * progress))


def clip_grad_norm_(parameters, max_norm):
    """Scale all gradients together so that their joint L2 norm is at most ``max_norm``; return the norm before.

    total = √(Σ_p ‖grad_p‖²); every grad is multiplied by min(1, max_norm / (total + 1e-6)) in place, which keeps the
    update's direction. Parameters without a gradient are skipped. Source: Pascanu et al. 2013; PyTorch's
    ``clip_grad_norm_``. Returns the norm as a 0-d backend value (a NumPy scalar; on CuPy a device array, as PyTorch
    returns a tensor): nothing waits for the device — on CuPy every gradient is multiplied, 1 included, instead of
    reading the norm back to decide (``float(norm)`` reads it, a sync).
    ``parameters``: an iterable of Tensors, or one Tensor (as PyTorch). TypeError / ValueError unless max_norm is a
    number >= 0 (inf: measure the norm, clip nothing, as PyTorch).
    """
    where = "clip_grad_norm_"
    max_norm = checks.real("max_norm", max_norm, low=0, where=where)
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    if not hasattr(parameters, "__iter__"):
        checks.fail("parameters", "an iterable of Tensors, or a Tensor", parameters, where, TypeError)
    parameters = list(parameters)
    for i, p in enumerate(parameters):
        checks.tensor(f"parameters[{i}]", p, where)
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    total = xp.sqrt(sum(xp.vdot(g.reshape(-1), g.reshape(-1)) for g in grads))   # one BLAS dot per gradient
    scale = xp.minimum(max_norm / (total + 1e-6), 1.0)
    if backend.BACKEND != "numpy" or scale < 1:          # NumPy: skip the multiplies when nothing is clipped
        for g in grads:
            g *= scale.astype(g.dtype)
    return total
