"""`vfrt serve` from the shell: it loads the model, warns when reachable from other machines, and
stops with one clear message on bad options (uvicorn itself is replaced by a recorder here)."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from vfrt.cli.main import cli

for _module in ("fastapi", "multipart", "uvicorn"):
    pytest.importorskip(_module, reason="the serve extra is not installed (pip install 'vfrt[serve]')")


@pytest.fixture
def served(monkeypatch):
    """Replace uvicorn.run: record what `vfrt serve` would serve instead of serving it."""
    import uvicorn
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    return calls


def _args(tc, tmp_path, *extra):
    return ["serve", "-c", str(tc.ckpt), "--config", str(tc.yaml), "--device", "cpu", "--no-ui",
            "--runs-dir", str(tmp_path / "jobs"), *extra]


def test_serve_loads_the_model_and_listens_on_localhost(tiny_checkpoint, tmp_path, served):
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, tmp_path, "--port", "8123", "--queue-size", "3"))
    assert res.exit_code == 0, res.output
    assert "http://127.0.0.1:8123/" in res.output and "warning" not in res.output.lower()
    (app, kw), = served
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8123
    from fastapi.testclient import TestClient
    info = TestClient(app).get("/api/info").json()
    assert info["queue"]["capacity"] == 3 and info["workers"][0]["device"] == "cpu"
    assert (tmp_path / "jobs").is_dir()


def test_listening_on_all_interfaces_prints_a_warning(tiny_checkpoint, tmp_path, served):
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, tmp_path, "--host", "0.0.0.0"))
    assert res.exit_code == 0, res.output
    assert "warning: listening on 0.0.0.0" in res.output and "no login" in res.output
    assert served[0][1]["host"] == "0.0.0.0"


@pytest.mark.parametrize("extra, message", [
    (["--device", "tpu"], "unknown device"),
    (["--port", "0"], "Invalid value for '--port'"),
    (["--queue-size", "0"], "Invalid value for '--queue-size'"),
    (["--recon-steps", "0"], "Invalid value for '--recon-steps'"),
])
def test_bad_options_are_reported(tiny_checkpoint, tmp_path, served, extra, message):
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, tmp_path, *extra))
    assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output
    assert served == []


def test_a_folder_that_is_not_an_engine_directory_is_refused(tiny_checkpoint, tmp_path, served):
    """--engines loads built engines through the same path as `vfrt run --engines`: a folder without a
    manifest is refused with one line saying what to build."""
    res = CliRunner().invoke(cli, _args(tiny_checkpoint, tmp_path, "--engines", str(tmp_path)))
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "manifest" in res.output or "engine" in res.output
    assert served == []


def test_missing_checkpoint_and_missing_extra_say_what_to_do(tmp_path, monkeypatch, served):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VFRT_CHECKPOINT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    res = CliRunner().invoke(cli, ["serve", "--device", "cpu", "--no-ui"])
    assert res.exit_code != 0 and "zero123-xl.ckpt" in res.output and "Traceback" not in res.output
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    res = CliRunner().invoke(cli, ["serve", "--device", "cpu"])
    assert res.exit_code != 0 and "pip install 'vfrt[serve]'" in res.output and "gradio" in res.output


def test_serve_is_listed():
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0 and "serve" in res.output
