"""Greedy decoding with and without the key/value cache: seconds per generated token against the length.

Without the cache step t re-runs the decoder on all t tokens of the prefix: O(t) projections and O(t²) attention
scores. With it, step t runs the newest token only: O(1) projections and O(t) scores against the cached keys.
Measured on the copy-task model (d = 64, 4 heads, 2 + 2 layers, 8 sequences of 12 source tokens)
with EOS suppressed so that every run generates exactly T tokens.
"""
import time

import numpy as np

from autograd import backend
from minattn import Tensor, Transformer, manual_seed, tasks

LENGTHS = (32, 64, 128, 256)
QUICK_LENGTHS = (16, 32)


def measure(lengths, repeats=2):
    """[{"T", "cached_ms_per_token", "recomputed_ms_per_token", "speedup"}] for each generated length T."""
    results = []
    for length in lengths:
        manual_seed(0)
        model = Transformer(16, 16, 64, 4, 128, 2, 2, max_len=length + 1)
        bias = backend.to_numpy(model.output.bias.data).copy()
        bias[tasks.EOS] = -1e4                                  # EOS never wins: exactly T tokens every run
        model.output.bias.data[...] = backend.asarray(bias)
        batch = tasks.make_batch(np.random.default_rng(0), 8, 16, 12, 12)
        src, lens = Tensor(backend.asarray(batch.src)), backend.asarray(batch.src_valid_lens)
        row = {"T": length}
        for name, use_cache in (("cached", True), ("recomputed", False)):
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                model.greedy_decode(src, lens, tasks.BOS, tasks.EOS, length, use_cache=use_cache)
                best = min(best, time.perf_counter() - start)
            row[f"{name}_ms_per_token"] = best / length * 1e3
        row["speedup"] = row["recomputed_ms_per_token"] / row["cached_ms_per_token"]
        results.append(row)
    return results


def format_table(rows):
    """The rows as text."""
    lines = ["greedy decoding, ms per generated token (8 sequences; copy-task model):",
             f"{'T':>6} {'KV cache':>10} {'recompute':>10} {'speed-up':>9}"]
    for r in rows:
        lines.append(f"{r['T']:>6} {r['cached_ms_per_token']:>10.2f} {r['recomputed_ms_per_token']:>10.2f} "
                     f"{r['speedup']:>8.1f}×")
    return "\n".join(lines)
