"""demos/copy_task.py --checkpoint-every / --resume: a run stopped at step k and resumed reproduces the
uninterrupted run EXACTLY on NumPy — the loss of every single step (bit-identical Python floats), the logged loss
curve, the final parameters and Adam's state.

That needs everything a step reads restored: the parameters, Adam's m, v and step count, the warm-up schedule's step
(hence the learning rate), the data stream's position and the dropout stream's position. Dropout is ON in these runs
so the last one matters; the negative controls show that leaving out the data or the dropout stream does change the
losses, i.e. the comparison is sharp enough to catch a missing piece.

Every step's loss is recorded by wrapping minattn.functional.cross_entropy (the demo logs only every 10th; the
``step_losses`` fixture, in tests/conftest.py).
On CuPy, dropout masks come from cuRAND (whose state is not captured) and scatter_add uses atomics, so exact
resumption is a NumPy property: skipped there.
"""
import json

import numpy as np
import pytest

from autograd import backend
from demos import copy_task
from minattn import checkpoint, manual_seed

pytestmark = pytest.mark.skipif(backend.BACKEND != "numpy",
                                reason="bit-exact resumption is promised on NumPy (cuRAND state is not captured)")

SMALL = ["--embed-dim", "16", "--num-heads", "2", "--ffn-hidden", "32", "--layers", "1", "--max-len", "5",
         "--batch-size", "8", "--warmup", "10", "--dropout", "0.1", "--seed", "5", "--eval-size", "10",
         "--no-progress"]


def train_run(argv, step_losses=None):
    """What main() does up to training: seed, build, train. Returns (per-step losses, copy_task.TrainResult, model,
    args); the per-step losses are those recorded during THIS call."""
    args = copy_task.parse_args(SMALL + argv)
    manual_seed(args.seed)
    model = copy_task.build_model(args)
    start = len(step_losses) if step_losses is not None else 0
    run = copy_task.train(model, args, progress=False)
    mine = list(step_losses[start:]) if step_losses is not None else None
    return mine, run, model, args


def run_training(argv, step_losses=None):
    """``train_run``, with the logged curve as (steps, losses) instead of the whole TrainResult."""
    mine, run, model, args = train_run(argv, step_losses)
    return mine, (run.steps, run.losses), model, args


def assert_bit_identical(a, b):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert type(x) is float and type(y) is float
        assert x == y or (np.isnan(x) and np.isnan(y)), f"step {i + 1}: {x!r} != {y!r}"
        assert np.float64(x).tobytes() == np.float64(y).tobytes()


def assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].tobytes() == sb[name].tobytes(), name


def test_resumed_run_reproduces_the_uninterrupted_losses_bit_for_bit(tmp_path, step_losses):
    total, stop = 40, 17                                               # stop between two logged steps
    full, (full_steps, full_logged), full_model, _ = run_training(["--steps", str(total), "--out",
                                                                   str(tmp_path / "full")], step_losses)
    first, _, _, _ = run_training(["--steps", str(stop), "--out", str(tmp_path / "run"), "--checkpoint-every", "5"],
                                  step_losses)
    ckpt = tmp_path / "run" / "checkpoint.npz"
    assert checkpoint.read_extra(ckpt)["step"] == stop                 # the last step is always written
    rest, (steps, logged), model, _ = run_training(["--steps", str(total), "--out", str(tmp_path / "run2"),
                                                    "--resume", str(ckpt)], step_losses)
    assert len(first) == stop and len(rest) == total - stop
    assert_bit_identical(first + rest, full)                          # every one of the 40 steps
    # the logged curve: the resumed run carries the first part over and drops step 17, where the first run ended
    # off the 10-step grid, so the whole curve is the uninterrupted run's
    assert steps == full_steps == [10, 20, 30, 40]
    assert_bit_identical(logged, full_logged)
    assert_same_model(model, full_model)


def test_chained_resumes_and_a_checkpoint_written_mid_run(tmp_path, step_losses):
    """10 steps writing a checkpoint every 4 (at 4, 8 and the last, 10) → resume to 23 → resume to 30."""
    full, _, full_model, _ = run_training(["--steps", "30", "--out", str(tmp_path / "full")], step_losses)
    a, _, _, _ = run_training(["--steps", "10", "--out", str(tmp_path / "a"), "--checkpoint-every", "4"],
                              step_losses)
    b, _, _, _ = run_training(["--steps", "23", "--out", str(tmp_path / "b"), "--checkpoint-every", "100",
                               "--resume", str(tmp_path / "a" / "checkpoint.npz")], step_losses)
    c, _, model, _ = run_training(["--steps", "30", "--out", str(tmp_path / "c"),
                                   "--resume", str(tmp_path / "b" / "checkpoint.npz")], step_losses)
    assert checkpoint.read_extra(tmp_path / "b" / "checkpoint.npz")["step"] == 23
    assert_bit_identical(a + b + c, full)
    assert_same_model(model, full_model)


def test_resuming_from_a_checkpoint_written_before_the_end(tmp_path, step_losses):
    """--steps 9 --checkpoint-every 6 writes at step 6, then overwrites it at step 9 (the last step); the file holds
    step 9 and resuming from it continues the full 12-step run exactly."""
    full, _, _, _ = run_training(["--steps", "12", "--out", str(tmp_path / "full")], step_losses)
    first, _, _, _ = run_training(["--steps", "9", "--out", str(tmp_path / "r"), "--checkpoint-every", "6"],
                                  step_losses)
    extra = checkpoint.read_extra(tmp_path / "r" / "checkpoint.npz")
    assert extra["step"] == 9 and extra["schedule_t"] == 9
    rest, _, _, _ = run_training(["--steps", "12", "--out", str(tmp_path / "r2"),
                                  "--resume", str(tmp_path / "r" / "checkpoint.npz")], step_losses)
    assert_bit_identical(first + rest, full)


@pytest.mark.parametrize("left_out", ["data stream", "dropout stream"])
def test_negative_control_a_missing_stream_changes_the_losses(tmp_path, step_losses, monkeypatch, left_out):
    """Resuming without restoring one of the streams gives other losses: the exact comparison above has teeth."""
    full, _, _, _ = run_training(["--steps", "12", "--out", str(tmp_path / "full")], step_losses)
    first, _, _, _ = run_training(["--steps", "6", "--out", str(tmp_path / "r"), "--checkpoint-every", "6"],
                                  step_losses)
    if left_out == "dropout stream":
        monkeypatch.setattr(checkpoint, "set_rng_state", lambda state: None)
    else:
        real_read = checkpoint.read_extra

        def without_data_stream(path):
            extra = real_read(path)
            extra["data_rng"] = np.random.default_rng([5, 1]).bit_generator.state   # back to the stream's start
            return extra

        monkeypatch.setattr(checkpoint, "read_extra", without_data_stream)
    rest, _, _, _ = run_training(["--steps", "12", "--out", str(tmp_path / "r2"),
                                  "--resume", str(tmp_path / "r" / "checkpoint.npz")], step_losses)
    assert first == full[:6]
    assert rest != full[6:]


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    run_training(["--steps", "3", "--out", str(tmp_path / "r"), "--checkpoint-every", "3"])
    args = copy_task.parse_args(SMALL + ["--steps", "6", "--dropout", "0.2", "--warmup", "20",
                                         "--resume", str(tmp_path / "r" / "checkpoint.npz")])
    manual_seed(args.seed)
    model = copy_task.build_model(args)
    before = model.state_dict()
    with pytest.raises(ValueError, match=r"other options: --dropout: checkpoint 0\.1, now 0\.2; --warmup: "
                                         r"checkpoint 10, now 20"):
        copy_task.train(model, args, progress=False)
    after = model.state_dict()
    assert all(before[n].tobytes() == after[n].tobytes() for n in before)   # checked before touching the model


def test_resume_refuses_a_checkpoint_past_the_requested_steps(tmp_path):
    run_training(["--steps", "5", "--out", str(tmp_path / "r"), "--checkpoint-every", "5"])
    args = copy_task.parse_args(SMALL + ["--steps", "4", "--resume", str(tmp_path / "r" / "checkpoint.npz")])
    with pytest.raises(ValueError, match=r"at step 5, past --steps 4"):
        copy_task.train(copy_task.build_model(args), args, progress=False)


def test_command_line_resume_writes_the_whole_loss_curve(tmp_path):
    """Through main(): the resumed run's metrics.json holds the same loss curve as the uninterrupted run's."""
    full = copy_task.main(SMALL + ["--steps", "25", "--out", str(tmp_path / "full")])
    copy_task.main(SMALL + ["--steps", "12", "--out", str(tmp_path / "part"), "--checkpoint-every", "12"])
    resumed = copy_task.main(SMALL + ["--steps", "25", "--out", str(tmp_path / "part"),
                                      "--resume", str(tmp_path / "part" / "checkpoint.npz")])
    written = json.loads((tmp_path / "part" / "metrics.json").read_text())
    curve = written["loss_curve"]
    keep = [i for i, s in enumerate(curve["step"]) if s in full["loss_curve"]["step"]]
    assert [curve["loss"][i] for i in keep] == full["loss_curve"]["loss"]
    assert resumed["final_loss"] == full["final_loss"]
    assert resumed["exact_match"] == full["exact_match"] and resumed["token_accuracy"] == full["token_accuracy"]
    assert written["eval_curve"] == full["eval_curve"] and full["eval_curve"]["step"] == [20]   # the check at 20
    assert resumed["steps"] == full["steps"] == 25


# --- early stopping: the checks and whether the target was reached are part of the state ---------------------------
EARLY = ["--min-len", "1", "--max-len", "2", "--schedule", "constant", "--lr", "1e-2", "--eval-every", "4",
         "--eval-size", "20", "--target", "0.4"]
"""A run that reaches its (low) target between steps 30 and 80: at step 48 (held-out exact match 8 of 20)."""


def test_resumed_run_stops_at_the_target_where_the_uninterrupted_run_stops(tmp_path, step_losses):
    full, full_run, full_model, _ = train_run(EARLY + ["--steps", "80", "--out", str(tmp_path / "full")],
                                              step_losses)
    stop = full_run.steps_to_target
    assert stop is not None and 30 < stop < 80 and len(full) == stop and full_run.steps[-1] == stop
    first, _, _, _ = train_run(EARLY + ["--steps", "30", "--out", str(tmp_path / "a"), "--checkpoint-every", "10"],
                               step_losses)
    rest, run, model, _ = train_run(EARLY + ["--steps", "80", "--out", str(tmp_path / "b"),
                                             "--resume", str(tmp_path / "a" / "checkpoint.npz")], step_losses)
    assert len(rest) == stop - 30 and run.steps_to_target == stop
    assert_bit_identical(first + rest, full)
    assert (run.steps, run.losses) == (full_run.steps, full_run.losses)
    for key in ("step", "exact_match"):
        assert run.eval_curve[key] == full_run.eval_curve[key]
    assert_same_model(model, full_model)


def test_resuming_a_run_that_reached_its_target(tmp_path, step_losses):
    """The checkpoint written at the stopping step (48: off the 10-step grid of the loss curve) resumes to no further
    step with the same --target, and continues like an uninterrupted run with --target 0, which never stops early."""
    first, stopped, stopped_model, _ = train_run(EARLY + ["--steps", "80", "--out", str(tmp_path / "a"),
                                                          "--checkpoint-every", "100"], step_losses)
    stop = stopped.steps_to_target
    ckpt = str(tmp_path / "a" / "checkpoint.npz")
    assert stop is not None and checkpoint.read_extra(ckpt)["step"] == stop < 80
    none, run, model, _ = train_run(EARLY + ["--steps", "80", "--out", str(tmp_path / "b"), "--resume", ckpt],
                                    step_losses)
    assert none == [] and run.steps_to_target == stop and (run.steps, run.losses) == (stopped.steps, stopped.losses)
    assert run.eval_curve == stopped.eval_curve
    assert_same_model(model, stopped_model)

    rest, more, _, _ = train_run(EARLY + ["--steps", "80", "--out", str(tmp_path / "c"), "--resume", ckpt,
                                          "--target", "0"], step_losses)
    full, never, _, _ = train_run(EARLY + ["--steps", "80", "--out", str(tmp_path / "d"), "--target", "0"],
                                  step_losses)
    assert len(rest) == 80 - stop and more.steps_to_target is None and never.steps_to_target is None
    assert_bit_identical(first + rest, full)            # the checks did not change the training
    assert (more.steps, more.losses) == (never.steps, never.losses)
    assert more.eval_curve["exact_match"] == never.eval_curve["exact_match"]
