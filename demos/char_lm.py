"""Train a character-level GPT on real text, with every gradient written by hand, and sample from it.

The default corpus is already on every machine with Python: the English prose of the standard library's
``pydoc_data.topics`` (the text behind ``help('topics')``: 464,970 characters, 103 distinct; © Python Software
Foundation, PSF License). ``--data PATH`` trains on any UTF-8 text file instead (e.g. tinyshakespeare, to compare
with nanoGPT's "baby GPT": 4 layers, 4 heads, width 128, block 64, batch 12, 2,000 steps, loss ~1.88). The
optimisation is nanoGPT's recipe too: GPT-2's initialisation (``GPT(init="gpt2")``), Adam with β₂ = 0.99, the
learning rate warmed up over 100 steps to 1e-3 and decayed along a cosine to 1e-4 at step 2,000
(``minattn.CosineSchedule``), gradients clipped at norm 1.

The last 10% of the text is held out (as nanoGPT). Every --eval-every steps the loss on fixed train and validation
batches is printed in nats and bits per character, beside the validation loss of a bigram model counted on the
training split — the floor any model that uses more than one character of context must beat. At the end it prints
samples (temperature, top-k, top-p; ``--seed`` makes them repeat), generated with the key/value cache, and writes to
--out: loss_curve.png (train and validation against the bigram floor), attention.png (every head of the last layer
on one validation line, characters on the axes) and metrics.json.

    python -m demos.char_lm                       # the default corpus and model
    python -m demos.char_lm --data input.txt      # any UTF-8 text
"""
import argparse
import json
import math
import os
import time

from tqdm import tqdm

from autograd import backend
from autograd.backend import host as np
from demos.cli import positive_int
from demos.next_token import train_next_token
from minattn import GPT, Adam, CosineSchedule, Tensor, checkpoint, manual_seed, no_grad
from minattn import functional as F
from minattn.gpt import INITS, POSITIONS, check_sampling


def parse_args(argv=None):
    """The command line (see --help)."""
    p = argparse.ArgumentParser(prog="python -m demos.char_lm", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help="a UTF-8 text file (default: Python's pydoc_data.topics)")
    p.add_argument("--steps", type=positive_int, default=2000, help="training steps")
    p.add_argument("--batch-size", type=positive_int, default=12, help="sequences per step")
    p.add_argument("--block-size", type=positive_int, default=64, help="characters of context")
    p.add_argument("--embed-dim", type=positive_int, default=128, help="model width d")
    p.add_argument("--num-heads", type=positive_int, default=4, help="attention heads")
    p.add_argument("--layers", type=positive_int, default=4, help="Transformer blocks")
    p.add_argument("--positions", choices=POSITIONS, default="learned", help="how the model knows positions")
    p.add_argument("--init", choices=INITS, default="gpt2",
                   help="gpt2: weights N(0, 0.02²), residual projections scaled by 1/√(2·layers), as nanoGPT")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's (peak) learning rate")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine",
                   help="cosine: nanoGPT's linear warm-up then cosine decay to --min-lr (minattn.CosineSchedule)")
    p.add_argument("--warmup-steps", type=int, default=100, help="steps of linear warm-up (cosine schedule)")
    p.add_argument("--lr-decay-steps", type=positive_int, default=2000,
                   help="the step where the cosine reaches --min-lr (nanoGPT's lr_decay_iters)")
    p.add_argument("--min-lr", type=float, default=1e-4, help="the learning rate after the decay (cosine schedule)")
    p.add_argument("--beta2", type=float, default=0.99, help="Adam's β₂ (nanoGPT's, for small batches)")
    p.add_argument("--eval-every", type=positive_int, default=250, help="steps between two loss measurements")
    p.add_argument("--eval-batches", type=positive_int, default=20, help="fixed batches per loss measurement")
    p.add_argument("--samples", type=positive_int, default=2, help="samples printed at the end")
    p.add_argument("--sample-every", type=positive_int, default=None, metavar="N",
                   help="also print one sample after every measurement at a multiple of N steps")
    p.add_argument("--sample-length", type=positive_int, default=200, help="characters per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0: greedy)")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample among the k likeliest characters")
    p.add_argument("--top-p", type=float, default=None, help="sample from the nucleus of probability p")
    p.add_argument("--seed", type=int, default=0, help="seeds the parameters, the batches and the samples")
    p.add_argument("--out", default="runs/char_lm", help="folder for the figures and metrics.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="N",
                   help="write --out/checkpoint.npz every N steps (a multiple of --eval-every) and at the last one")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="continue from a checkpoint: model, Adam, the batch stream and the loss curve restored, so the "
                        "run equals an uninterrupted one bit for bit (NumPy); --steps is the total")
    args = p.parse_args(argv)
    if args.checkpoint_every is not None and args.checkpoint_every % args.eval_every:
        p.error(f"--checkpoint-every {args.checkpoint_every} must be a multiple of --eval-every {args.eval_every}")
    if args.lr_schedule == "cosine" and not 0 <= args.warmup_steps < args.lr_decay_steps:
        p.error(f"--warmup-steps {args.warmup_steps} must be >= 0 and below --lr-decay-steps {args.lr_decay_steps}")
    if args.lr_schedule == "cosine" and not 0 <= args.min_lr <= args.lr:
        p.error(f"--min-lr {args.min_lr} must be >= 0 and at most --lr {args.lr}")
    if args.embed_dim % args.num_heads:
        p.error(f"--embed-dim {args.embed_dim} must be divisible by --num-heads {args.num_heads}")
    try:                                                    # now, not after the training run that samples at its end
        check_sampling(args.temperature, args.top_k, args.top_p, "demos.char_lm")
    except (TypeError, ValueError) as err:
        p.error(str(err))
    return args


def load_text(path):
    """The corpus: the file at ``path`` (UTF-8), or the standard library's pydoc topics."""
    if path is None:
        from pydoc_data.topics import topics
        return "".join(topics[name] for name in sorted(topics))
    with open(path, encoding="utf-8") as f:
        return f.read()


def prepare(text):
    """(chars, encode, train, val): the sorted distinct characters, the map character → id, and the text's ids cut
    into the first 90% and the last 10% (held out, as nanoGPT)."""
    chars = sorted(set(text))
    encode = {c: i for i, c in enumerate(chars)}
    data = np.array([encode[c] for c in text], dtype=np.int64)
    cut = int(0.9 * len(data))
    return chars, encode, data[:cut], data[cut:]


def build(args, vocab_size):
    """(model, optimizer, schedule): the GPT, Adam and learning-rate schedule of the command line (the schedule is
    None for --lr-schedule constant). Draws the parameters from the current seed."""
    model = GPT(vocab_size, args.block_size, args.embed_dim, args.num_heads, args.layers, positions=args.positions,
                init=args.init)
    optimizer = Adam(model.parameters(), lr=args.lr, betas=(0.9, args.beta2))
    schedule = None if args.lr_schedule == "constant" else \
        CosineSchedule(optimizer, args.lr, args.warmup_steps, args.lr_decay_steps, args.min_lr)
    return model, optimizer, schedule


def bigram_loss(train, val, vocab_size):
    """Validation cross-entropy (nats per character) of character bigrams counted on ``train`` (add-one smoothing)."""
    counts = np.ones((vocab_size, vocab_size))
    np.add.at(counts, (train[:-1], train[1:]), 1)
    log_p = np.log(counts / counts.sum(axis=1, keepdims=True))
    return float(-log_p[val[:-1], val[1:]].mean())


def batch_at(data, starts, block):
    """Inputs data[s : s + block] and targets data[s + 1 : s + block + 1] for each start: (B, block) int arrays."""
    index = starts[:, None] + np.arange(block)
    return data[index], data[index + 1]


def mean_loss(model, batches):
    """Mean cross-entropy (nats per character) over fixed batches, in eval mode without a graph."""
    model.eval()
    with no_grad():
        losses = [F.cross_entropy(model(Tensor(backend.asarray(x))).reshape(-1, model.vocab_size),
                                  backend.asarray(y.reshape(-1))).item() for x, y in batches]
    model.train()
    return float(np.mean(losses))


RUN_OPTIONS = ("steps", "out", "no_progress", "checkpoint_every", "resume", "samples", "sample_every", "sample_length",
               "temperature", "top_k", "top_p")
"""Options that may change between a run and its resumption; every other option must be the checkpoint's."""


def save_checkpoint(model, optimizer, rng, args, trained, curve, seconds):
    """--out/checkpoint.npz: the model, Adam, the batch stream, autograd's random streams, the curve and the time."""
    config = {k: v for k, v in vars(args).items() if k not in RUN_OPTIONS}
    checkpoint.save(os.path.join(args.out, "checkpoint.npz"), model, optimizer, step=trained,
                    data_rng=rng.bit_generator.state, rng=checkpoint.rng_state(), config=config, curve=curve,
                    train_seconds=seconds)


def resume(path, model, optimizer, rng, args):
    """Restore a run from ``path``: (steps trained, curve, seconds). ValueError if it was trained with other options
    or is past --steps (checked before the model is touched)."""
    extra = checkpoint.read_extra(path)
    now = {k: v for k, v in vars(args).items() if k not in RUN_OPTIONS}
    differ = [k for k in sorted(set(now) | set(extra["config"])) if now.get(k) != extra["config"].get(k)]
    if differ:
        raise ValueError(f"--resume {path}: the checkpoint was trained with other options: {', '.join(differ)}")
    if extra["step"] > args.steps:
        raise ValueError(f"--resume {path}: the checkpoint is at step {extra['step']}, past --steps {args.steps}")
    checkpoint.load(path, model, optimizer)
    rng.bit_generator.state = extra["data_rng"]
    checkpoint.set_rng_state(extra["rng"])
    return extra["step"], extra["curve"], extra["train_seconds"]


def sample(model, encode, args, count):
    """``count`` samples of --sample-length characters after a newline, with the KV cache (host int arrays)."""
    prompt = backend.asarray(np.array([[encode.get("\n", 0)]] * count))
    return model.generate(prompt, args.sample_length, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, seed=args.seed)               # (crops the context past block_size)


def main(argv=None):
    """Load, train, measure, sample, and write the figures and metrics.json."""
    args = parse_args(argv)
    text = load_text(args.data)
    chars, encode, train, val = prepare(text)
    if len(val) <= args.block_size + 1:
        raise SystemExit(f"the text is too short: {len(text)} characters leave {len(val)} for validation")
    rng = np.random.default_rng([args.seed, 1])
    fixed = np.random.default_rng([args.seed, 2])
    eval_sets = {name: [batch_at(split, fixed.integers(0, len(split) - args.block_size - 1, args.batch_size),
                                 args.block_size) for _ in range(args.eval_batches)]
                 for name, split in (("train", train), ("val", val))}
    floor = bigram_loss(train, val, len(chars))
    manual_seed(args.seed)
    model, optimizer, schedule = build(args, len(chars))
    print(f"{len(text):,} characters ({len(chars)} distinct; {len(train):,} train, {len(val):,} validation), "
          f"GPT of {model.num_parameters():,} parameters; bigram floor on validation: {floor:.4f} nats "
          f"({floor / math.log(2):.3f} bits) per character")
    curve, trained, seconds = {"step": [], "train": [], "val": []}, 0, 0.0
    if args.resume:
        trained, curve, seconds = resume(args.resume, model, optimizer, rng, args)
        if schedule is not None:
            schedule.t = trained                            # the lr of step t depends on t alone
    bar = tqdm(total=args.steps, initial=trained, disable=args.no_progress, desc="training", unit="step")
    tokens_per_step = args.batch_size * args.block_size

    def show(loss):                                         # the bar: loss every 10 steps (a sync on CuPy)
        if bar.disable:                                     # --no-progress: no bar to show it on, no sync
            return
        bar.update(1)
        if bar.n % 10 == 0:
            rate = bar.format_dict.get("rate") or 0.0
            bar.set_postfix(loss=f"{loss.item():.3f}", tokens_per_s=f"{rate * tokens_per_step:,.0f}")

    while trained < args.steps:
        chunk = min(args.eval_every, args.steps - trained)
        start = time.perf_counter()
        train_next_token(model, lambda: batch_at(train, rng.integers(0, len(train) - args.block_size - 1,
                                                                     args.batch_size), args.block_size),
                         chunk, optimizer=optimizer, on_step=show, schedule=schedule)
        seconds += time.perf_counter() - start
        trained += chunk
        curve["step"].append(trained)
        curve["train"].append(mean_loss(model, eval_sets["train"]))
        curve["val"].append(mean_loss(model, eval_sets["val"]))
        speed = trained * args.batch_size * args.block_size / seconds              # tokens per second
        bar.write(f"step {trained}: train {curve['train'][-1]:.4f}, val {curve['val'][-1]:.4f} nats/char "
              f"({curve['val'][-1] / math.log(2):.3f} bits); {speed:,.0f} tokens/s")
        if args.checkpoint_every and (trained % args.checkpoint_every == 0 or trained == args.steps):
            os.makedirs(args.out, exist_ok=True)
            save_checkpoint(model, optimizer, rng, args, trained, curve, seconds)
        if args.sample_every and trained % args.sample_every == 0:
            bar.write("--- sample ---\n" + "".join(chars[i] for i in sample(model, encode, args, 1)[0][1:]))
    bar.close()
    samples = []
    for row in sample(model, encode, args, args.samples):
        samples.append("".join(chars[i] for i in row[1:]))
        print("--- sample ---\n" + samples[-1])
    metrics = {"val_loss": curve["val"][-1], "train_loss": curve["train"][-1], "bigram_val_loss": floor,
               "val_bits_per_char": curve["val"][-1] / math.log(2), "steps": trained,
               "train_seconds": round(seconds, 2),
               "tokens_per_second": trained * args.batch_size * args.block_size / seconds, "curve": curve,
               "samples": samples, "num_parameters": model.num_parameters(), "corpus_characters": len(text),
               "config": vars(args)}
    os.makedirs(args.out, exist_ok=True)
    plot(curve, floor, val, chars, model, args)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    below = 1 - metrics["val_loss"] / floor
    side = f"{below:.0%} below" if below >= 0 else f"{-below:.0%} above"
    print(f"validation {metrics['val_loss']:.4f} nats/char, {side} the bigram floor; wrote {args.out}/"
          "loss_curve.png, attention.png, metrics.json")
    return metrics


def plot(curve, floor, val, chars, model, args):
    """loss_curve.png and attention.png (the last layer's heads on the first validation block)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve["step"], curve["train"], marker=".", label="train")
    ax.plot(curve["step"], curve["val"], marker=".", label="validation")
    ax.axhline(floor, color="gray", ls="--", label="bigram floor (validation)")
    ax.set(xlabel="step", ylabel="cross-entropy (nats / character)", title="character-level GPT")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "loss_curve.png"), dpi=120)
    plt.close(fig)

    line = val[:min(args.block_size, 40)]
    model.eval()
    with no_grad():
        model(Tensor(backend.asarray(line[None])))
    model.train()
    weights = backend.to_numpy(model.blocks[-1].attention.attention_weights.data)[0]   # (h, T, T)
    labels = [repr(chars[i])[1:-1] for i in line]
    fig, axes = plt.subplots(1, weights.shape[0], figsize=(4 * weights.shape[0], 4.6), squeeze=False)
    for h, ax in enumerate(axes[0]):
        ax.imshow(weights[h], cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, fontsize=5)
        ax.set_yticks(range(len(labels)), labels, fontsize=5)
        ax.set_title(f"head {h}")
    fig.suptitle("last layer, one validation line: each character (row) reads the characters before it")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "attention.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
