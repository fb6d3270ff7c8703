"""`vfrt doctor`: one row per check, never a crash, machine-readable with --json."""
import importlib.util
import json

import pytest
from click.testing import CliRunner

from vfrt.cli import doctor as doctor_module
from vfrt.cli.common import find_checkpoint
from vfrt.cli.doctor import CHECKS, Row, check_checkpoint, check_extras, check_segmentation, run_checks
from vfrt.cli.main import cli


def _rows(*args):
    res = CliRunner().invoke(cli, ["doctor", "--json", *args])
    assert res.exit_code == 0, res.output
    return {r["name"]: r for r in json.loads(res.output)}


def test_json_report_has_every_check():
    rows = _rows()
    for name in ("python", "vfrt", "torch", "triton", "outputs", "extra: recon", "extra: onnx", "extra: tensorrt",
                 "extra: ray", "extra: serve", "rembg", "segmentation", "checkpoint", "backend: aoti",
                 "backend: onnxruntime", "backend: tensorrt", "engines"):
        assert name in rows, name
    assert any(n.startswith("gpu") for n in rows)
    assert all(r["status"] in ("ok", "missing", "warning", "error") for r in rows.values())
    assert rows["outputs"]["status"] == "ok" and "ffmpeg" in rows["outputs"]["detail"]   # base dependencies


def test_table_report(monkeypatch):
    res = CliRunner().invoke(cli, ["doctor"])
    assert res.exit_code == 0 and "vfrt doctor" in res.output and "checkpoint" in res.output
    monkeypatch.setattr(doctor_module, "CHECKS", [lambda: [Row("extra: onnx", "missing", "pip install 'vfrt[onnx]'")]])
    res = CliRunner().invoke(cli, ["doctor"])
    assert "vfrt[onnx]" in res.output              # rich markup does not eat the [extra]


def test_backend_rows_say_what_builds_and_runs_here(monkeypatch):
    import sys

    import torch
    rows = _rows()
    if importlib.util.find_spec("onnxruntime") is not None:
        assert rows["backend: onnxruntime"]["status"] == "ok" and "builds here, runs on the CPU" in \
            rows["backend: onnxruntime"]["detail"]
    if importlib.util.find_spec("tensorrt_rtx") is not None and not torch.cuda.is_available():
        detail = rows["backend: tensorrt"]["detail"]
        assert "builds plans without a GPU" in detail and "cannot run here" in detail
    for module in ("onnxruntime", "tensorrt", "tensorrt_rtx"):
        monkeypatch.setitem(sys.modules, module, None)
    rows = _rows()
    assert rows["backend: onnxruntime"]["status"] == "missing" and "vfrt[onnx]" in rows["backend: onnxruntime"]["detail"]
    assert rows["backend: tensorrt"]["status"] == "missing" and "vfrt[tensorrt]" in rows["backend: tensorrt"]["detail"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU row")
def test_no_gpu_row():
    assert _rows()["gpu"]["detail"].startswith("no GPU")


def test_a_failing_check_becomes_an_error_row():
    def check_boom():
        raise RuntimeError("driver on fire")
    rows = run_checks([lambda: [Row("first", "ok", "-")], check_boom, lambda: [Row("last", "ok", "-")]])
    assert [r.name for r in rows] == ["first", "boom", "last"]
    assert rows[1].status == "error" and "RuntimeError: driver on fire" in rows[1].detail


def test_a_failing_check_does_not_stop_the_command(monkeypatch):
    def check_torch():
        raise ImportError("torch is broken")
    monkeypatch.setattr(doctor_module, "CHECKS", [check_torch] + CHECKS[2:])
    rows = _rows()
    assert rows["torch"]["status"] == "error" and "torch is broken" in rows["torch"]["detail"]
    assert "checkpoint" in rows


def test_checkpoint_row_follows_the_run_search_order(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VFRT_CHECKPOINT", raising=False)
    monkeypatch.setattr("vfrt.cli.common.DEFAULT_CHECKPOINT_PATHS", (tmp_path / "checkpoints" / "zero123-xl.ckpt",))
    assert find_checkpoint() is None
    [row] = check_checkpoint()
    assert row.status == "missing" and "zero123-xl.ckpt" in row.detail
    monkeypatch.setenv("VFRT_CHECKPOINT", str(tiny_checkpoint.ckpt))
    assert find_checkpoint() == tiny_checkpoint.ckpt
    [row] = check_checkpoint()
    assert row.status == "ok" and str(tiny_checkpoint.ckpt) in row.detail and "GB" in row.detail
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "zero123-xl.ckpt").write_bytes(b"x")
    monkeypatch.delenv("VFRT_CHECKPOINT")
    assert find_checkpoint() == tmp_path / "checkpoints" / "zero123-xl.ckpt"
    assert find_checkpoint(str(tmp_path / "nope.ckpt")) is None          # an explicit path is not replaced


def test_extras_and_segmentation_rows(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    hidden = {"scipy", "tensorrt", "tensorrt_rtx", "rembg"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    rows = {r.name: r for r in check_extras() + check_segmentation()}
    assert rows["extra: recon"].status == "missing" and "scipy not installed" in rows["extra: recon"].detail
    assert "vfrt[recon]" in rows["extra: recon"].detail
    assert rows["extra: tensorrt"].detail.startswith("tensorrt or tensorrt_rtx not installed")
    assert rows["rembg"].status == "missing"
    assert "auto uses grabcut" in rows["segmentation"].detail


def test_doctor_says_which_recon_encoding_runs_here():
    from vfrt.cli.doctor import check_recon_encoding
    from vfrt.recon.hashgrid import encoding_backends
    (row,) = check_recon_encoding()
    assert row.name == "recon encoding" and row.status == "ok"
    assert f"auto uses {encoding_backends()['auto']}" in row.detail and "tiny-cuda-nn" in row.detail
