"""demos/additive_vs_dot.py end to end on tiny settings: the three parts run, print their tables, and the figures
and results.json are written."""
import json

from demos import additive_vs_dot


def test_tiny_run_prints_its_tables_and_writes_its_files(tmp_path, capsys):
    out = tmp_path / "avd"
    results = additive_vs_dot.main(["--sizes", "4", "8", "--dim", "8", "--hidden", "4", "--repeats", "2",
                                    "--dims", "4", "16", "--num-keys", "8", "--samples", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    for words in ("(a)", "(b)", "(c)", "fastest call, ms", "mean largest weight", "median ‖dA‖", "mean ‖dQ‖"):
        assert words in printed, words
    assert "the last axis E of query" in printed                     # the dot product refuses 20 vs 2 features
    assert [row["L"] for row in results["cost"]] == [4, 8]
    assert all(row["additive_ms"] > 0 and row["dot_ms"] > 0 for row in results["cost"])
    assert [row["d"] for row in results["scale"]] == [4, 16]
    side = results["side_by_side"]
    assert side["additive"]["weight_on_padding"] == 0 and side["scaled dot"]["weight_on_padding"] == 0
    assert side["different_sizes"]["additive_output_shape"] == [2, 1, 4]
    for name in ("weights_side_by_side.png", "scale_saturation.png", "results.json"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "results.json").read_text())["config"]["sizes"] == [4, 8]
