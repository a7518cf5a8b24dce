"""The execution layer: how a fused operation's math is run — cut along its batch, on the CPU cores at once.

The math files (minattn/fused/) write each forward and backward as formulas on whole arrays. How those formulas are
executed is decided here, from outside, by the same one call for every fused op:

    out, p = parallel.map_batch(attention_forward, q, k, v, mask, bias, dropout_mask, scale=scale)
    dq, dk, dv = parallel.map_batch(attention_backward, q, k, v, p, dropout_mask, grad_o, scale=scale,
                                    grads_for=(q, k, v))

- Positional arguments are arrays (or None) with batch axes in front of ``core_ndim`` core axes, aligned from the
  right as NumPy broadcasts them: q (B, h, L, E) has core (L, E) and batch (B, h). They are cut along the leading
  batch axes into chunks (B, then h when B alone gives too few); an array that broadcasts along a cut axis (size 1
  there, or no such axis) gives every chunk all of that axis.
- Keyword arguments are given whole to every chunk: weights, scales, flags.
- The function runs once per chunk, on a slice (a view, no copy) of each array. Its outputs are written side by side
  into one array each, chunk by chunk as they finish (so only the chunks in flight exist twice).
- ``grads_for=(x, ...)``: the outputs are gradients, one per input named, each already shaped like that input's
  slice (the math does its own ``sum_to``). The gradient of an input cut into disjoint shares is placed side by side;
  the gradient of an input that chunks share (a keyword weight, or an array that broadcasts along a cut axis) is the
  SUM of the chunks' gradients — each chunk used it, so each chunk's gradient counts, the rule of ``sum_to``. The
  sum is taken in chunk order, so it is deterministic.

Why: attention is a batch of B·h independent problems, each a few small matrix products and a softmax. NumPy runs
a softmax's passes on ONE core and OpenBLAS runs a (128 × 32) @ (32 × 128) product on one core too, so on a 2-core
machine half of it idles — while PyTorch's CPU kernels split the batch across cores (``at::parallel_for``). Chunks run
on Python threads; NumPy releases the GIL inside ufuncs, reductions and matmul, so the threads really run at once.
Chunks of about CHUNK_WORK multiply-adds also keep each formula's temporaries small (a chunk of the (L, S) weights,
not the whole), which holds the peak memory of plain, textbook formulas near that of hand-written in-place code.

When: the work is estimated from the arrays (``work``). Below MIN_WORK the function runs once, on the whole arrays,
with nothing added (handing a chunk to a thread costs ~20-40 µs). Above it, the batch is cut into chunks of about
CHUNK_WORK, a multiple of the thread count when the batch allows, and ``get_num_threads()`` threads take them in turn.
A row-wise op (``core_ndim`` ≤ 1: Linear, LayerNorm, cross-entropy) above MIN_WORK is cut only while the last matrix
op (attention) was: a model whose attention runs whole keeps its Linears whole too, on the BLAS's own threads, since
mixing BLAS-threaded products with our threads makes each wait on the other's spinning workers. This one piece of
state (``_matrix_ops_chunked``) means the same row-wise call may run cut or whole after different models' attention;
the result is the same up to the order of the summed gradients' additions.

The BLAS: while a fused op runs, NumPy's BLAS is held to ONE thread (threadpoolctl), then given back its own count
— minattn's threads are all the threads it computes on, so 2 chunks never fight 2 BLAS threads for 2 cores. Nothing
changes at import and nothing stays changed after a call: outside minattn's fused ops the BLAS runs as you set it.
(After a multi-threaded call, OpenBLAS's idle workers busy-wait ~0.1 s for more work, holding a core: measured on 2
cores, two threads of ``exp`` ran no faster than one right after a 2-thread matmul. Holding the BLAS at one thread
during our runs avoids that.)
CuPy: one piece, always — the GPU is parallel already.

Floating-point warnings: none inside a fused op. The engine runs every Function's forward and backward under
``backend.quiet_floats`` (function.py, tensor.py), and NumPy's error state is per thread, so each chunk on a worker
thread is quieted here too. A NaN or inf in the data gives NaN or inf in the result, silently, as PyTorch's kernels
do; the tests check values, not warnings, for the NaN-free guarantees (a masked row, large logits).

The result is the same as one call on the whole arrays, up to the order of floating-point additions in the summed
gradients: tests/test_parallel.py checks every fused op both ways to 1e-12 in float64.
"""
import itertools
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait

from autograd import checks
from autograd.backend import BACKEND, broadcast_shape, quiet_floats, xp

MIN_WORK = 64_000_000
"""Below this many multiply-adds (roughly, see ``work``) a function runs once on the whole arrays, in the calling
thread: handing a chunk to another thread costs ~20-40 µs, and two threads taking turns at the GIL between small
NumPy calls cost more (measured on 2 cores: LayerNorm on (832, 64) rows took 640 µs in 2 chunks, 306 µs whole).
64M rather than 32M keeps a small model's attention backward (a d = 128, L = 64 GPT: ~38M) whole like its forward,
so that its Linears stay on the BLAS's threads too (see map_batch): its training step went from ~1.6× to ~1.2×
PyTorch's, the bench's bigger shapes unchanged."""

CHUNK_WORK = 128_000_000
"""About this many multiply-adds per chunk of a matrix op (``core_ndim`` ≥ 2: an (L, E) by (S, E) product makes an
(L, S) temporary per batch element), so that each formula's temporaries stay a chunk's size, not the batch's: at
(1, 8, 2048, 32) one head per chunk. Not smaller: two threads taking turns at the GIL between many small NumPy calls
run each chunk slower (measured on 2 cores: SDPA at (8, 8, 128, 32) fwd+bwd 7.2 ms in 4 + 16 chunks of ~32M, 6.3 ms in
2 + 6 of ~128M). A row-wise op (core_ndim ≤ 1: Linear, LayerNorm, cross-entropy) makes temporaries no bigger than
its inputs and gets one chunk per thread."""

_threads = None              # how many threads; None: the default, found on first use
_pool = None                 # the worker threads, made on first use
_pool_lock = threading.Lock()   # guards _pool: set_num_threads may replace it while another thread runs
_busy = threading.Lock()     # one threaded run at a time: a nested or concurrent run goes serial (see run)
_blas = None                 # threadpoolctl's controllers of the BLAS libraries NumPy loaded, found on first use
_matrix_ops_chunked = True   # did the last matrix op (attention) run in chunks? Row-wise ops follow it (map_batch)


# --- how many threads ------------------------------------------------------------------------------------------------
def get_num_threads():
    """How many threads minattn computes on. Named as ``torch.get_num_threads``.

    Default: the BLAS's own thread count (OpenBLAS takes every core unless OPENBLAS_NUM_THREADS / OMP_NUM_THREADS say
    otherwise), at most the CPUs this process may use; 1 where threadpoolctl finds no BLAS (e.g. Apple's Accelerate).
    Always 1 on CuPy. Reading it changes nothing.
    """
    global _threads
    if _threads is None:
        counts = [lib.num_threads for lib in _blas_libraries()]
        _threads = max(1, min(max(counts, default=1), _usable_cpus()))
    return _threads


def set_num_threads(n):
    """Compute on ``n`` threads from now on; ``None``: the default (see get_num_threads). Named as PyTorch's.

    Changes minattn's own thread count only: the BLAS is held to one thread while minattn's chunks run on several,
    and runs as you set it otherwise. Raises TypeError unless n is None or an int, ValueError for n < 1.
    """
    global _threads, _pool
    if n is not None:
        n = checks.positive_int("n", n, "set_num_threads")
    if BACKEND != "numpy":
        return
    _threads = n
    with _pool_lock:                             # a run in flight keeps the old pool until its chunks are done
        old, _pool = _pool, None
    if old is not None:
        old.shutdown(wait=False)


def _usable_cpus():
    """The CPUs this process may run on (its affinity mask, e.g. under taskset or a container), else the count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                       # not on Linux
        return os.cpu_count() or 1


# --- the BLAS, held to one thread during a threaded run ---------------------------------------------------------------
def _blas_libraries():
    """threadpoolctl's controllers of the BLAS libraries loaded (none on CuPy, or without threadpoolctl's help)."""
    global _blas
    if _blas is None:
        if BACKEND != "numpy":
            _blas = []
        else:
            from threadpoolctl import ThreadpoolController
            _blas = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _blas


def _set_blas_threads(lib, n):
    """Set one BLAS's thread count. threadpoolctl ≥ 3.8 lets only the thread that last changed a pthreads OpenBLAS
    change it again (silently ignoring the others): hand that control back after each change, so any thread can."""
    lib.set_num_threads(n)
    clear = getattr(lib, "clear_controlling_thread", None)
    if clear is not None:
        clear()


class _BlasHeldToOneThread:
    """``with _BlasHeldToOneThread():`` the BLAS runs one thread inside, and its own count again after."""

    def __enter__(self):
        self.restore = [(lib, lib.get_num_threads()) for lib in _blas_libraries()]
        for lib, count in self.restore:
            if count != 1:
                _set_blas_threads(lib, 1)

    def __exit__(self, *exc):
        for lib, count in self.restore:
            if count != 1:
                _set_blas_threads(lib, count)


def _worker_init():
    """Each worker thread: a BLAS built on OpenMP keeps one count per calling thread, so set ours to 1 (it changes
    nothing outside our own workers; a pthreads BLAS has one count, held by ``_BlasHeldToOneThread``)."""
    for lib in _blas_libraries():
        if getattr(lib, "threading_layer", None) == "openmp":
            lib.set_num_threads(1)


# --- cutting a batch -------------------------------------------------------------------------------------------------
class Chunk:
    """One chunk of a batch: ``spans``, one slice per leading batch axis it cuts (counted from the left of the
    ``batch_ndim`` batch axes). ``take(x, core_ndim)`` is x's share (a view); ``index`` the index that selects it —
    an array takes all of an axis it broadcasts along (size 1 there, or no such axis) — or None if it takes all of x.
    """

    def __init__(self, batch_ndim, spans):
        self.batch_ndim, self.spans = batch_ndim, tuple(spans)

    def index(self, x, core_ndim):
        """The tuple index of x's share, or None when x broadcasts along every cut axis."""
        skip = self.batch_ndim - max(x.ndim - core_ndim, 0)      # batch axes x lacks (it broadcasts along them)
        index = tuple(span if axis >= skip and x.shape[axis - skip] != 1 else slice(None)
                      for axis, span in enumerate(self.spans))[skip:]
        return index if any(i != slice(None) for i in index) else None

    def covers(self, x, core_ndim):
        """True when x is cut along every cut axis (it broadcasts along none): the chunks' shares are disjoint."""
        skip = self.batch_ndim - max(x.ndim - core_ndim, 0)
        return all(axis >= skip and x.shape[axis - skip] != 1 for axis in range(len(self.spans)))

    def take(self, x, core_ndim):
        """x's share of this chunk (a view); x itself when it broadcasts along the cut axes, or is not an array."""
        if not hasattr(x, "ndim"):
            return x
        index = self.index(x, core_ndim)
        return x if index is None else x[index]

    def __repr__(self):
        return f"Chunk({', '.join(f'{s.start}:{s.stop}' for s in self.spans)})"


def batch_shape(arrays, core_ndims):
    """The broadcast of the arrays' batch axes (all but the last ``core_ndim`` of each; None entries skipped).
    ValueError naming the shapes when they do not broadcast."""
    return broadcast_shape(*(a.shape[:max(a.ndim - c, 0)] for a, c in zip(arrays, core_ndims) if hasattr(a, "ndim")))


def work(arrays, core_ndims):
    """The multiply-adds of a computation on ``arrays``, roughly: every element meets one row of the largest core
    axis (a matrix product's count when the arrays are its operands)."""
    size, longest = 0, 1
    for a, core in zip(arrays, core_ndims):
        if a is not None and core:
            size += a.size
            longest = max(longest, *a.shape[-core:]) if a.ndim else longest
        elif a is not None and hasattr(a, "size"):
            size += a.size
    return size * longest


def chunks(batch, total_work, threads=None, chunk_work=None):
    """Cut ``batch`` (a shape) into chunks of about ``chunk_work`` multiply-adds (default CHUNK_WORK), a multiple of
    ``threads`` (default ``get_num_threads()``) where the batch allows; one chunk (covering everything) below
    MIN_WORK. ``chunk_work`` = ``total_work``: one chunk per thread.

    The leading batch axes are cut in order: (B, h) with B ≥ the chunks wanted is cut along B into nearly equal
    spans; with fewer, each b is cut along h too ((4, 8) in 16 chunks: b = 0..3, heads 0-1, 2-3, 4-5, 6-7).
    """
    threads = get_num_threads() if threads is None else threads
    chunk_work = CHUNK_WORK if chunk_work is None else chunk_work
    count = min(math.prod(batch), threads * max(1, math.ceil(total_work / (chunk_work * threads))))
    if total_work < MIN_WORK or count < 2:
        return [Chunk(len(batch), ())]
    axis, above = 0, 1                                  # cut axes 0..axis-1 into single indices, ``axis`` into spans
    while above * batch[axis] < count:
        above *= batch[axis]
        axis += 1
    pieces = math.ceil(count / above)                   # spans along ``axis``
    size = batch[axis]
    bounds = [size * i // pieces for i in range(pieces + 1)]
    spans = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    return [Chunk(len(batch), tuple(slice(i, i + 1) for i in outer) + (span,))
            for outer in itertools.product(*(range(n) for n in batch[:axis])) for span in spans]


# --- running chunks on threads ---------------------------------------------------------------------------------------
def run(task, count):
    """``task(i)`` for i in 0..count-1, on up to ``get_num_threads()`` threads (the caller's among them), which take
    the next i in turn. One thread, or a run already in progress (nested, or from another thread): serially, right
    here. An exception in any task is raised here, after every task has finished."""
    global _pool
    available = get_num_threads()                # read once: another thread may change it meanwhile
    threads = min(available, count)
    if threads <= 1 or not _busy.acquire(blocking=False):
        for i in range(count):
            task(i)
        return
    try:
        counter = itertools.count()             # next() on it is atomic under the GIL: each i is handed out once

        def take_turns():
            for i in counter:
                if i >= count:
                    return
                task(i)

        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=available - 1, thread_name_prefix="minattn",
                                           initializer=_worker_init)
            futures = [_pool.submit(take_turns) for _ in range(threads - 1)]
        try:
            take_turns()                         # the calling thread takes chunks too
        finally:
            wait(futures)                        # every task finishes before anything is raised
        for future in futures:
            future.result()
    finally:
        _busy.release()


def map_batch(fn, *arrays, core_ndim=2, grads_for=None, one_chunk_per_thread=False, **whole):
    """``fn(*arrays, **whole)``, computed chunk by chunk along the batch on several threads (see the module
    docstring). Returns what fn returns: one array or a tuple (None entries pass through).

    Args:
        fn: the math, on whole arrays; it must give each chunk's outputs with that chunk's batch axes.
        arrays: arrays (or None) cut along the batch; ``core_ndim``: their core axes, one int for all or one per array.
        grads_for: None, or the inputs (among ``arrays`` or the keyword arrays, by identity; None allowed) that fn's
            outputs are the gradients of, in order.
        one_chunk_per_thread: for a matrix op whose temporaries are small anyway (flash attention's tiles): as
            few chunks as threads, as for a row-wise op, instead of chunks of CHUNK_WORK.
        whole: keyword arguments given whole to every chunk.
    A row-wise op is cut only while the last matrix op was (the module docstring's "When").
    """
    global _matrix_ops_chunked
    cores = core_ndim if isinstance(core_ndim, tuple) else (core_ndim,) * len(arrays)
    total = work(arrays, cores) if BACKEND == "numpy" else 0
    row_wise = max(cores, default=0) < 2
    matrix_op = not row_wise and not one_chunk_per_thread      # (L, S) temporaries: chunks of CHUNK_WORK
    if not row_wise:
        _matrix_ops_chunked = total >= MIN_WORK                 # what the attention of this model does
    big = total >= MIN_WORK and (not row_wise or _matrix_ops_chunked)
    parts = () if not big else chunks(batch_shape(arrays, cores), total,
                                      chunk_work=None if matrix_op else max(total, 1))
    if len(parts) <= 1:
        if get_num_threads() > 1 or BACKEND != "numpy":
            return fn(*arrays, **whole)              # one piece: the BLAS threads its products as it sees fit
        with _BlasHeldToOneThread():                 # one thread asked for: the BLAS too
            return fn(*arrays, **whole)
    join = _Join(parts, batch_shape(arrays, cores), arrays, cores, grads_for)

    def task(i):                                     # a worker thread has its own error state: quiet it as the caller's
        with quiet_floats():
            join.add(i, fn(*(parts[i].take(a, c) for a, c in zip(arrays, cores)), **whole))

    with _BlasHeldToOneThread():                     # our threads are the parallelism: one BLAS thread each
        run(task, len(parts))
    return join.result()


class _Buffers:
    """Whole output arrays of earlier calls, handed out again once nothing else refers to them.

    Why: a fresh array of some MB is fresh memory from the OS (glibc maps big blocks and gives them back when they are
    freed), and each of its 4 KiB pages costs a page fault on first write: measured ~900 faults (~2 ms) per
    MultiHeadAttention call at (8, 128, 256, 8), ~4,500 at (4, 512, 256, 8). An array whose only reference is this
    pool's (no tensor, view, context or caller holds it: ``sys.getrefcount``) is reused as it is, as PyTorch's caching
    allocator reuses freed blocks. At most MAX_BYTES are kept, the oldest let go first.
    """

    MAX_BYTES = 512 * 2**20

    def __init__(self):
        self.arrays, self.lock = [], threading.Lock()

    def empty_like(self, like, shape, dtype):
        """An uninitialised array of ``shape`` and ``dtype``, laid out as ``like`` (or C order when ``like`` is None
        or of another shape), from the pool when one is free."""
        order = _axis_order(like) if like is not None and like.shape == shape else tuple(range(len(shape)))
        with self.lock:
            for a in self.arrays:
                if a.shape == shape and a.dtype == dtype and _axis_order(a) == order and sys.getrefcount(a) <= _FREE:
                    return a
        a = xp.empty_like(like, dtype=dtype) if order != tuple(range(len(shape))) else xp.empty(shape, dtype=dtype)
        with self.lock:
            self.arrays.append(a)
            while sum(b.nbytes for b in self.arrays) > self.MAX_BYTES and len(self.arrays) > 1:
                self.arrays.pop(0)                       # forgotten here; freed once its users let it go
        return a


def empty_cache():
    """Let go of the whole arrays kept for reuse (see ``_Buffers``): they are freed as soon as nothing else holds
    them. Named after ``torch.cuda.empty_cache``; to measure the memory one call needs, call this first."""
    with _buffers.lock:
        _buffers.arrays.clear()


def _axis_order(a):
    """The axes of ``a`` from the largest stride to the smallest: (0, 1, ..., n-1) for C order."""
    return tuple(sorted(range(a.ndim), key=lambda axis: -a.strides[axis]))


def _references_when_free():
    """What ``sys.getrefcount`` reports, inside ``_Buffers.empty_like``'s loop, for an array nothing else holds."""
    arrays = [xp.empty(1)]
    for a in arrays:
        return sys.getrefcount(a)


_FREE = _references_when_free()
_buffers = _Buffers()


class _Join:
    """The chunks' outputs, gathered into whole arrays as each chunk finishes (see map_batch)."""

    def __init__(self, parts, batch, arrays, cores, grads_for):
        self.parts, self.batch, self.arrays, self.cores, self.grads_for = parts, batch, arrays, cores, grads_for
        self.lock = threading.Lock()
        self.single = None                       # does fn return one array (not a tuple)?
        self.wholes = None                       # per output: a whole array to place into, or a list to sum
        self.places = None                       # per output: (core_ndim of the whole) or None to sum

    def _start(self, outputs):
        """Make the whole arrays from the first outputs seen (their dtypes and core shapes)."""
        self.wholes, self.places = [], []
        for n, piece in enumerate(outputs):
            target = None if self.grads_for is None else self.grads_for[n]
            if piece is None:
                self.wholes.append(None)
                self.places.append(None)
            elif target is None and self.grads_for is not None:
                raise ValueError(f"map_batch: output {n} is a gradient for None")
            elif target is not None and not self._is_cut(target):
                self.wholes.append([None] * len(self.parts))    # every chunk's gradient, added up at the end
                self.places.append(target)
            else:
                self.wholes.append(self._whole_like(piece, target))
                self.places.append(self._core_ndim(target) if target is not None else piece.ndim - len(self.batch))

    def _core_ndim(self, x):
        for a, c in zip(self.arrays, self.cores):
            if a is x:
                return c
        return None

    def _is_cut(self, x):
        """Is ``x`` one of the positional arrays, cut along every cut axis (its chunks' shares are disjoint)?"""
        core = self._core_ndim(x)
        return core is not None and self.parts[0].covers(x, core)

    def _whole_like(self, piece, target):
        """The whole array an output's chunks go into: a gradient is laid out as its input (a transposed view gets a
        transposed gradient), an output as an input of the same shape if there is one (so that, e.g., attention's
        output keeps the heads' layout and merging the heads stays a view); else C order."""
        if target is not None:
            return _buffers.empty_like(target, target.shape, piece.dtype)
        shape = self.batch + piece.shape[len(self.batch):]      # the whole batch, the chunk's core axes
        like = next((a for a in self.arrays if hasattr(a, "shape") and a.shape == shape), None)
        return _buffers.empty_like(like, shape, piece.dtype)

    def add(self, i, outputs):
        """Chunk i's outputs: placed into the whole arrays now (disjoint slices: no lock needed), or kept to sum."""
        single = not isinstance(outputs, tuple)
        outputs = (outputs,) if single else outputs
        with self.lock:
            if self.wholes is None:
                self.single = single
                self._start(outputs)
        for whole, core, piece in zip(self.wholes, self.places, outputs):
            if piece is None:
                continue
            if isinstance(whole, list):
                whole[i] = piece
            else:
                whole[self.parts[i].index(whole, core)] = piece

    def result(self):
        """The whole outputs, in fn's order. A gradient of an input that some chunks shared (it broadcasts along a
        cut axis) is the sum of the chunks' gradients, each added where its chunk's share lies, in chunk order:
        deterministic."""
        out = []
        for whole, target in zip(self.wholes, self.places):
            if isinstance(whole, list):
                core = self._core_ndim(target)
                indices = [None if core is None else part.index(target, core) for part in self.parts]
                if all(index is None for index in indices):          # every chunk used all of the input
                    total = whole[0].copy()
                    for piece in whole[1:]:
                        total += piece
                else:                                                 # shared along some cut axes, cut along others
                    total = xp.zeros_like(target, dtype=whole[0].dtype)
                    for index, piece in zip(indices, whole):
                        if index is None:
                            total += piece
                        else:
                            total[index] += piece
                whole = total
            out.append(whole)
        return out[0] if self.single else tuple(out)


def _forget_pool_after_fork():
    """In a child made by fork the pool's threads do not exist (only the forking thread is copied): start afresh."""
    global _pool, _pool_lock, _busy
    _pool, _pool_lock, _busy = None, threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)
