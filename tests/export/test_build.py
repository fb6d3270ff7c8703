"""Building engine directories: publish atomically, never corrupt each other when two processes build
the same engines, leave nothing complete-looking after a failure. The 'fake' backend
(tests/conftest.py) stands in for a compiler; the child processes define their own."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from vfrt.engines.config import EngineConfig
from vfrt.engines.engine_dir import check_engine_dir, read_manifest
from vfrt.engines.executors import ExecutorBase
from vfrt.export import build
from vfrt.export.build import BuildConfig, BuildError, build_engines

ROOT = Path(__file__).resolve().parents[2]

# A child that builds with a slow fake exporter. argv: checkpoint, yaml, out, marker folder, role.
# The "first" child announces it holds the build and waits until the "second" has started building too.
CHILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from vfrt.engines import engine_dir
    from vfrt.export import build

    ckpt, yaml, out, marks, role = sys.argv[1:6]
    marks = Path(marks)

    def export(spec, module, path, device):
        if role == "first" and spec.name == build.BUILD_ORDER[0]:
            (marks / "first-building").touch()
            deadline = time.time() + 60
            while not (marks / "second-started").exists() and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(2.0)                     # the second process reaches the lock meanwhile
        if role == "doomed" and spec.name == build.BUILD_ORDER[2]:
            (marks / "doomed-building").touch()
            time.sleep(600)                     # killed here by the test
        path.write_bytes(f"{role} artifact of {spec.name}\\n".encode() * 64)
        return build.ExportedNetwork(spec)

    build.EXPORTERS["fake"] = lambda: build.Exporter(".bin", lambda device: None, export)
    engine_dir.ENGINE_BACKENDS["fake"] = lambda: engine_dir.BackendLoader(lambda: "fake 1", lambda m, d, dev: {})
    if role == "second":
        while not (marks / "first-building").exists():
            time.sleep(0.05)
        (marks / "second-started").touch()
    result = build.build_engines(ckpt, build.BuildConfig(backend="fake", device="cpu", verify=False), config=yaml,
                                 out=Path(out))
    print(json.dumps({"role": role, "reused": result.reused, "dir": str(result.directory)}))
""")


def _child(tmp_path, tiny_checkpoint, out, role):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(tiny_checkpoint.ckpt), str(tiny_checkpoint.yaml),
                             str(out), str(tmp_path), role], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _fake(**kw):
    return BuildConfig(backend="fake", device="cpu", **kw)


def test_two_processes_building_the_same_engines_do_not_corrupt_each_other(tmp_path, tiny_checkpoint, fake_backend):
    out = tmp_path / "engines"
    first = _child(tmp_path, tiny_checkpoint, out, "first")
    second = _child(tmp_path, tiny_checkpoint, out, "second")
    results = {}
    for proc in (first, second):
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        results[json.loads(stdout.strip().splitlines()[-1])["role"]] = (json.loads(stdout.strip().splitlines()[-1]),
                                                                         stderr)
    assert results["first"][0]["reused"] is False
    assert results["second"][0]["reused"] is True          # it waited for the lock, then found them built
    assert "another process is building" in results["second"][1]
    manifest, _ = check_engine_dir(out, EngineConfig(device="cpu"))     # intact: sizes and hashes as recorded
    assert all((out / n.file).read_bytes().startswith(b"first artifact") for n in manifest.networks)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".engines")) == [".engines.lock"]


def test_a_build_killed_midway_publishes_nothing_and_the_next_build_cleans_up(tmp_path, tiny_checkpoint, fake_backend):
    out = tmp_path / "engines"
    doomed = _child(tmp_path, tiny_checkpoint, out, "doomed")
    deadline = time.time() + 120
    while not (tmp_path / "doomed-building").exists():
        assert doomed.poll() is None and time.time() < deadline, doomed.communicate()[1]
        time.sleep(0.05)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    assert not out.exists()
    leftovers = list(tmp_path.glob(".engines.tmp-*"))
    assert len(leftovers) == 1 and not (leftovers[0] / "manifest.json").exists()
    result = build_engines(tiny_checkpoint.ckpt, _fake(), config=tiny_checkpoint.yaml, out=out)
    assert not result.reused and read_manifest(out) == result.manifest
    assert not list(tmp_path.glob(".engines.tmp-*"))


def test_a_failing_export_or_verification_publishes_nothing(tmp_path, tiny_checkpoint, fake_backend, monkeypatch):
    out = tmp_path / "engines"
    exporter = build.EXPORTERS["fake"]()

    def broken(spec, module, path, device):
        if spec.name == "vae_encoder":
            raise RuntimeError("the compiler gave up")
        return exporter.export(spec, module, path, device)
    monkeypatch.setitem(build.EXPORTERS, "fake", lambda: build.Exporter(".bin", lambda d: None, broken))
    with pytest.raises(BuildError, match="exporting vae_encoder \\(fake\\) failed: RuntimeError: the compiler gave up"):
        build_engines(tiny_checkpoint.ckpt, _fake(), config=tiny_checkpoint.yaml, out=out)
    assert not out.exists() and not list(tmp_path.glob(".engines.tmp-*"))

    monkeypatch.setitem(build.EXPORTERS, "fake", lambda: exporter)
    loader = build.backend_loader("fake")

    class OffByABit(ExecutorBase):
        """A decoder that is wrong by 1 % of its output range."""

        def __init__(self, inner):
            super().__init__(inner.spec)
            self.inner = inner

        def _load_impl(self):
            self.inner.load()

        def _run_impl(self, inputs, sizes):
            return {"image": self.inner.run(inputs)["image"] + 0.01}

    def load(manifest, directory, device):
        executors = loader.load(manifest, directory, device)
        return {**executors, "vae_decoder": OffByABit(executors["vae_decoder"])}
    monkeypatch.setattr(build, "backend_loader", lambda name: build.BackendLoader(loader.version, load))
    with pytest.raises(BuildError, match=r"vae_decoder differs by .* of its output range \(tolerance 1e-04\)"):
        build_engines(tiny_checkpoint.ckpt, _fake(), config=tiny_checkpoint.yaml, out=out)
    assert not out.exists() and not list(tmp_path.glob(".engines.tmp-*"))


def test_a_foreign_out_folder_is_never_replaced(tmp_path, tiny_checkpoint, fake_backend):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(BuildError, match="is not an engine directory"):
        build_engines(tiny_checkpoint.ckpt, _fake(), config=tiny_checkpoint.yaml, out=mine)
    assert (mine / "holiday.jpg").read_bytes() == b"precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_engines(tiny_checkpoint.ckpt, _fake(), config=tiny_checkpoint.yaml, out=empty).directory == empty


def test_stale_engines_are_replaced_by_the_next_build(tmp_path, tiny_checkpoint, fake_backend):
    out = tmp_path / "engines"
    first = build_engines(tiny_checkpoint.ckpt, _fake(verify=False), config=tiny_checkpoint.yaml, out=out)
    data = json.loads((out / "manifest.json").read_text())
    data["platform"]["torch"] = "1.0.0"
    (out / "manifest.json").write_text(json.dumps(data))
    again = build_engines(tiny_checkpoint.ckpt, _fake(verify=False), config=tiny_checkpoint.yaml, out=out)
    assert not again.reused and read_manifest(out).platform.torch == torch.__version__
    assert again.manifest.built_at >= first.manifest.built_at and not list(tmp_path.glob(".engines.old-*"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(backend="tensorrt-someday"), "unknown backend"),
    (dict(precision="float8"), "precision must be one of"),
    (dict(max_refs=0), "max_refs must be an integer"),
    (dict(max_batch=True), "max_batch must be an integer"),
])
def test_build_config_is_validated_once(kwargs, match):
    with pytest.raises(BuildError, match=match):
        BuildConfig(**kwargs)


def test_build_config_resolves_device_and_precision():
    assert BuildConfig(device="cpu").resolve() == build.BuildTarget(torch.device("cpu"), torch.device("cpu"), "float32")
    with pytest.raises(BuildError, match="need a CUDA device"):
        BuildConfig(device="cpu", precision="float16").resolve()
    if not torch.cuda.is_available():
        with pytest.raises(BuildError, match="sees no CUDA GPU"):
            BuildConfig(device="cuda").resolve()
