"""Determinism on NumPy: the same seed gives the same run, bit for bit — every step's loss, the final parameters —
with dropout on (so the device stream is exercised too); and a different seed does not (the check is not vacuous).

This is what makes the copy-task numbers in the README reproducible and what --resume builds on. On CuPy,
scatter_add's atomics and cuRAND make runs differ in the last bits: skipped there.
"""
import numpy as np
import pytest

from autograd import backend
from demos import copy_task
from minattn import Transformer, checkpoint, manual_seed
from tests.test_resume import assert_bit_identical, assert_same_model, run_training

pytestmark = pytest.mark.skipif(backend.BACKEND != "numpy",
                                reason="bit-identical runs are promised on NumPy only (cuRAND, atomic scatter_add)")


def test_same_seed_same_losses_bit_for_bit(tmp_path, step_losses):
    first, logged_a, model_a, _ = run_training(["--steps", "25", "--out", str(tmp_path / "a")], step_losses)
    second, logged_b, model_b, _ = run_training(["--steps", "25", "--out", str(tmp_path / "b")], step_losses)
    assert len(first) == 25
    assert_bit_identical(first, second)
    assert logged_a == logged_b
    assert_same_model(model_a, model_b)


def test_same_seed_same_losses_with_talking_heads(tmp_path, step_losses):
    argv = ["--steps", "8", "--attention", "talking-heads", "--num-heads-qk", "1", "--num-heads-v", "2",
            "--talking-heads-bias"]
    first, _, _, _ = run_training(argv + ["--out", str(tmp_path / "a")], step_losses)
    second, _, _, _ = run_training(argv + ["--out", str(tmp_path / "b")], step_losses)
    assert_bit_identical(first, second)


def test_another_seed_other_losses(tmp_path, step_losses):
    first, _, _, _ = run_training(["--steps", "5", "--out", str(tmp_path / "a")], step_losses)
    other, _, _, _ = run_training(["--steps", "5", "--seed", "6", "--out", str(tmp_path / "b")], step_losses)
    assert all(a != b for a, b in zip(first, other))


def test_evaluation_is_deterministic_and_reads_no_training_stream(tmp_path):
    """Greedy decoding and the teacher-forced check run in eval mode (dropout ON in this model's training): they draw
    nothing from the random streams and give the model back in training mode."""
    _, _, model, args = run_training(["--steps", "5", "--out", str(tmp_path / "a")])
    assert model.training
    before = checkpoint.rng_state()
    a = copy_task.evaluate(model, args, eval_size=20)[:2]
    b = copy_task.evaluate(model, args, eval_size=20)[:2]
    c = copy_task.held_out_exact_match(model, copy_task.held_out_batches(args))
    assert a == b and 0 <= c <= 1
    assert checkpoint.rng_state() == before and model.training


def test_held_out_checks_leave_the_training_unchanged(tmp_path, step_losses):
    """A check every 2 steps (dropout on) gives the same loss at every step as no checks at all."""
    checked, logged_a, model_a, _ = run_training(["--steps", "12", "--eval-every", "2", "--target", "0",
                                                  "--out", str(tmp_path / "a")], step_losses)
    unchecked, logged_b, model_b, _ = run_training(["--steps", "12", "--eval-every", "0", "--target", "0",
                                                    "--out", str(tmp_path / "b")], step_losses)
    assert_bit_identical(checked, unchecked)
    assert logged_a == logged_b
    assert_same_model(model_a, model_b)


def test_manual_seed_gives_the_same_parameters():
    manual_seed(7)
    a = Transformer(10, 10, 16, 2, 32, 1, 1)
    manual_seed(7)
    b = Transformer(10, 10, 16, 2, 32, 1, 1)
    assert_same_model(a, b)
    manual_seed(8)
    c = Transformer(10, 10, 16, 2, 32, 1, 1)
    assert not np.array_equal(a.state_dict()["output.weight"], c.state_dict()["output.weight"])
