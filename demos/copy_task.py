"""Train an encoder–decoder Transformer, built on minattn's own autograd, to copy random symbol sequences.

The question it answers: can attention learn to move information by position? The source is a random sequence of
VARIABLE length, padded to a fixed width (so the padding masks matter); the decoder must reproduce it and stop with
EOS. Cross-attention must learn to look at source position i when writing output position i — the heatmaps written
at the end show that diagonal.

    python -m demos.copy_task                  # default run (README states the measured accuracy and time)
    python -m demos.copy_task --steps 300      # a quick look
    python -m demos.copy_task --task reverse   # the anti-diagonal instead
    python -m demos.copy_task --attention talking-heads --num-heads-qk 2 --num-heads-v 8

It prints loss as it trains (progress bar), then exact-sequence and token accuracy of greedy decoding on held-out
sequences and a few decoded examples, and writes to --out: loss_curve.png, cross_attention.png, metrics.json.

Held-out means drawn from a random stream that training never reads. With 13 symbols there are 13^n sequences of
length n, so the shortest ones also turn up in training by chance; from length 5 on (371,293 sequences) a repeat
is rare.
"""
import argparse
import json
import os
import time

from autograd import backend
from minattn import (Adam, Tensor, Transformer, WarmupSchedule, checkpoint, clip_grad_norm_, manual_seed, no_grad,
                     tasks)
from minattn import functional as F
from minattn.transformer import ATTENTIONS
from demos.cli import positive_int


LOG_EVERY = 10
"""Steps between two points of the loss curve."""


def parse_args(argv=None):
    """The command line (see --help)."""
    p = argparse.ArgumentParser(prog="python -m demos.copy_task", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", choices=tasks.TASKS, default="copy", help="copy the source, or reverse it")
    p.add_argument("--steps", type=positive_int, default=3000, help="training steps (batches)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="sequences per training step")
    p.add_argument("--seed", type=int, default=0, help="seeds the parameters, the data and dropout")
    p.add_argument("--vocab-size", type=positive_int, default=16, help="symbols + 3 special tokens (PAD, BOS, EOS)")
    p.add_argument("--min-len", type=positive_int, default=2, help="shortest source sequence")
    p.add_argument("--max-len", type=positive_int, default=12, help="longest source sequence (the padded width)")
    p.add_argument("--embed-dim", type=positive_int, default=64, help="model width d")
    p.add_argument("--num-heads", type=positive_int, default=4,
                   help="attention heads (softmax heads h for talking heads); must divide --embed-dim")
    p.add_argument("--attention", choices=ATTENTIONS, default="mha",
                   help="multi-head attention, or talking-heads attention (Shazeer et al. 2020) in every layer")
    p.add_argument("--num-heads-qk", type=positive_int, default=None,
                   help="talking heads: query/key heads h_k (default --num-heads)")
    p.add_argument("--num-heads-v", type=positive_int, default=None,
                   help="talking heads: value heads h_v (default --num-heads)")
    p.add_argument("--talking-heads-bias", action="store_true", help="talking heads: biases on P_l and P_w (timm)")
    p.add_argument("--qk-norm", action="store_true", help="mha: LayerNorm on q and k per head (timm, ViT-22B)")
    p.add_argument("--share-qk", action="store_true", help="tie W_k to W_q in every attention layer")
    p.add_argument("--ffn-hidden", type=positive_int, default=128, help="hidden width of the feed-forward sublayers")
    p.add_argument("--layers", type=positive_int, default=2, help="encoder layers = decoder layers")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout probability everywhere (training only)")
    p.add_argument("--lr-factor", type=float, default=0.5, help="scales the warm-up schedule's learning rate")
    p.add_argument("--warmup", type=positive_int, default=200, help="warm-up steps of the schedule")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping threshold")
    p.add_argument("--eval-size", type=positive_int, default=1000, help="held-out sequences for the final evaluation")
    p.add_argument("--out", default="runs/copy_task", help="folder for the plots and metrics.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="N",
                   help="write --out/checkpoint.npz every N steps and at the last one (atomically)")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="continue from a checkpoint: model, optimizer, schedule, data and dropout streams restored, "
                        "so on NumPy the losses equal an uninterrupted run's bit for bit; --steps is the total")
    args = p.parse_args(argv)
    talking = args.num_heads_qk is not None or args.num_heads_v is not None or args.talking_heads_bias
    if talking and args.attention != "talking-heads":
        p.error("--num-heads-qk, --num-heads-v and --talking-heads-bias need --attention talking-heads")
    if args.qk_norm and args.attention != "mha":
        p.error("--qk-norm is an option of --attention mha")
    if args.embed_dim % args.num_heads:
        p.error(f"--embed-dim {args.embed_dim} must be divisible by --num-heads {args.num_heads}")
    return args


def attention_options(args):
    """The extra arguments of the attention layers that the command line asks for."""
    if args.attention == "talking-heads":
        return {"num_heads_qk": args.num_heads_qk, "num_heads_v": args.num_heads_v, "bias": args.talking_heads_bias,
                "share_qk": args.share_qk}
    return {"qk_norm": args.qk_norm, "share_qk": args.share_qk}


def to_device(batch):
    """Host NumPy batch → backend arrays (one copy per array on CuPy)."""
    return (backend.asarray(batch.src), backend.asarray(batch.src_valid_lens),
            backend.asarray(batch.tgt_in), backend.asarray(batch.tgt_out))


def train(model, args, progress=True, callback=None):
    """Teacher-forced training with Adam, the warm-up schedule and clipping; returns (steps, losses, seconds).

    ``callback(step)``, if given, runs after every optimizer step (the talking-heads demo evaluates there); its
    time is not counted in the seconds returned.
    """
    from tqdm import tqdm

    optimizer = Adam(model.parameters(), betas=(0.9, 0.98), eps=1e-9)
    schedule = WarmupSchedule(optimizer, args.embed_dim, args.warmup, args.lr_factor)
    rng = backend.new_host_rng([args.seed, 1])   # the training stream (parameters use manual_seed's stream)
    steps, losses = [], []
    first, earlier_seconds = 1, 0.0
    if getattr(args, "resume", None):
        first, steps, losses, earlier_seconds = resume(args.resume, model, optimizer, schedule, rng, args)
    every = getattr(args, "checkpoint_every", None)
    start = time.perf_counter() - earlier_seconds
    bar = tqdm(range(first, args.steps + 1), disable=not progress, desc=f"training ({backend.BACKEND})", unit="step",
               initial=first - 1, total=args.steps)
    for step in bar:
        src, lens, tgt_in, tgt_out = to_device(tasks.make_batch(rng, args.batch_size, args.vocab_size,
                                                                 args.min_len, args.max_len, args.task))
        logits = model(Tensor(src), Tensor(tgt_in), lens)                            # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=tasks.PAD)
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), args.clip)
        schedule.step()
        optimizer.step()
        if step % LOG_EVERY == 0 or step == args.steps:   # read the loss (a device sync on CuPy) every 10 steps
            steps.append(step)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{optimizer.lr:.2e}")
        if every is not None and (step % every == 0 or step == args.steps):   # not timed, like the callback
            paused = time.perf_counter()
            save_checkpoint(model, optimizer, schedule, rng, args, step, steps, losses, paused - start)
            start += time.perf_counter() - paused
        if callback is not None:
            paused = time.perf_counter()
            callback(step)
            start += time.perf_counter() - paused
    return steps, losses, time.perf_counter() - start


RUN_OPTIONS = ("steps", "eval_size", "out", "no_progress", "checkpoint_every", "resume")
"""Options that may change between a run and its resumption; every other option must be the checkpoint's."""


def save_checkpoint(model, optimizer, schedule, rng, args, step, steps, losses, seconds):
    """Write --out/checkpoint.npz: everything ``resume`` needs to continue exactly after ``step``.

    Besides the model and Adam's state: the schedule's step, the data stream's state (a NumPy Generator's
    ``bit_generator.state``, a dict of ints: stored as JSON), autograd's random streams (dropout masks), the
    configuration, the loss curve so far and the training seconds.
    """
    os.makedirs(args.out, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k not in RUN_OPTIONS}
    return checkpoint.save(os.path.join(args.out, "checkpoint.npz"), model, optimizer, step=step,
                           schedule_t=schedule.t, data_rng=rng.bit_generator.state, rng=checkpoint.rng_state(),
                           config=config, loss_curve={"step": steps, "loss": losses}, train_seconds=seconds)


def resume(path, model, optimizer, schedule, rng, args):
    """Restore a run from the checkpoint at ``path``; returns (first step to run, steps, losses, seconds so far).

    The checkpoint's configuration must equal this run's (except RUN_OPTIONS): ValueError naming each option that
    differs, or if the checkpoint is already past --steps. Checked before the model is touched.
    """
    extra = checkpoint.read_extra(path)
    now = {k: v for k, v in vars(args).items() if k not in RUN_OPTIONS}
    saved = extra.get("config", {})
    differ = [f"--{k.replace('_', '-')}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}"
              for k in sorted(set(now) | set(saved)) if saved.get(k) != now.get(k)]
    if differ:
        raise ValueError(f"--resume {path}: the checkpoint was trained with other options: " + "; ".join(differ))
    if extra["step"] > args.steps:
        raise ValueError(f"--resume {path}: the checkpoint is at step {extra['step']}, past --steps {args.steps}")
    loaded = checkpoint.load(path, model, optimizer)
    if (loaded["step"], loaded.get("config")) != (extra["step"], saved):   # a file replaced between the two reads
        raise ValueError(f"--resume {path}: the checkpoint changed while it was being read (a run still writing it?)")
    schedule.t = extra["schedule_t"]
    rng.bit_generator.state = extra["data_rng"]
    checkpoint.set_rng_state(extra["rng"])
    steps, losses = list(extra["loss_curve"]["step"]), list(extra["loss_curve"]["loss"])
    if steps and steps[-1] % LOG_EVERY:   # the stopped run logged its last step off the 10-step grid: drop it, so
        steps.pop()                       # the resumed curve is the uninterrupted run's
        losses.pop()
    return extra["step"] + 1, steps, losses, extra["train_seconds"]


def evaluate(model, args, batch_size=250, eval_size=None):
    """Greedy-decode ``eval_size`` (default ``args.eval_size``) held-out sequences; returns (exact_match,
    token_accuracy, examples, last batch). The same sequences every call for the same seed."""
    eval_size = args.eval_size if eval_size is None else eval_size
    rng = backend.new_host_rng([args.seed, 2])   # a stream the training never draws from
    exact = tokens_right = tokens_total = 0
    examples, done = [], 0
    while done < eval_size:
        n = min(batch_size, eval_size - done)
        batch = tasks.make_batch(rng, n, args.vocab_size, args.min_len, args.max_len, args.task)
        src, lens, _, _ = to_device(batch)
        pred = model.greedy_decode(Tensor(src), lens, tasks.BOS, tasks.EOS, args.max_len + 1)   # (n, max_len + 1)
        target = batch.tgt_out                                                                 # (n, max_len + 1)
        for i in range(n):
            length = int(batch.src_valid_lens[i]) + 1          # the symbols and EOS
            right = pred[i, :length] == target[i, :length]
            tokens_right += int(right.sum())
            tokens_total += length
            exact += bool(right.all())
            if len(examples) < 5:
                examples.append((tasks.strip(batch.src[i]), tasks.strip(pred[i]), bool(right.all())))
        done += n
    return exact / eval_size, tokens_right / tokens_total, examples, batch


def smooth(values, weight=0.1):
    """Exponential moving average (each point = 0.9 · previous + 0.1 · value): the trend through batch noise."""
    out, running = [], values[0]
    for value in values:
        running = (1 - weight) * running + weight * value
        out.append(running)
    return out


def plot(out, steps, losses, model, batch, args):
    """Write loss_curve.png and cross_attention.png (the last decoder block, each head, three examples)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, losses, alpha=0.35, label="every 10th batch")
    ax.plot(steps, smooth(losses), label="moving average")
    ax.legend()
    ax.set(yscale="log", xlabel="step", ylabel="cross-entropy (nats/token)", title=f"{args.task} task: training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss_curve.png"), dpi=120)
    plt.close(fig)

    examples = min(3, batch.src.shape[0])
    src, lens, tgt_in, _ = to_device(batch)
    model.eval()
    with no_grad():
        model(Tensor(src[:examples]), Tensor(tgt_in[:examples]), lens[:examples])       # teacher-forced pass
    weights = backend.to_numpy(model.cross_attention_weights()[-1].data)                  # (n, h, T, S)
    heads = weights.shape[1]
    fig, axes = plt.subplots(examples, heads, figsize=(2.6 * heads, 2.6 * examples), squeeze=False)
    for i in range(examples):
        n = int(batch.src_valid_lens[i])
        for h in range(heads):
            ax = axes[i][h]
            ax.imshow(weights[i, h, : n + 1, :n], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(n), [str(t) for t in batch.src[i, :n]], fontsize=6)
            ax.set_yticks(range(n + 1), [str(t) for t in list(batch.tgt_out[i, :n]) + ["EOS"]], fontsize=6)
            if i == 0:
                ax.set_title(f"head {h}", fontsize=9)
            if h == 0:
                ax.set_ylabel("output token")
            if i == examples - 1:
                ax.set_xlabel("source token")
    fig.suptitle(f"cross-attention, last decoder block ({args.task} task)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cross_attention.png"), dpi=120)
    plt.close(fig)


def build_model(args):
    """The Transformer the command line describes (parameters drawn from manual_seed's stream)."""
    return Transformer(args.vocab_size, args.vocab_size, args.embed_dim, args.num_heads, args.ffn_hidden,
                       args.layers, args.layers, args.dropout, max_len=args.max_len + 1,
                       attention=args.attention, attention_options=attention_options(args))


def main(argv=None):
    """Train, evaluate, print, and write the figures and metrics.json."""
    args = parse_args(argv)
    manual_seed(args.seed)
    model = build_model(args)
    print(f"{args.task} task, {args.attention} attention, on {backend.BACKEND}: {model.num_parameters():,} "
          f"parameters, lengths {args.min_len}..{args.max_len}, {args.vocab_size - tasks.NUM_SPECIAL} symbols")
    steps, losses, seconds = train(model, args, progress=not args.no_progress)
    exact, token_acc, examples, batch = evaluate(model, args)
    print(f"trained {args.steps} steps in {seconds:.1f} s; final loss {losses[-1]:.4f}")
    print(f"held-out ({args.eval_size} sequences, greedy decoding): exact-sequence accuracy {exact:.1%}, "
          f"token accuracy {token_acc:.1%}")
    for src, pred, correct in examples:
        mark = "ok " if correct else "ERR"
        print(f"  {mark} source {src}\n      output {pred}")
    os.makedirs(args.out, exist_ok=True)
    plot(args.out, steps, losses, model, batch, args)
    metrics = {"exact_match": exact, "token_accuracy": token_acc, "final_loss": losses[-1], "steps": args.steps,
               "train_seconds": round(seconds, 2), "backend": backend.BACKEND, "config": vars(args),
               "num_parameters": model.num_parameters(), "loss_curve": {"step": steps, "loss": losses}}
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"wrote {args.out}/loss_curve.png, cross_attention.png, metrics.json")
    return metrics


if __name__ == "__main__":
    main()
