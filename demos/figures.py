"""Regenerate the figures in docs/figures/ from seeded runs of the demos: a reader sees them without running anything.

Every picture is drawn by the demo's own plotting code: this module calls each demo (its ``main(argv)`` with small,
seeded arguments, or, where the demo's ``main`` does far more than the picture needs, the demo's own training and
plotting functions) with its output folder in a scratch directory, then copies the PNGs it wants into --out under
stable names. It prints which file came from which command and how long each took, and writes --out/README.md:
one line per figure (the file, what it shows, the command that made it).

Seeded: every demo seeds its parameters and data (seed 0), so a rerun draws the same pictures (byte for byte in our
runs, on one thread or two) — except flash_vs_dense_memory.png and long_context.png, whose times are measurements of
the machine that ran them.

    python -m demos.figures                                # every figure into docs/figures/, ~3 minutes on 2 cores
    python -m demos.figures --only copy_attention,rotary_scores
    python -m demos.figures --quick --out /tmp/figures     # tiny settings, the same file names, ~6 s (for tests)
    python -m demos.figures --threads 2                    # on more threads (default 1: see --help)
"""
import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time

from demos.cli import positive_int

DEFAULT_OUT = os.path.join("docs", "figures")


# --- the jobs: one demo run each, giving one or more figures ----------------------------------------------------------
# Each job function takes ``quick`` and returns (command, run, note): the command a reader can type (the demo's
# output folder left out), ``run(scratch)``, which makes the demo write its PNGs into the folder ``scratch``, and a
# note on what ``run`` calls when that is not simply the command (None otherwise).
def _cli(module, argv):
    """The command line ``python -m MODULE ARGV``, a run that calls ``module.main(argv + --out scratch)``, no note."""
    return " ".join(["python -m", module.__name__, *argv]), lambda scratch: module.main([*argv, "--out", scratch]), None


def copy_task_job(quick):
    """demos.copy_task until 99% held-out exact match (seed 0): cross_attention.png and loss_curve.png."""
    from demos import copy_task
    argv = (["--steps", "10", "--target", "0", "--eval-every", "5", "--eval-size", "20", "--embed-dim", "16",
             "--num-heads", "2", "--ffn-hidden", "32", "--layers", "1", "--max-len", "6"] if quick else [])
    return _cli(copy_task, ["--seed", "0", *argv, "--no-progress"])


def talking_heads_job(quick):
    """demos.talking_heads on the copy task, one seed: talking_heads_P.png (the learned P_l and P_w)."""
    from demos import talking_heads
    argv = (["--steps", "10", "--eval-every", "10", "--eval-size", "20", "--embed-dim", "16", "--num-heads", "4",
             "--max-len", "5"] if quick else
            ["--steps", str(TALKING_HEADS_STEPS), "--eval-every", "100"])
    return _cli(talking_heads, ["--tasks", "copy", "--seeds", "1", *argv])


def tied_qk_job(quick):
    """demos.lesson_tied_qk's one-head cyclic-predecessor models, tied and separate, seed 0, and its plot.

    The same picture as ``python -m demos.lesson_tied_qk`` (predecessor_attention.png), without its other
    experiments (four heads, the plain task, the copy task, more seeds), which the picture does not show.
    """
    from demos import lesson_tied_qk
    argv = ["--steps", "5" if quick else "300", "--length", "10"]

    def run(scratch):
        args = lesson_tied_qk.parse_args([*argv, "--out", scratch])
        models = {name: lesson_tied_qk.train_predecessor(tied, 0, args)[2]
                  for name, tied in (("tied", True), ("separate", False))}
        os.makedirs(scratch, exist_ok=True)
        lesson_tied_qk.plot(scratch, models, args)

    return (f"python -m demos.lesson_tied_qk --seeds 1 {' '.join(argv)}", run,
            "its figure only: lesson_tied_qk.train_predecessor(tied, seed 0) for both variants, then its plot()")


def positions_job(quick):
    """demos.lesson_positions.plot_rotation on the sinusoidal table (1000 positions, d = 32): pe_rotation.png."""
    from autograd import backend
    from demos import lesson_positions
    from minattn.layers import sinusoidal_positions

    def run(scratch):
        os.makedirs(scratch, exist_ok=True)
        table = backend.to_numpy(sinusoidal_positions(1000, 32))               # (1000, 32)
        lesson_positions.plot_rotation(os.path.join(scratch, "pe_rotation.png"), table)

    return ("python -m demos.figures --only positional_rotation", run,
            "calls demos.lesson_positions.plot_rotation(path, sinusoidal_positions(1000, 32))")


FLASH_LENGTHS = (256, 512, 1024, 2048)
QUICK_FLASH_LENGTHS = (32, 64)
FLASH_TIMING = dict(warmup=0, min_repeats=1, max_repeats=3, budget_s=2.0)
QUICK_FLASH_TIMING = dict(warmup=0, min_repeats=1, max_repeats=1, budget_s=0.1)


def flash_job(quick):
    """bench/figure.py's sweep (dense vs flash forward + backward, B = 1, h = 8, head dim 32) at a few lengths."""
    from autograd import parallel
    from bench import figure
    lengths = QUICK_FLASH_LENGTHS if quick else FLASH_LENGTHS

    def run(scratch):
        result, _ = figure.sweep(lengths, QUICK_FLASH_TIMING if quick else FLASH_TIMING, 8 * 2**30)
        figure.plot(result, os.path.join(scratch, "dense_vs_flash.png"), parallel.get_num_threads())

    return ("python -m demos.figures --only flash_vs_dense_memory", run,
            f"calls bench.figure.sweep(lengths={list(lengths)}) and bench.figure.plot: the dense_vs_flash.png of "
            "python -m bench, at shorter lengths")


def gqa_job(quick):
    """demos.lesson_gqa: KV-cache size and accuracy against the number of key/value heads."""
    from demos import lesson_gqa
    argv = ["--num-heads", "4", "--steps", "3", "--eval-size", "20"] if quick else ["--num-heads", "8"]
    return _cli(lesson_gqa, [*argv, "--seed", "0"])


def rotary_job(quick):
    """demos.lesson_rotary: RoPE's score matrix against an added sinusoidal table's (the same in --quick)."""
    from demos import lesson_rotary
    return _cli(lesson_rotary, ["--seed", "0"])


def extrapolation_job(quick):
    """demos.lesson_extrapolation: accuracy past the training length for each kind of position."""
    from demos import lesson_extrapolation
    argv = ["--length", "4", "--steps", "2", "--eval-size", "4"] if quick else []
    return _cli(lesson_extrapolation, [*argv, "--seed", "0"])


def long_context_job(quick):
    """demos.lesson_long_context: a sliding window in flash attention, and the KV cache in generation."""
    from demos import lesson_long_context
    argv = (["--lengths", "32", "64", "--window", "8", "--tokens", "4", "8"] if quick else
            ["--lengths", "256", "512", "1024", "2048", "--tokens", "16", "32", "64", "128"])
    return _cli(lesson_long_context, argv)


def gpt_job(quick):
    """demos.lesson_gpt: the last layer's heads of a GPT trained to repeat its prompt."""
    from demos import lesson_gpt
    argv = ["--length", "3", "--steps", "3", "--eval-size", "8"] if quick else []
    return _cli(lesson_gpt, [*argv, "--seed", "0"])


def char_lm_job(quick):
    """demos.char_lm, a short run on Python's pydoc topics: attention.png and loss_curve.png."""
    from demos import char_lm
    argv = (["--steps", "2", "--eval-every", "2", "--eval-batches", "1", "--block-size", "16", "--embed-dim", "16",
             "--num-heads", "2", "--layers", "1", "--sample-length", "8"] if quick else
            ["--steps", str(CHAR_LM_STEPS), "--eval-every", "50", "--eval-batches", "10"])
    return _cli(char_lm, [*argv, "--samples", "1", "--seed", "0", "--no-progress"])


TALKING_HEADS_STEPS = 600
CHAR_LM_STEPS = 300


# (job name, function, [(figure file in --out, file the demo writes, what it shows)])
JOBS = (
    ("copy_task", copy_task_job, [
        ("copy_attention.png", "cross_attention.png",
         "copy task: every head of the last decoder block's cross-attention on three held-out sequences — the copy "
         "diagonal (trained until 99% held-out exact match)"),
        ("copy_curves.png", "loss_curve.png",
         "copy task: training loss (log scale, centred rolling median) and held-out exact-sequence accuracy")]),
    ("talking_heads", talking_heads_job, [
        ("talking_heads_mixing.png", "talking_heads_P.png",
         "talking-heads attention: the learned head-mixing matrices P_l (logits, before the softmax) and P_w "
         "(weights, after it), last encoder layer, 16 heads, copy task, 600 steps from their random initialisation, "
         "which still dominates their look")]),
    ("tied_qk", tied_qk_job, [
        ("tied_vs_separate_qk.png", "predecessor_attention.png",
         "tied W_q = W_k vs separate W_q, W_k: attention of a one-head model on the cyclic predecessor task — the "
         "tied head's scores are symmetric and cannot pick i − 1 all the way round")]),
    ("positions", positions_job, [
        ("positional_rotation.png", "pe_rotation.png",
         "sinusoidal positions: each (sin, cos) column pair turns by ω_i per position, the same turn at every "
         "position, so PE(pos + k) = R_k PE(pos)")]),
    ("flash", flash_job, [
        ("flash_vs_dense_memory.png", "dense_vs_flash.png",
         "dense vs flash attention, forward + backward: time and peak traced memory against the length L "
         "(dense keeps the L×L weights: memory ∝ L²; flash works in tiles: ∝ L)")]),
    ("gqa", gqa_job, [
        ("gqa_kv_heads.png", "gqa.png",
         "grouped-query attention: the KV cache shrinks with the number of key/value heads, and the copy task's "
         "held-out accuracy after the same training")]),
    ("rotary", rotary_job, [
        ("rotary_scores.png", "rotary.png",
         "rotary position embedding: the score of the same q and k at every pair of positions is constant along "
         "each diagonal (depends on n − m only); with an added sinusoidal table it is not")]),
    ("extrapolation", extrapolation_job, [
        ("extrapolation.png", "extrapolation.png",
         "length extrapolation: accuracy of 'name the token 2 back' at 1×, 2×, 4× the training length, for learned, "
         "sinusoidal, rotary and ALiBi positions")]),
    ("long_context", long_context_job, [
        ("long_context.png", "long_context.png",
         "long context: flash attention with a sliding window (work ∝ L·w) vs causal (∝ L²), and greedy "
         "generation with and without the key/value cache (ms per token)")]),
    ("gpt", gpt_job, [
        ("gpt_attention.png", "gpt_attention.png",
         "decoder-only GPT trained to repeat its prompt: every head of the last layer looks back n positions")]),
    ("char_lm", char_lm_job, [
        ("char_lm_attention.png", "attention.png",
         f"character-level GPT on Python's pydoc text: every head of the last layer on one validation line (a short "
         f"run: {CHAR_LM_STEPS} of the default 2,000 steps)"),
        ("char_lm_loss.png", "loss_curve.png",
         f"character-level GPT: train and validation loss against the bigram floor ({CHAR_LM_STEPS} steps)")]),
)
FIGURES = [figure for _, _, figures in JOBS for figure, _, _ in figures]
"""Every figure file, in the order they are made."""


def stem(filename):
    """'copy_attention.png' → 'copy_attention' (the name --only takes)."""
    return os.path.splitext(filename)[0]


def parse_args(argv=None):
    """The command line (see --help)."""
    names = ", ".join(stem(f) for f in FIGURES)
    p = argparse.ArgumentParser(prog="python -m demos.figures", description=__doc__.split("\n\n")[0],
                                epilog=f"figures: {names}. Jobs (each makes the figures listed with it): "
                                       + ", ".join(f"{job} ({', '.join(stem(f) for f, _, _ in figs)})"
                                                   for job, _, figs in JOBS),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the PNGs and README.md")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings (a few steps, small sizes): every file name in seconds, for a smoke test")
    p.add_argument("--only", default=None, metavar="NAME[,NAME]",
                   help="make only these figures (file names without .png) or jobs; see the list below")
    p.add_argument("--verbose", action="store_true", help="show the demos' own output (hidden by default)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="compute on N threads (minattn's and the BLAS's, this process only). 1: on 2 cores hardly "
                        "slower than 2 when the machine is idle, and 3x faster when other work shares it")
    args = p.parse_args(argv)
    args.selected = set(FIGURES)
    if args.only is not None:
        jobs = {job: [f for f, _, _ in figs] for job, _, figs in JOBS}
        by_stem = {stem(f): [f] for f in FIGURES}
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in by_stem and name not in jobs]
        if unknown or not wanted:
            p.error(f"--only: unknown name(s) {', '.join(unknown) or '(none given)'}; choose from {names} "
                    f"or the jobs {', '.join(jobs)}")
        args.selected = {f for name in wanted for f in by_stem.get(name, jobs.get(name, []))}
    return args


def _run_job(run, scratch, verbose):
    """``run(scratch)`` with the demo's output captured (shown if it fails, or with --verbose)."""
    if verbose:
        return run(scratch)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            return run(scratch)
    except BaseException:
        sys.stdout.write(captured.getvalue())
        raise


def write_readme(out, quick):
    """--out/README.md: one line per figure present in --out — the file, what it shows, the command that makes it
    (the commands of this mode: --quick or full)."""
    lines = ["# Figures", "",
             "Made by `python -m demos.figures" + (" --quick` (tiny settings: a smoke test, not the real figures)"
                                                   if quick else "`")
             + " from seeded runs (seed 0); each picture is drawn by the demo's own plotting code. A demo's command "
             "run by hand writes to its default folder `runs/NAME/`, under the file name after the arrow. The times "
             "in flash_vs_dense_memory.png and long_context.png are measurements of the machine that made them.", "",
             "| file | what it shows | command |", "| --- | --- | --- |"]
    for _, job, figures in JOBS:
        command, _, note = job(quick)
        for figure, source, caption in figures:
            if os.path.exists(os.path.join(out, figure)):
                writes = "" if command.startswith("python -m demos.figures") else f" → `{source}`"
                lines.append(f"| [{figure}]({figure}) | {caption} | `{command}`{writes}"
                             + (f" ({note})" if note else "") + " |")
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


@contextlib.contextmanager
def _threads(n):
    """Compute on ``n`` threads inside the block (minattn's and the BLAS's); the previous counts come back after."""
    from threadpoolctl import threadpool_limits
    from autograd import parallel
    before = parallel.get_num_threads()
    parallel.set_num_threads(n)
    try:
        with threadpool_limits(n, user_api="blas"):
            yield
    finally:
        parallel.set_num_threads(before)


def main(argv=None):
    """Run the selected jobs, copy their PNGs into --out, write README.md; returns {file: (command, seconds)}."""
    args = parse_args(argv)
    with _threads(args.threads):
        return _make(args)


def _make(args):
    """main's work, under the thread count asked for."""
    os.makedirs(args.out, exist_ok=True)
    jobs = [(name, job, [f for f in figures if f[0] in args.selected]) for name, job, figures in JOBS]
    jobs = [j for j in jobs if j[2]]
    made, started = {}, time.perf_counter()
    print(f"{len(args.selected)} figure(s) from {len(jobs)} run(s){' (--quick)' if args.quick else ''} into "
          f"{args.out}/", flush=True)
    with tempfile.TemporaryDirectory(prefix="minattn-figures-") as scratch_root:
        for number, (name, job, figures) in enumerate(jobs, 1):
            scratch = os.path.join(scratch_root, name)
            command, run, note = job(args.quick)
            begin = time.perf_counter()
            _run_job(run, scratch, args.verbose)
            seconds = time.perf_counter() - begin
            print(f"[{number}/{len(jobs)}] {name}: {seconds:.1f} s   {command}" + (f"  ({note})" if note else ""),
                  flush=True)
            for figure, source, _ in figures:
                target = os.path.join(args.out, figure)
                shutil.copyfile(os.path.join(scratch, source), target)
                made[figure] = (command, seconds)
                print(f"      {target} ({os.path.getsize(target) / 1024:.0f} KB) ← {source}", flush=True)
    write_readme(args.out, args.quick)
    print(f"wrote {len(made)} figure(s) and {args.out}/README.md in {time.perf_counter() - started:.1f} s")
    return made


if __name__ == "__main__":
    main()
