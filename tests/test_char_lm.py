"""demos/char_lm.py end to end on a tiny text: it trains, measures train / validation / bigram losses, samples,
and writes its figures and metrics.json; the default corpus is Python's own pydoc topics."""
import json

import pytest

from demos import char_lm


def test_char_lm_tiny_run(tmp_path, capsys):
    """A few steps on a small file: every metric the issue names is in metrics.json, samples have the length asked."""
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    out = tmp_path / "out"
    m = char_lm.main(["--data", str(text), "--steps", "4", "--eval-every", "2", "--eval-batches", "2",
                      "--block-size", "16", "--embed-dim", "16", "--num-heads", "2", "--layers", "1",
                      "--sample-length", "40", "--no-progress", "--out", str(out)])
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("val_loss", "train_loss", "bigram_val_loss", "steps", "train_seconds", "tokens_per_second", "config"):
        assert key in saved
    assert saved["steps"] == 4 and m["curve"]["step"] == [2, 4]
    assert all(len(s) == 40 for s in m["samples"])                     # past block_size: the context is cropped
    assert (out / "loss_curve.png").stat().st_size > 0 and (out / "attention.png").stat().st_size > 0
    assert "bigram floor" in capsys.readouterr().out


def test_default_corpus_is_the_standard_librarys():
    """No file needed: Python's pydoc_data.topics, about 465,000 characters."""
    assert 400_000 < len(char_lm.load_text(None)) < 600_000


def test_resume_repeats_the_uninterrupted_run_bit_for_bit(tmp_path):
    """4 steps in one go, and 2 steps + --resume to 4: the same train and validation losses, to the bit; a checkpoint
    trained with other options is refused."""
    import pytest
    text = tmp_path / "text.txt"
    text.write_text("pack my box with five dozen liquor jugs. " * 50, encoding="utf-8")
    common = ["--data", str(text), "--eval-every", "2", "--eval-batches", "2", "--block-size", "16", "--embed-dim",
              "16", "--num-heads", "2", "--layers", "1", "--sample-length", "8", "--no-progress"]
    whole = char_lm.main(common + ["--steps", "4", "--out", str(tmp_path / "whole")])
    first = tmp_path / "first"
    char_lm.main(common + ["--steps", "2", "--checkpoint-every", "2", "--out", str(first)])
    resumed = char_lm.main(common + ["--steps", "4", "--resume", str(first / "checkpoint.npz"),
                                     "--out", str(tmp_path / "resumed")])
    assert resumed["curve"] == whole["curve"]
    with pytest.raises(ValueError, match=r"trained with other options: layers"):
        other = [("2" if a == "1" and common[i - 1] == "--layers" else a) for i, a in enumerate(common)]
        char_lm.main(other + ["--steps", "4", "--resume", str(first / "checkpoint.npz"),
                              "--out", str(tmp_path / "other")])


def test_options_that_would_fail_after_loading_the_corpus_are_refused_at_parse_time(capsys):
    """--min-lr above --lr, warm-up past the decay, a bad --top-p: argparse errors before any work, naming them."""
    for argv, option in ((["--min-lr", "0.1"], "--min-lr"), (["--warmup-steps", "3000"], "--warmup-steps"),
                         (["--top-p", "1.5"], "top_p")):
        with pytest.raises(SystemExit):
            char_lm.parse_args(argv)
        assert option in capsys.readouterr().err
    assert char_lm.parse_args(["--min-lr", "1e-3"]).min_lr == 1e-3       # equal to --lr: allowed
