"""How the bench measures: wall time (median after warm-up), peak memory (tracemalloc; resident-set growth), and
what the machine and the BLAS look like.

Timing. ``time_group`` runs each callable ``warmup`` times untimed (first-call allocations, BLAS thread start-up,
caches), then times single calls with ``time.perf_counter``, the implementations of one workload in alternation
(round-robin), until it has ``max_repeats`` of each, or at least ``min_repeats`` and the time budget is spent; it
reports the median (robust to the odd descheduled repeat on a shared machine) and every time. NumPy and PyTorch
calls are not interleaved call by call but in blocks with pauses between (``time_families`` says why).

Memory, measured on separate calls, never on timed ones (tracing slows allocation):
- ``tracemalloc_peak``: the peak of memory allocated during one call, above what was allocated when it started.
  NumPy reports its array buffers to tracemalloc (NumPy ≥ 1.13), so for minattn this is the peak of the arrays a
  forward + backward holds at once. PyTorch allocates with its own C++ allocator, invisible to tracemalloc.
- ``rss_growth``: the peak resident-set size during one call minus the resident size before it (Linux: write 5 to
  /proc/self/clear_refs to reset VmHWM, read VmHWM after). Works for any library but is coarse: memory the C
  allocator kept from earlier calls is reused without growing the RSS, so it is a lower bound; we call
  ``malloc_trim(0)`` first to hand such memory back. None where /proc or glibc is missing.
"""
import ctypes
import gc
import os
import platform
import statistics
import sys
import time
import tracemalloc

MB = 1024 * 1024


def time_call(fn, warmup=2, min_repeats=5, max_repeats=15, budget_s=3.0):
    """Median seconds of one ``fn()`` call, after ``warmup`` untimed calls. Returns (median, list of times)."""
    result = time_group({"fn": fn}, warmup, min_repeats, max_repeats, budget_s)
    return result["fn"]


def time_group(fns, warmup=2, min_repeats=5, max_repeats=15, budget_s=3.0):
    """Time several callables in alternation: {name: (median seconds, list of times)}.

    Each round times every callable once — in reversed order every other round, so that none always runs right
    after the same neighbour — so all of them see the same machine: when a shared machine gets busier half-way,
    every implementation's median moves alike and their RATIOS stay put, which timing one after the other (minutes
    apart) does not give. Rounds continue until ``max_repeats``, or until at least ``min_repeats`` and
    ``budget_s`` × the number of callables have passed.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    deadline = time.perf_counter() + budget_s * len(names)
    for round_ in range(max_repeats):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
        if round_ + 1 >= min_repeats and time.perf_counter() > deadline:
            break
    return {name: (statistics.median(ts), ts) for name, ts in times.items()}


def time_families(families, warmup=2, min_repeats=5, max_repeats=15, budget_s=3.0, blocks=3, pause_s=0.25):
    """Time the implementations of one workload from several libraries: {name: (median seconds, times)}.

    ``families``: a list of {name: fn}, one per library (minattn's NumPy calls, PyTorch's). Within a family the
    callables alternate call by call (``time_group``); the families take turns in blocks — NumPy's block, a pause,
    PyTorch's block, a pause — repeated ``blocks`` times, so that both sides of a ratio are measured seconds apart.
    Why not alternate NumPy and PyTorch call by call: after each call a library's worker threads keep spinning for a
    while (OpenBLAS ~0.1 s, OpenMP less) waiting for more work; on 2 cores the other library's threads then fight
    them, and a 10 ms call can take a second. The pause lets them go to sleep first.
    """
    families = [f for f in families if f]
    if len(families) <= 1:
        return time_group(families[0] if families else {}, warmup, min_repeats, max_repeats, budget_s)
    per_block = dict(min_repeats=max(1, -(-min_repeats // blocks)), max_repeats=max(1, -(-max_repeats // blocks)),
                     budget_s=budget_s / blocks)
    times = {}
    for block in range(blocks):
        for family in (families if block % 2 == 0 else families[::-1]):
            for name, (_, ts) in time_group(family, warmup if block == 0 else 0, **per_block).items():
                times.setdefault(name, []).extend(ts)
            time.sleep(pause_s)
    return {name: (statistics.median(ts), ts) for name, ts in times.items()}


def iqr_percent(times):
    """Interquartile range of ``times`` as a percentage of their median (None for fewer than 2 times)."""
    if len(times) < 2:
        return None
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return 100 * (q3 - q1) / statistics.median(times)


def tracemalloc_peak(fn):
    """Bytes: peak of the memory traced during one ``fn()`` call, above the traced memory at its start."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - base


def _proc_status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _malloc_trim():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_growth(fn):
    """Bytes: peak resident-set size during one ``fn()`` call minus the resident size before it; None if the
    platform cannot say (no /proc/self/clear_refs)."""
    gc.collect()
    _malloc_trim()
    try:
        base = _proc_status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                        # reset the high-water mark VmHWM to the current RSS
    except OSError:
        return None
    fn()
    return max(0, _proc_status_kb("VmHWM") - base) * 1024


def blas_threads():
    """(threads, how we know) for NumPy's BLAS: threadpoolctl when installed, else the environment variables the
    BLAS reads, else os.cpu_count() (what OpenBLAS and MKL use by default)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        for info in threadpool_info():
            if info.get("user_api") == "blas":
                return info["num_threads"], (f"threadpoolctl: {info.get('internal_api')} {info.get('version')}, "
                                             f"{os.path.basename(info.get('filepath', ''))}")
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value), f"${var} (threadpoolctl not installed)"
    return os.cpu_count() or 1, "os.cpu_count() (threadpoolctl not installed; the BLAS default)"


def load_average():
    """The 1-minute load average (runnable processes, machine-wide), or None where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def machine_info():
    """A dict describing the machine and the software, for the header and results.json."""
    import numpy
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": model, "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
            "numpy": numpy.__version__}
