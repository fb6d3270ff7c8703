"""Session-wide exports of the tiny checkpoint's networks (each costs seconds to minutes on 2 cores):
ONNX graphs (the ONNX Runtime / TensorRT backends) and the AOTInductor engines of `vfrt build-engines`."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

#: rows up to 7, batch up to 3: small graphs, yet every axis has distinct min, opt and max
MAX_REFS, MAX_BATCH = 6, 3


@dataclass
class Exported:
    networks: object
    specs: dict
    directory: Path
    artifacts: dict


def _networks(model, dtype):
    from vfrt.engines.specs import build_networks
    networks = build_networks(model, "cpu", dtype, dtype, channels_last=False)
    return networks, networks.specs(max_refs=MAX_REFS, max_batch=MAX_BATCH)


@pytest.fixture(scope="session")
def make_networks(tiny_model):
    """dtype -> (a fresh copy of the tiny networks on the CPU, their specs)."""
    return lambda dtype=torch.float32: _networks(tiny_model, dtype)


@pytest.fixture(scope="session")
def onnx_fp32(tiny_model, tmp_path_factory) -> Exported:
    """All six networks, fp32, the default exporter, compared with PyTorch at min, opt and max."""
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (pip install 'vfrt[onnx]')")
    from vfrt.export.onnx import OnnxExportConfig, export_onnx_engine
    networks, specs = _networks(tiny_model, torch.float32)
    directory = tmp_path_factory.mktemp("onnx_fp32")
    artifacts = export_onnx_engine(networks, specs, directory, "float32", "cpu",
                                   config=OnnxExportConfig(compare_at=("min", "opt", "max")))
    return Exported(networks, specs, directory, artifacts)



@dataclass(frozen=True)
class BuiltEngines:
    directory: Path
    cache: Path           # the VFRT_CACHE_DIR they were built into
    seconds: float
    output: str
    options: tuple[str, ...]   # the build-engines options besides the checkpoint


def _cli_build(tiny_checkpoint, tmp_path_factory, name: str, *args: str) -> BuiltEngines:
    """`vfrt build-engines` of the tiny checkpoint into a cache of its own (so other tests' runs never pick
    the engines up); the time it took is in ``seconds``."""
    from click.testing import CliRunner

    from vfrt.cli.main import cli
    cache = tmp_path_factory.mktemp(f"{name}_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VFRT_CACHE_DIR", str(cache))
        t0 = time.perf_counter()
        res = CliRunner().invoke(cli, ["build-engines", "-c", str(tiny_checkpoint.ckpt), "--config",
                                       str(tiny_checkpoint.yaml), *args])
        seconds = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    directory = Path(re.search(r"built (\S+) in", res.output).group(1))
    return BuiltEngines(directory, cache, seconds, res.output, args)


@pytest.fixture(scope="session")
def aoti_engines(tiny_checkpoint, tmp_path_factory):
    """Compiles six C++ packages: minutes on two busy cores, hence once per session. Two at a time, each in
    a child process (``--jobs 2``): every test of these engines exercises the parallel build, which
    verified each network against PyTorch before publishing."""
    import shutil

    from vfrt.export.aoti import inductor_compiler
    if shutil.which(inductor_compiler()) is None:
        pytest.skip(f"AOTInductor needs a C++ compiler ({inductor_compiler()} not found)")
    return _cli_build(tiny_checkpoint, tmp_path_factory, "aoti", "--device", "cpu", "--jobs", "2")


@pytest.fixture(scope="session")
def onnxruntime_engines(tiny_checkpoint, tmp_path_factory):
    """Six ONNX graphs, verified in ONNX Runtime on the CPU (tens of seconds)."""
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (pip install 'vfrt[onnx]')")
    return _cli_build(tiny_checkpoint, tmp_path_factory, "onnxruntime", "--backend", "onnxruntime", "--device", "cpu")


@pytest.fixture(scope="session")
def tensorrt_engines(tiny_checkpoint, tmp_path_factory):
    """fp16 plans of the six networks for CUDA GPUs, built on this machine: without a GPU by TensorRT-RTX
    (what CI has; they cannot run here), for the GPU where there is one. Rows up to 7 (``--max-refs 6``)."""
    import torch

    from vfrt.export.tensorrt import PlanExporter, TensorRTBuildError, TensorRTUnavailableError
    if torch.cuda.is_available():
        try:
            PlanExporter().prepare(torch.device("cuda"))
        except (TensorRTUnavailableError, TensorRTBuildError) as exc:
            pytest.skip(f"no TensorRT flavour here builds for this GPU: {exc}")
    elif not PlanExporter().builds_without_gpu():
        pytest.skip("no TensorRT flavour installs here that builds without a GPU (pip install 'vfrt[tensorrt-rtx]')")
    return _cli_build(tiny_checkpoint, tmp_path_factory, "tensorrt", "--backend", "tensorrt", "--max-refs", "6")
