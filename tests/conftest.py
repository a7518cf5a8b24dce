"""Shared test helpers. Inputs are built with NumPy on the host and moved to the backend with ``asarray``."""
import numpy as np
import pytest

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
