"""The ONNX Runtime backend: each executor agrees with the eager one, and a whole orbit equals the reference."""
import json

import numpy as np
import pytest
import torch

from vfrt.engines.executors import EagerExecutor
from vfrt.engines.specs import NETWORK_NAMES

ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (pip install 'vfrt[onnx]')")

from vfrt.engines.executors.onnxruntime import (OnnxRuntimeExecutor, OnnxRuntimeLoadError,  # noqa: E402
                                                OnnxRuntimeUnavailableError, load_onnxruntime_executors)

STEPS = 8


@pytest.fixture(scope="module")
def executors(onnx_fp32):
    loaded = load_onnxruntime_executors(onnx_fp32.directory, json.loads(json.dumps(onnx_fp32.artifacts)),
                                        onnx_fp32.specs, "cpu")
    for ex in loaded.values():
        ex.load()
    yield loaded
    for ex in loaded.values():
        ex.close()


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_each_executor_agrees_with_eager_on_fresh_inputs(onnx_fp32, executors, name):
    """Fresh inputs at min, opt and max of every dynamic axis; fp32 within 1e-4 (measured ~1e-6)."""
    spec = onnx_fp32.specs[name]
    eager = EagerExecutor(spec, onnx_fp32.networks.module(name)).load()
    for seed, point in enumerate(("min", "opt", "max")):
        inputs = spec.sample_inputs(spec.sizes_at(point), generator=torch.Generator().manual_seed(100 + seed))
        got, want = executors[name].run(inputs), eager.run(inputs)
        assert list(got) == list(spec.output_names)
        for key in spec.output_names:
            assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape
            torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=1e-4)


def test_non_contiguous_inputs_give_the_same_result(onnx_fp32, executors):
    """Inputs are bound by address: strided views are made contiguous first (and kept alive for the run)."""
    spec = onnx_fp32.specs["unet_step"]
    inputs = spec.sample_inputs({"rows": 5}, generator=torch.Generator().manual_seed(9))
    strided = {k: v.transpose(-1, -2).contiguous().transpose(-1, -2) if v.dim() == 4 else v for k, v in inputs.items()}
    assert not strided["h0"].is_contiguous()
    torch.testing.assert_close(executors["unet_step"].run(strided)["eps"], executors["unet_step"].run(inputs)["eps"])


def _orbit_pipelines(tiny_model, executors):
    from vfrt import EngineConfig, Pipeline
    from vfrt.engines.fast import FastEngine
    engine = FastEngine(executors, EngineConfig(backend="fast", device="cpu").resolve())
    return (Pipeline.from_engine(engine, tiny_model.config),
            Pipeline(tiny_model, EngineConfig(backend="reference", device="cpu")))


def test_orbit_through_onnx_runtime_equals_the_reference(tiny_model, executors):
    """Four views of a 36-view orbit (K = 1..4 references, rows = K+1 with guidance) under the reference's
    noise bank: the same images within 1e-4, as the fp32 fast engine (tests/runtime)."""
    from vfrt import SamplerConfig
    onnx_pipe, ref_pipe = _orbit_pipelines(tiny_model, executors)
    assert set(onnx_pipe.engine.describe()["executors"].values()) == {"onnxruntime"}
    image = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(11)) * 2 - 1
    sampler = SamplerConfig(steps=STEPS, seed=5, guidance=3.0)
    ref = ref_pipe.orbit(image, views=36, generate=4, sampler=sampler, preprocess=False)
    out = onnx_pipe.orbit(image, views=36, generate=4, sampler=sampler, noise=ref.noise, preprocess=False)
    assert [len(r) for r in out.references] == [1, 2, 3, 4]
    assert np.abs(out.images - ref.images).max() <= 1e-4


def test_loader_lists_every_missing_piece(onnx_fp32, tmp_path):
    artifacts = {**onnx_fp32.artifacts, "unet_step": {"files": ["unet_step.onnx"]},
                 "refiner": {"model": "refiner.onnx"}}
    with pytest.raises(OnnxRuntimeLoadError, match=r"incomplete: .*clip_image: .*clip_image.onnx is missing.*"
                                                   r"unet_step: the record names no ONNX model.*refiner: no spec"):
        load_onnxruntime_executors(tmp_path, artifacts, onnx_fp32.specs, "cpu")


def test_a_model_of_another_network_is_refused_at_load(onnx_fp32):
    ex = OnnxRuntimeExecutor(onnx_fp32.specs["unet_step"], onnx_fp32.directory / "vae_decoder.onnx")
    with pytest.raises(OnnxRuntimeLoadError, match=r"does not fit the unet_step spec: inputs \['latent'\]"):
        ex.load()
    with pytest.raises(OnnxRuntimeLoadError, match="no ONNX model at"):
        OnnxRuntimeExecutor(onnx_fp32.specs["unet_step"], onnx_fp32.directory / "nothing.onnx").load()


def test_a_corrupt_model_file_is_one_clear_error(onnx_fp32, tmp_path):
    (tmp_path / "unet_step.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(OnnxRuntimeLoadError, match="ONNX Runtime cannot load"):
        OnnxRuntimeExecutor(onnx_fp32.specs["unet_step"], tmp_path / "unet_step.onnx").load()


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime-gpu is installed")
def test_cuda_without_onnxruntime_gpu_says_what_to_install(onnx_fp32):
    ex = OnnxRuntimeExecutor(onnx_fp32.specs["time_embedding"], onnx_fp32.directory / "time_embedding.onnx", "cuda")
    with pytest.raises(OnnxRuntimeUnavailableError, match=r"no CUDA provider.*onnxruntime-gpu"):
        ex.load()


def test_executor_arguments_are_checked(onnx_fp32):
    spec, path = onnx_fp32.specs["time_embedding"], onnx_fp32.directory / "time_embedding.onnx"
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        OnnxRuntimeExecutor(spec, path, "cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="CPU or a CUDA device"):
        OnnxRuntimeExecutor(spec, path, "meta")


@pytest.mark.gpu
def test_cuda_provider_with_graphs_agrees_with_eager(tiny_model, tmp_path):
    """onnxruntime-gpu: fp16 graphs on the CUDA provider, one ONNX Runtime CUDA graph per row count."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (the CUDA provider); this ONNX Runtime is CPU-only")
    from vfrt.engines.specs import build_networks
    from vfrt.export.onnx import export_onnx_engine
    networks = build_networks(tiny_model, "cuda", torch.float16, torch.float16, channels_last=False)
    specs = networks.specs(max_refs=6, max_batch=3)
    artifacts = export_onnx_engine(networks, specs, tmp_path, "float16", "cuda")
    spec = specs["unet_step"]
    with load_onnxruntime_executors(tmp_path, artifacts, specs, "cuda")["unet_step"] as ex:
        eager = EagerExecutor(spec, networks.unet_step).load()
        for rows in (3, 5, 3):
            inputs = spec.sample_inputs({"rows": rows}, device="cuda", generator=torch.Generator().manual_seed(rows))
            got, want = ex.run(inputs)["eps"].float(), eager.run(inputs)["eps"].float()
            assert (got - want).abs().max() / max(1.0, float(want.abs().max())) <= 3e-2
        assert ex.cuda_graphs and ex.captured_sizes == [(3,), (5,)]
