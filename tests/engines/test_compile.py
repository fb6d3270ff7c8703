"""The compiled UNet executor: off on the CPU by default, falls back to eager, compiles once per process;
the workload policy switches it on once a process has generated enough views."""
import numpy as np
import pytest
import torch

from vfrt import EngineConfig, Pipeline, SamplerConfig
from vfrt.engines import create_engine
from vfrt.engines.config import COMPILE_MIN_VIEWS
from vfrt.engines.executors import CompiledExecutor
from vfrt.runtime.benchmark import bind_random_view
from vfrt.runtime.schedule import make_ddim_schedule


@pytest.fixture(scope="module")
def image():
    return torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_compile_is_off_by_default_on_the_cpu(tiny_model):
    pipe = Pipeline(tiny_model, EngineConfig(device="cpu", expected_views=10 * COMPILE_MIN_VIEWS))
    assert pipe.engine.executor("unet_step").kind == "eager"


def test_a_failing_compile_falls_back_to_the_same_uncompiled_result(tiny_model, image, monkeypatch, caplog):
    """If torch.compile breaks (no compiler, unsupported op), the executor warns once and runs eager."""
    def broken_compile(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("simulated compiler failure")
        return call
    sampler = SamplerConfig(steps=6, seed=2)
    ref = Pipeline(tiny_model, EngineConfig(device="cpu")).orbit(image, generate=2, sampler=sampler, preprocess=False)
    monkeypatch.setattr(torch, "compile", broken_compile)
    pipe = Pipeline(tiny_model, EngineConfig(device="cpu", compile=True))
    unet = pipe.engine.executor("unet_step")
    assert unet.kind == "compiled" and unet.compiled
    with caplog.at_level("WARNING", logger="vfrt"):
        out = pipe.orbit(image, generate=2, sampler=sampler, noise=ref.noise, preprocess=False)
    assert not unet.compiled and not pipe.engine.describe()["unet_compiled"]
    assert "simulated compiler failure" in caplog.text and caplog.text.count("torch.compile") == 1
    np.testing.assert_array_equal(out.images, ref.images)


def test_one_compile_whatever_the_callers_grad_mode(tiny_model):
    """The executor always runs without autograd: a caller with grad enabled (as `vfrt bench` timed it) and the
    pipeline (no_grad) share one compiled graph, for every K (dynamic rows). Before, the benchmark's
    grad-enabled warm-up made the first orbit compile a second time (run 6 in docs/PERF.md)."""
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    counter = CompileCounter()
    eng = create_engine(tiny_model, EngineConfig(device="cpu"))
    unet = eng.executor("unet_step")
    compiled = CompiledExecutor(unet.spec, eng.networks.unet_step, backend=counter).load()
    sched = make_ddim_schedule(4, 1.0)
    gen = torch.Generator().manual_seed(0)
    size = int(tiny_model.config.unet.image_size) * 8
    for K, grad in ((2, True), (2, False), (3, True), (4, False)):
        den, _ = bind_random_view(eng, K, size, sched, gen)
        view = den.view
        inputs = {"x": torch.randn((1, 4, size // 8, size // 8), generator=gen).expand(K + 1, -1, -1, -1),
                  "h0": view.h0, "emb": view.emb_table[:1], "consts": view.consts}
        with torch.set_grad_enabled(grad):
            out = compiled.run(inputs)["eps"]
        assert not out.requires_grad
        torch.testing.assert_close(out, unet.run(inputs)["eps"])
    assert compiled.compiled
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_the_policy_compiles_from_COMPILE_MIN_VIEWS_on_cuda_only():
    from vfrt.engines.config import compile_pays_off, cudnn_attention_pays_off
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not compile_pays_off(cuda, COMPILE_MIN_VIEWS - 1) and not compile_pays_off(cpu, 10 ** 6)
    assert compile_pays_off(cuda, COMPILE_MIN_VIEWS) is True
    assert not cudnn_attention_pays_off(35) and cudnn_attention_pays_off(10 ** 6)


def test_the_workload_policy_compiles_once_the_process_has_shown_it_is_long(tiny_model, image, monkeypatch):
    """compile=None: uncompiled while the generated views stay under the threshold, then compiled (the
    Python API and `vfrt run` share this rule; `vfrt run` states its total up front as expected_views)."""
    import vfrt.engines.config as config
    monkeypatch.setattr(config, "compile_pays_off", lambda device, workload: workload >= 5)
    assert not EngineConfig(device="cpu").resolve(4).compile and EngineConfig(device="cpu").resolve(5).compile
    assert EngineConfig(device="cpu", expected_views=5).resolve(0).compile
    assert not EngineConfig(device="cpu", compile=False, expected_views=5).resolve(0).compile
    pipe = Pipeline(tiny_model, EngineConfig(device="cpu"))
    sampler = SamplerConfig(steps=4, seed=1)
    first = pipe.orbit(image, generate=2, sampler=sampler, preprocess=False)
    assert pipe.engine.executor("unet_step").kind == "eager" and pipe.views_generated == 2
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)        # no real compiler needed for the switch
    second = pipe.orbit(image, generate=3, sampler=sampler, preprocess=False)   # 2 + 3 = 5 views
    assert pipe.engine.executor("unet_step").kind == "compiled" and pipe.engine.describe()["compile"]
    np.testing.assert_allclose(second.images[:2], first.images, atol=1e-5)
