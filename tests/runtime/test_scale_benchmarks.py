"""The batched-throughput and multi-GPU benchmarks' code paths, run with --tiny on the CPU (no measurement)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--tiny", *args, "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_throughput_benchmark_runs_every_batch_size(tmp_path):
    res, table = _run("bench_throughput.py", "--sizes", "1,2", "--views", "5", "--steps", "4", "--repeats", "1",
                      out=tmp_path / "tp.json")
    assert set(res["runs"]) == {"1", "2"} and res["generated_views"] == 4
    assert res["runs"]["2"]["max_abs_vs_one_at_a_time"] <= 1e-5      # fp32: batched == one at a time
    assert res["runs"]["1"]["speedup"] == 1.0 and all(r["finite"] for r in res["runs"].values())
    assert "orbits/h" in table and len(table.splitlines()) == 4


@pytest.mark.slow
def test_multi_gpu_benchmark_runs_each_gpu_count(tmp_path):
    res, table = _run("bench_multi_gpu.py", "--gpus", "1,2", "--views", "4", "--steps", "4", "--repeats", "1",
                      out=tmp_path / "mg.json")
    assert set(res["runs"]) == {"1", "2"} and res["backend"] == "gloo"
    assert res["runs"]["2"]["max_abs_vs_1_gpu"] <= 1e-5 and res["runs"]["2"]["finite"]
    assert "GPUs" in table
