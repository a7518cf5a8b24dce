"""autograd/parallel.py: a batch cut into parts, one Python thread per part, and the fused Functions that use it.

  (a) the pieces: ``batch_parts`` cuts along the right axis into nearly equal parts covering the batch once;
      ``Part.take`` / ``Part.index`` give a view of a part's share, or the whole array when it broadcasts along the
      cut axis; ``join`` places per-part gradients side by side, or sums them for a broadcast input;
  (b) ``run``: results in part order, the parts really at once, an exception re-raised only after every part ran,
      a nested run serial and right;
  (c) ``set_num_threads``: bad values refused; NumPy's BLAS held to one thread while minattn splits the work, and
      given its own thread count back by ``set_num_threads(1)``;
  (d) the fused Functions (dense attention, Linear, flash attention): cut into 3 parts (uneven on purpose), they give
      the forward values and gradients of one serial call to 1e-12 in float64, pass gradcheck, and keep float32.

Parallelism is forced on any machine, a 1-core CI included: MIN_WORK = 0 and 3 threads (the ``forced`` fixture).
"""
import functools
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from autograd import Tensor, backend, gradcheck, parallel
from minattn import functional as F
from minattn.fused.attention import ScaledDotProductAttentionFunction
from minattn.fused.flash_attention import FlashAttentionFunction
from minattn.fused.linear import LinearFunction
from tests.conftest import host, t64

TIGHT = dict(rtol=1e-12, atol=1e-12)
THREADS = 3                     # 3, so that the cuts are uneven: 4 → 1, 1, 2; 5 → 1, 2, 2; 8 → 2, 3, 3

numpy_only = pytest.mark.skipif(backend.BACKEND != "numpy", reason="CuPy: always one part (the GPU is parallel)")


def dev(a):
    """A NumPy array moved to the backend, or None."""
    return None if a is None else backend.asarray(a)


@pytest.fixture
def no_min_work(monkeypatch):
    """Every computation is worth cutting, however small."""
    monkeypatch.setattr(parallel, "MIN_WORK", 0)


@pytest.fixture
def forced(no_min_work):
    """Parallelism forced on any machine: MIN_WORK = 0 and THREADS threads; the default given back afterwards."""
    if backend.BACKEND != "numpy":
        pytest.skip("CuPy: always one part (the GPU is parallel)")
    parallel.set_num_threads(THREADS)
    try:
        yield
    finally:
        parallel.set_num_threads(None)


@pytest.fixture
def part_counts(forced, monkeypatch):
    """Forced parallelism, and the number of parts of every ``parallel.run`` call, recorded in the list yielded — so
    that a test can tell that its computation was really cut (and that its serial twin really was not)."""
    counts = []
    original = parallel.run

    def counting_run(work, parts):
        counts.append(len(parts))
        return original(work, parts)

    monkeypatch.setattr(parallel, "run", counting_run)
    yield counts


# ---------------------------------------------------------------------------------------------------------------------
# (a) batch_parts, Part, join
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch, axis, sizes", [
    ((8, 4), 0, [2, 3, 3]),          # the first axis at least as long as the thread count
    ((1, 8), 1, [2, 3, 3]),          # B = 1: cut the heads
    ((2, 5), 1, [1, 2, 2]),          # B = 2 < 3 threads: the heads (5) are long enough
    ((2, 2), 0, [1, 1]),             # no axis long enough: the longest (the first of equals), at most its size parts
    ((3, 1, 7), 0, [1, 1, 1]),
])
def test_batch_parts_cuts_one_axis_into_nearly_equal_parts_covering_it_once(no_min_work, batch, axis, sizes):
    parts = parallel.batch_parts(batch, madds=1, num_threads=THREADS)
    assert [p.axis for p in parts] == [axis] * len(sizes)
    assert [p.span.stop - p.span.start for p in parts] == sizes
    covered = np.concatenate([np.arange(batch[axis])[p.span] for p in parts])
    np.testing.assert_array_equal(covered, np.arange(batch[axis]))       # every index once, in order


@pytest.mark.parametrize("batch, work, threads", [
    ((8, 4), 99, THREADS),           # less work than MIN_WORK (= 100 here)
    ((8, 4), 10**9, 1),              # one thread
    ((), 10**9, THREADS),            # no batch axis: nothing to cut
    ((1, 1), 10**9, THREADS),        # every batch axis of size 1: nothing to cut
])
def test_batch_parts_gives_one_part_taking_everything(monkeypatch, batch, work, threads):
    monkeypatch.setattr(parallel, "MIN_WORK", 100)
    parts = parallel.batch_parts(batch, madds=work, num_threads=threads)
    assert len(parts) == 1
    x = np.zeros(batch + (3, 2))
    assert parts[0].take(x) is x and parts[0].index(x) is None
    assert parts[0].take(None) is None


def test_batch_parts_cuts_at_min_work_and_follows_get_num_threads(monkeypatch):
    """MIN_WORK is the first amount worth cutting; without num_threads the parts follow get_num_threads()."""
    monkeypatch.setattr(parallel, "MIN_WORK", 100)
    assert len(parallel.batch_parts((8, 4), madds=100, num_threads=THREADS)) == THREADS
    monkeypatch.setattr(parallel, "get_num_threads", lambda: 2)
    assert len(parallel.batch_parts((8, 4), madds=100)) == 2


def test_take_gives_a_view_of_the_part_or_the_whole_array_when_it_broadcasts(no_min_work):
    """Batch (4, 3) cut along B into 1, 1, 2: a full array is sliced (a view); an array of size 1 along B, one
    without the B axis, and None are taken whole."""
    parts = parallel.batch_parts((4, 3), madds=1, num_threads=THREADS)
    full = np.arange(4 * 3 * 5 * 6.0).reshape(4, 3, 5, 6)
    no_b = np.zeros((3, 5, 6))
    for part in parts:
        share = part.take(full)
        assert np.shares_memory(share, full)
        np.testing.assert_array_equal(share, full[part.span])
        assert part.index(full) == (part.span,)
        for whole in (np.zeros((1, 3, 5, 6)), no_b, np.zeros((5, 6)), np.zeros((6,))):
            assert part.take(whole) is whole and part.index(whole) is None
        assert part.take(None) is None
    assert parts[2].take(full).shape == (2, 3, 5, 6)


def test_take_along_the_heads_axis(no_min_work):
    """Batch (1, 5) is cut along the heads: an array (..., 5, L, S) is sliced along its own heads axis, wherever
    that axis is; an array with 1 head is taken whole."""
    parts = parallel.batch_parts((1, 5), madds=1, num_threads=THREADS)
    four_d = np.arange(5 * 2 * 3.0).reshape(1, 5, 2, 3)
    three_d = np.arange(5 * 2 * 3.0).reshape(5, 2, 3)                   # lacks the leading B axis
    one_head = np.zeros((1, 1, 2, 3))
    for part in parts:
        assert part.axis == 1
        assert part.index(four_d) == (slice(None), part.span) and part.index(three_d) == (part.span,)
        np.testing.assert_array_equal(part.take(four_d), four_d[:, part.span])
        np.testing.assert_array_equal(part.take(three_d), three_d[part.span])
        assert np.shares_memory(part.take(four_d), four_d) and np.shares_memory(part.take(three_d), three_d)
        assert part.take(one_head) is one_head


def test_take_with_core_ndim_1(no_min_work):
    """Rows of a matrix (core_ndim = 1, as LinearFunction cuts them): the rows are the batch axis."""
    parts = parallel.batch_parts((7,), madds=1, core_ndim=1, num_threads=THREADS)
    x = np.arange(7 * 4.0).reshape(7, 4)
    np.testing.assert_array_equal(np.concatenate([p.take(x) for p in parts]), x)
    bias = np.ones(4)
    assert all(p.take(bias) is bias for p in parts)


@pytest.mark.parametrize("batch, shape, axis", [((4, 3), (4, 3, 2, 2), 0), ((1, 5), (1, 5, 2, 2), 1),
                                                ((1, 5), (5, 2, 2), 0)])
def test_join_places_the_pieces_side_by_side(no_min_work, rng, batch, shape, axis):
    parts = parallel.batch_parts(batch, madds=1, num_threads=THREADS)
    x = dev(np.zeros(shape))
    pieces = [rng.standard_normal(part.take(x).shape) for part in parts]
    joined = parallel.join([dev(p) for p in pieces], x, parts)
    assert joined.shape == shape
    np.testing.assert_array_equal(host(joined), np.concatenate(pieces, axis=axis))


@pytest.mark.parametrize("shape", [(1, 3, 2, 2), (3, 2, 2), (2, 2)])
def test_join_sums_the_pieces_of_an_input_broadcast_along_the_cut(no_min_work, rng, shape):
    """Every part used all of x, so x's gradient is the sum of the parts' (as sum_to would give); pieces[0], which
    may be a part's own array, is left alone."""
    parts = parallel.batch_parts((4, 3), madds=1, num_threads=THREADS)
    x = dev(np.zeros(shape))
    pieces = [rng.standard_normal(shape) for _ in parts]
    first = pieces[0].copy()
    joined = parallel.join([dev(p) for p in pieces], x, parts)
    np.testing.assert_allclose(host(joined), pieces[0] + pieces[1] + pieces[2], **TIGHT)
    np.testing.assert_array_equal(pieces[0], first)


def test_join_of_one_part_is_its_piece(no_min_work):
    parts = parallel.batch_parts((4, 3), madds=1, num_threads=1)
    piece = dev(np.ones((4, 3, 2, 2)))
    assert parallel.join([piece], piece, parts) is piece


# ---------------------------------------------------------------------------------------------------------------------
# (b) run
# ---------------------------------------------------------------------------------------------------------------------
def test_run_returns_results_in_part_order_and_runs_the_parts_at_once(forced):
    """The parts wait for each other at a barrier: it is passed only if all three run at the same time. Part 0
    runs on the calling thread, the others on workers; part 0 finishes last, yet its result comes first."""
    parts = parallel.batch_parts((6,), madds=1, core_ndim=1)
    barrier = threading.Barrier(len(parts), timeout=10)

    def work(part):
        barrier.wait()                                        # BrokenBarrierError unless every part runs at once
        if part.span.start == 0:
            time.sleep(0.05)
        return part.span, threading.current_thread()

    results = parallel.run(work, parts)
    assert [span for span, _ in results] == [p.span for p in parts]
    threads = [thread for _, thread in results]
    assert threads[0] is threading.current_thread()
    assert len(set(threads)) == len(parts)


@pytest.mark.parametrize("failing", [0, 1, 2])
def test_run_reraises_an_exception_after_every_part_finished(forced, failing):
    parts = parallel.batch_parts((6,), madds=1, core_ndim=1)
    finished = []

    def work(part):
        n = part.span.start // 2
        if n == failing:
            raise KeyError(f"part {n}")
        time.sleep(0.05 * (n + 1))                            # the others finish after the failure, one by one
        finished.append(n)
        return n

    with pytest.raises(KeyError, match=f"part {failing}"):
        parallel.run(work, parts)
    assert sorted(finished) == [n for n in range(3) if n != failing]
    # the next run is parallel again (the run's lock was released): its parts meet at a barrier
    barrier = threading.Barrier(len(parts), timeout=10)
    assert parallel.run(lambda part: barrier.wait() is not None, parts) == [True] * len(parts)


def test_a_run_nested_in_a_run_goes_serial_and_is_right(forced):
    """Each outer part runs an inner run over 6 rows: every inner part on the outer part's own thread."""
    outer = parallel.batch_parts((3,), madds=1, core_ndim=1)
    inner = parallel.batch_parts((6,), madds=1, core_ndim=1)
    x = np.arange(6.0)[:, None]                               # 6 rows of 1

    def outer_work(part):
        here = threading.current_thread()
        sums = parallel.run(lambda p: (float(p.take(x).sum()) * (part.span.start + 1), threading.current_thread()),
                            inner)
        assert all(thread is here for _, thread in sums)
        return sum(s for s, _ in sums)

    results = []                         # run on a daemon thread: a nested run that waited for the pool would hang
    runner = threading.Thread(target=lambda: results.append(parallel.run(outer_work, outer)), daemon=True)
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive(), "the nested run deadlocked"
    assert results == [[15.0, 30.0, 45.0]]


def test_fused_attention_inside_a_run_is_right(forced, rng):
    """A fused attention (itself cut into parts) called from each part of an outer run: the parts' outputs and
    gradients put together equal one call on the whole batch."""
    q, k, v = rng.standard_normal((4, 3, 7, 4)), rng.standard_normal((4, 3, 10, 4)), rng.standard_normal((4, 3, 10, 3))
    w = rng.standard_normal((4, 3, 7, 3))
    outer = parallel.batch_parts((4,), madds=1, core_ndim=3)

    def attend(arrays, cotangent):
        tensors = [t64(a) for a in arrays]
        out = ScaledDotProductAttentionFunction.apply(*tensors, scale=0.5)
        out.backward(dev(cotangent))
        return [host(out)] + [host(t.grad) for t in tensors]

    pieces = parallel.run(lambda part: attend([part.take(a) for a in (q, k, v)], part.take(w)), outer)
    whole = attend([q, k, v], w)
    for n in range(4):
        np.testing.assert_allclose(np.concatenate([p[n] for p in pieces]), whole[n], **TIGHT)


def test_concurrent_fused_calls_from_two_threads_are_right(part_counts, rng):
    """Two threads each run attention forward and backward at once (one of the two runs goes serial while the other
    holds the pool): both get the result of a lone call."""
    arrays = [rng.standard_normal((4, 3, 7, 4)), rng.standard_normal((4, 3, 10, 4)), rng.standard_normal((4, 3, 10, 3))]
    fn = lambda q, k, v: ScaledDotProductAttentionFunction.apply(q, k, v, scale=0.5)   # noqa: E731
    expected = _forward_backward(fn, arrays)
    results, errors = [None] * 2, []

    def worker(i):
        try:
            for _ in range(5):
                results[i] = _forward_backward(fn, arrays)
        except BaseException as err:  # noqa: B902 — reported below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for out, grads in results:
        _assert_close((out, grads), expected)


# ---------------------------------------------------------------------------------------------------------------------
# (c) set_num_threads and the BLAS
# ---------------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _original_blas_threads():
    """The BLAS's own thread count, read by threadpoolctl in a fresh interpreter that never imported minattn (so
    nothing has limited it); None when threadpoolctl finds no BLAS."""
    code = ("import json, numpy, threadpoolctl; "
            "print(json.dumps([i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas']))")
    counts = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
    return max(counts) if counts else None


def _blas_threads_now():
    import threadpoolctl
    return max(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")


@pytest.mark.parametrize("bad", [0, -1, True, False, 2.5, "2", 2.0])
def test_set_num_threads_refuses_anything_but_a_positive_int_or_none(bad):
    before = parallel.get_num_threads()
    with pytest.raises(ValueError, match="positive int"):
        parallel.set_num_threads(bad)
    assert parallel.get_num_threads() == before                        # nothing changed


@numpy_only
def test_set_num_threads_holds_the_blas_to_one_thread_and_gives_it_back():
    original = _original_blas_threads()
    if original is None:
        pytest.skip("threadpoolctl finds no BLAS")
    try:
        parallel.set_num_threads(2)
        assert parallel.get_num_threads() == 2 and _blas_threads_now() == 1
        parallel.set_num_threads(1)
        assert parallel.get_num_threads() == 1 and _blas_threads_now() == original
        parallel.set_num_threads(5)
        assert parallel.get_num_threads() == 5 and _blas_threads_now() == 1
        parallel.set_num_threads(None)                                 # the default: the BLAS's own count
        assert parallel.get_num_threads() == original
        assert _blas_threads_now() == (1 if original > 1 else original)
    finally:
        parallel.set_num_threads(None)


def _threadpoolctl_has_a_controlling_thread():
    """threadpoolctl versions where, for OpenBLAS on its own pthreads pool, only the first thread to set a limit
    (the "controlling thread") can change it; others are ignored silently."""
    import threadpoolctl
    openblas = [i for i in threadpoolctl.threadpool_info() if i.get("internal_api") == "openblas"]
    return (hasattr(threadpoolctl.OpenBLASController, "clear_controlling_thread") and bool(openblas)
            and all(i.get("threading_layer") != "openmp" for i in openblas))


@numpy_only
def test_set_num_threads_from_another_thread_limits_the_blas():
    """minattn's thread count is process-wide, so set_num_threads must act on the BLAS from any thread: a training
    loop on a worker thread that asks for 3 threads must get its BLAS held to one (else 3 parts × all-core BLAS
    fight over the cores, what set_num_threads is there to prevent)."""
    original = _original_blas_threads()
    if original is None or original == 1 or not _threadpoolctl_has_a_controlling_thread():
        pytest.skip("needs OpenBLAS (pthreads) with > 1 thread and threadpoolctl's controlling-thread rule")
    try:
        parallel.set_num_threads(1)                                    # here: the BLAS gets its `original` back
        assert _blas_threads_now() == original
        seen = []

        def elsewhere():
            parallel.set_num_threads(THREADS)
            seen.append((parallel.get_num_threads(), _blas_threads_now()))

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        assert seen == [(THREADS, 1)]
    finally:
        parallel.set_num_threads(None)


# ---------------------------------------------------------------------------------------------------------------------
# (d) the fused Functions: parallel = serial, gradcheck, float32
# ---------------------------------------------------------------------------------------------------------------------
def _forward_backward(fn, arrays, dtype=np.float64):
    """fn on fresh tensors of ``arrays`` (as ``dtype``), backward with a fixed random cotangent.
    Returns (output, [grad of each input]) on the host."""
    tensors = [Tensor(backend.asarray(np.asarray(a, dtype=dtype)), requires_grad=True) for a in arrays]
    out = fn(*tensors)
    out.backward(dev(np.random.default_rng(7).standard_normal(out.shape).astype(dtype)))
    return host(out), [host(t.grad) for t in tensors]


def _assert_close(got, expected, **tolerance):
    (out, grads), (out_e, grads_e) = got, expected
    np.testing.assert_allclose(out, out_e, **(tolerance or TIGHT))
    for n, (g, ge) in enumerate(zip(grads, grads_e)):
        assert g.shape == ge.shape and g.dtype == ge.dtype
        np.testing.assert_allclose(g, ge, **(tolerance or TIGHT), err_msg=f"gradient of input {n}")


def _assert_parallel_equals_serial(fn, arrays, counts, dtype=np.float64, **tolerance):
    """fn's output and gradients, cut into THREADS parts (checked: every parallel.run got THREADS parts), equal
    those of one serial call (checked: one part each)."""
    counts.clear()
    cut = _forward_backward(fn, arrays, dtype)
    assert counts and set(counts) == {THREADS}, counts
    parallel.set_num_threads(1)
    try:
        counts.clear()
        whole = _forward_backward(fn, arrays, dtype)
        assert counts and set(counts) == {1}, counts
    finally:
        parallel.set_num_threads(THREADS)
    _assert_close(cut, whole, **tolerance)
    assert all(np.isfinite(a).all() for a in [cut[0]] + cut[1])
    return cut


def _qkv(rng, batch, kv_batch=None):
    """Random q (batch, L=7, E=4), k (kv_batch, S=10, E) and v (kv_batch, S, Ev=3); kv_batch defaults to batch."""
    kv_batch = batch if kv_batch is None else kv_batch
    return (rng.standard_normal(batch + (7, 4)), rng.standard_normal(kv_batch + (10, 4)),
            rng.standard_normal(kv_batch + (10, 3)))


def _attention_case(name, rng):
    """(q, k, v, keyword arguments of ScaledDotProductAttentionFunction) for a named case; L = 7, S = 10."""
    q, k, v = _qkv(rng, (4, 3))
    kw = dict(scale=0.5)
    if name == "k, v broadcast along B":
        k, v = k[:1], v[:1]                                                   # (1, 3, S, ·) against q's (4, 3, ...)
    elif name == "bool mask with fully masked rows, float bias":
        mask = rng.random((4, 1, 1, 10)) > 0.4
        mask[..., 0] = True
        mask[2] = False                                                       # sequence 2: every row fully masked
        kw.update(mask=dev(mask), bias=dev(rng.standard_normal((7, 10))))
    elif name == "dropout keep multiplier":
        p = 0.3
        kw.update(keep=dev((rng.random((4, 3, 7, 10)) > p) / (1 - p)))
    elif name == "B = 1: cut along the heads":
        q, k, v = _qkv(rng, (1, 5))
    elif name == "heads cut, k, v broadcast along the heads":
        q, k, v = _qkv(rng, (2, 5), kv_batch=(2, 1))
    elif name == "q without batch axes":
        q = rng.standard_normal((7, 4))
    elif name != "plain":
        raise KeyError(name)
    return q, k, v, kw


ATTENTION_CASES = ["plain", "k, v broadcast along B", "bool mask with fully masked rows, float bias",
                   "dropout keep multiplier", "B = 1: cut along the heads", "heads cut, k, v broadcast along the heads",
                   "q without batch axes"]


@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_fused_attention_parallel_equals_serial(part_counts, rng, case):
    q, k, v, kw = _attention_case(case, rng)
    _assert_parallel_equals_serial(lambda *t: ScaledDotProductAttentionFunction.apply(*t, **kw), [q, k, v],
                                   part_counts)


@pytest.mark.parametrize("is_causal", [False, True])
def test_functional_sdpa_parallel_equals_serial(part_counts, rng, is_causal):
    q, k, v, _ = _attention_case("k, v broadcast along B", rng)
    _assert_parallel_equals_serial(lambda *t: F.scaled_dot_product_attention(*t, is_causal=is_causal), [q, k, v],
                                   part_counts)


def test_fused_attention_backward_uses_the_forward_parts_when_the_thread_count_changes(part_counts, rng):
    """Forward cut into 3 parts, backward after set_num_threads(1): the gradients are still those of a serial call."""
    q, k, v, kw = _attention_case("k, v broadcast along B", rng)
    fn = lambda *t: ScaledDotProductAttentionFunction.apply(*t, **kw)   # noqa: E731
    tensors = [t64(a) for a in (q, k, v)]
    out = fn(*tensors)
    w = rng.standard_normal(out.shape)
    parallel.set_num_threads(1)
    try:
        out.backward(dev(w))
        expected = [t64(a) for a in (q, k, v)]
        fn(*expected).backward(dev(w))
    finally:
        parallel.set_num_threads(THREADS)
    for t, e in zip(tensors, expected):
        np.testing.assert_allclose(host(t.grad), host(e.grad), **TIGHT)


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_parallel_equals_serial(part_counts, rng, with_bias):
    """x (5, 7, 6): 35 rows cut 11, 12, 12 for y and dx; W (4, 6): rows cut 1, 1, 2 for dW."""
    arrays = [rng.standard_normal((5, 7, 6)), rng.standard_normal((4, 6))] + ([rng.standard_normal(4)] if with_bias
                                                                              else [])
    _assert_parallel_equals_serial(lambda *t: LinearFunction.apply(*t), arrays, part_counts)


def test_linear_parallel_without_a_gradient_for_x(part_counts, rng):
    """Only W and b need gradients (x is data, as for a first layer): dW and db still right, x gets none."""
    x = rng.standard_normal((5, 7, 6))
    w, b = rng.standard_normal((4, 6)), rng.standard_normal(4)
    grads = []
    for threads in (THREADS, 1):
        parallel.set_num_threads(threads)
        part_counts.clear()
        tensors = [t64(x, requires_grad=False), t64(w), t64(b)]
        LinearFunction.apply(*tensors).backward(dev(np.ones((5, 7, 4))))
        assert set(part_counts) == {threads}
        grads.append([tensors[0].grad] + [host(t.grad) for t in tensors[1:]])
    parallel.set_num_threads(THREADS)
    assert grads[0][0] is None and grads[1][0] is None
    for g, ge in zip(grads[0][1:], grads[1][1:]):
        np.testing.assert_allclose(g, ge, **TIGHT)


def _flash_case(name, rng):
    """(q, k, v, keyword arguments of FlashAttentionFunction) for a named case; L = 7, S = 10, block_size 3."""
    q, k, v = _qkv(rng, (4, 3))
    kw = dict(scale=0.5, block_size=3)
    if name == "causal":
        kw.update(causal=True)
    elif name == "bool mask with a fully masked row, float bias":
        mask = rng.random((4, 1, 7, 10)) > 0.4
        mask[..., 0] = True
        mask[1, 0, 3] = False                                                 # query 3 of sequence 1 sees no key
        kw.update(mask=dev(mask), bias=dev(rng.standard_normal((7, 10))))
    elif name == "causal and mask, k, v broadcast along B":
        k, v = k[:1], v[:1]
        mask = rng.random((4, 1, 1, 10)) > 0.3
        mask[..., 0] = True
        kw.update(causal=True, mask=dev(mask))
    elif name == "B = 1: cut along the heads":
        q, k, v = _qkv(rng, (1, 5))
    elif name != "plain":
        raise KeyError(name)
    return q, k, v, kw


FLASH_CASES = ["plain", "causal", "bool mask with a fully masked row, float bias",
               "causal and mask, k, v broadcast along B", "B = 1: cut along the heads"]


@pytest.mark.parametrize("case", FLASH_CASES)
def test_flash_attention_parallel_equals_serial(part_counts, rng, case):
    q, k, v, kw = _flash_case(case, rng)
    _assert_parallel_equals_serial(lambda *t: FlashAttentionFunction.apply(*t, **kw), [q, k, v], part_counts)


def test_gradcheck_fused_attention_in_parallel(part_counts, rng):
    q, k, v = rng.standard_normal((3, 2, 3, 2)), rng.standard_normal((1, 2, 4, 2)), rng.standard_normal((3, 2, 4, 3))
    mask = rng.random((3, 1, 3, 4)) > 0.3
    mask[..., 0] = True
    keep = (rng.random((3, 2, 3, 4)) > 0.25) / 0.75
    assert gradcheck(lambda *t: ScaledDotProductAttentionFunction.apply(*t, mask=dev(mask), scale=0.7, keep=dev(keep)),
                     [t64(q), t64(k), t64(v)])
    assert part_counts and set(part_counts) == {THREADS}


def test_gradcheck_linear_in_parallel(part_counts, rng):
    x, w, b = rng.standard_normal((5, 3, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    assert gradcheck(lambda *t: LinearFunction.apply(*t), [t64(x), t64(w), t64(b)])
    assert part_counts and set(part_counts) == {THREADS}


def test_gradcheck_flash_attention_in_parallel(part_counts, rng):
    q, k, v = rng.standard_normal((3, 2, 5, 2)), rng.standard_normal((1, 2, 6, 2)), rng.standard_normal((3, 2, 6, 2))
    mask = rng.random((3, 1, 5, 6)) > 0.3
    mask[..., 0] = True
    assert gradcheck(lambda *t: FlashAttentionFunction.apply(*t, mask=dev(mask), scale=0.7, causal=True, block_size=2),
                     [t64(q), t64(k), t64(v)])
    assert part_counts and set(part_counts) == {THREADS}


FLOAT32 = dict(rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["attention", "linear", "flash"])
def test_parallel_keeps_float32(part_counts, rng, name):
    """Output and every gradient stay float32 when cut into parts (and agree with the serial float32 call)."""
    if name == "attention":
        q, k, v, kw = _attention_case("bool mask with fully masked rows, float bias", rng)
        kw["bias"] = kw["bias"].astype(np.float32)
        fn, arrays = lambda *t: ScaledDotProductAttentionFunction.apply(*t, **kw), [q, k, v]
    elif name == "linear":
        fn, arrays = lambda *t: LinearFunction.apply(*t), [rng.standard_normal((5, 7, 6)), rng.standard_normal((4, 6)),
                                                          rng.standard_normal(4)]
    else:
        q, k, v, kw = _flash_case("causal and mask, k, v broadcast along B", rng)
        fn, arrays = lambda *t: FlashAttentionFunction.apply(*t, **kw), [q, k, v]
    out, grads = _assert_parallel_equals_serial(fn, arrays, part_counts, dtype=np.float32, **FLOAT32)
    assert out.dtype == np.float32
    assert [g.dtype for g in grads] == [np.float32] * len(arrays)


# ---------------------------------------------------------------------------------------------------------------------
# (e) the pool's life: set_num_threads while another thread runs; a forked child
# ---------------------------------------------------------------------------------------------------------------------
def test_set_num_threads_while_another_thread_runs(forced):
    """set_num_threads replaces the pool; a run in flight on another thread must neither fail to submit its parts
    ("cannot schedule new futures after shutdown") nor find no pool at all, and its results stay right."""
    stop, errors, wrong = threading.Event(), [], []
    parts = parallel.batch_parts((6,), madds_enough())

    def runner():
        while not stop.is_set():
            try:
                if parallel.run(lambda part: part.span, parts) != [part.span for part in parts]:
                    wrong.append(1)
            except Exception as err:   # noqa: BLE001 — any failure is what this test looks for
                errors.append(repr(err))

    thread = threading.Thread(target=runner)
    thread.start()
    try:
        deadline = time.perf_counter() + 0.5
        while time.perf_counter() < deadline:
            parallel.set_num_threads(2)
            parallel.set_num_threads(THREADS)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and errors == [] and wrong == []


def madds_enough():
    return parallel.MIN_WORK + 1


def _child_computes(queue):
    """In a forked child: one parallel run, its result put on ``queue``."""
    parallel.MIN_WORK = 0
    parts = parallel.batch_parts((6,), 1, num_threads=THREADS)
    queue.put(parallel.run(lambda part: part.span.stop - part.span.start, parts))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork (POSIX)")
def test_a_forked_child_can_still_run_in_parallel(forced):
    """The pool's threads are not copied into a child made by fork (multiprocessing's default on Linux before
    Python 3.14): the child must start a pool of its own instead of queueing work that no thread will ever run."""
    import multiprocessing
    import warnings
    parts = parallel.batch_parts((6,), madds_enough())
    assert len(parallel.run(lambda part: part, parts)) == THREADS        # the parent's pool exists now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    with warnings.catch_warnings():        # Python >= 3.12 warns about forking a process that has threads
        warnings.simplefilter("ignore", DeprecationWarning)
        child = context.Process(target=_child_computes, args=(queue,))
        child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung in parallel.run")
    assert child.exitcode == 0 and queue.get(timeout=5) == [2, 2, 2]
