"""Shared test helpers. Inputs are built with NumPy on the host and moved to the backend with ``asarray``.

PyTorch is optional: the tests that compare with it skip, with a reason, where it is not installed. CI installs it
and sets MINATTN_REQUIRE_TORCH=1 (.ci/run), so that there those tests must run: a missing torch is an error."""
import os

import numpy as np
import pytest

if os.environ.get("MINATTN_REQUIRE_TORCH") == "1":
    import torch  # noqa: F401  (ImportError here: CI promised PyTorch, so its equivalence tests must not skip)

from autograd import Tensor, backend


@pytest.fixture
def rng():
    """A seeded host generator: every test draws the same data on every run and backend."""
    return np.random.default_rng(1234)


def t64(array, requires_grad=True):
    """A float64 Tensor on the backend (for gradchecks)."""
    return Tensor(backend.asarray(np.asarray(array, dtype=np.float64)), requires_grad=requires_grad)


def host(x):
    """Host NumPy copy of a Tensor or backend array."""
    return backend.to_numpy(x.data if isinstance(x, Tensor) else x)


def mha_dense_and_flash(x, embed_dim, num_heads, seed, **options):
    """Run ``MultiHeadAttention(embed_dim, num_heads, **options)`` in float64 on host array x (self-attention,
    is_causal=True) once per attn_impl, 'dense' then 'flash', from the same seed, and backpropagate out.sum().
    Returns one (out, x_grad, layer) per impl: out and x_grad as host arrays."""
    from minattn import MultiHeadAttention, manual_seed
    runs = []
    for impl in ("dense", "flash"):
        manual_seed(seed)
        layer = MultiHeadAttention(embed_dim, num_heads, dtype="float64", attn_impl=impl, **options)
        t = t64(x)
        out = layer(t, t, t, is_causal=True)
        out.sum().backward()
        runs.append((host(out), host(t.grad), layer))
    return runs


@pytest.fixture
def step_losses(monkeypatch):
    """A list that receives the loss of every training step of demos/copy_task.py, as a Python float, in order
    (tests/test_resume.py, tests/test_determinism.py)."""
    from demos import copy_task
    recorded = []
    real = copy_task.F.cross_entropy

    def recording(*args, **kwargs):
        loss = real(*args, **kwargs)
        recorded.append(loss.item())
        return loss

    monkeypatch.setattr(copy_task.F, "cross_entropy", recording)
    return recorded
