"""`vfrt build-engines --backend onnxruntime | tensorrt`: what each writes into its engine directory, and what
loading one says where it cannot run. The views of the ONNX Runtime engines against the reference backend
are checked with the AOTInductor ones (tests/export/test_aoti_engines.py, `cpu_engines`)."""
import dataclasses
import json
import sys

import pytest
import torch
from click.testing import CliRunner

from vfrt.cli.main import cli
from vfrt.engines.engine_dir import (ENGINE_BACKENDS, EngineMismatchError, check_artifacts, check_engine_dir,
                                     compatibility_problems, read_manifest)
from vfrt.engines.specs import NETWORK_NAMES
from vfrt.export.build import EXPORTERS, BuildConfig, BuildError


def test_every_backend_that_builds_also_loads():
    assert set(EXPORTERS) == set(ENGINE_BACKENDS) == {"aoti", "onnxruntime", "tensorrt"}


# ---------------------------------------------------------------------------------------------- ONNX Runtime
def test_onnxruntime_manifest_records_graphs_and_their_verification(onnxruntime_engines):
    import onnxruntime
    m = read_manifest(onnxruntime_engines.directory)
    assert (m.backend, m.backend_version, m.precision, m.platform.device) == (
        "onnxruntime", f"onnxruntime {onnxruntime.__version__}", "float32", "cpu")
    assert m.toolchain["onnxruntime"] == onnxruntime.__version__ and m.toolchain["opset"] >= 17
    for n in m.networks:
        assert n.file == f"{n.name}.onnx" and n.record["model"] == n.file and n.record["precision"] == "float32"
        assert n.max_error is not None and n.max_error <= 1e-4          # verified in ONNX Runtime at min and max
    assert sorted(p.name for p in onnxruntime_engines.directory.iterdir()) == sorted(
        [f"{n}.onnx" for n in NETWORK_NAMES] + ["manifest.json"])
    assert "verified: max relative error" in onnxruntime_engines.output
    check_engine_dir(onnxruntime_engines.directory)


def _without_onnxruntime(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)          # `import onnxruntime` raises ImportError


def test_missing_onnxruntime_stops_the_build_before_the_weights_load(monkeypatch, tmp_path):
    _without_onnxruntime(monkeypatch)
    with pytest.raises(BuildError, match=r"onnxruntime backend cannot build here: .*ONNX Runtime is not installed: "
                                         r"pip install 'vfrt\[onnx\]'"):
        BuildConfig(backend="onnxruntime", device="cpu").resolve()
    res = CliRunner().invoke(cli, ["build-engines", "-c", str(tmp_path / "never-read.ckpt"), "--backend",
                                   "onnxruntime", "--device", "cpu"])
    assert res.exit_code == 2 and "ONNX Runtime is not installed" in res.output and "Traceback" not in res.output


def test_onnxruntime_engines_without_onnxruntime_are_refused_with_what_to_install(onnxruntime_engines, monkeypatch):
    from vfrt.runtime.pipeline import Pipeline
    _without_onnxruntime(monkeypatch)
    with pytest.raises(EngineMismatchError, match=r"ONNX Runtime is not installed: pip install 'vfrt\[onnx\]'"):
        Pipeline.from_engines(onnxruntime_engines.directory)


def test_cuda_onnxruntime_engines_need_the_cuda_provider():
    """Checked before a build exports anything (and before a CUDA directory loads)."""
    import onnxruntime

    from vfrt.export.onnx import OnnxExportError, prepare
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    with pytest.raises(OnnxExportError, match=r"no CUDA provider .*vfrt\[onnx-gpu\].*--device cpu"):
        prepare(torch.device("cuda"))
    assert prepare(torch.device("cpu"))["onnxruntime"] == onnxruntime.__version__


# ---------------------------------------------------------------------------------------------- TensorRT
def test_tensorrt_manifest_records_flavour_version_targets_and_profiles(tensorrt_engines):
    from vfrt.engines.executors.tensorrt import PlanInfo, import_tensorrt
    trt = import_tensorrt()
    m = read_manifest(tensorrt_engines.directory)
    assert (m.backend, m.backend_version, m.precision, m.max_refs) == (
        "tensorrt", f"{trt.__name__} {trt.__version__}", "float16", 6)
    targets = tuple(m.toolchain["compute_capabilities"])
    assert (m.toolchain["flavour"], m.toolchain["version"]) == (trt.__name__, trt.__version__) and targets
    for n in m.networks:
        info = PlanInfo.from_dict(n.record)
        assert info.plan == n.file == f"{n.name}.plan" and info.bytes == n.size > 0
        assert (info.flavour, info.version, info.compute_capabilities) == (trt.__name__, trt.__version__, targets)
        assert info.precision == "float16" and info.onnx["max_error"]["min"] <= info.onnx["tolerance"]
    rows = {name: [shape[0] for shape in shapes] for name, shapes in m.network("unet_step").record["profile"].items()
            if name != "emb"}
    assert all(r == [1, 4, 7] for r in rows.values())                   # rows 1 / opt / max_refs + 1
    assert sorted(p.name for p in tensorrt_engines.directory.iterdir()) == sorted(
        [f"{n}.plan" for n in NETWORK_NAMES] + ["manifest.json"])        # the ONNX graphs are not kept
    check_artifacts(m, tensorrt_engines.directory)
    if not torch.cuda.is_available():
        assert m.platform.device == "cuda" and m.platform.gpu_name is None and m.platform.compute_capability is None
        assert all(n.max_error is None for n in m.networks)           # built for a GPU, nothing verified here
        assert "not verified (they cannot run on this machine)" in tensorrt_engines.output
        assert f"they run on a CUDA GPU of compute capability {', '.join(targets)}" in tensorrt_engines.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_tensorrt_engines_are_refused_where_no_gpu_can_run_them(tensorrt_engines, photo, tmp_path):
    from vfrt.runtime.pipeline import Pipeline
    with pytest.raises(EngineMismatchError, match=r"the tensorrt engines run on a CUDA GPU, and PyTorch sees none "
                                                  r"on this machine .*nothing can run them here"):
        Pipeline.from_engines(tensorrt_engines.directory)
    res = CliRunner().invoke(cli, ["run", str(photo), "--engines", str(tensorrt_engines.directory), "--steps", "2",
                                   "--views", "4", "-o", str(tmp_path / "out")])
    assert res.exit_code == 1 and "Error: the engines in" in res.output and "PyTorch sees none" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "out" / "views").exists()


def _pretend_gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


def test_plans_for_another_gpu_or_version_are_refused_before_deserializing(tensorrt_engines, monkeypatch):
    """The checks a load runs on a GPU, from the manifest alone (the GPU's compute capability faked here)."""
    from vfrt.engines.executors.tensorrt import import_tensorrt, rtx_targets
    trt = import_tensorrt()
    m = read_manifest(tensorrt_engines.directory)
    targets = m.toolchain["compute_capabilities"]
    major, minor = targets[-1].split(".")
    _pretend_gpu(monkeypatch, (int(major), int(minor)))
    assert compatibility_problems(m, torch.device("cuda")) == []
    if rtx_targets(trt):
        _pretend_gpu(monkeypatch, (9, 0))                               # H100 / H200
        problems = compatibility_problems(m, torch.device("cuda"))
        assert len(problems) == 1 and "built for compute capability" in problems[0]
        assert "this GPU is 9.0" in problems[0] and f"{trt.__name__} cannot target compute capability 9.0" in problems[0]
        _pretend_gpu(monkeypatch, (int(major), int(minor)))
    older = dataclasses.replace(m, networks=tuple(dataclasses.replace(n, record={**n.record, "version": "0.9"})
                                                  for n in m.networks))
    problems = compatibility_problems(older, torch.device("cuda"))
    assert len(problems) == 1 and f"cannot run here: it was built by {trt.__name__} 0.9, this is {trt.__version__}. " \
        "Rebuild the engines on this machine (vfrt build-engines --backend tensorrt)" in problems[0]
    broken = dataclasses.replace(m, networks=(dataclasses.replace(m.networks[0], record={"plan": "x.plan"}),
                                              *m.networks[1:]))
    assert "lacks flavour, version" in compatibility_problems(broken, torch.device("cuda"))[0]


def test_tensorrt_engines_need_a_gpu_or_a_flavour_that_builds_without_one(monkeypatch):
    """`--device cpu` is refused for plans; without a GPU, only TensorRT-RTX builds them (for a GPU elsewhere)."""
    with pytest.raises(BuildError, match="tensorrt engines run on cuda, not cpu"):
        BuildConfig(backend="tensorrt", device="cpu").resolve()
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(BuildError, match=r"tensorrt backend cannot build here: .*pip install"):
        BuildConfig(backend="tensorrt").resolve()


def test_manifests_stay_readable_json(tensorrt_engines, onnxruntime_engines):
    for built in (tensorrt_engines, onnxruntime_engines):
        data = json.loads((built.directory / "manifest.json").read_text())
        assert data["schema"] == 1 and all("record" in n and "extra_files" in n for n in data["networks"])


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_a_second_build_reuses_the_engines(backend, request, tiny_checkpoint, monkeypatch):
    """The reuse check per backend, also for plans that cannot run here (checked for all but the device)."""
    built = request.getfixturevalue(f"{backend}_engines")
    monkeypatch.setenv("VFRT_CACHE_DIR", str(built.cache))
    res = CliRunner().invoke(cli, ["build-engines", "-c", str(tiny_checkpoint.ckpt), "--config",
                                   str(tiny_checkpoint.yaml), *built.options])
    assert res.exit_code == 0 and f"up to date: {built.directory}" in res.output, res.output
