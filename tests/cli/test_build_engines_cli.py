"""`vfrt build-engines` from the shell: bad options and bad places stop it with one message, before
anything is compiled (the real build is tested in tests/export/test_aoti_engines.py)."""
import pytest
import torch
from click.testing import CliRunner

from vfrt.cli.main import cli


def _build(*args):
    return CliRunner().invoke(cli, ["build-engines", *args])


def test_help_lists_the_build():
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0 and "build-engines" in res.output
    res = _build("--help")
    assert res.exit_code == 0 and "--max-refs" in res.output and "aoti" in res.output and "--jobs" in res.output


@pytest.mark.parametrize("args, match", [
    (["--device", "cpu", "--precision", "fp16"], "need a CUDA device"),
    (["--device", "tpu"], "unknown device"),
    (["--max-refs", "0"], "0 is not in the range"),
    (["--jobs", "0"], "0 is not in the range"),
    (["--jobs", "65"], "65 is not in the range"),
    (["--jobs", "two"], "'two' is not a valid integer"),
    (["--backend", "tensorrt-llm"], "Invalid value for '--backend'"),
    (["--backend", "tensorrt", "--device", "cpu"], "tensorrt engines run on cuda, not cpu"),
    (["--backend", "onnxruntime", "--device", "cpu", "--precision", "fp16"], "need a CUDA device"),
])
def test_bad_options_stop_before_the_weights_load(args, match):
    res = _build(*args)
    assert res.exit_code == 2 and match in res.output and "Traceback" not in res.output


def test_no_cuda_device_is_a_usage_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = _build("--device", "cuda")
    assert res.exit_code == 2 and "sees no CUDA GPU" in res.output


def test_missing_weights_and_foreign_out_folders_are_refused(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("VFRT_CHECKPOINT", raising=False)
    res = _build("-c", str(tmp_path / "nope.ckpt"), "--device", "cpu")
    assert res.exit_code == 1 and "checkpoint not found" in res.output
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "a.jpg").write_bytes(b"keep me")
    res = _build("-c", str(tiny_checkpoint.ckpt), "--config", str(tiny_checkpoint.yaml), "--device", "cpu",
                 "--out", str(mine))
    assert res.exit_code == 1 and "is not an engine directory" in res.output and "Traceback" not in res.output
    assert (mine / "a.jpg").read_bytes() == b"keep me"
