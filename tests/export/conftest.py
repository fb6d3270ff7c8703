"""Exports of the tiny checkpoint's networks, made once per session (each export costs seconds)."""
from __future__ import annotations

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
