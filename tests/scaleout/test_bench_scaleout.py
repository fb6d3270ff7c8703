"""benchmarks/bench_scaleout.py's code paths with --tiny on the CPU (no measurement): both launchers run every
photo once per worker count, and the table and JSON carry the figures the lead records."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench(tmp_path, *args):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scaleout.py"), "--tiny", "--gpus", "1,2",
                           "--photos", "2", "--views", "3", "--steps", "4", "--out", str(out), *args],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _check(res, table, launcher):
    assert res["launcher"] == launcher and set(res["runs"]) == {"1", "2"}
    for k, run in res["runs"].items():
        assert (run["done"], run["failed"], len(run["workers"])) == (2, 0, int(k))
        assert sum(run["photos_per_worker"].values()) == 2 and run["photos_per_hour"] > 0
    assert res["runs"]["1"]["speedup_after_startup"] == 1.0
    lines = table.splitlines()
    assert lines[0].startswith(f"{launcher} launcher, 2 photos x 3 views") and len(lines) == 4


def test_bench_with_the_process_launcher(tmp_path):
    _check(*_bench(tmp_path, "--launcher", "processes"), "processes")


@pytest.mark.slow
def test_bench_with_the_ray_launcher(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'vfrt[ray]')")
    _check(*_bench(tmp_path, "--launcher", "ray"), "ray")
