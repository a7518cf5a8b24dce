"""The array backend: the ONLY module of minattn that imports NumPy or CuPy for array math.

Everything else does ``from autograd.backend import xp`` and writes ``xp.exp(...)``, so the same code runs on the CPU
(NumPy) or a CUDA GPU (CuPy). The choice is read once, at import, from the environment variable ``MINATTN_BACKEND``:

    MINATTN_BACKEND=numpy   (default)  arrays are numpy.ndarray, on the host
    MINATTN_BACKEND=cupy               arrays are cupy.ndarray, on the current CUDA device

Errors:
    ValueError   the variable names neither backend (the message lists the valid values).
    RuntimeError ``cupy`` was asked for but CuPy is not importable, or it finds no CUDA device. There is never a silent
                 fall-back to NumPy: a run you believe is on the GPU really is.

CuPy facts this module hides (CuPy docs, "Differences between CuPy and NumPy"): ``np.asarray(cupy_array)`` raises, so
use ``to_numpy``; ``a[idx] += v`` with repeated ``idx`` is undefined on both libraries, so use ``scatter_add``; random
streams differ, so parameters are initialised from one host generator (``host_rng``), to come out the same on both.
Status: the CuPy path is written against CuPy's documented API and the suite re-runs under it when a GPU is present,
but it has not yet been run on GPU hardware (README, "Backends").
"""
import contextlib
import os

import numpy

BACKENDS = ("numpy", "cupy")


def _select(name):
    """Return the array module for backend ``name``; ValueError / RuntimeError as described in the module docstring."""
    if name not in BACKENDS:
        raise ValueError(f"MINATTN_BACKEND={name!r} is not a backend; valid values are {', '.join(BACKENDS)}")
    if name == "numpy":
        return numpy
    try:
        import cupy
    except ImportError as err:
        raise RuntimeError(f"MINATTN_BACKEND=cupy but CuPy is not importable ({err}); "
                           "install it with `pip install -r requirements-gpu.txt`, or unset MINATTN_BACKEND") from err
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDA driver missing or broken: CuPy raises its own CUDARuntimeError
        raise RuntimeError(f"MINATTN_BACKEND=cupy but CuPy finds no usable CUDA device ({err})") from err
    if count == 0:
        raise RuntimeError("MINATTN_BACKEND=cupy but CuPy finds no CUDA device")
    return cupy


BACKEND = os.environ.get("MINATTN_BACKEND", "numpy").strip().lower() or "numpy"
xp = _select(BACKEND)
"""The array module in use: ``numpy`` or ``cupy``."""

host = numpy
"""NumPy, always: for data built on the host (batches, checkpoints, plots) before ``asarray`` moves it to ``xp``."""

ndarray = xp.ndarray
"""The array type of the backend in use."""


def to_numpy(a):
    """A host ``numpy.ndarray`` holding ``a`` (a backend array, a NumPy array or a Python number).

    On CuPy this copies device → host and synchronises; call it for logging and plotting, not inside a training step.
    """
    if BACKEND == "cupy" and isinstance(a, xp.ndarray):
        return xp.asnumpy(a)
    return numpy.asarray(a)


def asarray(a, dtype=None):
    """``a`` as a backend array (no copy when it already is one of ``dtype``); NumPy arrays are moved to the device."""
    return xp.asarray(a, dtype=dtype)


def is_array(a):
    """True if ``a`` is an array of the backend in use (a NumPy array on the CuPy backend is not)."""
    return isinstance(a, xp.ndarray)


def is_foreign_array(a):
    """True if ``a`` is an array of the other library: a NumPy array on the CuPy backend, or a CuPy array on NumPy."""
    if BACKEND == "cupy":
        return isinstance(a, numpy.ndarray)
    return type(a).__module__.split(".")[0] == "cupy"


def read_only(a):
    """``a`` for a caller to look at but not change: on NumPy a read-only view (no copy; writing to it raises
    ValueError), on CuPy — whose arrays cannot be marked read-only — a copy. For arrays that a Function saved for
    its backward and also hands out, such as attention weights: an edit could otherwise corrupt the gradient."""
    if xp is numpy:
        view = a.view()
        view.flags.writeable = False
        return view
    return a.copy()


def scatter_add(target, indices, values):
    """In place ``target[indices] += values``, where repeated indices ADD (plain ``+=`` would keep only one).

    ``indices`` is anything NumPy indexing takes (a tuple of integer arrays, slices, a boolean mask). NumPy and
    CuPy ≥ 12 have ``add.at``; older CuPy has ``cupyx.scatter_add``. Returns ``target``.
    """
    if hasattr(xp.add, "at"):
        xp.add.at(target, indices, values)
    else:  # pragma: no cover - CuPy < 12
        import cupyx
        cupyx.scatter_add(target, indices, values)
    return target


def broadcast_shape(*shapes):
    """The NumPy broadcast of ``shapes`` (tuples); ValueError naming them when they do not broadcast."""
    try:
        return numpy.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(f"shapes {' and '.join(map(str, shapes))} do not broadcast") from None


def rowsum(a):
    """Σ over the last axis of a float array, keeping it: (..., n) → (..., 1).

    Computed as a product with a vector of ones: NumPy's BLAS does that several times faster than ``a.sum(-1)``,
    whose loop restarts on every row (measured on (N, 13) rows: ~8×; on (N, 64): ~5×). Same sum, other rounding.
    """
    if xp is not numpy or a.size == 0:        # nothing to add (an empty last axis sums to 0): no reshape to (-1, 0)
        return a.sum(axis=-1, keepdims=True)
    ones = _ones(a.shape[-1], a.dtype)
    rows = a.reshape(-1, a.shape[-1]) if a.flags.c_contiguous else a   # one matrix-vector product, not one per row
    return (rows @ ones).reshape(a.shape[:-1] + (1,))


def _ones(n, dtype, cache={}):
    """A read-only vector of n ones of ``dtype``, made once per (n, dtype)."""
    key = (n, numpy.dtype(dtype))
    if key not in cache:
        cache[key] = numpy.ones(n, dtype=dtype)
        cache[key].flags.writeable = False
    return cache[key]


def colsum(a):
    """Σ over the first axis of a 2-D float array: (n, m) → (m,), e.g. a bias gradient summed over rows.

    A product with a vector of ones, as ``rowsum``: measured on (832, 64) rows, 4 µs against ``a.sum(0)``'s 18.
    """
    if xp is not numpy:
        return a.sum(axis=0)
    return _ones(a.shape[0], a.dtype) @ a


def rowmax(a):
    """max over the last axis, keeping it: (..., n) → (..., 1).

    For rows of 64 or fewer, NumPy's ``a.max(-1)`` restarts its loop on every row; reducing over the first axis of
    the transposed copy runs one vectorised loop instead (measured on (N, 13) rows: ~4×; on (N, 64): 147 against
    184 µs). Same values.
    """
    n = a.shape[-1]
    if xp is not numpy or n > 64 or a.size == 0:
        return a.max(axis=-1, keepdims=True)
    columns = xp.ascontiguousarray(a.reshape(-1, n).T)                # (n, rows)
    return columns.max(axis=0).reshape(a.shape[:-1] + (1,))


def rowdot(a, b):
    """Σ over the last axis of a ∘ b, keeping it: (..., n), (..., n) → (..., 1) — one dot product per row.

    Long rows: ``einsum``, with no (..., n) temporary; rows shorter than 64: ``rowsum(a * b)``, whose temporary is
    cheaper than einsum's per-row loop (measured: (4, 8, 128, 128): 101 µs vs 184 µs; (64, 4, 13, 13): 37 vs 23 µs).
    """
    if a.shape[-1] >= 64:
        return xp.einsum("...j,...j->...", a, b)[..., None]
    return rowsum(a * b)


def quiet_floats():
    """A context in which NumPy raises no floating-point warning (invalid, divide by zero, overflow, underflow): a
    NaN or inf in the data gives NaN or inf in the result, silently, as PyTorch's kernels do. Per thread (NumPy's
    error state is). CuPy never warns: a do-nothing context there."""
    return numpy.errstate(all="ignore") if xp is numpy else contextlib.nullcontext()


def is_floating(dtype):
    """True for a floating-point dtype (float16/32/64)."""
    return numpy.dtype(dtype).kind == "f"


def dtype_of(name):
    """``numpy.dtype(name)``: the dtype object for 'float32', 'int64', ... (dtypes are shared by NumPy and CuPy)."""
    return numpy.dtype(name)


float32 = numpy.dtype("float32")
float64 = numpy.dtype("float64")
int64 = numpy.dtype("int64")

_host_rng = numpy.random.default_rng(0)
_device_rng = xp.random.default_rng(0)


def manual_seed(seed):
    """Seed both random streams: the host one that initialises parameters and the device one used by dropout.

    The same seed gives bit-identical parameters on both backends (they are drawn on the host and copied), and
    bit-identical runs on NumPy. Dropout masks on CuPy come from cuRAND and differ from NumPy's.
    Raises TypeError / ValueError unless ``seed`` is an int >= 0 (``autograd.checks``), changing nothing.
    """
    global _host_rng, _device_rng
    from autograd import checks        # checks.py imports this module: import it when first needed
    seed = checks.nonnegative_int("seed", seed, "manual_seed")
    _host_rng = numpy.random.default_rng(seed)
    _device_rng = xp.random.default_rng(seed)


def device_rng():
    """The device generator that dropout draws from (a NumPy or CuPy ``Generator``); checkpoints save its state."""
    return _device_rng


def host_rng():
    """The host ``numpy.random.Generator`` (for parameter initialisation and data: draw, then ``asarray``)."""
    return _host_rng


def new_host_rng(seed):
    """A fresh host ``numpy.random.Generator`` seeded with ``seed`` (data sets, gradcheck directions)."""
    return numpy.random.default_rng(seed)


def random_uniform(shape, dtype=float32):
    """A backend array of ``shape`` and ``dtype`` (float32 by default) uniform in [0, 1), from the device stream
    (dropout masks): drawn where the arrays live, NumPy's or cuRAND's generator."""
    return _device_rng.random(shape, dtype=dtype)
