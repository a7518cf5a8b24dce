"""Lesson: what do a sliding window and a key/value cache buy at long context?

THE QUESTION. Attention over L tokens costs L² scores, and generating T tokens by re-reading the whole prefix costs
T² more. Mistral attends within a window; every serving stack keeps a key/value cache. What does each buy, and what
does it change in the results?

THE CLAIM. (1) A sliding window w lets query i see keys i − w + 1 … i only; flash attention then skips every tile
outside all rows' windows, so the work grows as L·w instead of L²: the speed-up grows with L, and the output equals
dense attention under the same window mask (it is the same math). (2) A KV cache keeps each token's keys and values,
so step t of generation runs ONE token through the model (O(t) scores) instead of all t (O(t²)): the time per token
stays nearly flat instead of growing with t, and the generated tokens are identical.

HOW THE RUN SHOWS IT. (1) Causal flash attention forward + backward (B = 1, h = 4, head dim 32) with and without a
window of 128 at growing L; the largest difference to dense attention with the window mask. (2) A GPT (d = 64,
4 heads, 2 layers, RoPE) generating T tokens greedily, with and without the cache: ms per token, and whether the
tokens are the same. It writes ``long_context.png`` and ``results.json``.

    python -m demos.lesson_long_context            # about 20 s on 2 cores
"""
import argparse
import json
import os
import time

from autograd import backend
from autograd.backend import host as np
from demos.cli import positive_int
from minattn import GPT, Tensor, manual_seed, no_grad
from minattn import functional as F


def parse_args(argv=None):
    """The command line (see --help)."""
    p = argparse.ArgumentParser(prog="python -m demos.lesson_long_context", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lengths", type=positive_int, nargs="+", default=[512, 1024, 2048, 4096],
                   help="sequence lengths L for the window")
    p.add_argument("--window", type=positive_int, default=128, help="the sliding window w")
    p.add_argument("--tokens", type=positive_int, nargs="+", default=[32, 64, 128, 256],
                   help="generated lengths T for the cache")
    p.add_argument("--out", default="runs/lesson_long_context", help="folder for the figure and results.json")
    return p.parse_args(argv)


def _best_seconds(fn, repeats=2):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def window_rows(args):
    """Per L: flash fwd+bwd seconds, causal and with the window; the windowed output's largest difference to dense
    attention under the window mask (checked at the smallest L)."""
    rng = np.random.default_rng(0)
    rows = []
    for length in args.lengths:
        q, k, v = (Tensor(backend.asarray(rng.standard_normal((1, 4, length, 32)).astype(np.float32)),
                          requires_grad=True) for _ in range(3))
        grad = backend.asarray(rng.standard_normal((1, 4, length, 32)).astype(np.float32))

        def run(**window):
            F.flash_attention(q, k, v, is_causal=True, **window).backward(grad)

        row = {"L": length, "causal_s": _best_seconds(run), "window_s": _best_seconds(lambda: run(window=args.window))}
        row["speedup"] = row["causal_s"] / row["window_s"]
        if length == min(args.lengths):
            with no_grad():
                flash = F.flash_attention(q, k, v, is_causal=True, window=args.window).data
                dense = F.scaled_dot_product_attention(q, k, v, is_causal=True, window=args.window).data
            row["max_difference_to_dense"] = float(np.abs(backend.to_numpy(flash) - backend.to_numpy(dense)).max())
        rows.append(row)
    return rows


def cache_rows(args):
    """Per T: ms per generated token with and without the cache, and whether the tokens are the same."""
    manual_seed(0)
    model = GPT(16, max(args.tokens) + 8, embed_dim=64, num_heads=4, num_layers=2, positions="rope")
    prompt = backend.asarray(np.random.default_rng(0).integers(0, 16, (8, 4)))
    rows = []
    for tokens in args.tokens:
        cached = model.generate(prompt, tokens, temperature=0)
        row = {"T": tokens, "cached_ms_per_token": _best_seconds(lambda: model.generate(prompt, tokens, temperature=0))
               / tokens * 1e3}
        sequence = backend.to_numpy(prompt)

        def recompute():
            nonlocal sequence
            sequence = backend.to_numpy(prompt)
            with no_grad():
                for _ in range(tokens):                                  # the whole sequence, every step
                    logits = backend.to_numpy(model(Tensor(backend.asarray(sequence))).data)
                    sequence = np.concatenate([sequence, logits[:, -1].argmax(-1)[:, None]], axis=1)

        model.eval()
        row["recomputed_ms_per_token"] = _best_seconds(recompute) / tokens * 1e3
        model.train()
        row["same_tokens"] = bool((cached == sequence).all())
        row["speedup"] = row["recomputed_ms_per_token"] / row["cached_ms_per_token"]
        rows.append(row)
    return rows


def main(argv=None):
    """Measure both, print the tables, write long_context.png and results.json."""
    args = parse_args(argv)
    windows, caches = window_rows(args), cache_rows(args)
    print(f"(1) causal flash attention fwd+bwd, B = 1, h = 4, head dim 32, window w = {args.window}:")
    for r in windows:
        print(f"    L = {r['L']:>5}: {r['causal_s'] * 1e3:8.1f} ms causal, {r['window_s'] * 1e3:7.1f} ms with the "
              f"window ({r['speedup']:.1f}×)")
    difference = windows[0]["max_difference_to_dense"]
    print(f"    windowed flash = dense with the window mask: largest difference {difference:.1e}")
    print("(2) greedy generation, GPT d = 64, 8 sequences, ms per token:")
    for r in caches:
        print(f"    T = {r['T']:>4}: {r['cached_ms_per_token']:6.2f} with the KV cache, "
              f"{r['recomputed_ms_per_token']:6.2f} recomputing ({r['speedup']:.1f}×); "
              f"same tokens: {r['same_tokens']}")
    results = {"config": vars(args), "window": windows, "cache": caches,
               "claim_holds": all(r["same_tokens"] for r in caches) and windows[0]["max_difference_to_dense"] < 1e-4
               and windows[-1]["speedup"] > windows[0]["speedup"] and caches[-1]["speedup"] > caches[0]["speedup"]}
    os.makedirs(args.out, exist_ok=True)
    plot(windows, caches, args, os.path.join(args.out, "long_context.png"))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}/long_context.png, results.json")
    return results


def plot(windows, caches, args, path):
    """Time against length: the window (left), the cache (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    lengths = [r["L"] for r in windows]
    left.plot(lengths, [r["causal_s"] * 1e3 for r in windows], marker="o", label="causal (L² tiles)")
    left.plot(lengths, [r["window_s"] * 1e3 for r in windows], marker="o", label=f"window {args.window} (L·w)")
    left.set(xscale="log", yscale="log", xlabel="L", ylabel="ms (fwd + bwd)", title="flash attention")
    tokens = [r["T"] for r in caches]
    right.plot(tokens, [r["recomputed_ms_per_token"] for r in caches], marker="o", label="recompute the prefix")
    right.plot(tokens, [r["cached_ms_per_token"] for r in caches], marker="o", label="KV cache")
    right.set(xscale="log", xlabel="tokens generated T", ylabel="ms per token", title="greedy generation")
    for ax in (left, right):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
