"""The benchmark runs end to end: ``python -m bench --quick --no-torch`` prints its table and writes results.json;
with PyTorch installed (as in CI), ``python -m bench --quick`` times both libraries side by side.

No timing is asserted (DESIGN.md §5: timings never in tests); only that the suite completes, reports every row it
should, and that its FLOP formulas agree with a count done another way.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from bench import flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    """The subprocess's environment: the NumPy backend, and one BLAS thread — hence one minattn thread
    (autograd/parallel.py takes the BLAS's count as its default): on a busy 2-core machine two threads can stall for
    milliseconds per small matmul, and this test must stay fast (it asserts no timing)."""
    env = dict(os.environ)
    env.pop("MINATTN_BACKEND", None)
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def test_quick_run_prints_table_and_writes_results(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--no-torch", "--out", str(out)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout = proc.stdout
    assert "threads: 1 (autograd.parallel.get_num_threads()" in stdout and "os.cpu_count() =" in stdout
    header = next(line for line in stdout.splitlines() if line.startswith("workload"))
    for column in ("ms", "GFLOP/s", "%peak", "÷torch-expl", "÷torch-SDPA", "tracemalloc MB", "RSS+ MB"):
        assert column in header
    for label in ("SDPA", "MHA", "talking heads", "copy-task step", "PyTorch rows skipped (--no-torch)"):
        assert label in stdout

    results = json.loads((out / "results.json").read_text())
    assert results["quick"] and results["torch"] is None and results["threads"] == 1
    assert results["blas_threads"] == 1
    assert results["matmul_peak"]["peak_gflops"] > 0
    rows = results["rows"]
    assert {r["lib"] for r in rows} == {"minattn"}
    measured = [r for r in rows if "ms" in r]
    assert {r["workload"] for r in measured} == {"sdpa", "mha", "talking_heads", "copy_step"}
    for r in measured:
        assert r["ms"] > 0 and r["gflops"] > 0 and r["tracemalloc_mb"] > 0
    for r in rows:   # a row is either measured or says why not
        assert "ms" in r or r["skipped"]
    assert (out / "table.txt").exists() and (out / "dense_vs_flash.png").stat().st_size > 0
    assert results["figure"]["dense"][0]["L"] == 512
    assert "greedy decoding, ms per generated token" in stdout
    assert "character-level GPT (demos.char_lm" in stdout
    assert (results["char_lm"]["steps"] == 6 and results["char_lm"]["minattn_ms"] > 0
            and "torch_ms" not in results["char_lm"])
    assert [r["T"] for r in results["decoding"]] == [16, 32]
    assert all(r["cached_ms_per_token"] > 0 and r["recomputed_ms_per_token"] > 0 for r in results["decoding"])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="PyTorch not installed (optional: requirements-bench.txt; CI installs it)")
def test_quick_run_with_torch_times_both_sides(tmp_path):
    """With PyTorch: every workload is measured for both libraries, with a ratio, and the char LM row trains the
    PyTorch twin on the same batches (same parameter count, a validation loss of its own)."""
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["torch"]["version"].startswith("2.") and results["torch"]["threads"] == 1
    assert {r["lib"] for r in results["rows"]} == {"minattn", "torch"}
    char_lm = results["char_lm"]
    assert char_lm["torch_num_parameters"] == char_lm["num_parameters"]
    assert char_lm["torch_ms"] > 0                # --quick: 6 steps, one pair of blocks, whose ratio is the medians'
    assert char_lm["ratio"] == pytest.approx(char_lm["minattn_ms"] / char_lm["torch_ms"], rel=1e-12)
    assert char_lm["ratio_quartiles"] == [char_lm["ratio"]] * 2
    assert 0 < char_lm["torch_val_loss"] < 10 and "PyTorch" in proc.stdout


def test_script_entry_point_help():
    proc = subprocess.run([sys.executable, os.path.join("bench", "run.py"), "--help"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for option in ("--quick", "--out", "--no-torch", "--threads"):
        assert option in proc.stdout


def test_flop_formulas():
    B, L, E, h = 2, 5, 12, 3
    d = E // h
    forward_core = B * h * (2 * L * L * d + 2 * L * L * d)          # Q Kᵀ and P V, per head
    assert flops.attention_core(B, L, L, E) == 3 * forward_core     # backward: four more products of those sizes
    assert flops.multi_head_attention(B, L, E) == 4 * 3 * (2 * B * L * E * E) + 3 * forward_core
    assert flops.talking_heads(B, L, E, h) - flops.multi_head_attention(B, L, E) == 2 * 3 * (2 * B * h * h * L * L)
    # a one-layer model with no FFN work and a vocabulary of 1 is two MHAs' projections and three cores
    step = flops.transformer_step(B, L, L, E, 0, 1, 1, 0)
    assert step == 12 * flops.linear(B * L, E, E) + 3 * flops.attention_core(B, L, L, E)
