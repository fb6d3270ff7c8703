"""The recon benchmark's CPU path (the GPU run uses the same code with bigger settings)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_recon.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_recon", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_runs_on_cpu_with_tiny_settings(bench, tmp_path, capsys):
    out = tmp_path / "r.json"
    result = bench.main(["--objects", "mug", "--views", "4", "--size", "32", "--preset", "quick", "--device", "cpu",
                         "--set", "steps=3,image_size=16,mc_resolution=16,hull_resolution=16", "--samples", "2000",
                         "--ref-spacing", "0.03", "--no-turntable", "--points", "2000", "--repeats", "2",
                         "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["recon"][0]["object"] == "mug" and saved["recon"][0]["steps"] == 3
    row = result["recon"][0]
    for key in ("wall_s", "cpu_s", "train_s", "cd", "f001", "psnr", "volume_sign"):
        assert key in row
    assert row["volume_sign"] in "+-" and set(row["volumes"]) == {"ply", "obj", "glb"}
    assert [r["backend"] for r in saved["hashgrid"]][0] == "reference"
    text = capsys.readouterr().out
    assert "CD-L2" in text and "colour PSNR" in text and "mug" in text


def test_overrides_parse(bench):
    assert bench._overrides("steps=400, image_size=96,colour_source=field") == {
        "steps": 400, "image_size": 96, "colour_source": "field"}
