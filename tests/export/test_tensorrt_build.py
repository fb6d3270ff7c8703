"""TensorRT plans from the exported graphs: built without a GPU by TensorRT-RTX (what CI has), recorded for the loader."""
import json
import types

import pytest
import torch

from vfrt.engines.executors.tensorrt import (PlanInfo, TensorRTUnavailableError, import_tensorrt,
                                             load_tensorrt_executors)
from vfrt.engines.specs import NETWORK_NAMES
from vfrt.export.onnx import OnnxExportConfig
from vfrt.export.tensorrt import (TensorRTBuildConfig, TensorRTBuildError, build_plan, build_tensorrt_engine,
                                  profile_shapes, rtx_targets, target_capabilities)


@pytest.fixture(scope="session")
def trt():
    try:
        return import_tensorrt()
    except TensorRTUnavailableError as exc:
        pytest.skip(f"no TensorRT flavour installs here ({exc})")


@pytest.fixture(scope="session")
def plans(trt, make_networks, tmp_path_factory):
    """fp16 plans of all six tiny networks, built on this (GPU-less) machine for the default targets."""
    if not rtx_targets(trt) and not torch.cuda.is_available():
        pytest.skip(f"{trt.__name__} builds on a GPU only and there is none here")
    networks, specs = make_networks(torch.float16)
    directory = tmp_path_factory.mktemp("trt_fp16")
    config = TensorRTBuildConfig(onnx=OnnxExportConfig(exporter="torchscript"))    # the faster exporter
    records = build_tensorrt_engine(networks, specs, directory, "float16", "cpu", config=config)
    return types.SimpleNamespace(trt=trt, specs=specs, directory=directory, records=records)


def test_every_network_becomes_a_plan_with_its_build_record(plans):
    trt = plans.trt
    records = json.loads(json.dumps(plans.records))                 # what a manifest stores
    assert list(records) == list(NETWORK_NAMES)
    expected_targets = target_capabilities(trt, None, None)
    for name, record in records.items():
        info = PlanInfo.from_dict(record)
        assert info.plan == f"{name}.plan" and (plans.directory / info.plan).stat().st_size == info.bytes > 0
        assert (info.flavour, info.version) == (trt.__name__, trt.__version__)
        assert info.compute_capabilities == expected_targets
        assert info.precision == "float16" and info.onnx["precision"] == "float16"
        assert info.onnx["max_error"]["min"] <= info.onnx["tolerance"]
        assert info.profile == profile_shapes(plans.specs[name])
    assert sorted(p.name for p in plans.directory.iterdir()) == sorted(f"{n}.plan" for n in NETWORK_NAMES)


def test_profile_spans_the_spec_axes(plans):
    shapes = profile_shapes(plans.specs["unet_step"])
    assert shapes["h0"][0][0] == 1 and shapes["h0"][1][0] == 4 and shapes["h0"][2][0] == 7     # rows 1 / 4 / 7
    assert shapes["emb"] == [[1, 416]] * 3                                                       # static input
    assert profile_shapes(plans.specs["time_embedding"])["timesteps"] == [[1], [76], [1000]]


def test_rtx_targets_follow_the_gpu_and_the_request(trt):
    known = rtx_targets(trt)
    if not known:
        pytest.skip(f"{trt.__name__} has no target compute capabilities (it builds for its own GPU)")
    assert "8.6" in known and "9.0" not in known
    assert target_capabilities(trt, None, (8, 9)) == ("8.9",)
    portable = target_capabilities(trt, None, None)
    assert "8.6" in portable and all(int(c.split(".")[0]) >= 8 for c in portable)
    assert target_capabilities(trt, None, (9, 0)) == portable           # H100/H200: not a target; warns
    assert target_capabilities(trt, ("12.0", "8.6", "12.0"), None) == ("12.0", "8.6")
    with pytest.raises(TensorRTBuildError, match=r"cannot target compute capability 9\.0; it knows .*8\.6"):
        target_capabilities(trt, ("9.0",), None)


def test_full_tensorrt_builds_only_for_the_gpu_it_runs_on():
    """The target rule of the `tensorrt` flavour (a module without ComputeCapability targets)."""
    full = types.SimpleNamespace(__name__="tensorrt", __version__="10.0")
    assert target_capabilities(full, None, (9, 0)) == ("9.0",)
    assert target_capabilities(full, ("9.0",), (9, 0)) == ("9.0",)
    with pytest.raises(TensorRTBuildError, match="builds on the GPU the plan will run on, and there is none here"):
        target_capabilities(full, None, None)
    with pytest.raises(TensorRTBuildError, match=r"for this GPU \(9\.0\) only, not 8\.6"):
        target_capabilities(full, ("8.6",), (9, 0))


def test_a_graph_unlike_its_spec_is_refused_before_building(trt, onnx_fp32, tmp_path):
    spec = onnx_fp32.specs["unet_step"]
    with pytest.raises(TensorRTBuildError, match=r"does not fit the unet_step spec: inputs \['latent'\]"):
        build_plan(trt, onnx_fp32.directory / "vae_decoder.onnx", spec, tmp_path / "unet_step.plan", ("8.6",),
                   TensorRTBuildConfig())
    fp16_spec = onnx_fp32.specs["time_embedding"]     # fp32 graph; a spec of fp16 emb is another network
    fp16_spec = type(fp16_spec)(fp16_spec.name, fp16_spec.inputs,
                                tuple(type(t)(t.name, t.shape, torch.float16) for t in fp16_spec.outputs), fp16_spec.axes)
    with pytest.raises(TensorRTBuildError, match=r"emb is torch.float32, the spec has torch.float16"):
        build_plan(trt, onnx_fp32.directory / "time_embedding.onnx", fp16_spec, tmp_path / "t.plan", ("8.6",),
                   TensorRTBuildConfig())
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(TensorRTBuildError, match="cannot parse bad.onnx"):
        build_plan(trt, tmp_path / "bad.onnx", spec, tmp_path / "x.plan", ("8.6",), TensorRTBuildConfig())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_build_adapter_checks_precision_and_config(onnx_fp32, tmp_path):
    with pytest.raises(ValueError, match="built in float32"):
        build_tensorrt_engine(onnx_fp32.networks, onnx_fp32.specs, tmp_path, "float16", "cpu")
    with pytest.raises(ValueError, match="like '8.6'"):
        TensorRTBuildConfig(compute_capabilities=("sm86",))
    with pytest.raises(ValueError, match="flavour must be auto, tensorrt or tensorrt_rtx"):
        TensorRTBuildConfig(flavour="tensorrt-llm")
    with pytest.raises(ValueError, match="optimization_level must be 0..5"):
        TensorRTBuildConfig(optimization_level=7)


def test_plans_load_lazily_and_refuse_to_run_without_a_gpu(plans):
    """The loader makes executors from the records; loading checks device and compatibility first."""
    executors = load_tensorrt_executors(plans.directory, plans.records, plans.specs, "cuda")
    assert set(executors) == set(NETWORK_NAMES) and all(e.capturable for e in executors.values())
    if not torch.cuda.is_available():
        from vfrt.engines.executors.tensorrt import TensorRTLoadError
        with pytest.raises(TensorRTLoadError, match="runs on a CUDA device; cuda is not available here"):
            executors["unet_step"].load()
