"""Optimizers and friends (minattn/optim.py) against updates computed by hand in NumPy.

SGD (plain, momentum, Nesterov, weight decay) and Adam follow the update rules PyTorch documents for torch.optim.SGD
and torch.optim.Adam, checked over three steps with a different gradient each step; WarmupSchedule follows
lr = factor · d^(-1/2) · min(t^(-1/2), t · warmup^(-3/2)); clip_grad_norm_ returns the norm before clipping and
scales every gradient by max_norm / (norm + 1e-6) only when the norm exceeds max_norm.
"""
import numpy as np
import pytest

from autograd import backend
from minattn import SGD, Adam, CosineSchedule, Parameter, WarmupSchedule, clip_grad_norm_
from tests.conftest import host

TIGHT = dict(rtol=1e-13, atol=1e-15)


def _setup(rng, steps=3):
    theta0 = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    grads = [[rng.standard_normal(t.shape) for t in theta0] for _ in range(steps)]
    params = [Parameter(backend.asarray(t.copy())) for t in theta0]
    return theta0, grads, params


def _run(optimizer, params, grads):
    history = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = backend.asarray(g.copy())
        optimizer.step()
        history.append([host(p).copy() for p in params])
    return history


@pytest.mark.parametrize("momentum,nesterov,weight_decay", [(0.0, False, 0.0), (0.0, False, 0.1), (0.9, False, 0.0),
                                                             (0.9, True, 0.0), (0.8, True, 0.05),
                                                             (0.5, False, 0.2)])
def test_sgd_matches_hand_computed_updates(rng, momentum, nesterov, weight_decay):
    theta0, grads, params = _setup(rng)
    lr = 0.1
    history = _run(SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov), params, grads)
    for i, theta in enumerate(theta0):
        theta = theta.copy()
        buf = None
        for step, step_grads in enumerate(grads):
            g = step_grads[i] + weight_decay * theta
            if momentum:
                buf = g.copy() if buf is None else momentum * buf + g
                direction = g + momentum * buf if nesterov else buf
            else:
                direction = g
            theta = theta - lr * direction
            np.testing.assert_allclose(history[step][i], theta, **TIGHT, err_msg=f"param {i}, step {step + 1}")


def test_sgd_first_steps_by_hand():
    """Momentum 0.9, lr 0.5, gradients 1 then 2 on a scalar 0: v1 = 1, θ1 = −0.5; v2 = 0.9 + 2 = 2.9, θ2 = −1.95."""
    p = Parameter(backend.asarray(np.zeros(1)))
    opt = SGD([p], lr=0.5, momentum=0.9)
    p.grad = backend.asarray(np.ones(1))
    opt.step()
    np.testing.assert_allclose(host(p), [-0.5], **TIGHT)
    p.grad = backend.asarray(np.full(1, 2.0))
    opt.step()
    np.testing.assert_allclose(host(p), [-1.95], **TIGHT)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_hand_computed_updates(rng, weight_decay):
    theta0, grads, params = _setup(rng)
    lr, beta1, beta2, eps = 0.01, 0.9, 0.999, 1e-8
    history = _run(Adam(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay), params, grads)
    for i, theta in enumerate(theta0):
        theta = theta.copy()
        m, v = np.zeros_like(theta), np.zeros_like(theta)
        for step, step_grads in enumerate(grads):
            t = step + 1
            g = step_grads[i] + weight_decay * theta
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
            theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
            np.testing.assert_allclose(history[step][i], theta, rtol=1e-12, atol=1e-14,
                                       err_msg=f"param {i}, step {t}")


def test_adam_first_step_moves_each_weight_by_about_lr(rng):
    """At t = 1, m̂ = g and v̂ = g², so each weight moves by lr · g / (|g| + ε) ≈ lr · sign(g)."""
    p = Parameter(backend.asarray(np.zeros(5)))
    g = np.array([3.0, -0.2, 1e-3, -50.0, 0.7])
    p.grad = backend.asarray(g)
    Adam([p], lr=0.01).step()
    np.testing.assert_allclose(host(p), -0.01 * g / (np.abs(g) + 1e-8), rtol=1e-12)


def test_optimizers_skip_parameters_without_grad(rng):
    a, b = Parameter(backend.asarray(np.ones(2))), Parameter(backend.asarray(np.ones(2)))
    for opt in (SGD([a, b], lr=0.1, momentum=0.9), Adam([a, b], lr=0.1)):
        a.grad, b.grad = backend.asarray(np.ones(2)), None
        opt.step()
        np.testing.assert_array_equal(host(b), 1.0)
    assert np.all(host(a) < 1.0)


def test_optimizer_zero_grad_and_errors():
    p = Parameter(backend.asarray(np.ones(2)))
    p.grad = backend.asarray(np.ones(2))
    opt = SGD([p], lr=0.1)
    opt.zero_grad()
    assert p.grad is None
    with pytest.raises(ValueError):
        SGD([], lr=0.1)
    with pytest.raises(ValueError):
        Adam([p], lr=-1.0)


def test_warmup_schedule_values():
    p = Parameter(backend.asarray(np.ones(1)))
    opt = Adam([p], lr=123.0)
    d, warmup, factor = 64, 10, 2.0
    sched = WarmupSchedule(opt, embed_dim=d, warmup_steps=warmup, factor=factor)
    lrs = [sched.step() for _ in range(40)]
    for t in (1, 2, 5, 10, 11, 20, 40):
        expected = factor / np.sqrt(d) * min(1 / np.sqrt(t), t / warmup ** 1.5)
        assert lrs[t - 1] == pytest.approx(expected, rel=1e-12)
    assert opt.lr == pytest.approx(factor / np.sqrt(d) / np.sqrt(40), rel=1e-12)
    # linear warm-up, peak at t = warmup, then 1/√t decay
    assert lrs[4] == pytest.approx(5 * lrs[0], rel=1e-12)
    assert max(lrs) == lrs[warmup - 1]
    assert lrs[39] == pytest.approx(lrs[9] * np.sqrt(10 / 40), rel=1e-12)
    with pytest.raises(ValueError):
        WarmupSchedule(opt, embed_dim=d, warmup_steps=0)


def test_cosine_schedule_values():
    """Warm-up 2, decay to step 6, max 1, min 0.1: the values worked by hand (cos(π/4) = √2/2)."""
    p = Parameter(backend.asarray(np.ones(1)))
    opt = Adam([p], lr=123.0)
    sched = CosineSchedule(opt, max_lr=1.0, warmup_steps=2, decay_steps=6, min_lr=0.1)
    lrs = [sched.step() for _ in range(8)]
    half_root2 = np.sqrt(2) / 2
    expected = [0.5, 1.0, 0.1 + 0.45 * (1 + half_root2), 0.55, 0.1 + 0.45 * (1 - half_root2), 0.1, 0.1, 0.1]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert opt.lr == 0.1
    no_warmup = CosineSchedule(opt, max_lr=1.0, warmup_steps=0, decay_steps=4)           # straight into the cosine
    assert no_warmup.lr_at(1) == pytest.approx(0.5 * (1 + half_root2), rel=1e-12)
    for bad in ({"warmup_steps": 6}, {"warmup_steps": -1}, {"decay_steps": 2.5}, {"min_lr": 2.0},
                {"min_lr": float("nan")}, {"max_lr": float("inf")}):
        kwargs = {"max_lr": 1.0, "warmup_steps": 2, "decay_steps": 6, "min_lr": 0.1, **bad}
        error = TypeError if bad == {"decay_steps": 2.5} else ValueError          # a float where an int is meant
        with pytest.raises(error, match="CosineSchedule: (warmup_steps|decay_steps|min_lr|max_lr) must be"):
            CosineSchedule(opt, **kwargs)


def test_clip_grad_norm_scales_to_max_norm(rng):
    grads = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    params = [Parameter(backend.asarray(np.zeros(g.shape))) for g in grads] + [Parameter(backend.asarray(np.zeros(2)))]
    for p, g in zip(params, grads):
        p.grad = backend.asarray(g.copy())
    total = np.sqrt(sum((g ** 2).sum() for g in grads))
    max_norm = total / 4
    returned = clip_grad_norm_(params, max_norm)
    assert returned == pytest.approx(total, rel=1e-12)
    scale = max_norm / (total + 1e-6)
    for p, g in zip(params, grads):
        np.testing.assert_allclose(host(p.grad), g * scale, rtol=1e-12)
    clipped = np.sqrt(sum((host(p.grad) ** 2).sum() for p in params[:2]))
    assert clipped == pytest.approx(max_norm, rel=1e-6)
    assert params[2].grad is None


def test_clip_grad_norm_leaves_small_gradients_alone(rng):
    g = rng.standard_normal(6)
    p = Parameter(backend.asarray(np.zeros(6)))
    p.grad = backend.asarray(g.copy())
    returned = clip_grad_norm_([p], max_norm=np.linalg.norm(g) * 2)
    assert returned == pytest.approx(np.linalg.norm(g), rel=1e-12)
    np.testing.assert_array_equal(host(p.grad), g)


def test_clip_grad_norm_float32_stays_float32(rng):
    g = rng.standard_normal(10).astype(np.float32) * 10
    p = Parameter(backend.asarray(np.zeros(10, dtype=np.float32)))
    p.grad = backend.asarray(g.copy())
    returned = clip_grad_norm_([p], max_norm=1.0)
    assert returned == pytest.approx(float(np.linalg.norm(g.astype(np.float64))), rel=1e-6)
    assert host(p.grad).dtype == np.float32
    assert float(np.linalg.norm(host(p.grad).astype(np.float64))) == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_norm_without_grads_returns_zero():
    assert clip_grad_norm_([Parameter(backend.asarray(np.zeros(2)))], 1.0) == 0.0


def test_adam_flat_step_equals_the_per_parameter_step_bit_for_bit(rng):
    """Adam updates its flat buffers in one pass when every parameter has a gradient; the per-parameter loop (taken
    when some gradient is missing) does the same arithmetic, element by element: the two give the same bits. (12,000+
    elements: an operation done in another order, e.g. (m / d) · lr for (lr · m) / d, shows in a few hundred.)"""
    shapes = [(300, 40), (50,), (2, 2, 2)]
    data = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]
    results = []
    for flat in (True, False):
        params = [Parameter(backend.asarray(d.copy())) for d in data]
        opt = Adam(params, lr=0.01, weight_decay=0.1)
        if not flat:
            opt._m_flat = None                       # the loop over parameters (m, v stay views of the buffers)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = backend.asarray(g)
            opt.step()
        results.append([host(p).tobytes() for p in params] + [host(m).tobytes() for m in opt.m])
    assert results[0] == results[1]
