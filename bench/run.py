"""minattn's benchmark: how far NumPy-from-scratch attention is from the BLAS limit and from PyTorch, in one run.

    python -m bench                     # the full run (a few minutes on 2 cores)
    python bench/run.py --quick         # fewer shapes and repeats (seconds; what the test runs)
    python -m bench --no-torch --out runs/bench

It measures, in one process:
 1. NumPy's float32 matmul GFLOP/s (2048³, median of repeats): the limit, "peak". Measured again at the end: the
    difference says how much the machine's speed drifted during the run.
 2. forward + backward of scaled dot-product attention (q, k, v already split, (B, h, L, E/h)), MultiHeadAttention
    and square TalkingHeadsAttention at (B, L, E, h) = (8,128,256,8), (4,512,256,8), (1,2048,256,8), (32,16,64,4),
    backward from a fixed random cotangent; flash attention rows when minattn has it; one training step of the
    default copy-task model.
 3. with PyTorch importable (and no --no-torch): the same computations in PyTorch CPU eager, with
    torch.set_num_threads = minattn's threads (autograd/parallel.py), timed in alternation with minattn's (blocks of
    NumPy calls and of PyTorch calls, taking turns, seconds apart: bench/measure.py), so both sides of a ratio see
    the same machine.
 4. the character-level GPT of demos.char_lm and the same model in PyTorch, trained side by side on the same
    batches: ms per step and validation loss after the same steps (bench/char_lm.py).
 5. greedy decoding of the copy-task model with and without the key/value cache: ms per token against the length
    (bench/decoding.py).
 6. dense vs flash attention, time and peak memory against L (B=1, h=8, head dim 32): the figure.
Then it prints one table — ms (median), GFLOP/s (matrix products only, formulas in bench/flops.py), fraction of
the peak, minattn ÷ PyTorch ratios, peak memory — and writes results.json, table.txt and the figure to --out.

The ratios are the numbers to read. Absolute times on a shared 2-core machine move by tens of percent from run to
run (more when other work runs); the thread count is printed, and ``--threads N`` sets it (minattn and torch alike).
"""
import argparse
import importlib.util
import json
import os
import sys
import time
import traceback

if __package__ in (None, ""):   # run as a script: python bench/run.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from autograd import backend, parallel  # noqa: E402
from bench import cases_minattn, decoding, figure, flops, measure  # noqa: E402
from bench import char_lm as char_lm_bench  # noqa: E402

SHAPES = ((8, 128, 256, 8), (4, 512, 256, 8), (1, 2048, 256, 8), (32, 16, 64, 4))   # (B, L, E, h)
QUICK_SHAPES = ((32, 16, 64, 4), (8, 128, 256, 8))
FIGURE_LENGTHS = (512, 1024, 2048, 4096, 8192)
QUICK_FIGURE_LENGTHS = (512, 1024)
FULL_TIMING = dict(warmup=1, min_repeats=3, max_repeats=15, budget_s=2.0)   # the builder's check call warms up too
QUICK_TIMING = dict(warmup=0, min_repeats=2, max_repeats=3, budget_s=0.3)
FIGURE_TIMING = dict(warmup=0, min_repeats=1, max_repeats=5, budget_s=3.0)
QUICK_FIGURE_TIMING = dict(warmup=0, min_repeats=1, max_repeats=2, budget_s=0.3)
PEAK_TIMING = dict(warmup=2, min_repeats=5, max_repeats=15, budget_s=2.0)
QUICK_PEAK_TIMING = dict(warmup=1, min_repeats=3, max_repeats=5, budget_s=0.5)

# PyTorch rows are compared with minattn's by role: "explicit" (matmul, softmax, matmul written out, or a module's
# path that does that) and "sdpa" (PyTorch's fused scaled_dot_product_attention kernel).
ROLE_EXPLICIT, ROLE_SDPA = "explicit", "sdpa"


def parse_args(argv=None):
    """The command line (see --help)."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="two shapes, 2-3 repeats, a 1024³ matmul, figure at L=512 and 1024 only (for tests)")
    p.add_argument("--out", default="runs/bench", help="folder for results.json, table.txt and the figure")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows even if torch is importable")
    p.add_argument("--no-figure", action="store_true", help="skip the dense-vs-flash sweep and its figure")
    p.add_argument("--dense-limit-gb", type=float, default=8.0,
                   help="figure: skip dense attention at lengths whose peak memory would exceed this")
    p.add_argument("--threads", type=int, default=None,
                   help="compute on N threads: minattn (autograd.parallel.set_num_threads, this process only) and "
                        "torch alike; default: minattn's default (the BLAS's own thread count, i.e. every core)")
    p.add_argument("--profile", action="store_true",
                   help="also cProfile MultiHeadAttention fwd+bwd at (32,16,64,4) and print the top functions")
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be >= 1")
    if backend.BACKEND != "numpy":
        p.error(f"the bench measures the NumPy CPU backend; unset MINATTN_BACKEND (it is {backend.BACKEND!r})")
    return args


def shape_label(shape):
    """(B, L, E, h) → 'B=8 L=128 E=256 h=8'."""
    return "B={} L={} E={} h={}".format(*shape)


class Bench:
    """Collects rows and notes. ``measure_group`` builds the implementations of one workload, times them in
    alternation (``measure.time_families``), then measures their memory one by one."""

    def __init__(self, timing, log, torch_cases=None):
        self.timing, self.log, self.torch_cases = timing, log, torch_cases
        self.rows, self.notes = [], []

    def _build(self, row, build):
        try:
            return build()
        except cases_minattn.Unavailable as err:
            row["skipped"] = str(err)
            self.notes.append(f"{row['workload']} {row['shape']} {row['impl']}: skipped — {err}")
        except Exception as err:   # a library changing under concurrent work: report it, measure the rest
            row["skipped"] = f"error: {type(err).__name__}: {err}"
            self.notes.append(f"{row['workload']} {row['shape']} {row['impl']}: FAILED — {type(err).__name__}: {err}")
            self.log(traceback.format_exc())
        self.log(f"  {row['workload']:13s} {row['shape']:26s} {row['impl']:44s} skipped: {row['skipped']}")
        return None

    def measure_group(self, workload, shape, flop_count, entries):
        """entries: (lib, impl, role, build) with build() → run. Appends one row per entry; a build that fails or
        is Unavailable becomes a skipped row and a note."""
        rows, runs, families = [], {}, {"minattn": {}, "torch": {}}
        for lib, impl, role, build in entries:
            row = {"workload": workload, "shape": shape, "lib": lib, "impl": impl, "role": role,
                   "gflop": flop_count / 1e9}
            self.rows.append(row)
            run = self._build(row, build)
            if run is not None:
                rows.append(row)
                key = len(runs)
                runs[key] = families[lib][key] = run
        timed = measure.time_families(list(families.values()), **self.timing)
        for key, row in enumerate(rows):
            seconds, times = timed[key]
            row["ms"] = seconds * 1e3
            row["times_ms"] = [round(t * 1e3, 4) for t in times]
            row["iqr_pct"] = measure.iqr_percent(times)
            row["gflops"] = flop_count / seconds / 1e9
            if row["lib"] == "minattn":
                parallel.empty_cache()   # memory counts the arrays a call needs, kept for reuse or not
            rss = measure.rss_growth(runs[key])
            row["rss_mb"] = None if rss is None else rss / measure.MB
            # PyTorch's allocator does not report to tracemalloc: only NumPy rows get that column
            parallel.empty_cache()
            row["tracemalloc_mb"] = measure.tracemalloc_peak(runs[key]) / measure.MB if row["lib"] != "torch" else None
            self.log(f"  {workload:13s} {shape:26s} {row['lib'] + ' ' + row['impl']:52s} {row['ms']:9.2f} ms  "
                     f"({len(times)} repeats)")
        return rows

    def torch_entries(self, *entries):
        """The PyTorch entries, or none when PyTorch is off."""
        return list(entries) if self.torch_cases is not None else []


def measure_peak(size, timing, threads, torch_cases=None):
    """float32 (size × size) @ (size × size), NumPy with its BLAS on ``threads`` threads (as many as minattn computes
    on: autograd/parallel.py) and PyTorch, in alternation: {lib: (ms, GFLOP/s, repeats)}."""
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    families = [{"numpy": lambda: a @ b}, {"torch": torch_cases.matmul_run(size)} if torch_cases else {}]
    count = flops.matmul(size, size, size)
    with threadpool_limits(threads, user_api="blas"):
        result = measure.time_families(families, **timing)
    time.sleep(0.3)   # let the BLAS's idle workers stop spinning (~0.1 s) before minattn's threads need the cores
    return {lib: {"size": size, "ms": sec * 1e3, "gflops": count / sec / 1e9, "repeats": len(times)}
            for lib, (sec, times) in result.items()}


def measure_rows(bench, shapes):
    """Every table row: per workload and shape, minattn's implementations and PyTorch's, timed in alternation."""
    tc, cm = bench.torch_cases, cases_minattn
    for shape in shapes:
        batch, length, embed_dim, heads = shape
        label = shape_label(shape)
        bench.measure_group("sdpa", label, flops.attention_core(batch, length, length, embed_dim), [
            ("minattn", "F.scaled_dot_product_attention (dense)", None, lambda: cm.sdpa(*shape)),
            ("minattn", "F.flash_attention", None, lambda: cm.sdpa(*shape, impl="flash")),
            *bench.torch_entries(
                ("torch", "explicit: softmax(q kᵀ·s) v", ROLE_EXPLICIT, lambda: tc.sdpa(*shape)),
                ("torch", "F.scaled_dot_product_attention", ROLE_SDPA, lambda: tc.sdpa(*shape, impl="sdpa")))])
        bench.measure_group("mha", label, flops.multi_head_attention(batch, length, embed_dim), [
            ("minattn", "MultiHeadAttention", None, lambda: cm.mha(*shape)),
            ("minattn", "MultiHeadAttention(attn_impl='flash')", None, lambda: cm.mha(*shape, impl="flash")),
            *bench.torch_entries(
                ("torch", "nn.MultiheadAttention need_weights=True", ROLE_EXPLICIT,
                 lambda: tc.mha(*shape, need_weights=True)),
                ("torch", "nn.MultiheadAttention need_weights=False", ROLE_SDPA,
                 lambda: tc.mha(*shape, need_weights=False)))])
        bench.measure_group("talking_heads", label, flops.talking_heads(batch, length, embed_dim, heads), [
            ("minattn", "TalkingHeadsAttention(bias=True)", None, lambda: cm.talking_heads(*shape)),
            *bench.torch_entries(
                ("torch", "timm CaiT TalkingHeadAttn", ROLE_EXPLICIT, lambda: tc.talking_heads(*shape)))])
    args = cm.copy_task_config()

    def torch_step():
        from minattn.layers import sinusoidal_positions
        return tc.copy_step(args, cm.copy_batch(args), sinusoidal_positions(args.max_len + 1, args.embed_dim))

    label = (f"B={args.batch_size} S={args.max_len} d={args.embed_dim} h={args.num_heads} "
             f"{args.layers}+{args.layers}L")
    count = flops.transformer_step(args.batch_size, args.max_len, args.max_len + 1, args.embed_dim,
                                   args.ffn_hidden, args.layers, args.layers, args.vocab_size)   # full lengths
    bench.measure_group("copy_step", label, count, [
        ("minattn", "Transformer + Adam step (demos.copy_task)", None, cm.copy_step),
        *bench.torch_entries(("torch", "Transformer{En,De}coderLayer + Adam step", ROLE_SDPA, torch_step))])


def add_ratios(rows, peak_gflops):
    """Fraction of the peak for every row; minattn ms ÷ the PyTorch row of each role in the same workload/shape."""
    reference = {(r["workload"], r["shape"], r["role"]): r["ms"] for r in rows if r["lib"] == "torch" and "ms" in r}
    for r in rows:
        if "ms" not in r:
            continue
        r["frac_peak"] = r["gflops"] / peak_gflops
        if r["lib"] == "minattn":
            for role in (ROLE_EXPLICIT, ROLE_SDPA):
                ref = reference.get((r["workload"], r["shape"], role))
                r[f"ratio_{role}"] = None if ref is None else r["ms"] / ref


WORKLOAD_NAMES = {"sdpa": "SDPA", "mha": "MHA", "talking_heads": "talking heads", "copy_step": "copy-task step"}


def format_table(rows):
    """The table as text: one line per row, grouped by workload and shape, minattn first."""
    columns = (("workload", 14, "<"), ("shape", 26, "<"), ("implementation", 48, "<"), ("ms", 9, ">"), ("IQR%", 5, ">"),
               ("GFLOP/s", 8, ">"), ("%peak", 6, ">"), ("÷torch-expl", 11, ">"), ("÷torch-SDPA", 11, ">"),
               ("tracemalloc MB", 14, ">"), ("RSS+ MB", 8, ">"))
    fmt = lambda cells: "  ".join(f"{c:{a}{w}}" for c, (_, w, a) in zip(cells, columns))   # noqa: E731
    lines = [fmt([c[0] for c in columns]), "-" * (sum(w for _, w, _ in columns) + 2 * (len(columns) - 1))]
    num = lambda v, spec: "" if v is None else format(v, spec)                              # noqa: E731
    iqr = lambda v: "" if v is None else ">999" if v > 999 else f"{v:.0f}"                  # noqa: E731
    order = {w: i for i, w in enumerate(WORKLOAD_NAMES)}
    groups = []
    for r in rows:
        key = (order.get(r["workload"], 99), r["workload"], r["shape"])
        if key not in groups:
            groups.append(key)
    previous_workload = None
    for key in sorted(groups, key=lambda k: k[0]):
        _, workload, shape = key
        group = [r for r in rows if (r["workload"], r["shape"]) == (workload, shape)]
        group.sort(key=lambda r: r["lib"] != "minattn")
        if previous_workload is not None:
            lines.append("")
        previous_workload = workload
        for r in group:
            impl = ("" if r["lib"] == "minattn" else "torch ") + r["impl"]
            if "ms" not in r:
                lines.append(fmt([WORKLOAD_NAMES.get(workload, workload), shape, impl, "skipped"] + [""] * 7))
                continue
            lines.append(fmt([WORKLOAD_NAMES.get(workload, workload), shape, impl, num(r["ms"], ".2f"),
                              iqr(r.get("iqr_pct")), num(r["gflops"], ".1f"), num(100 * r["frac_peak"], ".1f"),
                              num(r.get("ratio_explicit"), ".2f"), num(r.get("ratio_sdpa"), ".2f"),
                              num(r.get("tracemalloc_mb"), ".1f"), num(r.get("rss_mb"), ".1f")]))
    return "\n".join(lines)


def profile_mha(shape=(32, 16, 64, 4), calls=200, top=15):
    """cProfile ``calls`` MultiHeadAttention fwd+bwd at ``shape``; the top functions by own time, as text."""
    import cProfile
    import io
    import pstats

    run = cases_minattn.mha(*shape)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        run()
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(top)
    return f"cProfile: {calls} × MultiHeadAttention fwd+bwd at {shape_label(shape)}, top {top} by tottime\n" + \
        stream.getvalue()


def load_torch(args, threads, notes, log):
    """bench.cases_torch with torch's threads set to ``threads``, or None (with a note saying why)."""
    if args.no_torch:
        notes.append("PyTorch rows skipped (--no-torch)")
        return None
    if importlib.util.find_spec("torch") is None:
        notes.append("PyTorch rows skipped: torch is not importable (pip install -r requirements-bench.txt)")
        return None
    try:
        import torch

        from bench import cases_torch
    except ImportError as err:
        notes.append(f"PyTorch rows skipped: importing it failed ({err})")
        return None
    torch.set_num_threads(threads)
    log(f"  torch {torch.__version__}: {torch.get_num_threads()} threads")
    return cases_torch


def main(argv=None):
    """Run everything, print the report, write results.json, table.txt and the figure; return the results dict."""
    args = parse_args(argv)
    started = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)   # noqa: E731  progress; the report goes to stdout
    before = parallel.get_num_threads()
    if args.threads:   # this process only, never the environment
        parallel.set_num_threads(args.threads)
    try:
        return _run(args, argv, started, log)
    finally:
        parallel.set_num_threads(before)


def _run(args, argv, started, log):
    shapes = QUICK_SHAPES if args.quick else SHAPES
    timing = QUICK_TIMING if args.quick else FULL_TIMING
    matmul_size = 1024 if args.quick else 2048
    peak_timing = QUICK_PEAK_TIMING if args.quick else PEAK_TIMING

    machine = measure.machine_info()
    threads = parallel.get_num_threads()
    blas, blas_source = measure.blas_threads()
    header = [f"minattn bench{' (--quick)' if args.quick else ''}: float32, NumPy backend",
              f"machine: {machine['processor']} ({machine['cpu_model']}), os.cpu_count() = {machine['cpu_count']}, "
              f"{machine['platform']}; Python {machine['python']}, NumPy {machine['numpy']}",
              f"threads: {threads} (autograd.parallel.get_num_threads(); "
              + (f"set with --threads {args.threads}" if args.threads else "the default: the BLAS's own count")
              + f"); NumPy's BLAS now runs {blas} thread(s) [{blas_source}]"]
    if (machine["cpu_count"] or 1) <= 2:
        header.append(f"WARNING: {machine['cpu_count']} cores, likely shared with other work: absolute times are "
                      "noisy (tens of percent, more under load); read the ratios — the implementations of one workload "
                      "are timed in alternation, so they share the machine's state. On a busy machine, compare with "
                      "--threads 1 (one thread each: no thread waits for another).")
    load_start = measure.load_average()
    if load_start is not None and load_start > 0.5 * (machine["cpu_count"] or 1):
        header.append(f"WARNING: the machine is busy before we start (1-min load average {load_start} on "
                      f"{machine['cpu_count']} cores): multi-threaded calls may stall for milliseconds each; "
                      "compare with --threads 1.")
    print("\n".join(header), flush=True)

    notes = []
    torch_cases = load_torch(args, threads, notes, log)
    torch_info = None
    if torch_cases is not None:
        import torch
        torch_info = {"version": torch.__version__, "threads": torch.get_num_threads(),
                      "mkl": bool(torch.backends.mkl.is_available())}
    bench = Bench(timing, log, torch_cases)
    bench.notes = notes

    log("matmul peak (start)")
    peak_start = measure_peak(matmul_size, peak_timing, threads, torch_cases)
    log("rows")
    measure_rows(bench, shapes)

    log("character-level GPT, side by side")
    char_lm_steps = char_lm_bench.QUICK_STEPS if args.quick else char_lm_bench.STEPS
    char_lm_result = char_lm_bench.measure(torch_cases, char_lm_steps)
    log("greedy decoding with and without the KV cache")
    decoding_rows = decoding.measure(decoding.QUICK_LENGTHS if args.quick else decoding.LENGTHS)

    fig_result, fig_path = None, None
    if not args.no_figure:
        log("dense vs flash attention against L")
        lengths = QUICK_FIGURE_LENGTHS if args.quick else FIGURE_LENGTHS
        fig_result, fig_notes = figure.sweep(lengths, QUICK_FIGURE_TIMING if args.quick else FIGURE_TIMING,
                                             args.dense_limit_gb * 2**30, log=log)
        bench.notes.extend(fig_notes)
        fig_path = os.path.join(args.out, "dense_vs_flash.png")
        figure.plot(fig_result, fig_path, threads)

    log("matmul peak (end)")
    peak_end = measure_peak(matmul_size, peak_timing, threads, torch_cases)
    peak = max(peak_start["numpy"]["gflops"], peak_end["numpy"]["gflops"])
    add_ratios(bench.rows, peak)
    notes = bench.notes + [
        "copy-task step: a fixed batch (drawn outside the timing), fixed lr; PyTorch's layers call "
        "nn.MultiheadAttention with need_weights=False, i.e. its SDPA kernel (hence the ÷torch-SDPA column)",
        "talking heads: square, 8 heads (4 at E=64), biases on P_l and P_w as timm's CaiT",
        "flash rows are credited with the dense algorithm's FLOPs (flash also recomputes Q Kᵀ in its backward)"]
    start_gf, end_gf = peak_start["numpy"]["gflops"], peak_end["numpy"]["gflops"]
    load_end = measure.load_average()
    report = [
        "",
        f"1-min load average: {load_start} at the start, {load_end} at the end ({machine['cpu_count']} cores)",
        f"NumPy matmul {matmul_size}³ float32: {start_gf:.1f} GFLOP/s at the start, {end_gf:.1f} at the end → "
        f"peak = {peak:.1f} GFLOP/s (start and end differ by {abs(start_gf - end_gf) / peak:.0%}: the drift)"]
    if torch_info:
        torch_gf = max(peak_start["torch"]["gflops"], peak_end["torch"]["gflops"])
        torch_info["matmul_gflops"] = torch_gf
        report.append(f"PyTorch {torch_info['version']} CPU eager, torch.set_num_threads({threads}) → "
                      f"{torch_info['threads']} threads{', MKL' if torch_info['mkl'] else ''}; torch matmul "
                      f"{matmul_size}³: {torch_gf:.1f} GFLOP/s ({torch_gf / peak:.2f} × NumPy's)")
    report += [
        "",
        "forward + backward (backward from a fixed random cotangent); ms = median after warm-up, IQR% = its "
        "interquartile range ÷ median (the noise); GFLOP/s counts matrix products only (bench/flops.py);",
        "%peak = GFLOP/s ÷ NumPy's matmul peak; ÷torch = minattn ms ÷ PyTorch ms, same workload and shape "
        "(>1: minattn slower);",
        "tracemalloc MB = peak NumPy allocation during one call (PyTorch's allocator is invisible to it); "
        "RSS+ MB = peak resident-set growth during one call (a lower bound: reused heap does not grow it)",
        "",
        format_table(bench.rows),
        "",
        char_lm_bench.format_table(char_lm_result),
        "",
        decoding.format_table(decoding_rows),
        "",
        "notes:"] + [f"  - {n}" for n in notes]
    if fig_result:
        report.append("figure (dense vs flash, B=1 h=8 head dim 32): " + "; ".join(
            f"{name} " + ", ".join(f"L={p['L']}: {p['ms']:.0f} ms {p['tracemalloc_mb']:.0f} MB" if "ms" in p
                                   else f"L={p['L']}: skipped" for p in points)
            for name, points in fig_result.items()))
        report.append(f"figure: {fig_path}")
    print("\n".join(report), flush=True)

    profile = None
    if args.profile:
        profile = profile_mha()
        print("\n" + profile)
    wall = time.perf_counter() - started
    results = {"argv": sys.argv[1:] if argv is None else list(argv), "quick": args.quick, "machine": machine,
               "load_average": {"start": load_start, "end": load_end}, "threads": threads,
               "blas_threads": blas, "blas_threads_source": blas_source,
               "matmul_peak": {"start": peak_start, "end": peak_end, "peak_gflops": peak},
               "torch": torch_info, "rows": bench.rows, "char_lm": char_lm_result, "decoding": decoding_rows,
               "figure": fig_result,
               "notes": notes, "profile": profile,
               "wall_s": round(wall, 1)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write("\n".join(header + report) + f"\nwall time {wall:.0f} s\n")
    print(f"wrote {args.out}/results.json, table.txt{', dense_vs_flash.png' if fig_path else ''}; "
          f"wall time {wall:.0f} s")
    return results


if __name__ == "__main__":
    main()
