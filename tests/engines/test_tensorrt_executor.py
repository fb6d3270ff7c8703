"""The TensorRT executor: plans from elsewhere are refused before deserializing; on a supported GPU it runs the step.

Execution needs a GPU the installed flavour supports: TensorRT-RTX (what installs from the registry)
runs on compute capability 7.5 / 8.x / 12.x, not on the 9.0 H100/H200, and the full TensorRT builder
does not install here. Those tests are marked ``gpu`` and skip, saying why, where the plan cannot run.
"""
import importlib.util

import numpy as np
import pytest
import torch

from vfrt.engines.executors.tensorrt import (PlanIncompatibleError, PlanInfo, TensorRTExecutor, TensorRTLoadError,
                                             TensorRTUnavailableError, check_plan_compatible, import_tensorrt,
                                             io_problems, load_tensorrt_executors)
from vfrt.engines.specs import NETWORK_NAMES, build_networks


def _info(**changes) -> PlanInfo:
    fields = dict(plan="unet_step.plan", flavour="tensorrt_rtx", version="1.7.1.116",
                  compute_capabilities=("8.6", "8.9", "12.0"), precision="float16", profile={}, bytes=10,
                  build_seconds=1.0)
    return PlanInfo(**{**fields, **changes})


@pytest.fixture(scope="module")
def specs(tiny_model):
    return build_networks(tiny_model, "cpu", torch.float32, torch.float32, channels_last=False).specs(max_refs=6)


def test_a_plan_for_this_runtime_and_gpu_is_accepted():
    assert check_plan_compatible(_info(), "tensorrt_rtx", "1.7.1.116", (8, 9)) is None


def test_a_plan_for_another_gpu_is_refused_with_both_capabilities():
    with pytest.raises(PlanIncompatibleError, match=r"built for compute capability 8\.6, 8\.9, 12\.0, this GPU is 9\.0"
                                                    r".*Rebuild the engines on this machine"):
        check_plan_compatible(_info(), "tensorrt_rtx", "1.7.1.116", (9, 0))


def test_a_plan_of_another_version_or_flavour_is_refused_listing_every_reason():
    with pytest.raises(PlanIncompatibleError, match=r"built by tensorrt_rtx 1\.7\.1\.116, this is 1\.8\.0"):
        check_plan_compatible(_info(), "tensorrt_rtx", "1.8.0", (8, 6))
    with pytest.raises(PlanIncompatibleError, match=r"built by tensorrt_rtx, this process runs tensorrt; "
                                                    r"it was built for compute capability .* this GPU is 9\.0"):
        check_plan_compatible(_info(), "tensorrt", "10.13", (9, 0))


def test_an_incomplete_plan_record_is_refused():
    with pytest.raises(TensorRTLoadError, match="lacks version, compute_capabilities"):
        PlanInfo.from_dict({"plan": "x.plan", "flavour": "tensorrt", "precision": "float16"})
    assert PlanInfo.from_dict(_info().to_dict()) == _info()


def test_io_problems_name_every_difference(specs):
    spec = specs["conditioning"]
    io = {"clip": (True, torch.float32), "pose": (True, torch.float32), "latent": (True, torch.float32),
          "keep": (True, torch.float32), "consts": (False, torch.float32), "h0": (False, torch.float32)}
    assert io_problems(spec, io) == []
    assert io_problems(spec, {**io, "keep": (True, torch.int64)}) == ["keep is torch.int64, the spec has torch.float32"]
    wrong = {k: v for k, v in io.items() if k != "h0"} | {"share": (False, torch.float32)}
    assert io_problems(spec, wrong) == ["outputs ['consts', 'share'], the spec has ['consts', 'h0']"]


def test_loader_lists_every_missing_piece(specs, tmp_path):
    (tmp_path / "clip_image.plan").write_bytes(b"plan")
    records = {"clip_image": _info(plan="clip_image.plan").to_dict(), "unet_step": _info().to_dict(),
               "vae_decoder": {"plan": "vae_decoder.plan"}, "refiner": _info(plan="r.plan").to_dict()}
    with pytest.raises(TensorRTLoadError, match=r"unet_step: .*unet_step.plan is missing; vae_decoder: the plan record "
                                                r"lacks flavour.*refiner: no spec"):
        load_tensorrt_executors(tmp_path, records, specs, "cuda")


def test_load_needs_a_cuda_device_before_anything_else(specs, tmp_path):
    ex = TensorRTExecutor(specs["unet_step"], tmp_path / "missing.plan", _info(), "cpu")
    with pytest.raises(TensorRTLoadError, match="runs on a CUDA device; cpu is not one"):
        ex.load()


def test_flavour_choice_is_checked():
    with pytest.raises(ValueError, match="flavour must be auto, tensorrt or tensorrt_rtx"):
        import_tensorrt("tensorrt-llm")
    missing = [f for f in ("tensorrt", "tensorrt_rtx") if importlib.util.find_spec(f) is None]
    if not missing:
        pytest.skip("both TensorRT flavours are installed")
    with pytest.raises(TensorRTUnavailableError, match=f"{missing[0]} is not installed: pip install"):
        import_tensorrt(missing[0])


@pytest.mark.gpu
def test_plans_run_the_orbit_on_a_supported_gpu(tiny_model, tmp_path):
    """Each plan agrees with the eager fp16 network on fresh inputs, and a 4-view orbit through the six plans
    (step captured in CUDA graphs) matches the eager fp16 fast engine."""
    from vfrt import EngineConfig, Pipeline, SamplerConfig
    from vfrt.engines.fast import FastEngine
    from vfrt.export.tensorrt import TensorRTBuildError, build_tensorrt_engine
    try:
        import_tensorrt()
    except TensorRTUnavailableError as exc:
        pytest.skip(str(exc))
    networks = build_networks(tiny_model, "cuda", torch.float16, torch.float16, channels_last=False)
    specs = networks.specs(max_refs=6, max_batch=3)
    try:
        records = build_tensorrt_engine(networks, specs, tmp_path, "float16", "cuda")
    except TensorRTBuildError as exc:
        pytest.skip(f"the installed TensorRT cannot build for this GPU: {exc}")
    executors = load_tensorrt_executors(tmp_path, records, specs, "cuda")
    try:
        executors["unet_step"].load()
    except PlanIncompatibleError as exc:
        pytest.skip(f"needs a GPU the installed TensorRT flavour runs on: {exc}")
    from vfrt.engines.executors import EagerExecutor
    from vfrt.export.onnx import scaled_error
    for name in NETWORK_NAMES:
        spec, ex = specs[name], executors[name].load()
        eager = EagerExecutor(spec, networks.module(name)).load()
        for point in ("min", "opt", "max"):
            inputs = spec.sample_inputs(spec.sizes_at(point), device="cuda", generator=torch.Generator().manual_seed(3))
            got, want = ex.run(inputs), eager.run(inputs)
            assert max(scaled_error(got[k], want[k]) for k in spec.output_names) <= 3e-2, (name, point)
    config = EngineConfig(backend="fast", device="cuda", dtype="float16", vae_dtype="float16", graphs=True).resolve()
    trt_pipe = Pipeline.from_engine(FastEngine(executors, config), tiny_model.config)
    eager_pipe = Pipeline(tiny_model, EngineConfig(backend="fast", device="cuda", dtype="float16", vae_dtype="float16",
                                                   compile=False, fused_geglu=False, triton_conv=False))
    image = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(4)) * 2 - 1
    want = eager_pipe.orbit(image, views=36, generate=4, sampler=SamplerConfig(steps=20, seed=1), preprocess=False)
    got = trt_pipe.orbit(image, views=36, generate=4, sampler=SamplerConfig(steps=20), noise=want.noise,
                         preprocess=False)
    assert trt_pipe.engine.step_cache.captured
    assert np.abs(got.images - want.images).max() <= 5e-2
