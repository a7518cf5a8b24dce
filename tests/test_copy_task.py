"""The copy task end to end: the data are what the task says, and a seconds-long training run lowers the loss.

The demo is run through its own ``main`` with a small model on a small output folder, so the test also checks that
the figures and metrics.json are written with the keys scripts read.
"""
import json

import numpy as np
import pytest

from demos import copy_task
from minattn import tasks


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
    with pytest.raises(ValueError, match="min_len"):
        tasks.make_batch(rng, 2, 10, 4, 2)


def test_strip():
    assert tasks.strip([5, 6, tasks.EOS, 7]) == [5, 6]
    assert tasks.strip([5, tasks.PAD, 6]) == [5, 6]


def test_short_training_lowers_the_loss_and_writes_its_outputs(tmp_path):
    out = tmp_path / "run"
    metrics = copy_task.main(["--steps", "150", "--eval-size", "40", "--out", str(out), "--no-progress",
                              "--embed-dim", "32", "--num-heads", "2", "--ffn-hidden", "64", "--layers", "1",
                              "--max-len", "6", "--warmup", "50", "--seed", "3"])
    losses = metrics["loss_curve"]["loss"]
    assert np.isfinite(losses).all()
    # uniform guessing over 16 tokens costs ln 16 = 2.77 nats; a model that learned nothing stays near it
    assert losses[0] > 1.5
    assert np.mean(losses[-3:]) < 0.25 * losses[0]
    written = json.loads((out / "metrics.json").read_text())
    for key in ("exact_match", "token_accuracy", "final_loss", "steps", "train_seconds", "config"):
        assert key in written
    assert written["steps"] == 150 and 0 <= written["exact_match"] <= 1
    assert (out / "loss_curve.png").stat().st_size > 0 and (out / "cross_attention.png").stat().st_size > 0
