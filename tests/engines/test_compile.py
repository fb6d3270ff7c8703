"""The compiled UNet forward: off on the CPU by default, falls back to eager, compiles once per process."""
import numpy as np
import pytest
import torch

from vfrt import Pipeline
from vfrt.engines.fast import FastEngine
from vfrt.runtime.benchmark import bind_random_view
from vfrt.runtime.schedule import make_ddim_schedule


@pytest.fixture(scope="module")
def image():
    return torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_compile_is_off_by_default_on_the_cpu(tiny_model):
    assert not Pipeline(tiny_model, device="cpu", backend="fast").engine.unet.compiled


def test_a_failing_compile_falls_back_to_the_same_uncompiled_result(tiny_model, image, monkeypatch, caplog):
    """If torch.compile breaks (no compiler, unsupported op), the engine warns once and runs eager."""
    def broken_compile(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("simulated compiler failure")
        return call
    ref = Pipeline(tiny_model, device="cpu", backend="fast").orbit(image, views=36, generate=2, steps=6, seed=2,
                                                                   preprocess=False)
    monkeypatch.setattr(torch, "compile", broken_compile)
    pipe = Pipeline(tiny_model, device="cpu", backend="fast", compile=True)
    assert pipe.engine.unet.compiled
    with caplog.at_level("WARNING", logger="vfrt"):
        out = pipe.orbit(image, views=36, generate=2, steps=6, noise=ref.noise, preprocess=False)
    assert not pipe.engine.unet.compiled
    assert "simulated compiler failure" in caplog.text and caplog.text.count("torch.compile") == 1
    np.testing.assert_array_equal(out.images, ref.images)


def test_one_compile_whatever_the_callers_grad_mode(tiny_model):
    """The step always runs without autograd: a caller with grad enabled (as `vfrt bench` timed it) and the
    pipeline (no_grad) share one compiled graph, for every K (dynamic rows). Before, the benchmark's
    grad-enabled warm-up made the first orbit compile a second time (run 6 in docs/PERF.md)."""
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    counter = CompileCounter()
    eng = FastEngine(tiny_model, device="cpu", compile=False)
    eng.unet.compile(backend=counter)
    sched = make_ddim_schedule(4, 1.0)
    gen = torch.Generator().manual_seed(0)
    size = int(tiny_model.config.unet.image_size) * 8
    lat = (4, size // 8, size // 8)
    for K, grad in ((2, True), (2, False), (3, True), (4, False)):
        den, _ = bind_random_view(eng, K, size, sched, gen)
        x = torch.randn((1, *lat), generator=gen)
        noise = torch.randn((sched.num_steps, K, *lat), generator=gen)
        with torch.set_grad_enabled(grad):
            if grad:   # what the benchmark does: load the graph's buffers and run the step body directly
                g = eng.step_graph(K, True, sched.num_steps, lat, tuple(den.h0.shape))
                g.load(den, x, den.combined_noise(noise, lat))
                g.body()
            else:
                den.run(x, noise)
    assert eng.unet.compiled
    assert counter.frame_count == 1
    torch._dynamo.reset()
