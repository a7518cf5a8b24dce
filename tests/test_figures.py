"""demos/figures.py: --quick writes every figure (a real PNG) and README.md into --out; --only makes a subset."""
import pytest

from demos import figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    """A non-empty file that starts with the PNG signature."""
    data = path.read_bytes()
    return len(data) > len(PNG_SIGNATURE) and data.startswith(PNG_SIGNATURE)


def test_quick_writes_every_figure(tmp_path, capsys):
    """Every expected file exists and is a PNG; README.md has one line per figure, with its command."""
    made = figures.main(["--quick", "--out", str(tmp_path)])
    assert set(made) == set(figures.FIGURES)
    expected = {"copy_attention.png", "copy_curves.png", "talking_heads_mixing.png", "tied_vs_separate_qk.png",
                "positional_rotation.png", "flash_vs_dense_memory.png"}
    assert expected <= set(figures.FIGURES)
    for name in figures.FIGURES:
        assert is_png(tmp_path / name), name
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    for name in figures.FIGURES:
        assert sum(f"[{name}]" in line for line in readme.splitlines()) == 1, name
    assert "python -m demos.copy_task" in readme
    out = capsys.readouterr().out
    assert "copy_attention.png" in out and " s " in out                  # which file, from which command, how long


def test_only_makes_a_subset(tmp_path):
    """--only takes figure names and job names, comma-separated; nothing else is written."""
    made = figures.main(["--quick", "--only", "rotary_scores,positions", "--out", str(tmp_path)])
    assert set(made) == {"rotary_scores.png", "positional_rotation.png"}
    assert {p.name for p in tmp_path.glob("*.png")} == set(made)
    assert all(is_png(tmp_path / name) for name in made)
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "[rotary_scores.png]" in readme and "[copy_attention.png]" not in readme


def test_only_rejects_unknown_names(tmp_path, capsys):
    """An unknown name is a usage error that lists the valid ones, before any figure is made."""
    with pytest.raises(SystemExit) as exit_:
        figures.main(["--quick", "--only", "no_such_figure", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "copy_attention" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))
