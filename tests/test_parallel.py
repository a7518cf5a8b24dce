"""autograd/parallel.py, the execution layer: how every fused op's math is cut along its batch and run on threads.

  (a) the pieces: ``chunks`` cuts the leading batch axes in order (B, then each b's heads when B is short) into
      boxes covering every batch element once, nearly equal, as many as wanted; ``Chunk.take`` / ``Chunk.index``
      give a view of a chunk's share, or the whole array when it broadcasts along the cut; ``batch_shape``, ``work``;
  (b) ``map_batch``: outputs joined side by side in order, None passed through, keyword arguments whole, layouts
      kept, gradients of cut inputs placed and of inputs taken whole (or broadcast along a cut axis) summed,
      deterministically; a row-wise op one chunk per thread; nothing added below MIN_WORK;
  (c) ``run``: every task once, really at once, an exception raised after every task finished, a nested run serial,
      concurrent callers right;
  (d) the thread count and the BLAS: ``set_num_threads`` checks its argument, works from any thread and while another
      runs; importing or using minattn leaves every thread pool as it was, and the BLAS runs one thread while chunks
      run; a forked child still computes;
  (e) EVERY fused Function, chunked on 3 threads, gives the forward value and every input gradient of one unchunked
      call to 1e-12 in float64, passes gradcheck chunked, and keeps float32 float32.

Chunking is forced on any machine, a 1-core CI included: MIN_WORK = 0, 3 threads, and CHUNK_WORK tiny (more chunks
than threads, taken in turn: one per batch element for a matrix op, over B and the heads) or huge (exactly 3 chunks,
uneven: 4 → 1, 1, 2; 5 → 1, 2, 2). The ``chunk_log`` fixture records how many chunks every ``map_batch`` call ran,
so that a test proves its computation really was cut (and that its unchunked twin really was not). On CuPy nothing
is cut (the GPU is parallel already): those tests skip.
"""
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from autograd import Tensor, backend, gradcheck, parallel
from minattn.fused.additive import AdditiveAttentionFunction
from minattn.fused.attention import ScaledDotProductAttentionFunction
from minattn.fused.cross_entropy import CrossEntropyFunction
from minattn.fused.embedding import EmbeddingFunction
from minattn.fused.flash_attention import FlashAttentionFunction
from minattn.fused.layer_norm import LayerNormFunction
from minattn.fused.linear import LinearFunction, LinearReLUFunction
from minattn.fused.packed_attention import PackedSelfAttentionFunction
from minattn.fused.softmax import SoftmaxFunction
from minattn.fused.talking_heads import TalkingHeadsFunction
from tests.conftest import host, t64
from tests.test_linear_relu import away_from_the_kink

TIGHT = dict(rtol=1e-12, atol=1e-12)
FLOAT32 = dict(rtol=1e-5, atol=1e-5)
THREADS = 3                     # 3, so that the cuts are uneven: 4 → 1, 1, 2; 5 → 1, 2, 2; 8 → 2, 3, 3
TINY, HUGE = 1, 10**18          # CHUNK_WORK: a chunk per batch element (matrix ops) / one chunk per thread
JOIN = 30                       # seconds a thread or child may take before a test calls it hung (never reached)
REPO = Path(__file__).resolve().parents[1]

NO_CHUNKS_ON_CUPY = "CuPy: map_batch never cuts (the GPU is parallel already)"
numpy_only = pytest.mark.skipif(backend.BACKEND != "numpy", reason=NO_CHUNKS_ON_CUPY)


def dev(a):
    """A NumPy array moved to the backend, or None."""
    return None if a is None else backend.asarray(a)


def _spans(parts):
    """Each chunk's spans as (start, stop) pairs, one per leading batch axis it cuts."""
    return [tuple((s.start, s.stop) for s in p.spans) for p in parts]


def _cut_axis(part):
    """The last (innermost) batch axis a chunk cuts: the axes before it are cut into single indices."""
    return len(part.spans) - 1


# ---------------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def matrix_ops_were_chunked(monkeypatch):
    """Every test starts as after a chunked attention (row-wise ops then follow MIN_WORK alone); restored after."""
    monkeypatch.setattr(parallel, "_matrix_ops_chunked", True)


@pytest.fixture
def forced(monkeypatch):
    """Chunking forced on any machine: MIN_WORK = 0, a tiny CHUNK_WORK and THREADS threads; the thread count the
    session had is given back afterwards."""
    if backend.BACKEND != "numpy":
        pytest.skip(NO_CHUNKS_ON_CUPY)
    monkeypatch.setattr(parallel, "MIN_WORK", 0)
    monkeypatch.setattr(parallel, "CHUNK_WORK", TINY)
    saved = parallel._threads
    parallel.set_num_threads(THREADS)
    try:
        yield
    finally:
        parallel.set_num_threads(saved)


class ChunkLog:
    """Per ``map_batch`` call (in call order): the number of chunks it ran (1: fn once on the whole arrays) and the
    innermost batch axis it cut (None when it did not cut)."""

    def __init__(self):
        self.records, self._lock, self._local = [], threading.Lock(), threading.local()

    @property
    def counts(self):
        return [r["count"] for r in self.records]

    @property
    def axes(self):
        return [r["axis"] for r in self.records]

    def clear(self):
        with self._lock:
            self.records.clear()

    def _open(self):
        stack = self._local.__dict__.setdefault("stack", [])
        return stack[-1] if stack else None


@pytest.fixture
def chunk_log(forced, monkeypatch):
    """Forced chunking, and a ChunkLog of every map_batch call — wraps ``parallel.map_batch`` (which the fused files
    call through the module), ``parallel.chunks`` and ``parallel.run`` (which map_batch calls through its globals)."""
    log = ChunkLog()
    real_map_batch, real_chunks, real_run = parallel.map_batch, parallel.chunks, parallel.run

    def map_batch(fn, *arrays, **kwargs):
        record = {"count": 1, "axis": None}
        with log._lock:
            log.records.append(record)
        stack = log._local.__dict__.setdefault("stack", [])
        stack.append(record)
        try:
            return real_map_batch(fn, *arrays, **kwargs)
        finally:
            stack.pop()

    def chunks(*args, **kwargs):
        parts = real_chunks(*args, **kwargs)
        record = log._open()
        if record is not None and len(parts) > 1:
            record["axis"] = _cut_axis(parts[0])
        return parts

    def run(task, count):
        record = log._open()
        if record is not None:
            record["count"] = count
        return real_run(task, count)

    monkeypatch.setattr(parallel, "map_batch", map_batch)
    monkeypatch.setattr(parallel, "chunks", chunks)
    monkeypatch.setattr(parallel, "run", run)
    return log


@pytest.fixture(params=["tiny CHUNK_WORK", "huge CHUNK_WORK"])
def chunked(request, chunk_log, monkeypatch):
    """Forced chunking, two ways: a tiny CHUNK_WORK (a matrix op gets a chunk per batch element, over B and the
    heads: more chunks than threads, taken in turn; a row-wise op, core_ndim ≤ 1, one chunk per thread) or a huge one
    (one chunk per thread: exactly THREADS, uneven). ``check(counts)`` says that every map_batch call was cut that
    way (in the cases below the first batch axis has at least 4 elements, or is 1 and the second has 5)."""
    tiny = request.param.startswith("tiny")
    monkeypatch.setattr(parallel, "CHUNK_WORK", TINY if tiny else HUGE)

    def check(counts):
        assert counts, "no map_batch call was recorded"
        assert all(c >= THREADS for c in counts), counts
        if not tiny:
            assert all(c == THREADS for c in counts), counts

    return SimpleNamespace(log=chunk_log, check=check)


# ---------------------------------------------------------------------------------------------------------------------
# (a) chunks, Chunk, batch_shape, work
# ---------------------------------------------------------------------------------------------------------------------
def _elements(part, batch):
    """The batch indices (tuples) a chunk covers, in C order."""
    ranges = [range(*span.indices(n)) for span, n in zip(part.spans, batch)]
    return list(itertools.product(*ranges, *(range(n) for n in batch[len(part.spans):])))


def test_chunks_cover_every_batch_element_exactly_once_in_boxes(monkeypatch):
    """For many batches, thread counts and chunk sizes: each chunk is a box — one index on every leading axis it cuts
    but the last, a span on that one, all of the axes after — the boxes put together cover every batch element once,
    in C order; the spans along the cut axis are nearly equal; and there are at least as many chunks as wanted (about
    CHUNK_WORK of work each, a multiple of the threads) or one per batch element, or a single one when fewer than two
    are wanted."""
    monkeypatch.setattr(parallel, "MIN_WORK", 0)
    work = 1000
    for batch in [(8, 4), (1, 8), (2, 8), (4, 9), (2, 2), (1, 2, 1), (3, 1, 7), (5,), (2, 3, 4), (1, 1, 6), (7, 1)]:
        for threads in (1, 2, 3, 4):
            for chunk_work in (TINY, 60, HUGE):
                case = f"batch {batch}, {threads} threads, CHUNK_WORK {chunk_work}"
                monkeypatch.setattr(parallel, "CHUNK_WORK", chunk_work)
                parts = parallel.chunks(batch, work, threads=threads)
                wanted = min(math.prod(batch), threads * max(1, math.ceil(work / (chunk_work * threads))))
                if wanted < 2:
                    assert len(parts) == 1, case
                else:
                    assert wanted <= len(parts) <= math.prod(batch), case
                covered = [e for part in parts for e in _elements(part, batch)]
                assert covered == list(itertools.product(*map(range, batch))), case
                for part in parts:
                    assert part.batch_ndim == len(batch), case
                    assert all(s.step in (None, 1) for s in part.spans), case
                    assert all(s.stop - s.start == 1 for s in part.spans[:-1]), case       # single indices
                lengths = [p.spans[-1].stop - p.spans[-1].start for p in parts if p.spans]
                assert not lengths or max(lengths) - min(lengths) <= 1, case


@pytest.mark.parametrize("batch, threads, spans", [
    ((8, 4), 3, [((0, 2),), ((2, 5),), ((5, 8),)]),                  # B ≥ the 3 chunks wanted: cut along B only
    ((5,), 3, [((0, 1),), ((1, 3),), ((3, 5),)]),
    ((4, 9), 3, [((0, 1),), ((1, 2),), ((2, 4),)]),
    ((1, 8), 3, [((0, 1), (0, 2)), ((0, 1), (2, 5)), ((0, 1), (5, 8))]),      # B = 1: along the heads
    ((2, 8), 3, [((0, 1), (0, 4)), ((0, 1), (4, 8)), ((1, 2), (0, 4)), ((1, 2), (4, 8))]),   # B = 2 < 3: and heads
    ((2, 2), 3, [((0, 1), (0, 1)), ((0, 1), (1, 2)), ((1, 2), (0, 1)), ((1, 2), (1, 2))]),
    ((4, 8), 16, [((b, b + 1), (h, h + 2)) for b in range(4) for h in (0, 2, 4, 6)]),    # the docstring's example
])
def test_chunks_cut_the_leading_batch_axes_in_order(monkeypatch, batch, threads, spans):
    """The chunks wanted (here one per thread) are cut along B when B has that many; with fewer, each b is cut along
    the heads too, into nearly equal spans."""
    monkeypatch.setattr(parallel, "MIN_WORK", 0)
    monkeypatch.setattr(parallel, "CHUNK_WORK", HUGE)
    assert _spans(parallel.chunks(batch, 1000, threads=threads)) == spans


@pytest.mark.parametrize("batch, work, threads, count", [
    ((64,), 100, 3, 3),            # less than one CHUNK_WORK (100) per thread: one chunk per thread
    ((64,), 1000, 3, 12),          # 10 CHUNK_WORKs: 4 rounds of 3 threads → 12 chunks, a multiple of the threads
    ((64,), 3001, 3, 33),          # just over 30 CHUNK_WORKs → 11 rounds
    ((7,), 10**6, 3, 7),           # the axis does not allow more: one chunk per element
    ((8,), 1000, 3, 8),            # 12 wanted, 8 possible
    ((64,), 1000, 1, 10),          # one thread still cuts big work into chunks of about CHUNK_WORK (memory)
    ((64,), 1000, 2, 10),
])
def test_chunks_cut_big_work_into_more_chunks_than_threads(monkeypatch, batch, work, threads, count):
    """About CHUNK_WORK per chunk, rounded up to a multiple of the thread count where the cut axis allows."""
    monkeypatch.setattr(parallel, "MIN_WORK", 0)
    monkeypatch.setattr(parallel, "CHUNK_WORK", 100)
    parts = parallel.chunks(batch, work, threads=threads)
    assert len(parts) == count
    sizes = [p.spans[0].stop - p.spans[0].start for p in parts]
    assert sum(sizes) == batch[0] and max(sizes) - min(sizes) <= 1


def test_chunks_take_chunk_work_as_an_argument(monkeypatch):
    """``chunk_work`` overrides CHUNK_WORK; chunk_work = total_work gives one chunk per thread (row-wise ops)."""
    monkeypatch.setattr(parallel, "MIN_WORK", 0)
    monkeypatch.setattr(parallel, "CHUNK_WORK", TINY)
    assert len(parallel.chunks((64,), 1000, threads=THREADS)) == 64
    assert len(parallel.chunks((64,), 1000, threads=THREADS, chunk_work=1000)) == THREADS
    assert len(parallel.chunks((64,), 1000, threads=THREADS, chunk_work=100)) == 12


def test_chunks_follow_get_num_threads_by_default(monkeypatch):
    """Without ``threads``, the chunks follow get_num_threads()."""
    monkeypatch.setattr(parallel, "MIN_WORK", 0)
    monkeypatch.setattr(parallel, "CHUNK_WORK", HUGE)
    monkeypatch.setattr(parallel, "get_num_threads", lambda: 2)
    assert _spans(parallel.chunks((8, 4), 1000)) == [((0, 4),), ((4, 8),)]


@pytest.mark.parametrize("batch, work, threads", [
    ((8, 4), 99, THREADS),         # less work than MIN_WORK (= 100 here)
    ((), 10**9, THREADS),          # no batch axis: nothing to cut
    ((1, 1), 10**9, THREADS),      # every batch axis of size 1: nothing to cut
    ((1,), 10**9, THREADS),
    ((8, 4), 150, 1),              # one thread and less than one CHUNK_WORK (200 here): one chunk is wanted
])
def test_chunks_give_one_chunk_taking_everything(monkeypatch, batch, work, threads):
    """One chunk, whose share of any array is that array itself."""
    monkeypatch.setattr(parallel, "MIN_WORK", 100)
    monkeypatch.setattr(parallel, "CHUNK_WORK", 200)
    parts = parallel.chunks(batch, work, threads=threads)
    assert len(parts) == 1
    x = np.zeros(batch + (3, 2))
    assert parts[0].take(x, 2) is x and parts[0].index(x, 2) is None
    assert parts[0].take(None, 2) is None


def test_chunks_cut_from_min_work_on(monkeypatch):
    """MIN_WORK itself is the first amount worth cutting."""
    monkeypatch.setattr(parallel, "MIN_WORK", 100)
    monkeypatch.setattr(parallel, "CHUNK_WORK", HUGE)
    assert len(parallel.chunks((8, 4), 99, threads=THREADS)) == 1
    assert len(parallel.chunks((8, 4), 100, threads=THREADS)) == THREADS


def _chunks_wanted(monkeypatch, batch, threads=THREADS):
    """The chunks of ``batch`` when one per thread is wanted (huge CHUNK_WORK)."""
    monkeypatch.setattr(parallel, "MIN_WORK", 0)
    monkeypatch.setattr(parallel, "CHUNK_WORK", HUGE)
    return parallel.chunks(batch, 1, threads=threads)


def test_take_gives_a_view_of_the_share_or_the_whole_array_when_it_broadcasts(monkeypatch):
    """Batch (4, 3) cut along B into 1, 1, 2 (core_ndim 2): a full array — C order or a transposed view — is sliced
    (a view: shares memory); an array of size 1 along B, one without the B axis, one with only core axes, None and a
    float are taken whole."""
    parts = _chunks_wanted(monkeypatch, (4, 3))
    assert _spans(parts) == [((0, 1),), ((1, 2),), ((2, 4),)]
    full = np.arange(4 * 3 * 5 * 6.0).reshape(4, 3, 5, 6)
    transposed = np.arange(4 * 5 * 3 * 6.0).reshape(4, 5, 3, 6).transpose(0, 2, 1, 3)      # (4, 3, 5, 6), a view
    for part in parts:
        span = part.spans[0]
        for x in (full, transposed):
            share = part.take(x, 2)
            assert part.index(x, 2) == (span,)
            assert np.shares_memory(share, x)
            np.testing.assert_array_equal(share, x[span])
        for whole in (np.zeros((1, 3, 5, 6)), np.zeros((3, 5, 6)), np.zeros((1, 1, 5, 6)), np.zeros((5, 6)),
                      np.zeros((6,))):
            assert part.take(whole, 2) is whole and part.index(whole, 2) is None
        assert part.take(None, 2) is None and part.take(0.5, 2) == 0.5
    assert parts[2].take(full, 2).shape == (2, 3, 5, 6)


def test_take_along_the_heads_axis(monkeypatch):
    """Batch (1, 5) is cut along the heads: an array (1, 5, L, S) is sliced along its axis 1, an array (5, L, S)
    without the B axis along its axis 0; an array with 1 head is taken whole."""
    parts = _chunks_wanted(monkeypatch, (1, 5))
    four_d = np.arange(5 * 2 * 3.0).reshape(1, 5, 2, 3)
    three_d = np.arange(5 * 2 * 3.0).reshape(5, 2, 3)
    one_head = np.zeros((1, 1, 2, 3))
    for part in parts:
        assert _cut_axis(part) == 1
        span = part.spans[1]
        assert part.index(four_d, 2) == (slice(None), span) and part.index(three_d, 2) == (span,)
        np.testing.assert_array_equal(part.take(four_d, 2), four_d[:, span])
        np.testing.assert_array_equal(part.take(three_d, 2), three_d[span])
        assert np.shares_memory(part.take(four_d, 2), four_d) and np.shares_memory(part.take(three_d, 2), three_d)
        assert part.take(one_head, 2) is one_head


def test_take_across_two_cut_axes(monkeypatch):
    """Batch (2, 8) on 3 threads: each b's heads in two halves. q (2, 8, L, E) gives its (1, 4) block; k (2, 1, S, E),
    shared by the heads, its b (all of its heads axis); k (1, 8, S, E), shared by the batch, its heads; an (8, L, S)
    array without the B axis its heads; a (1, 1, L, S) mask is taken whole. Every share is a view."""
    parts = _chunks_wanted(monkeypatch, (2, 8))
    q = np.arange(2 * 8 * 3 * 2.0).reshape(2, 8, 3, 2)
    k_per_b, k_per_head = np.arange(2 * 5 * 2.0).reshape(2, 1, 5, 2), np.arange(8 * 5 * 2.0).reshape(1, 8, 5, 2)
    heads_only, mask = np.arange(8 * 3 * 5.0).reshape(8, 3, 5), np.ones((1, 1, 3, 5), dtype=bool)
    assert len(parts) == 4
    for part in parts:
        b, h = part.spans
        expected = [(q, (b, h), q[b, h]), (k_per_b, (b, slice(None)), k_per_b[b]),
                    (k_per_head, (slice(None), h), k_per_head[:, h]), (heads_only, (h,), heads_only[h])]
        for x, index, share in expected:
            assert part.index(x, 2) == index
            np.testing.assert_array_equal(part.take(x, 2), share)
            assert np.shares_memory(part.take(x, 2), x)
        assert part.take(mask, 2) is mask and part.index(mask, 2) is None


def test_take_with_core_ndim_1(monkeypatch):
    """Rows (core_ndim 1, as Linear, LayerNorm and cross-entropy cut them): a (7, 4) matrix is cut into row blocks
    that put together give it back; a bias (4,) has no batch axis and is taken whole; so is a 0-d array."""
    parts = _chunks_wanted(monkeypatch, (7,))
    x = np.arange(7 * 4.0).reshape(7, 4)
    np.testing.assert_array_equal(np.concatenate([p.take(x, 1) for p in parts]), x)
    assert all(np.shares_memory(p.take(x, 1), x) for p in parts)
    target = np.arange(7)
    np.testing.assert_array_equal(np.concatenate([p.take(target, 0) for p in parts]), target)     # core_ndim 0
    bias, scalar = np.ones(4), np.float64(2.0)
    assert all(p.take(bias, 1) is bias and p.take(scalar, 0) is scalar for p in parts)


def test_take_with_core_ndim_3_and_an_array_with_fewer_axes_than_its_core(monkeypatch):
    """Talking heads (core_ndim 3, batch (B,)): q (4, h, L, E) and a mask (4, 1, L, S) are cut along B; an attention
    bias (L, S) has fewer axes than its core and is taken whole, as is a (1, 1, L, S) mask."""
    parts = _chunks_wanted(monkeypatch, (4,))
    q = np.arange(4 * 2 * 3 * 2.0).reshape(4, 2, 3, 2)
    mask = np.arange(4 * 3 * 5).reshape(4, 1, 3, 5) % 2 == 0
    for part in parts:
        span = part.spans[0]
        for x in (q, mask):
            assert part.index(x, 3) == (span,)
            np.testing.assert_array_equal(part.take(x, 3), x[span])
            assert np.shares_memory(part.take(x, 3), x)
        for whole in (np.zeros((3, 5)), np.zeros((1, 1, 3, 5)), np.zeros((5,))):
            assert part.take(whole, 3) is whole and part.index(whole, 3) is None


def test_batch_shape_broadcasts_the_batch_axes():
    """The batch axes (all but each array's core) broadcast as NumPy aligns them, from the right; None skipped; an
    array with no more axes than its core adds none; core_ndim may differ per array."""
    z = np.zeros
    assert parallel.batch_shape([z((4, 3, 5, 6)), z((3, 7, 6)), None, z((5, 6))], (2, 2, 2, 2)) == (4, 3)
    assert parallel.batch_shape([z((1, 3, 7, 4)), z((4, 1, 9, 4))], (2, 2)) == (4, 3)
    assert parallel.batch_shape([z((11, 5)), z((11,), dtype=int)], (1, 0)) == (11,)
    assert parallel.batch_shape([z((3, 5))], (3,)) == ()
    assert parallel.batch_shape([None, 2.0], (2, 2)) == ()
    assert parallel.batch_shape([], ()) == ()


def test_batch_shape_refuses_batches_that_do_not_broadcast():
    """ValueError naming both batch shapes."""
    with pytest.raises(ValueError, match=r"\(4, 3\) and \(5, 3\) do not broadcast"):
        parallel.batch_shape([np.zeros((4, 3, 2, 2)), np.zeros((5, 3, 2, 2))], (2, 2))


def test_work_counts_every_element_times_the_longest_core_axis():
    """(Σ sizes) × the longest core axis: a matrix product's count for its operands; None skipped."""
    z = np.zeros
    assert parallel.work([z((2, 3, 4, 5)), z((2, 3, 5, 6))], (2, 2)) == (120 + 180) * 6
    assert parallel.work([z((2, 3, 4, 5)), None], (2, 2)) == 120 * 5
    assert parallel.work([z((7, 4))], (1,)) == 28 * 4
    assert parallel.work([z((7, 4)), z((7,))], (1, 0)) == (28 + 7) * 4
    assert parallel.work([], ()) == 0


# ---------------------------------------------------------------------------------------------------------------------
# (b) map_batch
# ---------------------------------------------------------------------------------------------------------------------
def test_map_batch_joins_one_output_side_by_side_in_order(chunk_log, rng):
    """fn(x, y) = 2x + y on (5, 3, 4) arrays: cut into 5 chunks of one batch element, the output is the whole one —
    and an output that is each chunk's x itself comes back as x (every share in its place)."""
    x, y = rng.standard_normal((5, 3, 4)), rng.standard_normal((5, 3, 4))
    np.testing.assert_array_equal(parallel.map_batch(lambda a, b: 2 * a + b, x, y), 2 * x + y)
    np.testing.assert_array_equal(parallel.map_batch(lambda a: a.copy(), x), x)
    assert chunk_log.counts == [5, 5] and chunk_log.axes == [0, 0]


def test_map_batch_joins_tuple_outputs_in_order_and_passes_none_through(chunk_log, monkeypatch, rng):
    """Three chunks (1, 2, 2 of B = 5): a tuple (a, None, b) comes back as a tuple of the whole a, None and the
    whole b, each with its own core shape."""
    monkeypatch.setattr(parallel, "CHUNK_WORK", HUGE)
    x, y = rng.standard_normal((5, 3, 4)), rng.standard_normal((5, 3, 4))
    first, nothing, last = parallel.map_batch(lambda a, b: (a + b, None, (a * b).sum(axis=-1)), x, y)
    assert nothing is None and first.shape == (5, 3, 4) and last.shape == (5, 3)
    np.testing.assert_array_equal(first, x + y)
    np.testing.assert_allclose(last, (x * y).sum(axis=-1), **TIGHT)
    assert chunk_log.counts == [THREADS]


def test_map_batch_gives_keyword_arguments_whole_to_every_chunk(chunk_log, rng):
    """A weight and a flag given by keyword reach every chunk as the very same objects, while the positional array
    is cut."""
    x, w = rng.standard_normal((6, 2, 4)), rng.standard_normal((4, 3))
    seen, lock = [], threading.Lock()

    def fn(a, weight, flag):
        with lock:
            seen.append((a.shape[0], weight is w, flag))
        return a @ weight

    np.testing.assert_allclose(parallel.map_batch(fn, x, core_ndim=2, weight=w, flag="on"), x @ w, **TIGHT)
    assert chunk_log.counts == [6]
    assert sorted(seen) == [(1, True, "on")] * 6


def _order(a):
    """The axes of ``a`` from the largest stride to the smallest: its memory layout."""
    return sorted(range(a.ndim), key=lambda axis: -a.strides[axis])


def test_map_batch_lays_an_output_out_as_an_input_of_the_same_shape(chunk_log, rng):
    """q is a transposed view (B, h, L, E) of a (B, L, h, E) array, as attention's heads are: an output of q's shape
    gets q's memory layout (so that merging the heads back stays a view); an output of no input's shape is C order."""
    q = rng.standard_normal((6, 7, 3, 4)).transpose(0, 2, 1, 3)                          # (6, 3, 7, 4)
    k = rng.standard_normal((6, 3, 5, 4))
    same, other = parallel.map_batch(lambda q_, k_: (2 * q_, q_ @ k_.swapaxes(-1, -2)), q, k)
    assert chunk_log.counts == [6 * 3]
    assert same.shape == q.shape and _order(same) == _order(q) == [0, 2, 1, 3]
    assert other.shape == (6, 3, 7, 5) and other.flags.c_contiguous
    np.testing.assert_array_equal(same, 2 * q)
    np.testing.assert_allclose(other, q @ k.swapaxes(-1, -2), **TIGHT)
    merged = same.transpose(0, 2, 1, 3).reshape(6, 7, 12)                                 # merging the heads
    assert np.shares_memory(merged, same)


def test_map_batch_never_hands_out_again_an_output_still_held(chunk_log, rng):
    """Whole output arrays are reused once nothing refers to them any more: an earlier result still held — itself, or
    only through a view of it — is never the output of a later call, so its values stay as they were."""
    x = rng.standard_normal((6, 3, 4))
    first = parallel.map_batch(lambda a: a * 2, x)
    view_only = parallel.map_batch(lambda a: a * 3, x)[1:]                                # only a view is held
    first_values, view_values = first.copy(), view_only.copy()
    for _ in range(3):
        again = parallel.map_batch(lambda a: a * 5, x)
        assert not np.shares_memory(again, first) and not np.shares_memory(again, view_only)
        np.testing.assert_array_equal(again, 5 * x)
        del again                                                                         # free to be reused
    np.testing.assert_array_equal(first, first_values)
    np.testing.assert_array_equal(view_only, view_values)
    assert chunk_log.counts == [6] * 5


def test_map_batch_places_the_gradient_of_a_cut_input_side_by_side_laid_out_like_it(chunk_log, rng):
    """grads_for=(x,): x is cut, so x's gradient is the chunks' gradients placed side by side, with x's layout."""
    x = rng.standard_normal((6, 7, 3, 4)).transpose(0, 2, 1, 3)                          # (6, 3, 7, 4), a view
    (dx,) = parallel.map_batch(lambda a: (3 * a,), x, grads_for=(x,))
    assert chunk_log.counts == [6 * 3]
    assert dx.shape == x.shape and _order(dx) == _order(x)
    np.testing.assert_array_equal(dx, 3 * x)


def _sum_case(rng):
    """x (6, 5, 3) cut along its first axis (core_ndim 2); b (1, 5, 3) and c (5, 3) broadcast along the cut; w (3,)
    by keyword. Values spread over 16 orders of magnitude, so that the order of a sum shows in its last bits."""
    x = rng.standard_normal((6, 5, 3)) * 10.0 ** rng.uniform(-8, 8, (6, 5, 3))
    b, c, w = np.ones((1, 5, 3)), np.ones((5, 3)), np.ones(3)

    def fn(x_, b_, c_, w):
        return 2 * x_, x_.sum(axis=0, keepdims=True) * b_, x_.sum(axis=0) * c_, x_.sum(axis=(0, 1)) * w
    return fn, x, b, c, w


def test_map_batch_sums_the_gradients_of_inputs_every_chunk_took_whole(chunk_log, monkeypatch, rng):
    """grads_for=(x, b, c, w): x's gradient is placed side by side; b (size 1 along the cut), c (no such axis) and the
    keyword w were used whole by every chunk, so theirs is the SUM of the chunks' gradients, in chunk order."""
    monkeypatch.setattr(parallel, "CHUNK_WORK", HUGE)
    fn, x, b, c, w = _sum_case(rng)
    dx, db, dc, dw = parallel.map_batch(fn, x, b, c, w=w, grads_for=(x, b, c, w))
    assert chunk_log.counts == [THREADS] and chunk_log.axes == [0]
    np.testing.assert_array_equal(dx, 2 * x)
    for grad, expected in ((db, x.sum(axis=0, keepdims=True)), (dc, x.sum(axis=0)), (dw, x.sum(axis=(0, 1)))):
        assert grad.shape == expected.shape and grad.dtype == expected.dtype
        np.testing.assert_allclose(grad, expected, **TIGHT)
    parts = parallel.chunks(parallel.batch_shape([x, b, c], (2, 2, 2)), parallel.work([x, b, c], (2, 2, 2)))
    assert len(parts) == THREADS
    in_order = x[parts[0].spans].sum(axis=(0, 1))                                         # chunk 0 + 1 + 2
    for part in parts[1:]:
        in_order += x[part.spans].sum(axis=(0, 1))
    assert dw.tobytes() == in_order.tobytes()


def test_map_batch_sums_deterministically(chunk_log, rng):
    """The same call three times (6 chunks, finishing in whatever order the threads take them) gives the same bits."""
    fn, x, b, c, w = _sum_case(rng)
    runs = [parallel.map_batch(fn, x, b, c, w=w, grads_for=(x, b, c, w)) for _ in range(3)]
    assert chunk_log.counts == [6] * 3
    for other in runs[1:]:
        assert [g.tobytes() for g in other] == [g.tobytes() for g in runs[0]]


def test_map_batch_sums_a_gradient_over_the_cut_axes_its_input_broadcasts_along(chunk_log, monkeypatch, rng):
    """Batch (2, 6) on 3 threads is cut over both axes (each b's heads in two halves). k (2, 1, ·) is shared by the
    heads of its b: its gradient must be the SUM over the chunks of that b; k (1, 6, ·), shared by the batch, the sum
    over the chunks of those heads — never the last chunk's gradient written over the others'."""
    monkeypatch.setattr(parallel, "CHUNK_WORK", HUGE)
    x = rng.standard_normal((2, 6, 4, 3))
    per_b, per_head = np.ones((2, 1, 4, 3)), np.ones((1, 6, 4, 3))

    def fn(x_, per_b_, per_head_):
        return 2 * x_, x_.sum(axis=1, keepdims=True) * per_b_, x_.sum(axis=0, keepdims=True) * per_head_

    dx, d_per_b, d_per_head = parallel.map_batch(fn, x, per_b, per_head, grads_for=(x, per_b, per_head))
    assert chunk_log.counts == [4] and chunk_log.axes == [1]
    np.testing.assert_array_equal(dx, 2 * x)
    np.testing.assert_allclose(d_per_b, x.sum(axis=1, keepdims=True), **TIGHT)
    np.testing.assert_allclose(d_per_head, x.sum(axis=0, keepdims=True), **TIGHT)


def test_map_batch_gives_a_row_wise_op_one_chunk_per_thread(chunk_log):
    """core_ndim ≤ 1 (Linear, LayerNorm, cross-entropy: temporaries no bigger than the inputs): one chunk per thread
    whatever CHUNK_WORK; core_ndim 2 (quadratic temporaries): chunks of about CHUNK_WORK, here one per batch element."""
    rows, matrices = np.arange(64 * 4.0).reshape(64, 4), np.arange(64.0).reshape(16, 2, 2)
    np.testing.assert_array_equal(parallel.map_batch(lambda a: a + 1, rows, core_ndim=1), rows + 1)
    np.testing.assert_array_equal(parallel.map_batch(lambda a: a + 1, matrices, core_ndim=2), matrices + 1)
    assert chunk_log.counts == [THREADS, 16]


def test_map_batch_of_empty_arrays(chunk_log):
    """Arrays with no elements (no work at all) are still computed — row-wise or not — as fn gives them whole."""
    for core_ndim, shape in ((1, (0, 4)), (2, (0, 2, 2)), (1, (3, 0))):
        x = np.zeros(shape)
        out = parallel.map_batch(lambda a: a * 2, x, core_ndim=core_ndim)
        assert out.shape == shape, (core_ndim, shape)


def test_map_batch_refuses_a_gradient_for_none(chunk_log, rng):
    """An output named the gradient of None (a missing input) is an error in the math, not silently dropped."""
    x = rng.standard_normal((6, 2, 2))
    with pytest.raises(ValueError, match="gradient for None"):
        parallel.map_batch(lambda a: (a, 2 * a), x, grads_for=(x, None))


def test_map_batch_below_min_work_calls_fn_once_on_the_original_arrays(rng):
    """At MIN_WORK's default, small arrays: fn is called exactly once, with the very arrays and keyword values given,
    and its result is returned as it is (any backend, any thread count)."""
    x, y, w = (dev(rng.standard_normal(s)) for s in ((4, 3, 5, 6), (4, 3, 6, 2), (2,)))
    assert parallel.work([x, y], (2, 2)) < parallel.MIN_WORK
    calls, result = [], (object(), None)

    def fn(*args, **kwargs):
        calls.append((args, kwargs))
        return result

    assert parallel.map_batch(fn, x, y, None, w=w, grads_for=(x, y, None)) is result
    assert len(calls) == 1
    args, kwargs = calls[0]
    assert len(args) == 3 and args[0] is x and args[1] is y and args[2] is None
    assert kwargs.keys() == {"w"} and kwargs["w"] is w


# ---------------------------------------------------------------------------------------------------------------------
# (c) run
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [0, 1, 2, 3, 50])
def test_run_executes_every_task_exactly_once(forced, count):
    """Each i in 0..count-1 is handed out once, whatever the number of tasks against the 3 threads."""
    done, lock = [], threading.Lock()

    def task(i):
        with lock:
            done.append(i)

    parallel.run(task, count)
    assert sorted(done) == list(range(count))


def test_run_runs_tasks_at_once_on_several_threads(forced):
    """Six tasks wait for each other, three at a time, at a barrier: it is passed only if three tasks run at the same
    moment (one on the calling thread, two on workers); a serial run would break it (after its timeout)."""
    barrier = threading.Barrier(THREADS, timeout=JOIN)
    threads, lock = {}, threading.Lock()

    def task(i):
        barrier.wait()
        with lock:
            threads[i] = threading.current_thread()

    parallel.run(task, 2 * THREADS)
    assert sorted(threads) == list(range(2 * THREADS))
    assert len(set(threads.values())) == THREADS
    assert threading.current_thread() in threads.values()


@pytest.mark.parametrize("where", ["the calling thread", "a worker thread"])
def test_run_raises_an_exception_after_every_task_finished(forced, where):
    """The first task run on ``where`` raises at once; every other task waits until it has raised, then finishes.
    run raises that KeyError only when all are done — and runs every other task, even those handed out after the
    failure. (On the calling thread the failure is raised by run's own loop, which must still wait for the workers.)"""
    caller, failed, lock = threading.current_thread(), threading.Event(), threading.Lock()
    failing, finished = [], []

    def task(i):
        with lock:
            fails = not failing and (threading.current_thread() is caller) == (where == "the calling thread")
            if fails:
                failing.append(i)
        if fails:
            failed.set()
            raise KeyError(f"task {i}")
        assert failed.wait(timeout=JOIN)
        time.sleep(0.02)                                   # finish well after the failure was raised
        with lock:
            finished.append(i)

    with pytest.raises(KeyError, match="task"):
        parallel.run(task, 7)
    assert len(failing) == 1
    assert sorted(finished) == [i for i in range(7) if i not in failing]
    barrier = threading.Barrier(THREADS, timeout=JOIN)     # the next run is parallel again (its lock was released)
    parallel.run(lambda i: barrier.wait(), THREADS)


def _on_daemon_thread(fn):
    """fn() on a daemon thread (a deadlock fails the test instead of hanging it); returns its result or raises."""
    out = {}

    def target():
        try:
            out["result"] = fn()
        except BaseException as err:  # noqa: B902 — re-raised in the test's thread
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=JOIN)
    assert not thread.is_alive(), "deadlocked"
    if "error" in out:
        raise out["error"]
    return out["result"]


def test_a_run_nested_in_a_task_runs_serially_and_right(forced):
    """Each of 3 outer tasks runs an inner run of 6 tasks: every inner task runs on its outer task's own thread,
    and each inner result is right."""
    results, lock = {}, threading.Lock()

    def outer(i):
        here, inner = threading.current_thread(), {}

        def inner_task(j):
            inner[j] = (threading.current_thread() is here, (i + 1) * j)

        parallel.run(inner_task, 6)
        with lock:
            results[i] = inner

    _on_daemon_thread(lambda: parallel.run(outer, 3))
    assert results == {i: {j: (True, (i + 1) * j) for j in range(6)} for i in range(3)}


def test_map_batch_inside_a_run_task_is_right(chunk_log, rng):
    """A chunked map_batch called from each task of an outer run (so its own run goes serial): its output equals
    fn on the whole arrays, and it was still cut."""
    x, w = rng.standard_normal((3, 6, 5, 4)), rng.standard_normal((4, 4))
    outs = {}

    def task(i):
        outs[i] = parallel.map_batch(lambda a, weight: np.tanh(a @ weight), x[i], weight=w)

    _on_daemon_thread(lambda: parallel.run(task, 3))
    for i in range(3):
        np.testing.assert_allclose(outs[i], np.tanh(x[i] @ w), **TIGHT)
    assert chunk_log.counts == [6, 6, 6]


def test_concurrent_fused_calls_from_two_threads_are_right(chunk_log, rng):
    """Two Python threads each run attention forward and backward, chunked, five times at once (one goes serial
    while the other holds the pool): every result equals a lone call's."""
    arrays = [rng.standard_normal((4, 3, 7, 4)), rng.standard_normal((4, 3, 10, 4)),
              rng.standard_normal((4, 3, 10, 3))]
    fn = lambda q, k, v: ScaledDotProductAttentionFunction.apply(q, k, v, scale=0.5)   # noqa: E731
    expected = _forward_backward(fn, arrays)
    results, errors = [[], []], []

    def worker(n):
        try:
            for _ in range(5):
                results[n].append(_forward_backward(fn, arrays))
        except BaseException as err:  # noqa: B902 — reported below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=JOIN)
    assert not any(t.is_alive() for t in threads), "deadlocked"
    assert not errors, errors
    assert all(len(r) == 5 for r in results)
    for got in results[0] + results[1]:
        _assert_close(got, expected)
    assert chunk_log.counts and all(c > 1 for c in chunk_log.counts)


# ---------------------------------------------------------------------------------------------------------------------
# (d) the thread count, the BLAS, fork
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [True, False, 0, -1, 2.0, "2", [2]])
def test_set_num_threads_refuses_anything_but_a_positive_int_or_none(bad):
    """ValueError for an int below 1, TypeError for anything else but None; the thread count is left as it was."""
    before = parallel.get_num_threads()
    error = ValueError if bad in (0, -1) and not isinstance(bad, bool) else TypeError
    with pytest.raises(error, match=r"set_num_threads: n must be an int >= 1"):
        parallel.set_num_threads(bad)
    assert parallel.get_num_threads() == before


@numpy_only
def test_set_num_threads_none_restores_the_default():
    """set_num_threads(n) is what get_num_threads() reads; None gives back the default, a positive int."""
    saved = parallel._threads
    try:
        parallel.set_num_threads(None)
        default = parallel.get_num_threads()
        assert isinstance(default, int) and default >= 1
        parallel.set_num_threads(5)
        assert parallel.get_num_threads() == 5
        parallel.set_num_threads(None)
        assert parallel.get_num_threads() == default
    finally:
        parallel.set_num_threads(saved)


def _subprocess(code, **env):
    """Run ``python -c code`` from the repository root (extra environment variables ``env``); its stdout."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **env)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_minattn_changes_no_thread_pool():
    """The acceptance check: threadpoolctl sees the same thread pools, with the same counts, before and after
    ``import minattn``."""
    _subprocess("import numpy, threadpoolctl as t; a = t.threadpool_info(); import minattn; "
                "assert a == t.threadpool_info()")


_BLAS_SCRIPT = r"""
import json, threading
import numpy as np
import threadpoolctl

def blas():
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

report = {"before": blas()}
from autograd import Tensor, parallel
from minattn.fused.attention import ScaledDotProductAttentionFunction
parallel.MIN_WORK, parallel.CHUNK_WORK = 0, 1
parallel.set_num_threads(3)

def fused():
    rng = np.random.default_rng(0)
    q, k, v = (Tensor(rng.standard_normal((4, 2, 5, 3)), requires_grad=True) for _ in range(3))
    out = ScaledDotProductAttentionFunction.apply(q, k, v, scale=0.5)
    out.backward(np.ones(out.shape))
    return q.grad is not None and k.grad is not None and v.grad is not None

def blas_counts_inside():
    seen, lock = [], threading.Lock()
    def fn(x):
        counts = blas()
        with lock:
            seen.append(counts)
        return x * 2
    out = parallel.map_batch(fn, np.ones((6, 2, 2)))
    assert (out == 2).all()
    return seen

report["fused"] = fused()
report["after_fused"] = blas()
report["during"] = blas_counts_inside()
report["after_map_batch"] = blas()
elsewhere = {}
def other_thread():
    elsewhere["during"] = blas_counts_inside()
    elsewhere["fused"] = fused()
thread = threading.Thread(target=other_thread)
thread.start()
thread.join()
report["during_other_thread"] = elsewhere["during"]
report["fused_other_thread"] = elsewhere["fused"]
report["after_other_thread"] = blas()
parallel.MIN_WORK = 10**18                       # small work: fn once on the whole arrays
report["whole_several_threads"] = blas_counts_inside()
parallel.set_num_threads(1)
report["whole_one_thread"] = blas_counts_inside()
report["after_one_thread"] = blas()
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def blas_report():
    """_BLAS_SCRIPT's report, from a fresh process whose BLAS runs 2 threads (OPENBLAS_NUM_THREADS=2): its BLAS
    thread counts before minattn, during chunks (from the main thread and another one), after each fused call."""
    if backend.BACKEND != "numpy":
        pytest.skip("CuPy: no BLAS is held (nothing is cut)")
    report = json.loads(_subprocess(_BLAS_SCRIPT, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2",
                                    MKL_NUM_THREADS="2", MINATTN_BACKEND="numpy").strip().splitlines()[-1])
    if not report["before"] or max(report["before"]) < 2:
        pytest.skip(f"needs a BLAS that threadpoolctl finds running 2 threads; found {report['before']}")
    return report


def test_a_fused_call_leaves_the_blas_thread_count_as_it_was(blas_report):
    """After a chunked fused forward and backward, and after a map_batch — from the main thread or another — the
    BLAS runs as many threads as before minattn was imported."""
    assert blas_report["fused"] and blas_report["fused_other_thread"]
    before = blas_report["before"]
    assert blas_report["after_fused"] == before
    assert blas_report["after_map_batch"] == before
    assert blas_report["after_other_thread"] == before
    assert blas_report["after_one_thread"] == before


def test_the_blas_runs_one_thread_while_chunks_run(blas_report):
    """Inside every chunk of a chunked map_batch (6 chunks on 3 threads), called from the main thread or from another
    thread, the BLAS runs one thread: chunks never fight BLAS threads for the cores."""
    ones = [1] * len(blas_report["before"])
    assert blas_report["during"] == [ones] * 6
    assert blas_report["during_other_thread"] == [ones] * 6


def test_small_work_runs_whole_with_the_blas_own_threads_unless_one_thread_is_asked_for(blas_report):
    """Below MIN_WORK fn runs once on the whole arrays: on several minattn threads the BLAS threads its products as
    it was set to (its own count); after set_num_threads(1) it is held to one thread too."""
    assert blas_report["whole_several_threads"] == [blas_report["before"]]
    assert blas_report["whole_one_thread"] == [[1] * len(blas_report["before"])]


def test_set_num_threads_from_another_thread(chunk_log):
    """set_num_threads(2) on another thread is the process's thread count: the main thread reads 2, and its next
    chunked map_batch runs its chunks two at a time on two threads (they meet at a barrier of 2)."""
    thread = threading.Thread(target=parallel.set_num_threads, args=(2,))
    thread.start()
    thread.join(timeout=JOIN)
    assert parallel.get_num_threads() == 2
    barrier, seen, lock = threading.Barrier(2, timeout=JOIN), set(), threading.Lock()

    def fn(a):
        barrier.wait()
        with lock:
            seen.add(threading.current_thread())
        return a + 1

    x = np.zeros((4, 2, 2))
    np.testing.assert_array_equal(parallel.map_batch(fn, x), x + 1)
    assert chunk_log.counts == [4] and len(seen) == 2


def test_set_num_threads_while_another_thread_runs(forced):
    """set_num_threads replaces the pool while another thread's runs are in flight (and its chunks queued): those
    runs neither fail ("cannot schedule new futures after shutdown") nor lose a task, and their results stay right."""
    runs_wanted, errors, wrong, runs = 60, [], [], [0]
    x = np.arange(6 * 4.0).reshape(6, 2, 2)

    def runner():
        for _ in range(runs_wanted):
            try:
                done, lock = [], threading.Lock()

                def task(i):
                    with lock:
                        done.append(i)

                parallel.run(task, 6)
                if sorted(done) != list(range(6)):
                    wrong.append(sorted(done))
                if not np.array_equal(parallel.map_batch(lambda a: a * 2, x), 2 * x):
                    wrong.append("map_batch")
            except Exception as err:   # noqa: BLE001 — any failure is what this test looks for
                errors.append(repr(err))
            runs[0] += 1

    thread = threading.Thread(target=runner, daemon=True)
    thread.start()
    toggles = 0
    while thread.is_alive() and toggles < 10**6:
        parallel.set_num_threads(2 if toggles % 2 else THREADS)
        toggles += 1
    thread.join(timeout=JOIN)
    assert not thread.is_alive(), "deadlocked"
    assert errors == [] and wrong == [] and runs[0] == runs_wanted and toggles > 0


def test_run_survives_set_num_threads_1_from_another_thread_as_it_starts(forced, monkeypatch):
    """Another thread calls set_num_threads(1) just as a run starts — after run read 3 threads, before it made its
    pool (the interleaving made certain here: the run's lock, when taken, lets that thread run first). The run must
    still execute every task once, not fail to make a pool of 3 − 1 → 1 − 1 = 0 workers."""
    real = parallel._busy

    class LetAnotherThreadSetOneThreadFirst:
        def acquire(self, blocking=True):
            other = threading.Thread(target=parallel.set_num_threads, args=(1,))
            other.start()
            other.join(timeout=JOIN)
            return real.acquire(blocking)

        def release(self):
            real.release()

    monkeypatch.setattr(parallel, "_busy", LetAnotherThreadSetOneThreadFirst())
    done, lock = [], threading.Lock()

    def task(i):
        with lock:
            done.append(i)

    parallel.run(task, THREADS)
    assert sorted(done) == list(range(THREADS))


def _child_computes(connection):
    """In a forked child: a chunked map_batch (6 chunks on 3 threads that meet at a barrier) and a run; sends the
    results back."""
    try:
        parallel.MIN_WORK, parallel.CHUNK_WORK = 0, TINY      # the thread count (3) and the pool: the parent's
        assert parallel.get_num_threads() == THREADS
        barrier, seen, lock = threading.Barrier(THREADS, timeout=JOIN), set(), threading.Lock()

        def fn(a):
            barrier.wait()
            with lock:
                seen.add(threading.current_thread())
            return a * 2

        out = parallel.map_batch(fn, np.arange(6 * 2.0).reshape(6, 2), core_ndim=1)
        done = []
        parallel.run(done.append, 5)
        connection.send((out.tolist(), len(seen), sorted(done)))
    except BaseException as err:  # noqa: B902 — reported to the parent
        connection.send(repr(err))
    finally:
        connection.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")
def test_a_forked_child_can_still_run_chunked_work(forced):
    """The pool's threads are not copied into a child made by fork (multiprocessing's default on Linux before Python
    3.14): the child must start a pool of its own instead of queueing chunks that no thread will ever run."""
    import multiprocessing
    barrier = threading.Barrier(THREADS, timeout=JOIN)
    parallel.run(lambda i: barrier.wait(), THREADS)                  # the parent's pool exists, its threads live
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    with warnings.catch_warnings():          # Python >= 3.12 warns about forking a process that has threads
        warnings.simplefilter("ignore", DeprecationWarning)
        child = context.Process(target=_child_computes, args=(send,))
        child.start()
    send.close()
    child.join(timeout=JOIN)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the forked child hung in chunked work")
    assert receive.poll(), f"the child sent nothing (exit code {child.exitcode})"
    result = receive.recv()
    assert child.exitcode == 0 and not isinstance(result, str), result
    out, threads_seen, done = result
    assert out == (np.arange(6 * 2.0).reshape(6, 2) * 2).tolist()
    assert threads_seen == THREADS and done == list(range(5))


# ---------------------------------------------------------------------------------------------------------------------
# (e) every fused Function: chunked = unchunked, gradcheck, float32
# ---------------------------------------------------------------------------------------------------------------------
def _forward_backward(fn, arrays, dtype=np.float64, requires=None):
    """fn on fresh tensors of ``arrays`` (as ``dtype``; ``requires``: which require grad, default all), backward
    with a fixed random cotangent. Returns (output, [gradient or None per input]) on the host."""
    requires = [True] * len(arrays) if requires is None else requires
    tensors = [Tensor(backend.asarray(np.asarray(a, dtype=dtype)), requires_grad=r) for a, r in zip(arrays, requires)]
    out = fn(*tensors)
    out.backward(dev(np.asarray(np.random.default_rng(7).standard_normal(out.shape), dtype=dtype)))
    return host(out), [None if t.grad is None else host(t.grad) for t in tensors]


def _assert_close(got, expected, **tolerance):
    (out, grads), (out_e, grads_e) = got, expected
    tolerance = tolerance or TIGHT
    assert out.shape == out_e.shape and out.dtype == out_e.dtype
    np.testing.assert_allclose(out, out_e, **tolerance)
    assert len(grads) == len(grads_e)
    for n, (g, ge) in enumerate(zip(grads, grads_e)):
        if ge is None:
            assert g is None, f"input {n} got a gradient"
            continue
        assert g.shape == ge.shape and g.dtype == ge.dtype, n
        np.testing.assert_allclose(g, ge, **tolerance, err_msg=f"gradient of input {n}")


def _unchunked(log, fn, arrays, dtype, requires):
    """fn's output and gradients from one call of each math function on the whole arrays (MIN_WORK huge; checked)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parallel, "MIN_WORK", HUGE)
        patch.setattr(parallel, "_matrix_ops_chunked", parallel._matrix_ops_chunked)   # given back afterwards
        log.clear()
        whole = _forward_backward(fn, arrays, dtype, requires)
        assert log.counts and set(log.counts) == {1}, log.counts
    return whole


def _assert_chunked_equals_unchunked(chunked, case, dtype=np.float64, **tolerance):
    """The case's output and every gradient, cut into chunks (checked: every map_batch call was cut), equal those of
    one unchunked call; all finite. Returns the chunked result."""
    fn, arrays, requires = case
    chunked.log.clear()
    cut = _forward_backward(fn, arrays, dtype, requires)
    chunked.check(chunked.log.counts)
    axes = list(chunked.log.axes)
    whole = _unchunked(chunked.log, fn, arrays, dtype, requires)
    _assert_close(cut, whole, **tolerance)
    assert np.isfinite(cut[0]).all() and all(np.isfinite(g).all() for g in cut[1] if g is not None)
    return cut, axes


def _constant(rng_array, dtype):
    """A float constant (mask-like bias, dropout multiplier) on the backend in ``dtype``, or None."""
    return None if rng_array is None else dev(np.asarray(rng_array, dtype=dtype))


def _row_mask(rng, shape, p=0.4):
    """A bool mask: key 0 always taken, the others with probability 1 − p."""
    mask = rng.random(shape) > p
    mask[..., 0] = True
    return mask


# --- case builders: (rng, dtype) → (fn, arrays, requires) ------------------------------------------------------------
def _qkv(rng, q_batch, kv_batch=None, length=7, keys=10, e=4, ev=3):
    kv_batch = q_batch if kv_batch is None else kv_batch
    return [rng.standard_normal(q_batch + (length, e)), rng.standard_normal(kv_batch + (keys, e)),
            rng.standard_normal(kv_batch + (keys, ev))]


def _sdpa(name, rng, dtype):
    """ScaledDotProductAttentionFunction: q (4, 3, L=7, E=4), k (4, 3, S=10, 4), v (4, 3, 10, Ev=3) unless said."""
    arrays, kw = _qkv(rng, (4, 3)), dict(scale=0.5)
    if name == "bool mask with a fully masked row":
        mask = _row_mask(rng, (4, 1, 7, 10))
        mask[1, 0, 3] = False                                                 # query 3 of sequence 1 sees no key
        kw["mask"] = dev(mask)
    elif name == "float bias (L, S)":
        kw["bias"] = _constant(rng.standard_normal((7, 10)), dtype)
    elif name == "float bias (B, 1, L, S) and mask (L, S)":
        kw["bias"] = _constant(rng.standard_normal((4, 1, 7, 10)), dtype)
        kw["mask"] = dev(_row_mask(rng, (7, 10)))
    elif name == "dropout_mask":
        kw["dropout_mask"] = _constant((rng.random((4, 3, 7, 10)) > 0.3) / 0.7, dtype)
    elif name == "k, v batch 1 (broadcast over B)":
        arrays = _qkv(rng, (4, 3), (1, 3))
    elif name == "k, v shared by the heads (B, 1, S, E)":
        arrays = _qkv(rng, (4, 3), (4, 1))
    elif name == "q batch 1, k, v batch 4":
        arrays = _qkv(rng, (1, 3), (4, 3))
    elif name == "batch (1, 5): cut along the heads":
        arrays = _qkv(rng, (1, 5))
    elif name == "q without batch axes":
        arrays[0] = rng.standard_normal((7, 4))
    elif name != "no mask":
        raise KeyError(name)
    return (lambda *t: ScaledDotProductAttentionFunction.apply(*t, **kw)), arrays, None


def _linear(name, rng, dtype, function=LinearFunction):
    """LinearFunction (or ``function``, with the same inputs): x (5, 7, 6) (35 rows, cut along its first axis),
    W (4, 6), b (4,) unless said."""
    x, w, b = rng.standard_normal((5, 7, 6)), rng.standard_normal((4, 6)), rng.standard_normal(4)
    if name == "3-D x, bias":
        return (lambda *t: function.apply(*t)), [x, w, b], None
    if name == "3-D x, no bias":
        return (lambda *t: function.apply(*t)), [x, w], None
    if name == "2-D x (9, 6), bias":
        return (lambda *t: function.apply(*t)), [rng.standard_normal((9, 6)), w, b], None
    if name == "x requires no grad":
        return (lambda *t: function.apply(*t)), [x, w, b], [False, True, True]
    raise KeyError(name)


def _linear_relu(name, rng, dtype):
    """LinearReLUFunction, on _linear's inputs; its backward reads the mask [z > 0] off each chunk's share of the
    output."""
    return _linear(name, rng, dtype, LinearReLUFunction)


def _layer_norm(name, rng, dtype):
    """LayerNormFunction over the last axis (D = 6), gamma and beta (6,); with a residual: LayerNorm(x + R)."""
    shape = {"3-D x (4, 5, 6)": (4, 5, 6), "2-D x (9, 6)": (9, 6), "3-D x and a residual": (4, 5, 6)}[name]
    arrays = [rng.standard_normal(shape) * 3 + 1, rng.standard_normal(6), rng.standard_normal(6)]
    if "residual" in name:
        arrays.append(rng.standard_normal(shape))                              # x, γ, β, R
    return (lambda *t: LayerNormFunction.apply(*t, eps=1e-5)), arrays, None


def _cross_entropy(name, rng, dtype):
    """CrossEntropyFunction: logits (11, 5) (rows cut), integer targets with ignored rows."""
    reduction, ignore_index, smoothing = {
        "mean, ignored rows": ("mean", -100, 0.0),
        "mean, ignored rows, label_smoothing": ("mean", -100, 0.1),
        "sum, ignored rows, label_smoothing": ("sum", -100, 0.2),
        "none, ignore_index=3, label_smoothing": ("none", 3, 0.1),
    }[name]
    target = rng.integers(0, 5, 11)
    target[[2, 7]] = ignore_index
    kw = dict(target=dev(target), ignore_index=ignore_index, label_smoothing=smoothing, reduction=reduction)
    return (lambda z: CrossEntropyFunction.apply(z, **kw)), [rng.standard_normal((11, 5)) * 2], None


def _softmax(name, rng, dtype):
    """SoftmaxFunction over the last axis, or over an axis that is not the last."""
    if name == "last axis, mask and bias":
        a = rng.standard_normal((4, 5, 6))
        mask = _row_mask(rng, (4, 1, 6))
        mask[2, 0, :] = False                                                  # batch element 2: all masked
        kw = dict(mask=dev(mask), bias=_constant(rng.standard_normal((5, 6)), dtype))
    elif name == "axis -2 (not last), mask":
        a = rng.standard_normal((4, 3, 5, 6))
        mask = rng.random((4, 1, 5, 6)) > 0.4
        mask[:, :, 0, :] = True
        mask[1, 0, :, 2] = False                                               # a column fully masked along axis -2
        kw = dict(mask=dev(mask), axis=-2)
    else:
        raise KeyError(name)
    return (lambda s: SoftmaxFunction.apply(s, **kw)), [a], None


TALKING_HEADS = {                                   # name → (with b_l, b_w; mask; attn_bias; dropout_mask)
    "no biases, no masks": (False, False, False, False),
    "biases, mask with a fully masked row": (True, True, False, False),
    "biases, attn_bias with -inf": (True, False, True, False),
    "no biases, mask, attn_bias, dropout_mask": (False, True, True, True),
    "biases, mask, attn_bias, dropout_mask": (True, True, True, True),
}


def _talking_heads(name, rng, dtype):
    """TalkingHeadsFunction, h_k = 2 ≠ h = 3 ≠ h_v = 4, B = 4, L = 3, S = 5, d = 2: q, k, v, P_l, P_w (, b_l, b_w)."""
    with_biases, with_mask, with_attn_bias, with_dropout = TALKING_HEADS[name]
    b, h_k, h, h_v, length, keys, d = 4, 2, 3, 4, 3, 5, 2
    arrays = [rng.standard_normal((b, h_k, length, d)), rng.standard_normal((b, h_k, keys, d)),
              rng.standard_normal((b, h_v, keys, d)), rng.standard_normal((h, h_k)), rng.standard_normal((h_v, h))]
    if with_biases:
        arrays += [rng.standard_normal(h), rng.standard_normal(h_v)]
    kw = dict(scale=float(1 / np.sqrt(d)))                                     # a Python float: keeps float32
    if with_mask:
        mask = _row_mask(rng, (b, 1, length, keys))
        mask[0, 0, 1, :] = False                                               # a query that sees no key
        kw["mask"] = dev(mask)
    if with_attn_bias:
        bias = rng.standard_normal((length, keys))
        bias[0, 2] = bias[1, 0] = -np.inf
        bias[2, :] = -np.inf                                                   # a query whose every key gets -inf
        kw["attn_bias"] = _constant(bias, dtype)
    if with_dropout:
        kw["dropout_mask"] = _constant((rng.random((b, h_v, length, keys)) > 0.3) / 0.7, dtype)
    return (lambda *t: TalkingHeadsFunction.apply(*t, **kw)), arrays, None


def _additive(name, rng, dtype):
    """AdditiveAttentionFunction: qp (4, L=7, H=5), kp (4, S=6, 5), w_v (5,), v (4, 6, Ev=3) unless said."""
    qp, kp = rng.standard_normal((4, 7, 5)), rng.standard_normal((4, 6, 5))
    w_v, v = rng.standard_normal(5), rng.standard_normal((4, 6, 3))
    kw = {}
    if name == "mask with a fully masked row, dropout_mask, float bias":
        mask = _row_mask(rng, (4, 7, 6))
        mask[2, 3] = False
        kw = dict(mask=dev(mask), dropout_mask=_constant((rng.random((4, 7, 6)) > 0.3) / 0.7, dtype),
                  bias=_constant(rng.standard_normal((7, 6)), dtype))
    elif name == "qp batch 1 (broadcast), mask (4, 1, S)":
        qp = rng.standard_normal((1, 7, 5))
        kw = dict(mask=dev(_row_mask(rng, (4, 1, 6))))
    elif name == "kp, v batch 1 (broadcast)":
        kp, v = rng.standard_normal((1, 6, 5)), rng.standard_normal((1, 6, 3))
    elif name != "no mask":
        raise KeyError(name)
    return (lambda *t: AdditiveAttentionFunction.apply(*t, **kw)), [qp, kp, w_v, v], None


def _flash(name, rng, dtype):
    """FlashAttentionFunction, block_size 3 (tiles that do not divide L = 7, S = 10)."""
    arrays, kw = _qkv(rng, (4, 3)), dict(scale=0.5, block_size=3)
    if name == "causal":
        kw["causal"] = True
    elif name == "bool mask with a fully masked row":
        mask = _row_mask(rng, (4, 1, 7, 10))
        mask[1, 0, 3] = False
        kw["mask"] = dev(mask)
    elif name == "float bias":
        kw["bias"] = _constant(rng.standard_normal((4, 1, 7, 10)), dtype)
    elif name == "causal, mask, k, v batch 1":
        arrays = _qkv(rng, (4, 3), (1, 3))
        kw.update(causal=True, mask=dev(_row_mask(rng, (4, 1, 1, 10), p=0.3)))
    elif name == "batch (1, 5): cut along the heads, block_size 2":
        arrays = _qkv(rng, (1, 5))
        kw["block_size"] = 2
    else:
        raise KeyError(name)
    return (lambda *t: FlashAttentionFunction.apply(*t, **kw)), arrays, None


PACKED = ["no mask", "bool mask with a fully masked row", "batch (1, 5): cut along the heads",
          "causal mask (L, L), float bias (B, 1, L, L), dropout_mask"]


def _packed(name, rng, dtype):
    """PackedSelfAttentionFunction: qkv (4, L=7, 3·h·d) with h = 3, d = 2 (its heads' batch (4, 3) is cut) unless
    said."""
    batch, heads, length, d = (1, 5, 7, 2) if name == "batch (1, 5): cut along the heads" else (4, 3, 7, 2)
    kw = dict(scale=0.5, num_heads=heads)
    if name == "bool mask with a fully masked row":
        mask = _row_mask(rng, (batch, 1, length, length))
        mask[1, 0, 3] = False                                                  # query 3 of sequence 1 sees no key
        kw["mask"] = dev(mask)
    elif name == "causal mask (L, L), float bias (B, 1, L, L), dropout_mask":
        kw["mask"] = dev(np.tril(np.ones((length, length), dtype=bool)))
        kw["bias"] = _constant(rng.standard_normal((batch, 1, length, length)), dtype)
        kw["dropout_mask"] = _constant((rng.random((batch, heads, length, length)) > 0.3) / 0.7, dtype)
    elif name not in PACKED:
        raise KeyError(name)
    qkv = rng.standard_normal((batch, length, 3 * heads * d))
    return (lambda x: PackedSelfAttentionFunction.apply(x, **kw)), [qkv], None


def _embedding(name, rng, dtype):
    """EmbeddingFunction: ids (6, 5) over 4 tokens, repeats certain (its backward's positions are cut; each chunk's
    dW is added up)."""
    ids = dev(rng.integers(0, 4, (6, 5)))
    return (lambda w: EmbeddingFunction.apply(w, ids=ids)), [rng.standard_normal((4, 3))], None


CASES = {
    "embedding": (_embedding, ["ids (6, 5) with repeats"]),
    "sdpa": (_sdpa, ["no mask", "bool mask with a fully masked row", "float bias (L, S)",
                     "float bias (B, 1, L, S) and mask (L, S)", "dropout_mask", "k, v batch 1 (broadcast over B)",
                     "k, v shared by the heads (B, 1, S, E)", "q batch 1, k, v batch 4",
                     "batch (1, 5): cut along the heads", "q without batch axes"]),
    "linear": (_linear, ["3-D x, bias", "3-D x, no bias", "2-D x (9, 6), bias", "x requires no grad"]),
    "linear_relu": (_linear_relu, ["3-D x, bias", "3-D x, no bias", "2-D x (9, 6), bias", "x requires no grad"]),
    "layer_norm": (_layer_norm, ["3-D x (4, 5, 6)", "2-D x (9, 6)", "3-D x and a residual"]),
    "cross_entropy": (_cross_entropy, ["mean, ignored rows", "mean, ignored rows, label_smoothing",
                                       "sum, ignored rows, label_smoothing", "none, ignore_index=3, label_smoothing"]),
    "softmax": (_softmax, ["last axis, mask and bias", "axis -2 (not last), mask"]),
    "talking_heads": (_talking_heads, list(TALKING_HEADS)),
    "additive": (_additive, ["no mask", "mask with a fully masked row, dropout_mask, float bias",
                             "qp batch 1 (broadcast), mask (4, 1, S)", "kp, v batch 1 (broadcast)"]),
    "flash": (_flash, ["causal", "bool mask with a fully masked row", "float bias", "causal, mask, k, v batch 1",
                       "batch (1, 5): cut along the heads, block_size 2"]),
    "packed": (_packed, PACKED),
}
ALL_CASES = [pytest.param(op, name, id=f"{op}: {name}") for op, (_, names) in CASES.items() for name in names]


def _case(op, name, rng, dtype=np.float64):
    builder, _ = CASES[op]
    return builder(name, rng, dtype)


@pytest.mark.parametrize("op, name", ALL_CASES)
def test_fused_function_chunked_equals_unchunked(chunked, rng, op, name):
    """Cut into chunks on 3 threads (every map_batch call, forward and backward), the Function's output and every
    input's gradient equal those of one unchunked call to 1e-12 in float64."""
    _, axes = _assert_chunked_equals_unchunked(chunked, _case(op, name, rng))
    if "cut along the heads" in name:
        assert set(axes) == {1}, axes                      # batch (1, 5): the heads axis was the one cut


@pytest.mark.parametrize("op", list(CASES))
def test_fused_function_keeps_float32_when_chunked(chunked, rng, op):
    """float32 inputs: chunked, the output and every gradient are float32, and agree with the unchunked float32
    call (its most involved case)."""
    name = CASES[op][1][-1] if op not in ("linear", "linear_relu") else "3-D x, bias"
    (out, grads), _ = _assert_chunked_equals_unchunked(chunked, _case(op, name, rng, np.float32), np.float32,
                                                       **FLOAT32)
    assert out.dtype == np.float32
    assert [g.dtype for g in grads if g is not None] == [np.float32] * sum(g is not None for g in grads)
    assert any(g is not None for g in grads)


def _gradcheck_chunked(log, fn, arrays, **kwargs):
    """gradcheck of fn on float64 tensors of ``arrays``, every map_batch call of it cut (checked)."""
    log.clear()
    assert gradcheck(fn, [t64(a) for a in arrays], **kwargs)
    assert log.counts and all(c > 1 for c in log.counts), log.counts


def test_gradcheck_sdpa_chunked(chunk_log, rng):
    q, k, v = rng.standard_normal((3, 2, 3, 2)), rng.standard_normal((1, 2, 4, 2)), rng.standard_normal((3, 2, 4, 3))
    mask = _row_mask(rng, (3, 1, 3, 4), p=0.3)
    dropout_mask = dev((rng.random((3, 2, 3, 4)) > 0.25) / 0.75)
    _gradcheck_chunked(chunk_log, lambda *t: ScaledDotProductAttentionFunction.apply(
        *t, mask=dev(mask), scale=0.7, dropout_mask=dropout_mask), [q, k, v])


def test_gradcheck_linear_chunked(chunk_log, rng):
    arrays = [rng.standard_normal((5, 3, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)]
    _gradcheck_chunked(chunk_log, lambda *t: LinearFunction.apply(*t), arrays)


def test_gradcheck_linear_relu_chunked(chunk_log, rng):
    """x (5, 3, 4) with every pre-activation x Wᵀ + b at least 0.1 from the ReLU's kink (redrawn until so)."""
    arrays = away_from_the_kink(rng, (5, 3, 4))
    _gradcheck_chunked(chunk_log, lambda *t: LinearReLUFunction.apply(*t), arrays)


def test_gradcheck_layer_norm_chunked(chunk_log, rng):
    arrays = [rng.standard_normal((3, 2, 4)), rng.standard_normal(4), rng.standard_normal(4)]
    _gradcheck_chunked(chunk_log, lambda *t: LayerNormFunction.apply(*t), arrays)


def test_gradcheck_talking_heads_chunked(chunk_log, rng):
    arrays = [rng.standard_normal((3, 2, 2, 2)), rng.standard_normal((3, 2, 3, 2)), rng.standard_normal((3, 3, 3, 2)),
              rng.standard_normal((2, 2)), rng.standard_normal((3, 2)), rng.standard_normal(2), rng.standard_normal(3)]
    mask = _row_mask(rng, (3, 1, 2, 3), p=0.3)
    _gradcheck_chunked(chunk_log, lambda *t: TalkingHeadsFunction.apply(*t, mask=dev(mask), scale=0.7), arrays,
                       max_elements=1000)


def test_gradcheck_flash_chunked(chunk_log, rng):
    q, k, v = rng.standard_normal((3, 2, 5, 2)), rng.standard_normal((1, 2, 6, 2)), rng.standard_normal((3, 2, 6, 2))
    mask = _row_mask(rng, (3, 1, 5, 6), p=0.3)
    _gradcheck_chunked(chunk_log, lambda *t: FlashAttentionFunction.apply(
        *t, mask=dev(mask), scale=0.7, causal=True, block_size=2), [q, k, v])


def test_gradcheck_packed_chunked(chunk_log, rng):
    mask = _row_mask(rng, (3, 1, 4, 4), p=0.3)
    dropout_mask = dev((rng.random((3, 2, 4, 4)) > 0.25) / 0.75)
    _gradcheck_chunked(chunk_log, lambda x: PackedSelfAttentionFunction.apply(
        x, mask=dev(mask), scale=0.7, dropout_mask=dropout_mask, num_heads=2), [rng.standard_normal((3, 4, 12))])


def test_row_wise_ops_follow_the_last_matrix_op(monkeypatch, rng):
    """A big row-wise op (Linear) is cut into chunks while the last matrix op (attention) was, and runs whole — its
    products left to the BLAS's threads — after an attention small enough to run whole: mixing BLAS-threaded and
    chunked work is what costs (autograd/parallel.py)."""
    if backend.BACKEND != "numpy":
        pytest.skip(NO_CHUNKS_ON_CUPY)
    monkeypatch.setattr(parallel, "MIN_WORK", 1000)
    parallel.set_num_threads(2)
    calls = []
    monkeypatch.setattr(parallel, "run", lambda task, count: (calls.append(count), [task(i) for i in range(count)]))
    x, w = rng.standard_normal((40, 30)), rng.standard_normal((20, 30))
    linear = lambda: parallel.map_batch(lambda a, weight: a @ weight.T, x, core_ndim=1, weight=w)   # noqa: E731
    small = rng.standard_normal((1, 2, 2))
    try:
        parallel.map_batch(lambda a: a, rng.standard_normal((6, 20, 20)))    # a big matrix op: chunked
        linear()
        assert calls == [2, 2]
        parallel.map_batch(lambda a: a, small)                                  # a small one: whole
        linear()
        assert calls == [2, 2]                                                  # the Linear ran whole too
    finally:
        parallel.set_num_threads(None)
