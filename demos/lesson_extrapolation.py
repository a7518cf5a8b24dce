"""Lesson: which positions let a model read sequences longer than it was trained on?

THE QUESTION. A GPT trained on sequences of length L is asked to read 2L and 4L. Its positions are learned vectors,
sinusoids, rotations (RoPE) or distance biases (ALiBi). Which still work past L?

THE CLAIM. On a task that needs only a RELATIVE position — at every position, name the token that came D = 2
positions earlier — a model extrapolates as far as its positions stay relative, and only if they can express the
offset at all. Learned positions have never trained their rows past L (noise there): accuracy past L falls to
chance. Sinusoids are defined everywhere, but every position past L is an absolute vector the layers never met:
chance too. RoPE's scores depend only on offsets (lesson 9), so the same "two back" pattern works past L — in part,
since at longer range unseen offsets also enter the softmax. ALiBi adds only −m·distance: its accuracy does not
change with length at all (it extrapolates), but a bias that only falls with distance cannot single out "exactly
two back" over the nearer keys, so on this task it learns little (Press et al. 2022 measure perplexity, where
nearer is better).

HOW THE RUN SHOWS IT. The same GPT (d = 64, 4 heads, 2 layers) with each kind of position is trained on random
sequences of length L (same seed, same batches), then its accuracy is measured on held-out sequences of length L,
2L and 4L at the positions past L. It prints one table and writes ``extrapolation.png`` and ``results.json``.

    python -m demos.lesson_extrapolation            # about 40 s on 2 cores
"""
import argparse
import json
import os

from autograd import backend
from autograd.backend import host as np
from demos.cli import positive_int
from demos.next_token import IGNORE, train_next_token
from minattn import GPT, Tensor, manual_seed, no_grad
from minattn.gpt import POSITIONS


def parse_args(argv=None):
    """The command line (see --help)."""
    p = argparse.ArgumentParser(prog="python -m demos.lesson_extrapolation", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--length", type=positive_int, default=16, help="training length L")
    p.add_argument("--delay", type=positive_int, default=2, help="D: name the token D positions back")
    p.add_argument("--symbols", type=positive_int, default=10, help="token ids 0 .. symbols-1")
    p.add_argument("--steps", type=positive_int, default=400, help="training steps of 64 sequences, per model")
    p.add_argument("--eval-size", type=positive_int, default=200, help="held-out sequences per length")
    p.add_argument("--seed", type=int, default=0, help="seeds the parameters and the data")
    p.add_argument("--out", default="runs/lesson_extrapolation", help="folder for the figure and results.json")
    return p.parse_args(argv)


def make_batch(rng, size, length, args):
    """Random tokens (size, length) and targets: the token ``delay`` positions earlier (IGNORE where none is)."""
    x = rng.integers(0, args.symbols, (size, length))                              # (B, T)
    y = np.full_like(x, IGNORE)
    y[:, args.delay:] = x[:, :-args.delay]                                          # y_t = x_(t − D)
    return x, y


def accuracy_past(model, x, y, start):
    """Next-token accuracy at positions ≥ start (greedy argmax of one forward pass, eval mode)."""
    model.eval()
    with no_grad():
        pred = backend.to_numpy(model(Tensor(backend.asarray(x))).data).argmax(-1)  # (B, T)
    model.train()
    return float((pred[:, start:] == y[:, start:]).mean())


def main(argv=None):
    """Train one GPT per kind of position; measure; print the table; write the figure and results.json."""
    args = parse_args(argv)
    lengths = (args.length, 2 * args.length, 4 * args.length)
    results = {}
    print(f"task: name the token {args.delay} back; trained on length L = {args.length}; accuracy at positions past "
          f"L (at L itself: positions past {args.delay})")
    print(f"{'positions':>11} " + " ".join(f"{'L = ' + str(n):>9}" for n in lengths))
    for positions in POSITIONS:
        manual_seed(args.seed)
        model = GPT(args.symbols, 4 * args.length, embed_dim=64, num_heads=4, num_layers=2, positions=positions)
        rng = np.random.default_rng([args.seed, 1])                                 # the same batches for all
        train_next_token(model, lambda: make_batch(rng, 64, args.length, args), args.steps)
        held_out = np.random.default_rng([args.seed, 2])
        row = {}
        for n in lengths:
            x, y = make_batch(held_out, args.eval_size, n, args)
            row[n] = accuracy_past(model, x, y, args.length if n > args.length else args.delay)
        results[positions] = row
        print(f"{positions:>11} " + " ".join(f"{row[n]:>9.1%}" for n in lengths))
    os.makedirs(args.out, exist_ok=True)
    plot(results, lengths, args, os.path.join(args.out, "extrapolation.png"))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        accuracy = {k: {str(n): v for n, v in r.items()} for k, r in results.items()}
        json.dump({"config": vars(args), "accuracy": accuracy}, f, indent=2)
    print(f"wrote {args.out}/extrapolation.png, results.json")
    return results


def plot(results, lengths, args, path):
    """Accuracy against the evaluated length, one line per kind of position."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for positions, row in results.items():
        ax.plot(range(len(lengths)), [100 * row[n] for n in lengths], marker="o", label=positions)
    ax.axhline(100 / args.symbols, color="gray", ls="--", lw=1, label="chance")
    ax.set(xticks=range(len(lengths)), xticklabels=[f"L = {n}" for n in lengths], ylim=(0, 102),
           xlabel="sequence length (trained on the first)", ylabel="accuracy past the training length (%)",
           title=f"name the token {args.delay} back: which positions extrapolate?")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
