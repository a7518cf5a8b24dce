"""demos/talking_heads.py end to end on a tiny budget: both attentions train on the same batches, and the table,
figures and results.json are written."""
import json

from demos import talking_heads


def test_tiny_comparison_runs_and_writes_its_outputs(tmp_path, capsys):
    out = tmp_path / "th"
    runs = talking_heads.main(["--tasks", "copy", "--seeds", "1", "--steps", "20", "--eval-every", "10",
                               "--eval-size", "10", "--embed-dim", "16", "--num-heads", "4", "--max-len", "4",
                               "--out", str(out)])
    assert [r["attention"] for r in runs] == ["mha", "talking-heads"]
    for r in runs:
        assert [step for step, _ in r["checks"]] == [10, 20]
        assert 0 <= r["final_exact_match"] <= 1
        assert r["losses"][-1] < r["losses"][0]
    printed = capsys.readouterr().out
    assert "steps to 99%" in printed and "talking-heads" in printed
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 2 and results["table"][0].startswith("task")
    assert (out / "loss_curves.png").stat().st_size > 0 and (out / "talking_heads_P.png").stat().st_size > 0
