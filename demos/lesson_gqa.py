"""Lesson: what do grouped-query heads save, and what do they cost?

THE QUESTION. Llama, Mistral and most models since 2023 give their h query heads only h_kv < h key/value heads, each
shared by a group of h / h_kv query heads (grouped-query attention; h_kv = 1 is multi-query attention). What does
that buy, and what does it cost?

THE CLAIM. Query head i attends with key/value head i // (h / h_kv), so W_k and W_v shrink from E × E to
E × (h_kv · d_h): the attention's parameters fall by 2(h − h_kv)·d_h·E per layer. What a generating model must keep
per token — the key/value cache, 2 · h_kv · d_h numbers per layer — falls by h / h_kv, and that cache, not the
parameters, is what limits batch size and context length when decoding. The cost is capacity: heads that must
share their keys and values. On a task that needs little of it, accuracy after the same training barely moves.

HOW THE RUN SHOWS IT. The copy-task Transformer with 8 heads (d = 64, d_h = 8) is built with h_kv = 8, 4, 2, 1, and
for each the run prints the parameters, the KV-cache bytes for decoding the copy task (per layer: self-attention
keys/values of the T output positions, cross-attention keys/values of the S source positions; float32), and the
exact-sequence accuracy of greedy decoding on 1,000 held-out sequences after the same number of training steps
(same seed, same batches). It writes ``gqa.png`` and ``results.json`` to --out.

    python -m demos.lesson_gqa            # about a minute on 2 cores
"""
import argparse
import json
import os

from demos import copy_task
from demos.cli import positive_int
from minattn import manual_seed


def parse_args(argv=None):
    """The command line (see --help)."""
    p = argparse.ArgumentParser(prog="python -m demos.lesson_gqa", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--num-heads", type=positive_int, default=8, help="query heads h (must divide 64)")
    p.add_argument("--steps", type=positive_int, default=400, help="training steps for every variant")
    p.add_argument("--eval-size", type=positive_int, default=1000, help="held-out sequences")
    p.add_argument("--seed", type=int, default=0, help="seeds the parameters, the batches and the held-out set")
    p.add_argument("--out", default="runs/lesson_gqa", help="folder for gqa.png and results.json")
    args = p.parse_args(argv)
    if 64 % args.num_heads:
        p.error(f"--num-heads {args.num_heads} must divide the width 64")
    return args


def kv_heads_to_try(heads):
    """h, h/2, h/4, …, 1 (those that divide h)."""
    out, n = [], heads
    while n >= 1:
        if heads % n == 0:
            out.append(n)
        n //= 2
    return out if out[-1] == 1 else out + [1]


def kv_cache_bytes(args, kv_heads):
    """Bytes of keys and values a greedy decoder keeps for one batch of the copy task: per decoder layer, K and V of
    the self-attention over the T = max_len + 1 output positions and of the cross-attention over the S = max_len
    source positions, each (B, h_kv, ·, d_h) float32."""
    head_dim = args.embed_dim // args.num_heads
    positions = (args.max_len + 1) + args.max_len                       # T + S
    return args.layers * 2 * args.batch_size * kv_heads * positions * head_dim * 4


def main(argv=None):
    """Build, train and evaluate each variant; print the table; write gqa.png and results.json."""
    args = parse_args(argv)
    rows = []
    print(f"copy task, d = 64, h = {args.num_heads} query heads, {args.steps} steps each (seed {args.seed})")
    print(f"{'h_kv':>5} {'group':>6} {'parameters':>11} {'attention params':>17} {'KV cache':>10} {'exact match':>12}")
    for kv_heads in kv_heads_to_try(args.num_heads):
        run = copy_task.parse_args(["--num-heads", str(args.num_heads), "--num-kv-heads", str(kv_heads),
                                    "--steps", str(args.steps), "--target", "0", "--eval-every", "0",
                                    "--eval-size", str(args.eval_size), "--seed", str(args.seed), "--no-progress",
                                    "--out", args.out])
        manual_seed(run.seed)
        model = copy_task.build_model(run)
        attention_params = sum(p.size for name, p in model.named_parameters() if "attention.W_" in name)
        copy_task.train(model, run, progress=False)
        exact, token_acc, _, _ = copy_task.evaluate(model, run)
        rows.append({"num_kv_heads": kv_heads, "group": args.num_heads // kv_heads,
                     "parameters": model.num_parameters(), "attention_parameters": attention_params,
                     "kv_cache_bytes": kv_cache_bytes(run, kv_heads), "exact_match": exact,
                     "token_accuracy": token_acc})
        r = rows[-1]
        print(f"{kv_heads:>5} {r['group']:>6} {r['parameters']:>11,} {attention_params:>17,} "
              f"{r['kv_cache_bytes'] / 1024:>8.0f} KB {exact:>11.1%}")
    full = rows[0]
    for r in rows:
        r["kv_cache_vs_mha"] = r["kv_cache_bytes"] / full["kv_cache_bytes"]
        r["parameters_saved"] = full["parameters"] - r["parameters"]
    ratios = ", ".join(format(r["kv_cache_vs_mha"], ".3g") for r in rows)
    saved = ", ".join(format(r["parameters_saved"], ",") for r in rows)
    print(f"KV cache against h_kv = h: {ratios}; parameters saved: {saved}")
    os.makedirs(args.out, exist_ok=True)
    plot(rows, args, os.path.join(args.out, "gqa.png"))
    results = {"config": vars(args), "rows": rows}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}/gqa.png, results.json")
    return results


def plot(rows, args, path):
    """KV-cache size and held-out accuracy against h_kv, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(r["num_kv_heads"]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.bar(labels, [r["kv_cache_bytes"] / 1024 for r in rows], color="tab:blue")
    left.set(xlabel="key/value heads h_kv", ylabel="KV cache (KB, one batch)",
             title=f"cache for decoding: ∝ h_kv (h = {args.num_heads})")
    right.bar(labels, [100 * r["exact_match"] for r in rows], color="tab:green")
    right.set(xlabel="key/value heads h_kv", ylabel="held-out exact match (%)", ylim=(0, 100),
              title=f"after {args.steps} steps each")
    for ax in (left, right):
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
