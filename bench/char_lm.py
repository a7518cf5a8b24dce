"""The character-level GPT of demos.char_lm, minattn against the same model in PyTorch, side by side: the same
configuration (nanoGPT's baby GPT: 4 layers, 4 heads, width 128, block 64, batch 12; Adam with β₂ 0.99 and the
demo's cosine learning rate, step for step), the same batches of the default corpus in the same order, timed in
alternating blocks of 10 steps; then the validation loss of both on the same fixed batches after the same number of
steps. Both start from the same weights: the PyTorch model is the demo's minattn model converted by
``interop.to_torch`` before either trains.

The ratio is the median, over the pairs of blocks, of one block's median ms/step over the next block's (PyTorch's, run
right after on the same batches), with the quartiles of those ratios beside it. Each pair runs within about a second,
so the machine's drift (tens of percent over minutes on a shared VM) cancels in every ratio; a ratio of the two
overall medians would take it in whole."""
import statistics
import time

import numpy as np

from demos import char_lm
from demos.next_token import train_next_token
from minattn import manual_seed

STEPS, QUICK_STEPS = 300, 6
BLOCK, PAUSE_S = 10, 0.1
"""Steps per turn of each library, and the pause between turns."""


def measure(torch_cases, steps):
    """{"minattn_ms", "torch_ms", "ratio", "ratio_quartiles", "minattn_val_loss", "torch_val_loss",
    "val_loss_difference", ...}: ms are medians over all steps; ratio and its quartiles over the pairs of blocks."""
    args = char_lm.parse_args(["--steps", str(steps)])
    chars, _, train, val = char_lm.prepare(char_lm.load_text(None))
    fixed = np.random.default_rng(2)
    val_batches = [char_lm.batch_at(val, fixed.integers(0, len(val) - args.block_size - 1, args.batch_size),
                                    args.block_size) for _ in range(args.eval_batches)]
    rng = np.random.default_rng(1)
    batches = [char_lm.batch_at(train, rng.integers(0, len(train) - args.block_size - 1, args.batch_size),
                                args.block_size) for _ in range(steps)]
    manual_seed(0)
    model, optimizer, schedule = char_lm.build(args, len(chars))          # the demo's model and recipe
    torch_step, torch_val, torch_parameters = (None,) * 3
    if torch_cases:                                             # the same model, weights and learning rate at every
        from minattn import interop                             # step in PyTorch (interop imports torch)
        torch_step, torch_val, torch_parameters = torch_cases.char_lm_trainer(interop.to_torch(model), args.beta2,
                                                                              schedule.lr_at)
    ours, theirs, ratios = [], [], []
    for first in range(0, steps, BLOCK):                        # blocks of steps, taking turns, with a pause between
        for x, y in batches[first:first + BLOCK]:               # (call by call, each library's spinning worker
            start = time.perf_counter()                         # threads would slow the other: bench/measure.py)
            train_next_token(model, lambda: (x, y), 1, optimizer=optimizer, schedule=schedule)
            ours.append(time.perf_counter() - start)
        if torch_step is not None:
            time.sleep(PAUSE_S)
            for x, y in batches[first:first + BLOCK]:
                start = time.perf_counter()
                torch_step(x, y)
                theirs.append(time.perf_counter() - start)
            time.sleep(PAUSE_S)
            block = len(batches[first:first + BLOCK])                # this pair: minattn's block ÷ PyTorch's
            ratios.append(statistics.median(ours[-block:]) / statistics.median(theirs[-block:]))
    result = {"steps": steps, "batch": args.batch_size, "block": args.block_size,
              "num_parameters": model.num_parameters(), "minattn_ms": statistics.median(ours) * 1e3,
              "minattn_val_loss": char_lm.mean_loss(model, val_batches)}
    if torch_step is not None:
        result.update(torch_ms=statistics.median(theirs) * 1e3, torch_val_loss=torch_val(val_batches),
                      torch_num_parameters=torch_parameters)
        result["ratio"] = statistics.median(ratios)
        result["ratio_quartiles"] = (statistics.quantiles(ratios, n=4)[::2] if len(ratios) > 1
                                     else [ratios[0], ratios[0]])
        result["val_loss_difference"] = result["minattn_val_loss"] / result["torch_val_loss"] - 1
    return result


def format_table(r):
    """The result as text."""
    line = (f"character-level GPT (demos.char_lm, {r['num_parameters']:,} parameters, batch {r['batch']} × block "
            f"{r['block']}), {r['steps']} steps on the same batches: minattn {r['minattn_ms']:.1f} ms/step, validation "
            f"loss {r['minattn_val_loss']:.4f}")
    if "torch_ms" in r:
        low, high = r["ratio_quartiles"]
        line += (f"; PyTorch {r['torch_ms']:.1f} ms/step (ratio {r['ratio']:.2f}×, quartiles {low:.2f}–{high:.2f} over "
                 f"pairs of blocks), validation loss "
                 f"{r['torch_val_loss']:.4f} ({r['val_loss_difference']:+.1%})")
    return line
