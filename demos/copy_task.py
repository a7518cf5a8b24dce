"""Train an encoder–decoder Transformer, built on minattn's own autograd, to copy random symbol sequences — until it
can.

The question it answers: can attention learn to move information by position? The source is a random sequence of
VARIABLE length, padded to a fixed width (so the padding masks matter); the decoder must reproduce it and stop with
EOS. Cross-attention must learn to look at source position i when writing output position i — the heatmaps written
at the end show that diagonal.

    python -m demos.copy_task                  # until 99% exact match on 1,000 held-out sequences (~10 s of training)
    python -m demos.copy_task --target 0 --steps 1000   # no early stop: train all 1,000 steps
    python -m demos.copy_task --task reverse   # the anti-diagonal instead
    python -m demos.copy_task --attention talking-heads --num-heads-qk 2 --num-heads-v 8

Training stops as soon as the exact-sequence accuracy on the --eval-size held-out sequences reaches --target
(checked every --eval-every steps), or at --steps, the cap; --target 0 never stops early. The check and the final
evaluation score the very same sequences, by the same definition: a sequence counts when greedy decoding writes
every symbol and the EOS right. The check gets that number from ONE teacher-forced pass (the argmax at every
position given the true prefix): a greedy decode is right exactly when every such argmax is right, since then each
step's prefix is the true one — and wrong otherwise, since the first wrong argmax is the first wrong greedy token.
When the check reaches the target, greedy decoding (``evaluate``) confirms it, so the final evaluation of a run that
stopped shows at least the target. Checks are not counted in the training seconds (they are reported apart). The
stop is chosen on the sequences it is reported on: after ~250 steps the accuracy wanders between about 97% and 100%
from check to check, so another 1,000 sequences may score a little lower.

The default recipe: Adam (betas 0.9, 0.98, eps 1e-9), the learning rate rising linearly to 1.5e-3 over 50 steps, then
decaying as 1/sqrt(step) (the Transformer's schedule with a short warm-up), gradients clipped at norm 1, a check every
20 steps. Measured on a 2-core x86-64 CPU with NumPy, seeds 0-4 reached 99% at step 260, 280, 300, 300, 340 (6-12 s
of training; a check takes ~0.1 s, one greedy decoding of the 1,000 sequences ~0.7 s). Tried against it, checking
every 10 steps: the old default (the Transformer's schedule peaking at 4.4e-3 at step 200: --lr-factor 0.5 --warmup
200) 610-760 steps; a constant 1e-3 after 50 warm-up steps 370-590; constant 2e-3 540-810; --lr 2e-3 or 3e-3 with the
default schedule, up to 350 and 460.

It prints loss and held-out accuracy as it trains (progress bar), then the steps and training seconds to the
target, exact-sequence and token accuracy of greedy decoding on the held-out sequences and a few decoded examples,
and writes to --out: loss_curve.png (the loss, and held-out accuracy under it), cross_attention.png, metrics.json
(the numbers printed, the configuration, the loss curve and the accuracy checks).

Held-out means drawn from a random stream that training never reads. With 13 symbols there are 13^n sequences of
length n, so the shortest ones also turn up in training by chance; from length 5 on (371,293 sequences) a repeat
is rare.
"""
import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass, field

from autograd import backend
from minattn import (Adam, Tensor, Transformer, WarmupSchedule, checkpoint, clip_grad_norm_, manual_seed, no_grad,
                     tasks)
from minattn import functional as F
from minattn.transformer import ATTENTIONS
from demos.cli import positive_int


LOG_EVERY = 10
"""Steps between two points of the loss curve."""

SCHEDULES = ("noam", "constant")
LR, WARMUP = 1.5e-3, 50
"""The default recipe: the learning rate rises linearly to LR over WARMUP steps, then decays as 1/sqrt(step)."""


def non_negative_int(text):
    """argparse type: an int >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: ...)' except for options whose default is None (their help says what None means)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    """The command line (see --help)."""
    p = argparse.ArgumentParser(prog="python -m demos.copy_task", description=__doc__.split("\n\n")[0],
                                formatter_class=_HelpFormatter,
                                epilog="With the defaults (Adam, lr rising to 1.5e-3 over 50 steps then 1/sqrt(step), "
                                       "a check every 20 steps) seeds 0-4 reached 99% held-out exact match in "
                                       "260-340 steps, 6-12 s of training on 2 CPU cores; the module docstring has "
                                       "the numbers and the recipes tried against it.")
    p.add_argument("--task", choices=tasks.TASKS, default="copy", help="copy the source, or reverse it")
    p.add_argument("--steps", type=positive_int, default=2000,
                   help="the most training steps (batches); fewer when --target is reached")
    p.add_argument("--target", type=float, default=0.99,
                   help="stop when held-out exact-sequence accuracy reaches this; 0: never stop early (train all "
                        "--steps)")
    p.add_argument("--eval-every", type=non_negative_int, default=20, metavar="N",
                   help="check held-out accuracy every N steps (the --eval-size sequences of the final evaluation, "
                        "one teacher-forced pass: cheap); 0: no checks (needs --target 0)")
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
                   help="talking heads: query/key heads h_k (default: --num-heads)")
    p.add_argument("--num-heads-v", type=positive_int, default=None,
                   help="talking heads: value heads h_v (default: --num-heads)")
    p.add_argument("--talking-heads-bias", action="store_true", help="talking heads: biases on P_l and P_w (timm)")
    p.add_argument("--qk-norm", action="store_true", help="mha: LayerNorm on q and k per head (timm, ViT-22B)")
    p.add_argument("--num-kv-heads", type=positive_int, default=None,
                   help="mha: key/value heads, each shared by --num-heads / N query heads (grouped-query attention; "
                        "1: multi-query) (default: --num-heads)")
    p.add_argument("--share-qk", action="store_true", help="tie W_k to W_q in every attention layer")
    p.add_argument("--ffn-hidden", type=positive_int, default=128, help="hidden width of the feed-forward sublayers")
    p.add_argument("--layers", type=positive_int, default=2, help="encoder layers = decoder layers")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout probability everywhere (training only)")
    p.add_argument("--schedule", choices=SCHEDULES, default="noam",
                   help="learning rate of Adam (betas 0.9, 0.98): 'noam' rises linearly to --lr over --warmup steps, "
                        "then decays as 1/sqrt(step): lr(t) = lr · min(t / warmup, sqrt(warmup / t)), the "
                        "Transformer's schedule (Vaswani et al. 2017, eq. 3); 'constant' rises the same way, then "
                        "stays at --lr")
    p.add_argument("--lr", type=float, default=None,
                   help=f"the peak learning rate, reached at step --warmup (default: {LR:g})")
    p.add_argument("--lr-factor", type=float, default=None,
                   help="--schedule noam: give the peak as the paper's factor F instead of --lr: "
                        "lr(t) = F · d^-0.5 · min(t^-0.5, t · warmup^-1.5), so the peak is F / sqrt(d · warmup) "
                        "(F = 0.5 with --warmup 200 and d = 64: 4.4e-3)")
    p.add_argument("--warmup", type=non_negative_int, default=WARMUP,
                   help="warm-up steps (0: none, --schedule constant only)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping threshold")
    p.add_argument("--eval-size", type=positive_int, default=1000,
                   help="held-out sequences, for the checks and the final evaluation")
    p.add_argument("--out", default="runs/copy_task", help="folder for the plots and metrics.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="N",
                   help="write --out/checkpoint.npz every N steps and at the last one (atomically)")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="continue from a checkpoint: model, optimizer, schedule, data and dropout streams and the "
                        "accuracy checks restored, so on NumPy the run equals an uninterrupted one bit for bit; "
                        "--steps is the total")
    args = p.parse_args(argv)
    talking = args.num_heads_qk is not None or args.num_heads_v is not None or args.talking_heads_bias
    if talking and args.attention != "talking-heads":
        p.error("--num-heads-qk, --num-heads-v and --talking-heads-bias need --attention talking-heads")
    if args.qk_norm and args.attention != "mha":
        p.error("--qk-norm is an option of --attention mha")
    if args.embed_dim % args.num_heads:
        p.error(f"--embed-dim {args.embed_dim} must be divisible by --num-heads {args.num_heads}")
    if args.num_kv_heads is not None and (args.attention != "mha" or args.num_heads % args.num_kv_heads):
        p.error(f"--num-kv-heads {args.num_kv_heads} needs --attention mha and must divide "
                f"--num-heads {args.num_heads}")
    if not 0 <= args.target <= 1:
        p.error(f"--target must be in [0, 1], got {args.target}")
    if args.target > 0 and args.eval_every == 0:
        p.error("--target needs accuracy checks: --eval-every N with N >= 1 (or --target 0)")
    if args.lr_factor is not None:
        if args.schedule != "noam" or args.lr is not None:
            p.error("--lr-factor is the peak of --schedule noam given another way: not with --schedule constant "
                    "nor with --lr")
    elif args.lr is None:
        args.lr = LR
    if args.schedule == "noam" and args.warmup == 0:
        p.error("--schedule noam needs --warmup >= 1")
    return args


def attention_options(args):
    """The extra arguments of the attention layers that the command line asks for."""
    if args.attention == "talking-heads":
        return {"num_heads_qk": args.num_heads_qk, "num_heads_v": args.num_heads_v, "bias": args.talking_heads_bias,
                "share_qk": args.share_qk}
    return {"qk_norm": args.qk_norm, "share_qk": args.share_qk, "num_kv_heads": args.num_kv_heads}


def to_device(batch):
    """Host NumPy batch → backend arrays (one copy per array on CuPy)."""
    return (backend.asarray(batch.src), backend.asarray(batch.src_valid_lens),
            backend.asarray(batch.tgt_in), backend.asarray(batch.tgt_out))


class ConstantSchedule:
    """lr(t) = lr · min(1, t / warmup): a linear warm-up over ``warmup`` steps (none if 0), then constant.

    The interface of ``minattn.WarmupSchedule``: ``step()`` once per optimizer step, before ``optimizer.step()``;
    the step count ``t`` is what a checkpoint stores.
    """

    def __init__(self, optimizer, lr, warmup=0):
        self.optimizer, self.lr, self.warmup = optimizer, lr, warmup
        self.t = 0

    def lr_at(self, t):
        """The learning rate at step t >= 1."""
        return self.lr * min(1.0, t / self.warmup) if self.warmup else self.lr

    def step(self):
        """Advance one step and set the optimizer's lr."""
        self.t += 1
        self.optimizer.lr = self.lr_at(self.t)
        return self.optimizer.lr


def make_schedule(optimizer, args):
    """The learning-rate schedule --schedule asks for."""
    if args.schedule == "noam":
        factor = args.lr_factor if args.lr_factor is not None else args.lr * (args.embed_dim * args.warmup) ** 0.5
        return WarmupSchedule(optimizer, args.embed_dim, args.warmup, factor)
    return ConstantSchedule(optimizer, args.lr, args.warmup)


def peak_lr(args):
    """The largest learning rate of the run (at step --warmup)."""
    if args.lr_factor is not None:
        return args.lr_factor / (args.embed_dim * args.warmup) ** 0.5
    return args.lr


@dataclass
class TrainResult:
    """What ``train`` returns.

    steps, losses: the loss curve (every LOG_EVERY steps and the last step); seconds: training time, checks,
    checkpoints and the callback excluded; eval_curve: the accuracy checks, {"step", "exact_match",
    "train_seconds"} (training seconds when the check ran); eval_seconds: the time the checks took;
    steps_to_target / seconds_to_target: the check that reached --target (None if none did).
    """
    steps: list
    losses: list
    seconds: float
    eval_curve: dict = field(default_factory=lambda: {"step": [], "exact_match": [], "train_seconds": []})
    eval_seconds: float = 0.0
    steps_to_target: int | None = None
    seconds_to_target: float | None = None

    @property
    def reached_target(self):
        """Did a check reach --target?"""
        return self.steps_to_target is not None

    @property
    def steps_trained(self):
        """The last step taken (0 if none)."""
        return self.steps[-1] if self.steps else 0


def train(model, args, progress=True, callback=None):
    """Teacher-forced training with Adam, the --schedule and clipping, until the held-out accuracy reaches --target
    or for --steps; returns a ``TrainResult``.

    Every --eval-every steps the held-out exact match is checked (``held_out_exact_match``, in eval mode under
    no_grad: it reads neither the data stream nor the dropout stream, so the losses are those of a run without
    checks); when it reaches --target, ``evaluate`` (greedy decoding) confirms it and training stops.
    ``callback(step)``, if given, runs after every optimizer step (the talking-heads demo evaluates there). The
    checks', the callback's and the checkpoints' time is not counted in the training seconds.
    """
    from tqdm import tqdm

    optimizer = Adam(model.parameters(), betas=(0.9, 0.98), eps=1e-9)
    schedule = make_schedule(optimizer, args)
    rng = backend.new_host_rng([args.seed, 1])   # the training stream (parameters use manual_seed's stream)
    run = TrainResult([], [], 0.0)
    first = 1
    if getattr(args, "resume", None):
        first, run = resume(args.resume, model, optimizer, schedule, rng, args)
    checks, target = getattr(args, "eval_every", 0), getattr(args, "target", 0)
    held_out = held_out_batches(args) if checks else None
    every = getattr(args, "checkpoint_every", None)
    start = time.perf_counter() - run.seconds
    last = first - 1 if run.reached_target else args.steps
    bar = tqdm(range(first, last + 1), disable=not progress, desc=f"training ({backend.BACKEND})", unit="step",
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
        paused = time.perf_counter()
        if checks and step % checks == 0:             # not timed, like the callback
            check(model, args, held_out, target, step, paused - start, run)
            bar.set_postfix(loss=f"{loss.item():.4f}", exact=f"{run.eval_curve['exact_match'][-1]:.1%}",
                            lr=f"{optimizer.lr:.2e}")
        done = run.reached_target or step == args.steps
        if step % LOG_EVERY == 0 or done:   # read the loss (a device sync on CuPy) every 10 steps
            run.steps.append(step)
            run.losses.append(loss.item())
            if not checks:
                bar.set_postfix(loss=f"{run.losses[-1]:.4f}", lr=f"{optimizer.lr:.2e}")
        if every is not None and (step % every == 0 or done):
            save_checkpoint(model, optimizer, schedule, rng, args, step, run, paused - start)
        if callback is not None:
            callback(step)
        start += time.perf_counter() - paused
        if done:
            break
    bar.close()
    run.seconds = time.perf_counter() - start
    return run


def check(model, args, held_out, target, step, seconds, run):
    """One accuracy check at ``step`` (after ``seconds`` of training): append it to ``run.eval_curve``; if it
    reaches ``target`` (> 0), confirm by greedy decoding (whose number the curve then holds) and record the step."""
    started = time.perf_counter()
    exact = held_out_exact_match(model, held_out)
    if 0 < target <= exact:
        exact = evaluate(model, args)[0]          # the final evaluation's number, by greedy decoding
    curve = run.eval_curve
    curve["step"].append(step)
    curve["exact_match"].append(exact)
    curve["train_seconds"].append(seconds)
    if 0 < target <= exact:
        run.steps_to_target, run.seconds_to_target = step, seconds
    run.eval_seconds += time.perf_counter() - started


RUN_OPTIONS = ("steps", "target", "out", "no_progress", "checkpoint_every", "resume")
"""Options that may change between a run and its resumption; every other option must be the checkpoint's (--eval-size
and --eval-every too: they define the checks)."""


def save_checkpoint(model, optimizer, schedule, rng, args, step, run, seconds):
    """Write --out/checkpoint.npz: everything ``resume`` needs to continue exactly after ``step``.

    Besides the model and Adam's state: the schedule's step, the data stream's state (a NumPy Generator's
    ``bit_generator.state``, a dict of ints: stored as JSON), autograd's random streams (dropout masks), the
    configuration, the loss curve and the accuracy checks so far, and the training and checking seconds.
    """
    os.makedirs(args.out, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k not in RUN_OPTIONS}
    return checkpoint.save(os.path.join(args.out, "checkpoint.npz"), model, optimizer, step=step,
                           schedule_t=schedule.t, data_rng=rng.bit_generator.state, rng=checkpoint.rng_state(),
                           config=config, loss_curve={"step": run.steps, "loss": run.losses}, train_seconds=seconds,
                           eval_curve=run.eval_curve, eval_seconds=run.eval_seconds)


def resume(path, model, optimizer, schedule, rng, args):
    """Restore a run from the checkpoint at ``path``; returns (first step to run, ``TrainResult`` so far).

    The checkpoint's configuration must equal this run's (except RUN_OPTIONS): ValueError naming each option that
    differs, or if the checkpoint is already past --steps. Checked before the model is touched. Whether --target
    was reached is read off the restored checks, for this run's --target: a run that stopped at its target resumes
    to no further steps.
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
    run = TrainResult(list(extra["loss_curve"]["step"]), list(extra["loss_curve"]["loss"]), extra["train_seconds"],
                      {k: list(v) for k, v in extra["eval_curve"].items()}, extra["eval_seconds"])
    curve = run.eval_curve
    reached = [i for i, exact in enumerate(curve["exact_match"]) if 0 < getattr(args, "target", 0) <= exact]
    if reached:
        run.steps_to_target, run.seconds_to_target = curve["step"][reached[0]], curve["train_seconds"][reached[0]]
    elif run.steps and run.steps[-1] % LOG_EVERY and extra["step"] < args.steps:
        run.steps.pop()      # the stopped run logged its last step off the 10-step grid: drop it, so the resumed
        run.losses.pop()     # curve is the uninterrupted run's
    return extra["step"] + 1, run


def held_out_batches(args, eval_size=None, batch_size=250):
    """The held-out sequences, as a list of ``tasks.Batch``: ``eval_size`` (default ``args.eval_size``) drawn in
    batches of ``batch_size`` from a stream the training never draws from. The same every call for the same seed."""
    eval_size = args.eval_size if eval_size is None else eval_size
    rng = backend.new_host_rng([args.seed, 2])
    sizes = [min(batch_size, eval_size - done) for done in range(0, eval_size, batch_size)]
    return [tasks.make_batch(rng, n, args.vocab_size, args.min_len, args.max_len, args.task) for n in sizes]


def held_out_exact_match(model, batches):
    """Exact-sequence accuracy of greedy decoding on ``batches``, from one teacher-forced pass per batch.

    Greedy decoding writes a sequence right exactly when the argmax at every position, given the TRUE prefix, is
    the true token (symbols and EOS; positions after EOS do not count): the decoder is causal, so while every token
    so far is right the greedy prefix is the true prefix. Runs in eval mode (dropout off: its stream is not drawn)
    under no_grad, and restores the model's mode.
    """
    was_training = model.training
    model.eval()
    right = total = 0
    try:
        with no_grad():
            for batch in batches:
                src, lens, tgt_in, _ = to_device(batch)
                logits = model(Tensor(src), Tensor(tgt_in), lens)                              # (n, T, V)
                pred = backend.to_numpy(logits.data.argmax(axis=-1))                          # (n, T)
                ok = (pred == batch.tgt_out) | (batch.tgt_out == tasks.PAD)                   # (n, T)
                right += int(ok.all(axis=1).sum())
                total += len(pred)
    finally:
        model.train(was_training)
    return right / total


def evaluate(model, args, batch_size=250, eval_size=None):
    """Greedy-decode ``eval_size`` (default ``args.eval_size``) held-out sequences; returns (exact_match,
    token_accuracy, examples, last batch). The same sequences every call for the same seed (``held_out_batches``).
    Greedy decoding runs in eval mode under no_grad and restores the model's mode."""
    exact = tokens_right = tokens_total = sequences = 0
    examples = []
    for batch in held_out_batches(args, eval_size, batch_size):
        src, lens, _, _ = to_device(batch)
        pred = model.greedy_decode(Tensor(src), lens, tasks.BOS, tasks.EOS, args.max_len + 1)   # (n, max_len + 1)
        target = batch.tgt_out                                                                 # (n, max_len + 1)
        for i in range(len(pred)):
            length = int(batch.src_valid_lens[i]) + 1          # the symbols and EOS
            right = pred[i, :length] == target[i, :length]
            tokens_right += int(right.sum())
            tokens_total += length
            exact += bool(right.all())
            if len(examples) < 5:
                examples.append((tasks.strip(batch.src[i]), tasks.strip(pred[i]), bool(right.all())))
        sequences += len(pred)
    return exact / sequences, tokens_right / tokens_total, examples, batch


def smooth(values, window=7):
    """Centred rolling median over ``window`` (odd) points; near the ends the window shrinks symmetrically.

    Centred, so it does not lag: a loss falling 10x in 100 steps is followed where it is (an exponential moving
    average of weight 0.1 over points 10 steps apart trails by about 100 steps). A median of an odd count is one of
    the values, so it is the same on a log axis and robust to single noisy batches.
    """
    half = window // 2
    out = []
    for i in range(len(values)):
        k = min(half, i, len(values) - 1 - i)
        out.append(statistics.median(values[i - k: i + k + 1]))
    return out


def plot(out, run, model, batch, args, final_exact=None):
    """Write loss_curve.png (training loss; held-out exact match under it, with ``final_exact``, the final
    evaluation's, at the last step) and cross_attention.png (the last decoder block, each head, three examples)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = run.eval_curve
    panels = 2 if curve["step"] else 1
    fig, axes = plt.subplots(panels, 1, figsize=(6.4, 3.2 * panels + 0.6), sharex=True, squeeze=False)
    ax = axes[0][0]
    window = 7
    ax.plot(run.steps, run.losses, alpha=0.35, label=f"batch loss, every {LOG_EVERY}th step")
    ax.plot(run.steps, smooth(run.losses, window),
            label=f"centred rolling median of {window} points ({window * LOG_EVERY} steps)")
    ax.set(yscale="log", ylabel="cross-entropy (nats/token)", title=f"{args.task} task: training loss")
    if panels == 1:
        ax.set_xlabel("step")
    if run.reached_target:
        for row in axes:
            row[0].axvline(run.steps_to_target, color="tab:green", ls=":", lw=1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if panels == 2:
        ax = axes[1][0]
        ax.plot(curve["step"], [100 * e for e in curve["exact_match"]], marker=".", ms=3, color="tab:green",
                label=f"held-out exact match, every {args.eval_every} steps")
        if final_exact is not None:
            ax.plot([run.steps_trained], [100 * final_exact], marker="*", ms=9, ls="", color="black",
                    label=f"final evaluation: {final_exact:.1%}")
        if args.target > 0:
            reached = (f"reached at step {run.steps_to_target}" if run.reached_target
                       else f"not reached in {run.steps_trained} steps")
            ax.axhline(100 * args.target, color="gray", ls="--", lw=1, label=f"target {args.target:.0%} ({reached})")
        ax.set(xlabel="step", ylabel="exact-sequence accuracy (%)", ylim=(0, 101),
               title=f"greedy decoding of {args.eval_size:,} held-out sequences")
        ax.legend(fontsize=8, loc="lower right")
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
    """Train (until --target), evaluate, print, and write the figures and metrics.json."""
    args = parse_args(argv)
    manual_seed(args.seed)
    model = build_model(args)
    lr = (f"lr {peak_lr(args):.2g} after {args.warmup} warm-up steps, then "
          f"{'constant' if args.schedule == 'constant' else '∝ 1/sqrt(step)'}")
    stop = (f"until {args.target:.0%} exact match on {args.eval_size:,} held-out sequences (checked every "
            f"{args.eval_every} steps), at most {args.steps:,} steps" if args.target > 0 else f"{args.steps:,} steps")
    print(f"{args.task} task, {args.attention} attention, on {backend.BACKEND}: {model.num_parameters():,} "
          f"parameters, lengths {args.min_len}..{args.max_len}, {args.vocab_size - tasks.NUM_SPECIAL} symbols; "
          f"Adam, {lr}; training {stop}")
    run = train(model, args, progress=not args.no_progress)
    started = time.perf_counter()
    exact, token_acc, examples, batch = evaluate(model, args)
    final_eval_seconds = time.perf_counter() - started
    if run.reached_target:
        curve = run.eval_curve
        at_target = curve["exact_match"][curve["step"].index(run.steps_to_target)]
        print(f"target reached: held-out exact match {at_target:.1%} >= {args.target:.1%} "
              f"at step {run.steps_to_target:,}, after {run.seconds_to_target:.1f} s of training")
    elif args.target > 0:
        print(f"target not reached: held-out exact match below {args.target:.1%} at every check up to step "
              f"{run.steps_trained:,}")
    print(f"trained {run.steps_trained:,} steps in {run.seconds:.1f} s; final loss {run.losses[-1]:.4f}")
    print(f"evaluation, not in the training time: {len(run.eval_curve['step'])} checks {run.eval_seconds:.1f} s, "
          f"final greedy evaluation {final_eval_seconds:.1f} s")
    print(f"held-out ({args.eval_size:,} sequences, greedy decoding): exact-sequence accuracy {exact:.1%}, "
          f"token accuracy {token_acc:.1%}")
    for src, pred, correct in examples:
        mark = "ok " if correct else "ERR"
        print(f"  {mark} source {src}\n      output {pred}")
    os.makedirs(args.out, exist_ok=True)
    plot(args.out, run, model, batch, args, exact)
    metrics = {"exact_match": exact, "token_accuracy": token_acc, "final_loss": run.losses[-1],
               "steps": run.steps_trained, "target": args.target, "reached_target": run.reached_target,
               "steps_to_target": run.steps_to_target,
               "seconds_to_target": None if run.seconds_to_target is None else round(run.seconds_to_target, 2),
               "eval_every": args.eval_every, "train_seconds": round(run.seconds, 2),
               "eval_seconds": round(run.eval_seconds, 2), "final_eval_seconds": round(final_eval_seconds, 2),
               "backend": backend.BACKEND, "config": vars(args), "num_parameters": model.num_parameters(),
               "loss_curve": {"step": run.steps, "loss": run.losses},
               "eval_curve": {"step": run.eval_curve["step"], "exact_match": run.eval_curve["exact_match"]}}
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"wrote {args.out}/loss_curve.png, cross_attention.png, metrics.json")
    return metrics


if __name__ == "__main__":
    main()
