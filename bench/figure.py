"""Dense vs flash attention as the sequence grows: time and peak memory of forward + backward against L.

B = 1, h = 8, head dim 32 (E = 256), float32. Dense is ``F.scaled_dot_product_attention``, which keeps the
(B, h, L, L) weight matrix for the backward, so its memory grows as L²; flash (``F.flash_attention``, when it exists)
works block by block and keeps O(L) per head. A dense length is skipped when its peak would exceed the memory limit
(estimated from the last measured peak scaled by (L / L_prev)², or 5 L×L float32 arrays per head).
"""
import os

from autograd import parallel
from bench import cases_minattn, flops, measure

BATCH, HEADS, HEAD_DIM = 1, 8, 32
IMPLS = (("dense", "fused"), ("flash", "flash"))


def dense_estimate(length, previous=None):
    """Bytes dense attention needs at L = length: the last measured peak scaled by (L / L_prev)², or, with nothing
    measured yet, 5 (B, h, L, L) float32 arrays (scores, weights, their gradients, a temporary)."""
    if previous is not None:
        prev_length, prev_bytes = previous
        return prev_bytes * (length / prev_length) ** 2
    return 5 * BATCH * HEADS * length * length * 4


def sweep(lengths, timing, limit_bytes, max_call_s=90.0, log=print):
    """Measure dense and flash at each L (timed in alternation); returns ({impl: [point dicts]}, notes)."""
    result, notes = {name: [] for name, _ in IMPLS}, []
    previous, too_slow, flash_missing = None, set(), None
    for length in lengths:
        runs = {}
        for name, impl in IMPLS:
            point = {"L": length}
            if name == "flash" and flash_missing:
                continue
            result[name].append(point)
            if name in too_slow:
                point["skipped"] = f"a call at a shorter L took over {max_call_s:.0f} s"
            elif name == "dense" and dense_estimate(length, previous) > limit_bytes:
                point["skipped"] = (f"would need ~{dense_estimate(length, previous) / 2**30:.1f} GiB "
                                    f"> {limit_bytes / 2**30:g} GiB")
                notes.append(f"figure: dense L={length} skipped ({point['skipped']})")
            else:
                try:
                    runs[name] = cases_minattn.sdpa(BATCH, length, HEADS * HEAD_DIM, HEADS, impl=impl)  # warms up
                except cases_minattn.Unavailable as err:
                    flash_missing = str(err)
                    notes.append(f"figure: flash skipped: {err}")
                    result[name].clear()
        timed = measure.time_group(runs, **timing)
        for name, run in runs.items():
            point = result[name][-1]
            seconds, times = timed[name]
            point["ms"] = seconds * 1e3
            point["times_ms"] = [round(t * 1e3, 3) for t in times]
            point["gflops"] = flops.attention_core(BATCH, length, length, HEADS * HEAD_DIM) / seconds / 1e9
            parallel.empty_cache()   # the peak counts every array the call needs, kept for reuse or not
            point["tracemalloc_mb"] = measure.tracemalloc_peak(run) / measure.MB   # (no RSS here: one call less)
            if name == "dense":
                previous = (length, point["tracemalloc_mb"] * measure.MB)
            if max(times) > max_call_s:
                too_slow.add(name)
            log(f"  figure {name:5s} L={length:5d}: {point['ms']:10.1f} ms  {point['tracemalloc_mb']:9.1f} MB")
        del runs
    return {name: points for name, points in result.items() if points}, notes


def plot(result, path, threads):
    """Two panels, time and peak memory against L (log-log), one line per implementation; skipped lengths are
    listed under the axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.4))
    lengths, skipped = set(), []
    for name, points in result.items():
        done = [p for p in points if "ms" in p]
        skipped += [f"{name} L={p['L']}: {p['skipped']}" for p in points if "skipped" in p]
        if not done:
            continue
        xs = [p["L"] for p in done]
        lengths.update(xs)
        ax_t.plot(xs, [p["ms"] for p in done], "o-", label=name)
        ax_m.plot(xs, [p["tracemalloc_mb"] for p in done], "o-", label=name)
    for ax, label in ((ax_t, "forward + backward time (ms, median)"), (ax_m, "peak memory, tracemalloc (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted(lengths), [str(n) for n in sorted(lengths)])
        ax.minorticks_off()
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    missing = "" if "flash" in result else "  (flash_attention not available: dense only)"
    fig.suptitle(f"minattn attention forward + backward, B={BATCH}, h={HEADS}, head dim {HEAD_DIM}, float32, "
                 f"{threads} thread(s){missing}", fontsize=10)
    if skipped:
        fig.text(0.5, 0.01, "skipped: " + "; ".join(skipped), ha="center", fontsize=7, color="grey")
    fig.tight_layout(rect=(0, 0.04 if skipped else 0, 1, 1))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
