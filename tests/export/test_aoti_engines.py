"""AOTInductor engines end to end on the CPU: `vfrt build-engines --device cpu` once (tests/export/
conftest.py), then every network against its PyTorch module, `vfrt run` with them against the
reference backend, the cache lookup of `vfrt run -c`, and the CLI's answers to damaged engines.
The views test also runs over the ONNX Runtime engines (`--backend onnxruntime`)."""
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vfrt.cli.main import cli
from vfrt.engines.config import EngineConfig
from vfrt.engines.engine_dir import load_engine, read_manifest
from vfrt.engines.fingerprint import sha256_file
from vfrt.engines.specs import NETWORK_NAMES, build_networks

#: fp32 engine vs fp32 PyTorch: only kernels and summation order differ (per network, relative to the output range)
NETWORK_TOLERANCE = 1e-4
#: generated views vs the fp32 reference backend, same noise (as the torch fast engine's test: tests/runtime)
VIEW_TOLERANCE = 1e-4


@pytest.fixture(params=["aoti", "onnxruntime"])
def cpu_engines(request):
    """The fp32 CPU engines of each backend that runs on the CPU (built once per session)."""
    return request.param, request.getfixturevalue(f"{request.param}_engines")


def _run(weights, photo, out, *extra):
    """`vfrt run` of a short orbit; ``weights``: a tiny checkpoint passed with -c/--config, or None."""
    args = ["run", str(photo), "--steps", "4", "--views", "8", "--device", "cpu", "-o", str(out), *extra]
    if weights is not None:
        args += ["-c", str(weights.ckpt), "--config", str(weights.yaml)]
    return CliRunner().invoke(cli, args)


def test_the_build_wrote_a_verified_manifest(aoti_engines, tiny_checkpoint):
    m = read_manifest(aoti_engines.directory)
    assert aoti_engines.directory.parent == aoti_engines.cache / "engines"
    assert m.backend == "aoti" and m.backend_version == f"torch {torch.__version__}" and m.precision == "float32"
    assert m.platform.device == "cpu" and m.checkpoint.fingerprint == sha256_file(tiny_checkpoint.ckpt)
    assert [n.file for n in m.networks] == [f"{n}.pt2" for n in NETWORK_NAMES]
    assert all(n.max_error is not None and n.max_error <= NETWORK_TOLERANCE for n in m.networks), \
        {n.name: n.max_error for n in m.networks}
    assert m.toolchain["cxx"] and m.toolchain["version"] and "libstdcxx" in m.toolchain
    assert m.network("unet_step").axes == (("rows", (1, 13, 26)),)
    assert "verified: max relative error" in aoti_engines.output


def test_every_network_agrees_with_pytorch_on_fresh_inputs(aoti_engines, tiny_model):
    engine = load_engine(aoti_engines.directory)
    nets = build_networks(tiny_model, "cpu", torch.float32, torch.float32, channels_last=False)
    gen = torch.Generator().manual_seed(7)
    for name in NETWORK_NAMES:
        ex = engine.executor(name)
        assert ex.kind == "aoti"
        for _ in range(2):
            sizes = {axis: int(torch.randint(r.min, r.max + 1, (1,), generator=gen)) for axis, r in ex.spec.axes}
            inputs = ex.spec.sample_inputs(sizes, generator=gen)
            got, want = ex.run(inputs), dict(zip(ex.spec.output_names, _tuple(nets.module(name)(**inputs))))
            for out in ex.spec.output_names:
                scale = want[out].abs().max().item()
                assert (got[out] - want[out]).abs().max().item() <= NETWORK_TOLERANCE * scale, (name, sizes, out)


def _tuple(x):
    return (x,) if isinstance(x, torch.Tensor) else tuple(x)


def test_views_from_the_engines_equal_the_reference_backend(cpu_engines, tiny_model, photo, tmp_path):
    """`vfrt run --engines` (no checkpoint needed), then the fp32 reference replaying its noise."""
    backend, built = cpu_engines
    res = _run(None, photo, tmp_path / "eng", "--engines", str(built.directory), "--save-noise")
    assert res.exit_code == 0, res.output
    assert f"engines: {built.directory} ({backend}, float32" in res.output
    meta = json.loads((tmp_path / "eng" / "run.json").read_text())
    assert meta["engine"]["engines"]["dir"] == str(built.directory)
    assert set(meta["engine"]["executors"].values()) == {backend} and meta["engine"]["graphs"] is False

    from vfrt.runtime.noise import NoiseBank
    from vfrt.runtime.pipeline import Pipeline
    from vfrt.runtime.preprocess import load_image
    from vfrt.runtime.sampler import SamplerConfig
    image = load_image(tmp_path / "eng" / "input.png", preprocess=False)
    noise = NoiseBank.load(tmp_path / "eng" / "noise.npz")
    sampler = SamplerConfig(steps=4)
    eng = Pipeline.from_engines(built.directory).orbit(image, views=8, sampler=sampler, noise=noise, preprocess=False)
    ref = Pipeline(tiny_model, EngineConfig(backend="reference", device="cpu")).orbit(
        image, views=8, sampler=sampler, noise=noise, preprocess=False)
    assert np.abs(eng.images - ref.images).max() <= VIEW_TOLERANCE
    from vfrt.runtime.preprocess import to_uint8
    for i, view in enumerate(eng.orbit_images()):     # and the run's views are these (same engines, same noise)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "eng" / "views" / f"{i:03d}.png")), to_uint8(view))


def test_vfrt_run_finds_the_engines_of_its_checkpoint(aoti_engines, tiny_checkpoint, photo, tmp_path, monkeypatch):
    """The cache lookup is the same for every backend (its reuse check per backend: test_engine_backends.py)."""
    monkeypatch.setenv("VFRT_CACHE_DIR", str(aoti_engines.cache))
    res = _run(tiny_checkpoint, photo, tmp_path / "auto")
    assert res.exit_code == 0, res.output
    assert f"engines: {aoti_engines.directory}" in res.output
    res = _run(tiny_checkpoint, photo, tmp_path / "torch", "--no-engines")
    assert res.exit_code == 0 and "engines:" not in res.output
    assert "engines" not in json.loads((tmp_path / "torch" / "run.json").read_text())["engine"]
    res = _run(tiny_checkpoint, photo, tmp_path / "x", "--no-engines", "--engines", str(aoti_engines.directory))
    assert res.exit_code == 2 and "exclude each other" in res.output
    res = CliRunner().invoke(cli, ["build-engines", "-c", str(tiny_checkpoint.ckpt), "--config",
                                   str(tiny_checkpoint.yaml), *aoti_engines.options])
    assert res.exit_code == 0 and f"up to date: {aoti_engines.directory}" in res.output


def test_engines_that_do_not_fit_are_reported_and_the_run_falls_back(aoti_engines, tiny_checkpoint, photo, tmp_path,
                                                                      monkeypatch, caplog):
    cache = tmp_path / "cache"
    stale = cache / "engines" / aoti_engines.directory.name
    shutil.copytree(aoti_engines.directory, stale)
    data = json.loads((stale / "manifest.json").read_text())
    data["platform"]["torch"] = "2.0.0"
    (stale / "manifest.json").write_text(json.dumps(data))
    monkeypatch.setenv("VFRT_CACHE_DIR", str(cache))
    with caplog.at_level("WARNING"):
        res = _run(tiny_checkpoint, photo, tmp_path / "fallback")
    assert res.exit_code == 0, res.output
    notes = [r.getMessage() for r in caplog.records if "not using the built engines" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0] and "built with torch 2.0.0" in notes[0]
    assert f"rebuild with: vfrt build-engines -c {tiny_checkpoint.ckpt}" in notes[0]
    assert "engines" not in json.loads((tmp_path / "fallback" / "run.json").read_text())["engine"]
    # named explicitly, the same engines stop the run with the same reason
    res = _run(tiny_checkpoint, photo, tmp_path / "explicit", "--engines", str(stale))
    assert res.exit_code == 1 and "built with torch 2.0.0" in res.output and "Traceback" not in res.output


def test_damaged_engines_named_explicitly_stop_the_run_with_the_rebuild(aoti_engines, tiny_checkpoint, photo,
                                                                        tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(aoti_engines.directory, damaged)
    with open(damaged / "unet_step.pt2", "r+b") as f:
        f.truncate(1000)
    res = _run(None, photo, tmp_path / "a", "--engines", str(damaged))
    assert res.exit_code == 1 and "unet_step.pt2 has 1000 bytes" in res.output and "Traceback" not in res.output
    assert f"rebuild with: vfrt build-engines -c {tiny_checkpoint.ckpt}" in res.output and f"--out {damaged}" in \
        res.output
    (damaged / "manifest.json").write_text("{}")
    res = _run(None, photo, tmp_path / "b", "--engines", str(damaged))
    # a corrupt manifest is a bad --engines value, noticed before anything loads (usage error, exit 2)
    assert res.exit_code == 2 and "manifest.json is corrupt" in res.output and not (tmp_path / "b").exists()


def test_explicit_engines_of_other_weights_are_refused(aoti_engines, photo, tmp_path):
    from vfrt.models import write_tiny_checkpoint
    other = write_tiny_checkpoint(tmp_path / "other", seed=3)
    res = _run(other, photo, tmp_path / "o", "--engines", str(aoti_engines.directory))
    assert res.exit_code == 1 and "built from other weights" in res.output


def test_doctor_lists_the_engines_and_whether_they_run_here(aoti_engines, tiny_checkpoint, tmp_path, monkeypatch):
    from vfrt.cli.doctor import check_engines
    monkeypatch.setenv("VFRT_CHECKPOINT", str(tiny_checkpoint.ckpt))
    monkeypatch.setenv("VFRT_CACHE_DIR", str(tmp_path / "empty"))
    rows = {r.name: r for r in check_engines()}
    assert rows["engines"].status == "missing" and "vfrt build-engines -c CKPT" in rows["engines"].detail
    assert rows["engines for checkpoint"].status == "missing" and rows["backend: aoti"].status in ("ok", "warning")
    cache = tmp_path / "cache"
    shutil.copytree(aoti_engines.directory, cache / "engines" / "good")
    shutil.copytree(aoti_engines.directory, cache / "engines" / "truncated")
    with open(cache / "engines" / "truncated" / "vae_decoder.pt2", "r+b") as f:
        f.truncate(5)
    shutil.copytree(aoti_engines.directory, cache / "engines" / "corrupt")
    (cache / "engines" / "corrupt" / "manifest.json").write_text("[")
    monkeypatch.setenv("VFRT_CACHE_DIR", str(cache))
    rows = {r.name: r for r in check_engines()}
    assert rows["engines: good"].status == "ok" and str(tiny_checkpoint.ckpt) in rows["engines: good"].detail
    assert rows["engines: truncated"].status == "warning" and "vae_decoder.pt2 has 5 bytes" in \
        rows["engines: truncated"].detail
    assert rows["engines: corrupt"].status == "error"
    assert rows["engines for checkpoint"].status == "ok"


def test_the_load_probe_and_the_toolchain_check_run_for_real(aoti_engines, tmp_path):
    """What runs where the compiler's libstdc++ differs from the process's: a tiny package compiled once,
    loaded in a child (here it loads: a pretended mismatch, the real probe)."""
    import os

    from vfrt.engines.fingerprint import JsonStore
    from vfrt.engines.toolchain import LoadabilityCheck, probe_load
    from vfrt.export.aoti import check_toolchain
    assert probe_load(aoti_engines.directory / "time_embedding.pt2", os.environ).ok
    junk = tmp_path / "junk.pt2"                      # the loader's own error, not a fallback that hides it
    junk.write_bytes(b"not a package")
    bad = probe_load(junk, os.environ)
    assert not bad.ok and bad.detail.startswith("loading failed: ")
    calls = []

    def probe(package, env):
        calls.append(package)
        return probe_load(package, env)
    check = LoadabilityCheck(probe=probe, verdicts=JsonStore(tmp_path / "verdicts.json"), loaded="/elsewhere/libstdc++.so.6")
    report = check_toolchain(check)
    assert report.ok and report.loaded == "/elsewhere/libstdc++.so.6" and len(calls) == 1
    assert calls[0].name == "probe.pt2" and calls[0].is_file()


def test_loading_engines_does_not_import_inductor_and_both_loaders_agree(aoti_engines):
    """The direct package loader (start-up path) gives what torch's documented loader gives, and a run
    that loads engines never imports Inductor / TorchDynamo (a second of start-up)."""
    import os
    import subprocess
    import sys

    from vfrt.engines.executors.aoti import load_package
    path = aoti_engines.directory / "conditioning.pt2"
    spec = read_manifest(aoti_engines.directory).network("conditioning").spec()
    inputs = spec.sample_inputs(generator=torch.Generator().manual_seed(4))
    direct = load_package(path, spec.input_names, run_single_threaded=False, device_index=-1)
    names = spec.input_names[::-1]          # not the traced order: torch's loader, by keyword
    fallback = load_package(path, names, run_single_threaded=False, device_index=-1)
    for a, b in zip(direct([inputs[n] for n in spec.input_names]), fallback([inputs[n] for n in names])):
        assert torch.equal(a, b)
    code = ("import sys; from vfrt.engines.engine_dir import load_engine; load_engine(sys.argv[1]); "
            "print(sorted(m for m in ('torch._inductor', 'torch._dynamo') if m in sys.modules))")
    from pathlib import Path
    env = {**os.environ, "VFRT_CACHE_DIR": str(aoti_engines.cache), "PYTHONPATH": str(Path(__file__).parents[2])}
    out = subprocess.run([sys.executable, "-c", code, str(aoti_engines.directory)], capture_output=True, text=True,
                         env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
