"""Run one computation on parts of a batch at the same time, one part per CPU core (data parallelism).

Why: attention is a batch of B·h independent problems (one per sequence and head), each a few small matrix products
and a softmax. NumPy runs the softmax's elementwise passes (max, exp, sum, divide) on ONE core, and OpenBLAS runs a
(128 × 32) @ (32 × 128) product on one core too (too small to be worth splitting). So on a 2-core laptop half the
machine sits idle — while PyTorch's CPU kernels split the batch across cores (``at::parallel_for``). We do the same:
cut the batch into ``get_num_threads()`` parts along one batch axis and give each part to a Python thread. NumPy
releases Python's GIL inside ufuncs, reductions and matmul, so the threads really run at once.

The same goes for the big products of the Linear layers: their rows are cut into parts as well. So that 2 parts
never fight 2 BLAS threads for 2 cores, NumPy's BLAS is held to ONE thread (threadpoolctl) whenever minattn computes
on more than one — set once, at import, as ``torch.set_num_threads`` does for PyTorch's BLAS. Letting OpenBLAS keep
its own threads is worse than it sounds: after a multi-threaded call its idle workers busy-wait ~0.1 s for the next
one, holding a core our threads then cannot use (measured on 2 cores: two threads of ``exp`` ran no faster than one
right after a 2-thread matmul). ``set_num_threads(1)`` gives the BLAS its own thread count back. On CuPy nothing of
this applies: one part, the GPU is already parallel.

How a Function uses it (see minattn/fused/attention.py):

    parts = parallel.batch_parts(batch_shape, madds)    # how to cut it (madds: its multiply-adds): [Part, ...]
    def work(part):                                      # the math, on one part: part.take(x) is x's slice
        ...
    results = parallel.run(work, parts)                  # [work(part) for part in parts], on threads
    grad_q = parallel.join([r[0] for r in results], q, parts)   # per-part gradients → one gradient shaped like q

An array broadcasts along the cut axis (its size there is 1, or it lacks the axis): every part takes all of it, and
``join`` sums the parts' gradients for it instead of placing them side by side — the same rule as ``sum_to``.

The result is the same as one call on the whole batch (each (L, S) problem sees the same arithmetic), to rounding:
tests/test_parallel.py compares them.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

from autograd.backend import BACKEND, xp

MIN_WORK = 4_000_000
"""Below this many multiply-adds a computation runs in one piece: handing a part to a thread costs ~20-40 µs, what a
core does in ~4 M multiply-adds, so smaller work gains nothing from being cut (the toy copy task is all such work)."""

_pool = None                 # the worker threads, made on first use
_pool_lock = threading.Lock()   # guards _pool: set_num_threads may replace it while another thread runs
_busy = threading.Lock()     # one run at a time: a nested or concurrent run goes serial (see run)
_blas = None                 # threadpoolctl's controller of the BLAS libraries loaded
_blas_threads = None         # the BLAS's own thread count, as found at import (given back by set_num_threads(1))
_num_threads = 1             # how many parts; set below


def _blas_controller():
    """threadpoolctl's ThreadpoolController (it finds the BLAS that NumPy loaded), made once."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController()
    return _blas


def _limit_blas(threads):
    """Set the BLAS's thread count to ``threads`` for good (threadpoolctl's limit outside a ``with``).

    An OpenBLAS built on OpenMP keeps one count per calling thread, hence this also runs in each worker thread. One
    built on pthreads has one pool for the process, and threadpoolctl ≥ 3.8 then lets only the thread that first set
    a limit change it again, ignoring the others without a word: we hand control back after each change, so that
    ``set_num_threads`` works from any thread.
    """
    from threadpoolctl import OpenBLASController
    _blas_controller().limit(limits=threads, user_api="blas")
    clear = getattr(OpenBLASController, "clear_controlling_thread", None)   # threadpoolctl < 3.8 has no such rule
    if clear is not None:
        clear()


def get_num_threads():
    """How many threads minattn computes on (how many parts a batch is cut into). Named as ``torch.get_num_threads``.

    Default: the BLAS's own thread count at import (OpenBLAS takes every core unless OPENBLAS_NUM_THREADS /
    OMP_NUM_THREADS say otherwise), at most the CPUs this process may use; 1 where threadpoolctl finds no BLAS (e.g.
    Apple's Accelerate). Always 1 on CuPy.
    """
    return _num_threads


def set_num_threads(n):
    """Compute on ``n`` threads from now on; ``None``: the default (see get_num_threads). Named as PyTorch's.

    With n > 1 NumPy's BLAS is held to ONE thread and minattn splits the work itself: after a multi-threaded call,
    OpenBLAS's idle workers busy-wait for about 0.1 s (2^28 cycles) for the next one, occupying a core that our threads
    then cannot use — measured here, two threads of ``exp`` ran no faster than one right after a 2-thread matmul.
    n = 1 gives the BLAS its own thread count back (it then splits big matrix products by itself, as usual).
    Raises ValueError unless n is None or a positive int.
    """
    global _num_threads, _pool, _blas_threads
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"set_num_threads: n must be a positive int or None, got {n!r}")
    if BACKEND != "numpy":
        return
    if _blas_threads is None:
        counts = [lib["num_threads"] for lib in _blas_controller().info() if lib["user_api"] == "blas"]
        _blas_threads = max(counts) if counts else 1
    _num_threads = min(_blas_threads, _usable_cpus()) if n is None else n
    _limit_blas(1 if _num_threads > 1 else _blas_threads)
    with _pool_lock:                             # a run in flight keeps the old pool until its parts are done
        old, _pool = _pool, None
    if old is not None:
        old.shutdown(wait=False)


def _usable_cpus():
    """The CPUs this process may run on (its affinity mask, e.g. under taskset or a container), else the count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                       # not on Linux
        return os.cpu_count() or 1


def _forget_pool_after_fork():
    """In a child made by fork the pool's threads do not exist (only the forking thread is copied): start afresh."""
    global _pool, _pool_lock, _busy
    _pool, _pool_lock, _busy = None, threading.Lock(), threading.Lock()


class Part:
    """One part of a batch: the batch axis ``axis`` (counted from the left of the batch shape) cut to ``span``.

    ``take(x)`` gives x's share (a view, no copy); ``index(x)`` the index that selects it, or None when x broadcasts
    along the cut axis and every part takes all of it. Arrays are batch axes followed by ``core_ndim`` axes (2 for
    matrices: (..., L, E)), aligned from the right as NumPy broadcasts them.
    """

    def __init__(self, batch_ndim, axis, span, core_ndim):
        self.batch_ndim, self.axis, self.span, self.core_ndim = batch_ndim, axis, span, core_ndim

    def index(self, x):
        """The tuple index of x's share of this part, or None when x broadcasts along the cut axis."""
        own = x.ndim - self.core_ndim                    # x's batch axes (may be fewer than the batch's)
        position = self.axis - (self.batch_ndim - own)   # the cut axis among x's axes
        if position < 0 or x.shape[position] == 1 or self.span is None:
            return None
        return (slice(None),) * position + (self.span,)

    def take(self, x):
        """x's share of this part (a view); x itself when it broadcasts along the cut axis or is None."""
        if x is None:
            return None
        index = self.index(x)
        return x if index is None else x[index]

    def __repr__(self):
        return f"Part(axis={self.axis}, span={self.span})"


def batch_parts(batch_shape, madds, core_ndim=2, num_threads=None):
    """Cut ``batch_shape`` into at most ``num_threads`` (default ``get_num_threads()``) nearly equal parts.

    ``madds``: the computation's multiply-adds, roughly; below MIN_WORK, one part. The cut goes along the first batch
    axis at least as long as the thread count (else the longest one): (B, h) is cut along B, (1, h) along h. One part
    covering everything when there is one thread or nothing to cut.
    """
    threads = get_num_threads() if num_threads is None else num_threads
    batch_shape = tuple(batch_shape)
    if threads <= 1 or madds < MIN_WORK or not batch_shape or max(batch_shape) < 2:
        return [Part(len(batch_shape), 0, None, core_ndim)]
    long_enough = [a for a, size in enumerate(batch_shape) if size >= threads]
    axis = long_enough[0] if long_enough else max(range(len(batch_shape)), key=batch_shape.__getitem__)
    size = batch_shape[axis]
    count = min(threads, size)
    bounds = [size * i // count for i in range(count + 1)]
    return [Part(len(batch_shape), axis, slice(lo, hi), core_ndim) for lo, hi in zip(bounds[:-1], bounds[1:])]


def run(work, parts):
    """``[work(part) for part in parts]``, the parts on threads at once.

    One part (or a run already in progress: nested, or from another thread) runs right here, serially. An exception
    in any part is raised here after every part has finished.
    """
    global _pool
    if len(parts) == 1 or not _busy.acquire(blocking=False):
        return [work(part) for part in parts]
    try:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=get_num_threads(), thread_name_prefix="minattn",
                                           initializer=_limit_blas, initargs=(1,))
            futures = [_pool.submit(work, part) for part in parts[1:]]
        try:
            first = work(parts[0])                   # the calling thread does a share too
        finally:
            wait(futures)                            # every part finishes before anything is raised
        return [first] + [future.result() for future in futures]
    finally:
        _busy.release()


def join(pieces, x, parts):
    """One gradient shaped like ``x`` from each part's gradient for x's share (``pieces[i]`` for ``parts[i]``, each
    already summed to ``parts[i].take(x).shape``): placed side by side along the cut axis, or summed when x
    broadcasts along it (every part used all of x, so every part's gradient counts — as in ``sum_to``)."""
    if len(parts) == 1:
        return pieces[0]
    index = parts[0].index(x)
    if index is None:
        total = pieces[0].copy()
        for piece in pieces[1:]:
            total += piece
        return total
    whole = xp.empty_like(x, dtype=pieces[0].dtype)    # x's memory layout: a transposed view gets a transposed grad
    for part, piece in zip(parts, pieces):
        whole[part.index(x)] = piece
    return whole


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)
set_num_threads(None)
