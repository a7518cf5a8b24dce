"""The copy task end to end: the data are what the task says, and a seconds-long training run lowers the loss.

The demo is run through its own ``main`` with a small model on a small output folder, so the test also checks that
the figures and metrics.json are written with the keys scripts read.
"""
import json

import numpy as np
import pytest

from demos import copy_task
from minattn import manual_seed, tasks


@pytest.mark.parametrize("task", tasks.TASKS)
def test_make_batch_layout(task):
    batch = tasks.make_batch(np.random.default_rng(0), 32, 10, 1, 6, task)
    assert batch.src.shape == (32, 6) and batch.tgt_in.shape == batch.tgt_out.shape == (32, 7)
    for i in range(32):
        n = int(batch.src_valid_lens[i])
        assert 1 <= n <= 6
        seq = list(batch.src[i, :n])
        assert all(tasks.NUM_SPECIAL <= s < 10 for s in seq) and not batch.src[i, n:].any()
        expected = seq if task == "copy" else seq[::-1]
        assert list(batch.tgt_out[i]) == expected + [tasks.EOS] + [tasks.PAD] * (6 - n)
        assert list(batch.tgt_in[i]) == [tasks.BOS] + expected + [tasks.PAD] * (6 - n)


def test_make_batch_rejects_bad_configuration():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="task"):
        tasks.make_batch(rng, 2, 10, 1, 5, "sort")
    with pytest.raises(ValueError, match="vocab_size"):
        tasks.make_batch(rng, 2, 3, 1, 5)
    with pytest.raises(ValueError, match=r"max_len must be an int >= min_len=4, got 2"):
        tasks.make_batch(rng, 2, 10, 4, 2)


def test_strip():
    assert tasks.strip([5, 6, tasks.EOS, 7]) == [5, 6]
    assert tasks.strip([5, tasks.PAD, 6]) == [5, 6]


TINY = ["--eval-size", "40", "--no-progress", "--embed-dim", "32", "--num-heads", "2", "--ffn-hidden", "64",
        "--layers", "1", "--max-len", "6", "--seed", "3", "--schedule", "constant", "--lr", "3e-3",
        "--warmup", "50"]
"""A seconds-long run: held-out exact match (40 sequences) about 0.5 at step 80-90, 0.9 at 110-130."""


def test_short_training_lowers_the_loss_and_writes_its_outputs(tmp_path):
    out = tmp_path / "run"
    metrics = copy_task.main(TINY + ["--steps", "160", "--target", "0", "--out", str(out)])
    losses = metrics["loss_curve"]["loss"]
    assert np.isfinite(losses).all()
    # uniform guessing over 16 tokens costs ln 16 = 2.77 nats; a model that learned nothing stays near it
    assert losses[0] > 1.5
    assert np.mean(losses[-3:]) < 0.25 * losses[0]
    written = json.loads((out / "metrics.json").read_text())
    for key in ("exact_match", "token_accuracy", "final_loss", "steps", "train_seconds", "config", "target",
                "reached_target", "steps_to_target", "seconds_to_target", "eval_every", "eval_seconds",
                "eval_curve", "loss_curve"):
        assert key in written
    assert written["steps"] == 160 and 0 <= written["exact_match"] <= 1
    # --target 0: all the steps, no target, but the held-out accuracy is still checked (every 20 steps by default)
    assert written["target"] == 0 and written["reached_target"] is False
    assert written["steps_to_target"] is None and written["seconds_to_target"] is None
    curve = written["eval_curve"]
    assert written["eval_every"] == 20 and curve["step"] == list(range(20, 161, 20))
    assert len(curve["exact_match"]) == 8 and all(0 <= e <= 1 for e in curve["exact_match"])
    assert curve["exact_match"][-1] == written["exact_match"]      # the same 40 sequences, the same number
    assert (out / "loss_curve.png").stat().st_size > 0 and (out / "cross_attention.png").stat().st_size > 0


def test_training_stops_when_the_held_out_accuracy_reaches_the_target(tmp_path):
    """TINY reaches 50% held-out exact match at about step 90 and 90% at about 110 (checks every 10 steps)."""
    stops = {}
    for target in (0.5, 0.9):
        out = tmp_path / str(target)
        metrics = copy_task.main(TINY + ["--steps", "300", "--target", str(target), "--eval-every", "10",
                                         "--out", str(out)])
        stop = stops[target] = metrics["steps_to_target"]
        assert metrics["reached_target"] is True and metrics["target"] == target
        assert metrics["steps"] == stop < 300 and stop % 10 == 0           # stopped early, at a check
        assert metrics["loss_curve"]["step"][-1] == stop                   # the last step is logged
        curve = metrics["eval_curve"]
        assert curve["step"] == list(range(10, stop + 1, 10))
        assert all(e < target for e in curve["exact_match"][:-1]) and curve["exact_match"][-1] >= target
        # the final evaluation scores the same held-out sequences by greedy decoding: at least the target
        assert metrics["exact_match"] == curve["exact_match"][-1] >= target
        assert 0 < metrics["seconds_to_target"] <= metrics["train_seconds"]
        assert json.loads((out / "metrics.json").read_text())["steps_to_target"] == stop
    assert stops[0.5] < stops[0.9]                                          # --target honoured


def test_a_target_not_reached_trains_to_the_cap(tmp_path):
    metrics = copy_task.main(TINY + ["--steps", "30", "--target", "0.99", "--eval-every", "10",
                                     "--out", str(tmp_path / "run")])
    assert metrics["reached_target"] is False and metrics["steps_to_target"] is None
    assert metrics["steps"] == 30 and metrics["eval_curve"]["step"] == [10, 20, 30]


def test_the_check_equals_greedy_decoding_exact_match():
    """held_out_exact_match (one teacher-forced pass) gives greedy decoding's exact match on the same sequences, at
    every stage of training (not only at 0 and 1), and leaves the model in the mode it found it."""
    args = copy_task.parse_args(TINY + ["--steps", "120", "--target", "0", "--eval-every", "0"])
    manual_seed(args.seed)
    model = copy_task.build_model(args)
    held_out = copy_task.held_out_batches(args)
    seen = []

    def compare(step):
        if step % 10 == 0:
            fast = copy_task.held_out_exact_match(model, held_out)
            assert model.training
            assert fast == copy_task.evaluate(model, args)[0], f"step {step}"
            seen.append(fast)

    copy_task.train(model, args, progress=False, callback=compare)
    assert len(seen) == 12 and len({e for e in seen if 0 < e < 1}) >= 4


def test_defaults():
    """The model the benchmark builds from parse_args([]) stays the same; the recipe is the documented one."""
    args = copy_task.parse_args([])
    model = {k: getattr(args, k) for k in ("vocab_size", "embed_dim", "num_heads", "ffn_hidden", "layers",
                                           "batch_size", "min_len", "max_len", "dropout", "attention")}
    assert model == {"vocab_size": 16, "embed_dim": 64, "num_heads": 4, "ffn_hidden": 128, "layers": 2,
                     "batch_size": 64, "min_len": 2, "max_len": 12, "dropout": 0.0, "attention": "mha"}
    assert (args.target, args.eval_every, args.eval_size, args.steps) == (0.99, 20, 1000, 2000)
    assert (args.schedule, args.lr, args.lr_factor, args.warmup) == ("noam", copy_task.LR, None, copy_task.WARMUP)
    paper = copy_task.parse_args(["--lr-factor", "0.5", "--warmup", "200"])      # the old default's schedule
    assert paper.lr is None and abs(copy_task.peak_lr(paper) - 4.42e-3) < 1e-5


@pytest.mark.parametrize("schedule", copy_task.SCHEDULES)
def test_schedules_peak_at_lr_after_the_warmup(schedule):
    class Opt:
        lr = None
    args = copy_task.parse_args(["--schedule", schedule, "--lr", "2e-3", "--warmup", "4"])
    schedule = copy_task.make_schedule(Opt(), args)
    lrs = [schedule.step() for _ in range(16)]
    assert np.allclose(lrs[:4], [5e-4, 1e-3, 1.5e-3, 2e-3], rtol=1e-12) and max(lrs) == lrs[3]
    expected = 2e-3 * (4 / 16) ** 0.5 if args.schedule == "noam" else 2e-3
    assert np.isclose(lrs[15], expected, rtol=1e-12)


@pytest.mark.parametrize("argv, message", [
    (["--target", "1.5"], "--target must be in"),
    (["--target", "0.5", "--eval-every", "0"], "--target needs accuracy checks"),
    (["--lr-factor", "0.5", "--lr", "1e-3"], "--lr-factor is the peak of --schedule noam given another way"),
    (["--lr-factor", "0.5", "--schedule", "constant"], "--lr-factor is the peak"),
    (["--schedule", "noam", "--warmup", "0"], "noam needs --warmup >= 1"),
    (["--eval-every", "-1"], "must be >= 0"),
])
def test_bad_options_are_refused(capsys, argv, message):
    with pytest.raises(SystemExit):
        copy_task.parse_args(argv)
    assert message in capsys.readouterr().err


def test_constant_schedule_warms_up_linearly():
    class Opt:
        lr = None
    schedule = copy_task.ConstantSchedule(Opt(), 2e-3, warmup=4)
    assert [schedule.step() for _ in range(6)] == [5e-4, 1e-3, 1.5e-3, 2e-3, 2e-3, 2e-3]
    assert copy_task.ConstantSchedule(Opt(), 2e-3, warmup=0).step() == 2e-3


def test_smoothing_is_centred():
    """The plotted curve follows a falling loss where it is: no lag (an EMA would trail it)."""
    values = [10.0 ** (-i / 10) for i in range(50)]                          # a straight line on the log axis
    assert copy_task.smooth(values, 7) == values
    noisy = [1.0, 1.0, 9.0, 1.0, 1.0]
    assert copy_task.smooth(noisy, 3) == [1.0, 1.0, 1.0, 1.0, 1.0]            # one noisy batch is ignored
