"""Do talking heads help? Multi-head vs talking-heads attention, side by side, on the copy and reverse tasks.

The question: Shazeer et al. (2020) report that letting heads exchange information across the softmax helps most
when there are MANY heads of SMALL dimension — each head alone sees too little of q and k to score well. Here both
models get that regime (by default 16 heads of dimension 4 in a width-64 model), the same seeds, the same batches
and the same number of steps; only the attention layers differ (square P_l, P_w, no biases: the paper's form).

The run prints a table over several seeds — steps until greedy decoding first reaches 99% exact match on a
held-out set (checked every --eval-every steps; '—' if never within the budget) and the final exact match on
1,000 held-out sequences — and writes to --out: loss_curves.png (every run, both attentions), talking_heads_P.png
(the learned P_l and P_w of the first seed's last encoder layer) and results.json.

    python -m demos.talking_heads                       # about 5 minutes on 2 cores
    python -m demos.talking_heads --seeds 1 --steps 300 # a quick look
"""
import argparse
import json
import os
import statistics

from autograd import backend
from demos import copy_task
from demos.cli import positive_int
from minattn import manual_seed

ATTENTIONS = ("mha", "talking-heads")


def parse_args(argv=None):
    """The command line (see --help)."""
    p = argparse.ArgumentParser(prog="python -m demos.talking_heads", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=("copy", "reverse"), default=["copy", "reverse"], help="tasks to run")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds 0 .. N-1 for each model and task")
    p.add_argument("--steps", type=positive_int, default=1200, help="training steps per run (the budget)")
    p.add_argument("--embed-dim", type=positive_int, default=64, help="model width d")
    p.add_argument("--num-heads", type=positive_int, default=16, help="heads; head dim = d / heads")
    p.add_argument("--layers", type=positive_int, default=1, help="encoder layers = decoder layers")
    p.add_argument("--max-len", type=positive_int, default=8, help="longest sequence")
    p.add_argument("--lr-factor", type=float, default=0.5, help="scales the warm-up schedule's learning rate")
    p.add_argument("--eval-every", type=positive_int, default=50, help="steps between accuracy checks")
    p.add_argument("--eval-size", type=positive_int, default=200, help="sequences per accuracy check")
    p.add_argument("--out", default="runs/talking_heads", help="folder for the plots and results.json")
    return p.parse_args(argv)


def run_args(args, task, attention, seed):
    """The copy_task configuration of one run (copy_task's parser checks it)."""
    return copy_task.parse_args([
        "--task", task, "--attention", attention, "--seed", str(seed), "--steps", str(args.steps),
        "--embed-dim", str(args.embed_dim), "--num-heads", str(args.num_heads), "--ffn-hidden", str(2 * args.embed_dim),
        "--layers", str(args.layers), "--max-len", str(args.max_len), "--schedule", "noam", "--warmup", "100",
        "--lr-factor", str(args.lr_factor), "--target", "0", "--eval-every", "0", "--no-progress"])


def one_run(args, task, attention, seed):
    """Train one model; returns a dict with its loss curve, accuracy checks, steps to 99% and final accuracy."""
    config = run_args(args, task, attention, seed)
    manual_seed(seed)
    model = copy_task.build_model(config)
    checks = []

    def check(step):
        if step % args.eval_every == 0:
            exact = copy_task.evaluate(model, config, eval_size=args.eval_size)[0]
            checks.append((step, exact))

    run = copy_task.train(model, config, progress=False, callback=check)
    steps, losses, seconds = run.steps, run.losses, run.seconds
    reached = next((step for step, exact in checks if exact >= 0.99), None)
    final = copy_task.evaluate(model, config, eval_size=1000)[0]
    return {"task": task, "attention": attention, "seed": seed, "steps": steps, "losses": losses,
            "checks": checks, "steps_to_99": reached, "final_exact_match": final, "train_seconds": seconds,
            "parameters": model.num_parameters(), "model": model}


def table(runs, tasks):
    """The comparison table, as lines of text."""
    lines = [f"{'task':8} {'attention':14} {'params':>7} {'steps to 99% (per seed)':>26} {'median':>7} "
             f"{'final exact match (mean)':>25} {'s/run':>6}"]
    for task in tasks:
        for attention in ATTENTIONS:
            rs = [r for r in runs if r["task"] == task and r["attention"] == attention]
            reached = [r["steps_to_99"] for r in rs]
            shown = " ".join("—" if s is None else str(s) for s in reached)
            median = statistics.median([s if s is not None else float("inf") for s in reached])
            final = statistics.mean(r["final_exact_match"] for r in rs)
            seconds = statistics.mean(r["train_seconds"] for r in rs)
            lines.append(f"{task:8} {attention:14} {rs[0]['parameters']:>7,} {shown:>26} "
                         f"{'—' if median == float('inf') else int(median):>7} {final:>24.1%} {seconds:>6.1f}")
    return lines


def plot(out, runs, tasks):
    """loss_curves.png (one panel per task) and talking_heads_P.png (learned P_l, P_w)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"mha": "tab:blue", "talking-heads": "tab:orange"}
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for attention in ATTENTIONS:
            rs = [r for r in runs if r["task"] == task and r["attention"] == attention]
            curves = [copy_task.smooth(r["losses"]) for r in rs]
            for curve in curves:                                        # each seed, faint
                ax.plot(rs[0]["steps"], curve, color=colors[attention], alpha=0.25)
            mean = [statistics.mean(points) for points in zip(*curves)]
            ax.plot(rs[0]["steps"], mean, color=colors[attention], label=f"{attention} (mean of {len(rs)} seeds)")
        ax.set(yscale="log", xlabel="step", ylabel="training loss, centred rolling median", title=f"{task} task")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss_curves.png"), dpi=120)
    plt.close(fig)

    talking = [r for r in runs if r["attention"] == "talking-heads" and r["seed"] == 0]
    fig, axes = plt.subplots(len(talking), 2, figsize=(8, 4 * len(talking)), squeeze=False)
    for row, r in zip(axes, talking):
        layer = r["model"].encoder_blocks[-1].attention
        for ax, name, proj in ((row[0], "P_l (logits, before softmax)", layer.proj_l),
                               (row[1], "P_w (weights, after softmax)", layer.proj_w)):
            weight = backend.to_numpy(proj.weight.data)            # (out heads, in heads)
            limit = abs(weight).max()
            image = ax.imshow(weight, cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set(title=f"{r['task']}: {name}", xlabel="input head", ylabel="output head")
            fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle("learned talking-heads projections, last encoder layer, seed 0")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "talking_heads_P.png"), dpi=120)
    plt.close(fig)


def main(argv=None):
    """Run every (task, attention, seed), print the table, write the figures and results.json."""
    args = parse_args(argv)
    from tqdm import tqdm

    configs = [(t, a, s) for t in args.tasks for s in range(args.seeds) for a in ATTENTIONS]
    print(f"{len(configs)} runs of {args.steps} steps: width {args.embed_dim}, {args.num_heads} heads of dimension "
          f"{args.embed_dim // args.num_heads}, {args.layers}+{args.layers} layers, lengths up to {args.max_len}")
    runs = [one_run(args, *config) for config in tqdm(configs, desc="runs", unit="run")]
    lines = table(runs, args.tasks)
    print("\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    plot(args.out, runs, args.tasks)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"config": vars(args), "table": lines,
                   "runs": [{k: v for k, v in r.items() if k != "model"} for r in runs]}, f, indent=2)
    print(f"wrote {args.out}/loss_curves.png, talking_heads_P.png, results.json")
    return runs


if __name__ == "__main__":
    main()
