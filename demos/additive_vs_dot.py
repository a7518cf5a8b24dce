"""Additive or dot-product scoring? Bahdanau's learned scorer against the Transformer's scaled dot product.

The question: attention needs a score for every (query, key) pair. Additive attention (Bahdanau et al. 2015)
learns one, a(q, k) = w_vᵀ tanh(W_q q + W_k k); dot-product attention (Vaswani et al. 2017) takes q·k/√d. Which
should you use, and why does the dot product need its 1/√d?

The claim (Vaswani et al. 2017, §3.2.1 and footnote 4): the two are "similar in theoretical complexity", but the dot
product "is much faster and more space-efficient in practice, since it can be implemented using highly optimized
matrix multiplication code"; for small d they perform alike, for large d additive beats the UNscaled dot product
(Britz et al. 2017), and the authors "suspect that for large values of d_k, the dot products grow large in
magnitude, pushing the softmax function into regions where it has extremely small gradients": with unit-variance
components, q·k has variance d. Hence the 1/√d.

How the run shows it, in three parts (every number printed; figures written to --out):
  (a) the same random queries, keys, values and valid_lens through AdditiveAttention (untrained) and through
      scaled_dot_product_attention: the two weight maps side by side (weights_side_by_side.png), masked keys at 0 in
      both. And additive scoring takes queries and keys of different sizes; the dot product refuses them.
  (b) the cost of one forward + backward of each attention core (median and fastest of --repeats calls) for
      L = S in --sizes: additive builds and keeps an (L, S, H) tensor and makes elementwise passes over it (tanh
      included), the dot product one (L, S) matrix from one BLAS product. Both do O(L·S·H) arithmetic; the table
      shows what the constant and the memory cost.
  (c) why 1/√d: for unit-variance random q, k of dimension d in --dims, the std of q·k (≈ √d); the mean largest
      softmax weight and the share of saturated rows (largest weight > 0.99); and, for a random upstream gradient,
      the norm of the gradient dA the softmax passes back to its scores (its backward, dA = P ∘ (dP − Σ dP ∘ P)),
      mean and median over rows — with the scale, without it, and for an untrained additive layer, whose scores
      are bounded by ‖w_v‖₁ (tanh lies in (−1, 1)) and whose W_q, W_k are initialised with a 1/√d of their own.
      Last, what reaches q: dQ = dA K · scale (scale_saturation.png).

What to look for: with 1/√d every column stays put as d grows. Without it the weights head for one-hot and the
median row passes back next to nothing — but the mean falls much more slowly, held up by the rows whose top two
keys nearly tie, and ‖dQ‖ on average even grows (K's rows have norm √d). "Vanishing" is, precisely, most rows
getting almost no gradient while a few get a large one. The untrained additive layer stays put as well: tanh bounds
its scores, and Linear's uniform(±1/√d) initialisation keeps W_q q and W_k k at the same scale for every d.

Timings on a shared CPU: NumPy's BLAS is multi-threaded, and when another process holds a core its threads wait
for one another — one run here measured the L = S = 256 dot-product call at ~125 ms instead of ~2 ms. Set
OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 for numbers that do not depend on the neighbours.

Read the numbers, not the claim: they are what this run measured on this machine, whatever they say.

    python -m demos.additive_vs_dot                 # well under a minute on 2 cores
    python -m demos.additive_vs_dot --sizes 16 64   # quicker
"""
import argparse
import json
import math
import os
import statistics
import time

from autograd import backend
from autograd.backend import xp
from autograd.tensor import Tensor, no_grad
from minattn import AdditiveAttention, manual_seed, masks
from minattn import functional as F
from minattn.fused.additive import AdditiveAttentionFunction
from minattn.fused.softmax import softmax_backward
from demos.cli import positive_int


def parse_args(argv=None):
    """The command line (see --help)."""
    p = argparse.ArgumentParser(prog="python -m demos.additive_vs_dot", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="seeds the random inputs and the additive layers")
    p.add_argument("--sizes", type=positive_int, nargs="+", default=[16, 64, 256],
                   help="(b) sequence lengths L = S to time")
    p.add_argument("--dim", type=positive_int, default=64, help="(b) feature size d of queries, keys and values")
    p.add_argument("--hidden", type=positive_int, default=64, help="(b, c) hidden width H of the additive scorer")
    p.add_argument("--batch", type=positive_int, default=2, help="(b) sequences per timed call")
    p.add_argument("--repeats", type=positive_int, default=9,
                   help="(b) timed calls per size and attention (the median and the fastest are shown)")
    p.add_argument("--dims", type=positive_int, nargs="+", default=[4, 16, 64, 256, 1024],
                   help="(c) dimensions d of q and k")
    p.add_argument("--num-keys", type=positive_int, default=64, help="(c) keys per query (also queries per sample)")
    p.add_argument("--samples", type=positive_int, default=64, help="(c) independent sets of queries and keys")
    p.add_argument("--out", default="runs/additive_vs_dot", help="folder for the figures and results.json")
    return p.parse_args(argv)


def randn(rng, shape):
    """Unit-normal float32 Tensor on the backend, drawn on the host (the same numbers on NumPy and CuPy)."""
    return Tensor(backend.asarray(rng.standard_normal(shape), dtype=backend.float32))


def sync():
    """Wait for the GPU (CuPy runs asynchronously); nothing to wait for on NumPy."""
    if backend.BACKEND == "cupy":
        xp.cuda.Device().synchronize()


def print_table(headers, rows, groups=None, indent="    "):
    """Print rows of formatted cells under ``headers``, each column right-aligned to its widest cell.

    ``groups``: optional [(title, number of columns), ...] covering every column: a first header line that puts
    each title over the columns it spans.
    """
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    if groups:
        spans, start = [], 0
        for title, count in groups:
            width = sum(widths[start:start + count]) + 2 * (count - 1)
            if len(title) > width:                        # widen the last column of the group to fit its title
                widths[start + count - 1] += len(title) - width
                width = len(title)
            spans.append(title.center(width))
            start += count
        print(indent + "  ".join(spans).rstrip())
    for line in [headers] + rows:
        print(indent + "  ".join(str(c).rjust(w) for c, w in zip(line, widths)))


# ---------------------------------------------------------------------------------------------------------------------
# (a) the two weight maps on the same inputs
# ---------------------------------------------------------------------------------------------------------------------
def side_by_side(args, rng, batch=2, num_queries=6, num_keys=10, dim=16, hidden=32):
    """AdditiveAttention and scaled dot-product attention on the same q, k, v and valid_lens; prints a summary."""
    valid_lens = backend.asarray(backend.host.array([6, 9]))                        # (B,)
    q, k, v = (randn(rng, (batch, n, dim)) for n in (num_queries, num_keys, num_keys))   # (B, L|S, d)
    manual_seed(args.seed)
    additive = AdditiveAttention(dim, dim, hidden).eval()
    with no_grad():
        out_add = additive(q, k, v, valid_lens=valid_lens)                          # (B, L, d)
        keys_mask = masks.valid_lens_mask(valid_lens, num_queries, num_keys)        # (B, 1, S)
        out_dot, w_dot = F.scaled_dot_product_attention(q, k, v, attn_mask=keys_mask, need_weights=True)
    w_add = additive.attention_weights.numpy()                                       # (B, L, S)
    w_dot = w_dot.numpy()                                                            # (B, L, S)
    lens = backend.to_numpy(valid_lens)
    print(f"(a) the same q, k, v (B={batch}, L={num_queries}, S={num_keys}, d={dim}) and valid_lens {lens.tolist()}; "
          f"additive with H={hidden}, untrained")
    summary = {}
    for name, w in (("additive", w_add), ("scaled dot", w_dot)):
        padded = sum(float(w[b, :, n:].sum()) for b, n in enumerate(lens))
        entropy = float(-(w * backend.host.log(backend.host.where(w > 0, w, 1))).sum(-1).mean())
        summary[name] = {"mean_max_weight": float(w.max(-1).mean()), "mean_entropy": entropy,
                         "weight_on_padding": padded}
        print(f"    {name:10}  mean largest weight {w.max(-1).mean():.3f}   mean entropy {entropy:.3f} nats "
              f"(uniform over the valid keys: {backend.host.log(lens).mean():.3f})   weight on padding {padded:g}")
    print(f"    outputs differ by {float(abs(out_add.numpy() - out_dot.numpy()).max()):.3f} at most: two different "
          "averages of the same values")
    queries, keys = randn(rng, (2, 1, 20)), randn(rng, (2, 10, 2))                  # d2l's sizes: 20 ≠ 2
    values = randn(rng, (2, 10, 4))                                                 # (B, S, Ev)
    with no_grad():
        shape = AdditiveAttention(20, 2, 8).eval()(queries, keys, values).shape     # (2, 1, 4)
    try:
        F.scaled_dot_product_attention(queries, keys, values)
        refused = "accepted them"
    except ValueError as err:
        refused = f"ValueError: {err}"
    print(f"    queries (2, 1, 20) with keys (2, 10, 2): additive gives {shape}; the dot product: {refused}")
    summary["different_sizes"] = {"additive_output_shape": list(shape), "dot_product": refused}
    return w_add, w_dot, lens, summary


def plot_weights(out, w_add, w_dot, lens):
    """weights_side_by_side.png: one row per sequence, additive left, scaled dot product right."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = w_add.shape[0]
    top = max(float(w_add.max()), float(w_dot.max()))                             # one colour scale for all panels
    fig, axes = plt.subplots(rows, 2, figsize=(9, 2.6 * rows + 0.6), squeeze=False)
    for b in range(rows):
        for c, (name, w) in enumerate((("additive (untrained)", w_add), ("scaled dot product", w_dot))):
            ax = axes[b][c]
            image = ax.imshow(w[b], cmap="viridis", vmin=0, vmax=top)
            ax.axvline(lens[b] - 0.5, color="white", linestyle="--", linewidth=1)
            ax.set_title(f"{name}, sequence {b} (valid_len {lens[b]})", fontsize=9)
            ax.set(xlabel="key", ylabel="query")
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    fig.suptitle("the same queries, keys and valid_lens; keys right of the dashed line are padding")
    fig.savefig(os.path.join(out, "weights_side_by_side.png"), dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------------
# (b) the cost of a call
# ---------------------------------------------------------------------------------------------------------------------
def time_calls(calls, repeats):
    """Wall time (ms) of forward + backward of each ``(fn, inputs)`` in ``calls``: (median, min) of ``repeats``.

    One warm-up round, then the calls take turns (additive, dot, additive, dot, ...), so that a busy moment on a
    shared machine slows both alike rather than one of them.
    """
    times = [[] for _ in calls]
    for i in range(repeats + 1):
        for (fn, inputs), spent in zip(calls, times):
            for t in inputs:
                t.grad = None
            sync()
            start = time.perf_counter()
            out = fn(*inputs)
            out.backward(xp.ones(out.shape, dtype=out.dtype))
            sync()
            if i > 0:
                spent.append(1000 * (time.perf_counter() - start))
    return [(statistics.median(spent), min(spent)) for spent in times]


def cost(args, rng):
    """Time both attention cores at each size; prints the table and returns its rows."""
    d, h, b = args.dim, args.hidden, args.batch
    print(f"\n(b) one forward + backward of each attention core, {args.repeats} calls each taking turns, batch {b}, "
          f"d={d}, H={h}, float32 on {backend.BACKEND}")
    print("    (the W_q, W_k projections before the scores are left out: both layers have them)")
    rows, cells = [], []
    for n in args.sizes:
        qp, kp, v = (randn(rng, (b, n, size)) for size in (h, h, d))                 # (B, L, H), (B, S, H), (B, S, d)
        q, k = randn(rng, (b, n, d)), randn(rng, (b, n, d))                          # (B, L, d), (B, S, d)
        w_v = Tensor(backend.asarray(rng.uniform(-1, 1, h) / math.sqrt(h), dtype=backend.float32))   # (H,)
        for t in (qp, kp, v, q, k, w_v):
            t.requires_grad = True
        (additive_ms, additive_min), (dot_ms, dot_min) = time_calls(
            [(lambda *t: AdditiveAttentionFunction.apply(*t), [qp, kp, w_v, v]),
             (lambda *t: F.scaled_dot_product_attention(*t), [q, k, v])], args.repeats)
        big_add, big_dot = b * n * n * h * 4 / 2**20, b * n * n * 4 / 2**20       # MiB of F (B,L,S,H) and P (B,L,S)
        rows.append({"L": n, "S": n, "additive_ms": additive_ms, "dot_ms": dot_ms, "ratio": additive_ms / dot_ms,
                     "additive_min_ms": additive_min, "dot_min_ms": dot_min,
                     "additive_saved_MiB": big_add, "dot_saved_MiB": big_dot})
        cells.append([n, f"{additive_ms:.2f}", f"{dot_ms:.2f}", f"{additive_ms / dot_ms:.1f}x",
                      f"{additive_min:.2f}", f"{dot_min:.2f}", f"{additive_min / dot_min:.1f}x",
                      f"F {(b, n, n, h)} = {big_add:.2f} MiB", f"P {(b, n, n)} = {big_dot:.3f} MiB"])
    print_table(["L = S", "additive", "dot", "ratio", "additive", "dot", "ratio", "additive keeps (float32)",
                 "dot keeps"], cells,
                groups=[("", 1), (f"median of {args.repeats}, ms", 3), ("fastest call, ms", 3), ("", 2)])
    print("    NumPy's BLAS runs its matrix products on several threads; on a shared, busy CPU those threads wait for "
          "one another\n    and the dot column can jump many-fold: for steadier numbers run with "
          "OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1.")
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# (c) why 1/√d
# ---------------------------------------------------------------------------------------------------------------------
STATS = ("max_weight", "saturated", "grad_mean", "grad_median")


def softmax_stats(p, g):
    """Weights P and the gradient dA their softmax passes back for the upstream g = dP, summarised per row.

    Returns (dict of: mean largest weight, share of rows whose largest weight is > 0.99, mean and median ‖dA‖ of a
    row), and dA itself (..., L, S).
    """
    grad = softmax_backward(p, g)                                                   # dA: (..., L, S)
    row_norm = backend.to_numpy(xp.sqrt((grad * grad).sum(-1)))                     # (..., L)
    largest = p.max(-1)                                                             # (..., L)
    values = (float(largest.mean()), float((largest > 0.99).mean()), float(row_norm.mean()),
              float(backend.host.median(row_norm)))
    return dict(zip(STATS, values)), grad


def norm_stats(x):
    """(mean, median) over rows of the row norms of x (..., L, E)."""
    norms = backend.to_numpy(xp.sqrt((x * x).sum(-1)))                              # (..., L)
    return float(norms.mean()), float(backend.host.median(norms))


def saturation(args, rng):
    """The std of q·k and the softmax's weights and gradients with and without 1/√d, and for additive scores."""
    n, s, h = args.num_keys, args.samples, args.hidden
    rows = []
    for d in args.dims:
        q, k = randn(rng, (s, n, d)), randn(rng, (s, n, d))                         # (samples, L, d), (samples, S, d)
        g = backend.asarray(rng.standard_normal((s, n, n)), dtype=backend.float32)  # upstream dP: (samples, L, S)
        raw = q.data @ k.data.swapaxes(-1, -2)                                      # q·k: (samples, L, S)
        row = {"d": d, "sqrt_d": math.sqrt(d), "std_qk": float(raw.std())}
        with no_grad():
            for name, scale in (("scaled", 1 / math.sqrt(d)), ("unscaled", 1.0)):
                scale = raw.dtype.type(scale)
                p = F.softmax(Tensor(raw * scale)).data                             # P: (samples, L, S)
                row[name], grad = softmax_stats(p, g)                               # dA: (samples, L, S)
                dq = (grad @ k.data) * scale                                        # dQ = dA K · scale: (samples, L, d)
                row[name]["dq_mean"], row[name]["dq_median"] = norm_stats(dq)
            manual_seed(args.seed)
            additive = AdditiveAttention(d, d, h).eval()
            additive(q, k, k)                                                       # (samples, L, d)
            row["additive"], _ = softmax_stats(additive.attention_weights.data, g)  # P: (samples, L, S)
            qp, kp = additive.W_q(q).data, additive.W_k(k).data                     # (samples, L|S, H)
            w_v = additive.w_v.weight.data[0]                                       # (H,)
            scores = xp.tanh(qp[..., :, None, :] + kp[..., None, :, :]) @ w_v       # (samples, L, S)
            row["std_additive_scores"] = float(scores.std())
            row["bound_additive_scores"] = float(abs(w_v).sum())                   # |w_vᵀ tanh(·)| ≤ ‖w_v‖₁
        rows.append(row)
    first = rows[0]
    for row in rows:
        for name in ("scaled", "unscaled", "additive"):
            row[name]["grad_vs_first_d"] = row[name]["grad_mean"] / first[name]["grad_mean"]
    names = ("scaled", "unscaled", "additive")

    print(f"\n(c) unit-variance random q, k; {s} samples of {n} queries × {n} keys; additive layer untrained, "
          f"H={h} (its scores are bounded by ‖w_v‖₁)")
    kinds = ["q·k/√d", "q·k", "additive"]
    print_table(["d", "√d", "std(q·k)", "std(additive)", "‖w_v‖₁"] + kinds + kinds,
                [[r["d"], f"{r['sqrt_d']:.2f}", f"{r['std_qk']:.2f}", f"{r['std_additive_scores']:.3f}",
                  f"{r['bound_additive_scores']:.2f}"] + [f"{r[m]['max_weight']:.3f}" for m in names]
                 + [f"{r[m]['saturated']:.1%}" for m in names] for r in rows],
                groups=[("", 1), ("scores", 4), ("mean largest weight", 3), ("rows with largest > 0.99", 3)])
    print(f"\n    the gradient dA the softmax passes back to its scores, ‖dA‖ per row, for an upstream dP ~ N(0, 1) "
          f"per weight;\n    'mean vs d={first['d']}' is the mean as a fraction of its own value at d={first['d']}")
    print_table(["d"] + kinds * 3,
                [[r["d"]] + [f"{r[m]['grad_mean']:.4f}" for m in names] + [f"{r[m]['grad_median']:.4f}" for m in names]
                 + [f"{r[m]['grad_vs_first_d']:.3f}" for m in names] for r in rows],
                groups=[("", 1), ("mean ‖dA‖", 3), ("median ‖dA‖", 3), (f"mean vs d={first['d']}", 3)])
    print("\n    what reaches the queries, dQ = dA K · scale (the rows of K have norm ≈ √d)")
    print_table(["d"] + kinds[:2] * 2,
                [[r["d"]] + [f"{r[m]['dq_mean']:.4f}" for m in names[:2]]
                 + [f"{r[m]['dq_median']:.4f}" for m in names[:2]] for r in rows],
                groups=[("", 1), ("mean ‖dQ‖", 2), ("median ‖dQ‖", 2)])
    return rows


def plot_saturation(out, rows):
    """scale_saturation.png: std(q·k) against √d; mean largest weight; mean gradient norm, against d."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = [r["d"] for r in rows]
    styles = (("scaled", "q·k/√d", "o-", "C0"), ("unscaled", "q·k (no scale)", "s-", "C1"),
              ("additive", "additive", "^-", "C2"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(dims, [r["std_qk"] for r in rows], "s-", color="C1", label="std of q·k (measured)")
    axes[0].plot(dims, [r["sqrt_d"] for r in rows], "k--", label="√d")
    axes[0].plot(dims, [r["std_qk"] / r["sqrt_d"] for r in rows], "o-", color="C0", label="std of q·k/√d")
    axes[0].plot(dims, [r["std_additive_scores"] for r in rows], "^-", color="C2", label="std of additive scores")
    axes[0].set(xscale="log", yscale="log", xlabel="d", ylabel="standard deviation", title="spread of the scores")
    for key, label, style, color in styles:
        axes[1].plot(dims, [r[key]["max_weight"] for r in rows], style, color=color, label=label)
        axes[2].plot(dims, [r[key]["grad_mean"] for r in rows], style, color=color, label=f"{label}, mean")
        axes[2].plot(dims, [r[key]["grad_median"] for r in rows], style[0] + ":", color=color,
                     label=f"{label}, median")
    axes[1].set(xscale="log", ylim=(0, 1.02), xlabel="d", ylabel="mean largest softmax weight",
                title="how peaked the weights are")
    axes[2].set(xscale="log", yscale="log", xlabel="d", ylabel="‖dA‖ per row, through the softmax",
                title="gradient through the softmax")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "scale_saturation.png"), dpi=120)
    plt.close(fig)


def main(argv=None):
    """Run the three parts, print their tables, write the figures and results.json; returns the results."""
    args = parse_args(argv)
    rng = backend.new_host_rng(args.seed)
    start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    w_add, w_dot, lens, summary = side_by_side(args, rng)
    plot_weights(args.out, w_add, w_dot, lens)
    timing = cost(args, rng)
    scale = saturation(args, rng)
    plot_saturation(args.out, scale)
    results = {"side_by_side": summary, "cost": timing, "scale": scale, "backend": backend.BACKEND,
               "config": vars(args), "seconds": round(time.perf_counter() - start, 1)}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.out}/weights_side_by_side.png, scale_saturation.png, results.json "
          f"({results['seconds']} s)")
    return results


if __name__ == "__main__":
    main()
