"""benchmarks/bench_export.py runs on the CPU with the tiny model (the lead runs it full size on the GPU)."""
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (pip install 'vfrt[onnx]')")

_path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_export.py"
_spec = importlib.util.spec_from_file_location("bench_export", _path)
bench_export = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_export)


def test_tiny_run_writes_json_and_a_table(tmp_path, capsys):
    out = tmp_path / "export.json"
    code = bench_export.main(["--tiny", "--device", "cpu", "--networks", "conditioning,time_embedding",
                              "--exporter", "torchscript", "--out", str(out), "--work-dir", str(tmp_path / "work")])
    assert code == 0
    res = json.loads(out.read_text())
    assert list(res["precisions"]) == ["float16", "float32"]
    for precision, limit in (("float16", 3e-2), ("float32", 1e-4)):
        rows = res["precisions"][precision]["networks"]
        assert [r["network"] for r in rows] == ["conditioning", "time_embedding"]
        for row in rows:
            assert row["checks"] == "ok" and row["within_tolerance"] and row["precision"] == precision
            assert row["error_vs_torch_fp32"] <= limit and row["weight_bytes"] > 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:3] == ["precision", "network", "MB"]
    assert sum(line.startswith("float16   time_embedding") for line in table) == 1
    assert list((tmp_path / "work").iterdir()) == []                # exports removed without --keep


def test_a_spent_budget_skips_the_next_precision_and_a_failure_sets_the_exit_code():
    res = {"precisions": {"float16": {"networks": [{"network": "unet_step", "error": "exporting failed"}]},
                          "float32": {"skipped": "time budget (500 s of 420 s spent)"}},
           "device": "cpu", "model": "tiny", "exporter": "dynamo", "opset": 18, "torch": "x", "onnxruntime": "y",
           "total_s": 1.0}
    assert bench_export.failed(res)
    text = bench_export.format_table(res)
    assert "unet_step       FAILED: exporting failed" in text and "float32   skipped: time budget" in text


def test_results_are_saved_after_every_network(monkeypatch, tmp_path):
    """A run cut short by a time limit keeps what it measured (the JSON is rewritten after each network)."""
    import argparse
    import copy
    monkeypatch.setattr(bench_export, "measure_network", lambda name, *rest: {"network": name, "within_tolerance": True})
    saved = []
    args = argparse.Namespace(device="cpu", networks="conditioning,time_embedding", tiny=True, exporter="torchscript",
                              budget_s=420.0, precisions="float16,float32", work_dir=str(tmp_path), keep=False, seed=7)
    bench_export.run(args, save=lambda res: saved.append(copy.deepcopy(res)))
    assert len(saved) == 4
    assert [r["network"] for r in saved[0]["precisions"]["float16"]["networks"]] == ["conditioning"]
    assert saved[2]["precisions"]["float16"].get("partial") is None and saved[2]["precisions"]["float32"]["partial"]
