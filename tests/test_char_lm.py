"""demos/char_lm.py end to end on a tiny text: it trains, measures train / validation / bigram losses, samples,
and writes its figures and metrics.json; the default corpus is Python's own pydoc topics."""
import json

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
