"""The array backend: MINATTN_BACKEND selection and its errors, scatter_add, the rule that autograd/backend.py is the
only library module importing numpy/cupy/cupyx, and the re-run of the whole suite under CuPy when a GPU is present.

Backend selection happens once, at import, so the environment-variable cases run ``import autograd`` in a fresh
subprocess (cwd = repository root) rather than in this process.
"""
import ast
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from autograd import backend
from tests.conftest import host

REPO = pathlib.Path(__file__).resolve().parent.parent
ARRAY_MODULES = {"numpy", "cupy", "cupyx"}


def _cupy_importable():
    try:
        import cupy  # noqa: F401
    except Exception:   # ImportError, or a broken install that fails while importing
        return False
    return True


def _import_autograd(backend_name):
    """Run ``import autograd`` in a fresh interpreter with MINATTN_BACKEND=backend_name; return the CompletedProcess."""
    env = dict(os.environ, MINATTN_BACKEND=backend_name)
    return subprocess.run([sys.executable, "-c", "import autograd; print(autograd.BACKEND)"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


# --- selection -------------------------------------------------------------------------------------------------------
def test_select_unknown_name_lists_valid_values():
    with pytest.raises(ValueError) as info:
        backend._select("bogus")
    message = str(info.value)
    assert "numpy" in message and "cupy" in message
    assert "bogus" in message


def test_select_numpy_returns_numpy():
    assert backend._select("numpy") is np


def test_import_with_unknown_backend_fails_with_value_error():
    result = _import_autograd("bogus")
    assert result.returncode != 0
    assert "ValueError" in result.stderr
    assert "numpy" in result.stderr and "cupy" in result.stderr


@pytest.mark.parametrize("spelling", ["numpy", " NumPy ", ""])
def test_import_with_numpy_backend_spellings(spelling):
    result = _import_autograd(spelling)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "numpy"


def test_cupy_requested_without_cupy_is_a_runtime_error():
    if _cupy_importable():
        pytest.skip("CuPy is importable here, so the 'CuPy missing' error cannot be provoked")
    result = _import_autograd("cupy")
    assert result.returncode != 0, "MINATTN_BACKEND=cupy without CuPy must fail, not fall back to NumPy"
    assert "RuntimeError" in result.stderr
    assert "CuPy" in result.stderr


def test_backend_in_this_process_matches_environment():
    expected = os.environ.get("MINATTN_BACKEND", "numpy").strip().lower() or "numpy"
    assert backend.BACKEND == expected
    assert backend.xp.__name__ == expected


# --- scatter_add -----------------------------------------------------------------------------------------------------
def test_scatter_add_repeated_indices_add_up():
    target = backend.asarray(np.zeros(3))
    indices = backend.asarray(np.array([0, 0, 2]))
    values = backend.asarray(np.array([1.0, 2.0, 3.0]))
    out = backend.scatter_add(target, indices, values)
    assert out is target                                  # in place, and returned
    np.testing.assert_array_equal(host(target), [3.0, 0.0, 3.0])


def test_scatter_add_tuple_of_index_arrays():
    target = backend.asarray(np.ones((2, 3)))
    rows = backend.asarray(np.array([1, 1, 0, 1]))
    cols = backend.asarray(np.array([2, 2, 0, 0]))
    values = backend.asarray(np.array([10.0, 20.0, 5.0, 7.0]))
    backend.scatter_add(target, (rows, cols), values)
    np.testing.assert_array_equal(host(target), [[6.0, 1.0, 1.0], [8.0, 1.0, 31.0]])


def test_to_numpy_gives_a_host_array():
    a = backend.asarray(np.arange(4.0))
    out = backend.to_numpy(a)
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, [0.0, 1.0, 2.0, 3.0])


# --- the one-importer rule -------------------------------------------------------------------------------------------
def _array_imports(path):
    """(line, module) for each ``import numpy/cupy/cupyx[.x]`` or ``from numpy/cupy/cupyx[.x] import ...`` in path."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] in ARRAY_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in ARRAY_MODULES:
                found.append((node.lineno, node.module))
    return found


def _library_files():
    return sorted(p for package in ("autograd", "minattn") for p in (REPO / package).rglob("*.py"))


def test_scan_sees_the_backend_import():
    """The scan is not vacuous: it finds backend.py's own numpy import (and the two packages exist)."""
    files = _library_files()
    assert REPO / "autograd" / "backend.py" in files
    assert any(p.relative_to(REPO).parts[0] == "minattn" for p in files)
    assert any(module == "numpy" for _, module in _array_imports(REPO / "autograd" / "backend.py"))


def test_only_backend_imports_array_modules():
    allowed = REPO / "autograd" / "backend.py"
    offenders = [f"{p.relative_to(REPO)}:{line} imports {module}"
                 for p in _library_files() if p != allowed for line, module in _array_imports(p)]
    assert not offenders, "only autograd/backend.py may import numpy/cupy/cupyx:\n" + "\n".join(offenders)


# --- the whole suite on the GPU --------------------------------------------------------------------------------------
def test_whole_suite_under_cupy():
    if os.environ.get("MINATTN_INNER_RUN"):
        pytest.skip("this is the inner CuPy run; not recursing")
    try:
        import cupy
    except Exception:
        pytest.skip("CuPy not installed")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:   # no driver: CuPy raises CUDARuntimeError
        pytest.skip(f"no CUDA device ({err})")
    if count == 0:
        pytest.skip("no CUDA device")
    env = dict(os.environ, MINATTN_BACKEND="cupy", MINATTN_INNER_RUN="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "tests"], cwd=REPO, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, ("the suite failed under MINATTN_BACKEND=cupy:\n" + result.stdout[-6000:]
                                    + result.stderr[-2000:])
