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


@pytest.fixture(scope="session")
def aoti_engines(tiny_checkpoint, tmp_path_factory):
    """Compiles six C++ packages: minutes on two busy cores, hence once per session (the time is in
    ``seconds``). Built into a cache of their own, so other tests' runs never pick them up."""
    import shutil

    from click.testing import CliRunner

    from vfrt.cli.main import cli
    from vfrt.export.aoti import inductor_compiler
    if shutil.which(inductor_compiler()) is None:
        pytest.skip(f"AOTInductor needs a C++ compiler ({inductor_compiler()} not found)")
    cache = tmp_path_factory.mktemp("aoti_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VFRT_CACHE_DIR", str(cache))
        t0 = time.perf_counter()
        res = CliRunner().invoke(cli, ["build-engines", "-c", str(tiny_checkpoint.ckpt), "--config",
                                       str(tiny_checkpoint.yaml), "--device", "cpu"])
        seconds = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    directory = Path(re.search(r"built (\S+) in", res.output).group(1))
    return BuiltEngines(directory, cache, seconds, res.output)
