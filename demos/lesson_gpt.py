"""Lesson: a decoder-only GPT, trained from scratch to copy what it has read.

THE QUESTION. Encoder–decoder models read the source with one stack and write with another. A GPT has ONE causal
stack that reads and writes in the same sequence. Can it learn to repeat, token for token, what came before a
separator — and where does it look while doing it?

THE CLAIM. Yes, exactly: the sequence x_1 … x_n SEP x_1 … x_n is predictable from the separator on: the query
at position t, writing token t + 1, needs the token at t − n. A causal attention head can learn to look back n
positions — with rotary positions the score depends only on that offset, so the look-back is one pattern for every
position. Greedy generation from the prompt x_1 … x_n SEP (with the key/value cache) reproduces held-out sequences
exactly, and the last layer's attention shows the stripe n below the diagonal.

HOW THE RUN SHOWS IT. A GPT (d = 64, 4 heads, 2 layers, RoPE by default) is trained with Adam on random sequences,
the loss on the copied half only; it prints the loss and the exact-match rate of greedy generation on 500 held-out
prompts, and writes ``gpt_attention.png`` (every head of the last layer on one held-out sequence, tokens on the axes)
and ``results.json``.

    python -m demos.lesson_gpt              # about 15 s on 2 cores
"""
import argparse
import json
import os
import time

from autograd import backend
from autograd.backend import host as np
from demos.cli import positive_int
from demos.next_token import IGNORE, train_next_token
from minattn import GPT, Tensor, manual_seed, no_grad
from minattn.gpt import POSITIONS


def parse_args(argv=None):
    """The command line (see --help)."""
    p = argparse.ArgumentParser(prog="python -m demos.lesson_gpt", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--length", type=positive_int, default=8, help="tokens n before the separator")
    p.add_argument("--symbols", type=positive_int, default=10, help="token ids 0 .. symbols-1; the separator is next")
    p.add_argument("--positions", choices=POSITIONS, default="rope", help="how the GPT knows positions")
    p.add_argument("--steps", type=positive_int, default=600, help="training steps of 64 sequences")
    p.add_argument("--eval-size", type=positive_int, default=500, help="held-out prompts")
    p.add_argument("--seed", type=int, default=0, help="seeds the parameters and the data")
    p.add_argument("--out", default="runs/lesson_gpt", help="folder for gpt_attention.png and results.json")
    return p.parse_args(argv)


def make_batch(rng, size, args):
    """Inputs x SEP x[:-1] and targets (IGNORE … x): predict the copy, token by token. Host int arrays (size, 2n)."""
    x = rng.integers(0, args.symbols, (size, args.length))                         # (B, n)
    sep = np.full((size, 1), args.symbols)                                          # (B, 1)
    sequence = np.concatenate([x, sep, x], axis=1)                                  # (B, 2n + 1)
    targets = sequence[:, 1:].copy()                                                # (B, 2n) next tokens
    targets[:, :args.length - 1] = IGNORE                                           # no loss on the random half
    return sequence[:, :-1], targets


def exact_match(model, args):
    """Greedy generation (cached) from x SEP on held-out prompts: the fraction copied exactly."""
    x, _ = make_batch(np.random.default_rng([args.seed, 2]), args.eval_size, args)
    prompts = x[:, :args.length + 1]                                                # (B, n + 1)
    generated = model.generate(backend.asarray(prompts), args.length, temperature=0)   # (B, 2n + 1)
    return float((generated[:, args.length + 1:] == prompts[:, :args.length]).all(axis=1).mean())


def main(argv=None):
    """Train, evaluate, print, and write the figure and results.json."""
    args = parse_args(argv)
    manual_seed(args.seed)
    model = GPT(args.symbols + 1, 2 * args.length + 1, embed_dim=64, num_heads=4, num_layers=2,
                positions=args.positions)
    rng = np.random.default_rng([args.seed, 1])
    start = time.perf_counter()
    losses = train_next_token(model, lambda: make_batch(rng, 64, args), args.steps, log_every=100)
    seconds = time.perf_counter() - start
    exact = exact_match(model, args)
    print(f"GPT ({model.num_parameters():,} parameters, {args.positions} positions): {args.steps} steps in "
          f"{seconds:.1f} s; greedy generation copies {exact:.1%} of {args.eval_size} held-out sequences exactly")
    os.makedirs(args.out, exist_ok=True)
    plot(model, args, os.path.join(args.out, "gpt_attention.png"))
    results = {"config": vars(args), "exact_match": exact, "train_seconds": round(seconds, 2), "losses": losses,
               "num_parameters": model.num_parameters()}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}/gpt_attention.png, results.json")
    return results


def plot(model, args, path):
    """Every head of the last layer on one held-out sequence (a forward pass in eval mode)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, _ = make_batch(np.random.default_rng([args.seed, 3]), 1, args)
    model.eval()
    with no_grad():
        model(Tensor(backend.asarray(x)))
    model.train()
    weights = backend.to_numpy(model.blocks[-1].attention.attention_weights.data)[0]   # (h, T, T)
    labels = [str(t) if t < args.symbols else "SEP" for t in x[0]]
    fig, axes = plt.subplots(1, weights.shape[0], figsize=(3.2 * weights.shape[0], 3.9))
    for h, ax in enumerate(axes):
        ax.imshow(weights[h], cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.set(title=f"head {h}", xlabel="key (read)")
    axes[0].set_ylabel("query (writing the next token)")
    fig.suptitle(f"GPT, last layer ({args.positions} positions): copying looks back n = {args.length} positions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
