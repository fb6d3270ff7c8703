"""Fast engine on CUDA: graph replay vs eager, fp16 vs fp32 on full-size random weights, view cache spill."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vfrt.runtime.benchmark import psnr

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def image():
    return torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(4)) * 2 - 1


def _pipe(model, compile=False, **choices):
    """Uncompiled unless asked (each compile costs tens of seconds); the compiled path is checked separately."""
    from vfrt import EngineConfig, Pipeline
    return Pipeline(model, EngineConfig(backend="fast", device="cuda", compile=compile, **choices))


def _sampler(steps, seed=0):
    from vfrt import SamplerConfig
    return SamplerConfig(steps=steps, seed=seed)


def test_graph_replay_equals_eager(tiny_model, image):
    a = _pipe(tiny_model, dtype="float16", graphs=True).orbit(image, views=36, generate=5, sampler=_sampler(20, 1),
                                                               preprocess=False)
    b = _pipe(tiny_model, dtype="float16", graphs=False).orbit(image, views=36, generate=5, sampler=_sampler(20),
                                                                noise=a.noise, preprocess=False)
    assert np.abs(a.images - b.images).max() <= 1e-3


def test_fast_fp32_on_gpu_matches_reference(tiny_model, image, monkeypatch):
    from vfrt import EngineConfig, Pipeline
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)   # TF32 convs would cost ~5e-3
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    ref = Pipeline(tiny_model, EngineConfig(backend="reference", device="cpu")).orbit(
        image, views=36, generate=4, sampler=_sampler(12, 2), preprocess=False)
    out = _pipe(tiny_model, dtype="float32", vae_dtype="float32").orbit(image, views=36, generate=4,
                                                                        sampler=_sampler(12), noise=ref.noise,
                                                                        preprocess=False)
    assert np.abs(out.images - ref.images).max() <= 1e-4


@pytest.fixture(scope="module")
def full_model():
    from vfrt.models import Zero123
    torch.manual_seed(0)
    return Zero123.from_config(None).eval()


@torch.no_grad()
def test_fp16_step_eps_and_first_view_psnr_on_full_size_weights(full_model):
    """Issue 3: per-step eps relative L2 <= 1e-2; first generated view PSNR >= 35 dB vs fp32 reference."""
    from vfrt import EngineConfig, Pipeline
    from vfrt.runtime.schedule import make_ddim_schedule
    g = torch.Generator().manual_seed(0)
    img = torch.rand((1, 3, 256, 256), generator=g) * 2 - 1
    fast = _pipe(full_model, dtype="float16")
    sched = make_ddim_schedule(75, 1.0)
    K = 3
    refs_img = [torch.rand((1, 3, 256, 256), generator=g) * 2 - 1 for _ in range(K)]
    T = torch.randn((K, 4), generator=g)
    w = torch.softmax(torch.randn(K, generator=g), 0)
    fden = fast.engine.bind([fast.engine.encode_view(i) for i in refs_img], T, w, sched, 3.0)
    fast_out = fast.orbit(img, views=36, generate=1, preprocess=False, sampler=_sampler(75))
    ref = Pipeline(full_model, EngineConfig(backend="reference", device="cuda"))   # moves the fp32 model to the GPU
    rden = ref.engine.bind([ref.engine.encode_view(i) for i in refs_img], T, w, sched, 3.0)
    x = torch.randn((1, 4, 32, 32), generator=g).cuda()
    unet = fast.engine.executor("unet_step")
    for i in (0, 30, 75):
        eps_r = (rden.guided_eps(x.expand(K, -1, -1, -1), int(sched.timesteps[i])) * w.cuda().view(K, 1, 1, 1)).sum(0)
        e = unet.run({"x": x.expand(K + 1, -1, -1, -1), "h0": fden.view.h0, "emb": fden.view.emb_table[i:i + 1],
                      "consts": fden.view.consts})["eps"].float()
        eps_f = e[0] + 3.0 * ((w.cuda().view(K, 1, 1, 1) * e[1:]).sum(0) - e[0])
        rel = (eps_f - eps_r).norm() / eps_r.norm()
        assert rel <= 1e-2, (i, float(rel))
    ref_out = ref.orbit(img, views=36, generate=1, preprocess=False, noise=fast_out.noise)
    assert psnr(fast_out.images[0], ref_out.images[0]) >= 35.0


def test_compiled_forward_matches_eager(tiny_model, image):
    """A long workload compiles the UNet (compile=None, expected_views large); it agrees with the uncompiled one."""
    a = _pipe(tiny_model, dtype="float16").orbit(image, views=36, generate=3, sampler=_sampler(10, 1),
                                                 preprocess=False)
    pipe = _pipe(tiny_model, dtype="float16", compile=None, expected_views=10 ** 4)
    b = pipe.orbit(image, views=36, generate=3, sampler=_sampler(10), noise=a.noise, preprocess=False)
    assert pipe.engine.describe()["unet_compiled"]  # compiled by the policy, and the compile did not fall back
    assert np.abs(a.images - b.images).max() <= 2e-2  # fp16, different fusion order


def test_fused_geglu_and_flash_attention_agree_with_the_plain_engine(tiny_model, image):
    """The run-6 options (fused GEGLU kernel, attention without cuDNN) change rounding only."""
    a = _pipe(tiny_model, dtype="float16", fused_geglu=False, attention="auto").orbit(
        image, views=36, generate=3, sampler=_sampler(10, 1), preprocess=False)
    pipe = _pipe(tiny_model, dtype="float16", fused_geglu=True, attention="flash")
    assert pipe.engine.describe()["fused_geglu"] and pipe.engine.describe()["attention"] == "flash"
    b = pipe.orbit(image, views=36, generate=3, sampler=_sampler(10), noise=a.noise, preprocess=False)
    assert np.abs(a.images - b.images).max() <= 2e-2  # fp16, different rounding order


def test_fused_geglu_is_on_by_default_for_fp16_only(tiny_model):
    assert _pipe(tiny_model, dtype="float16").engine.describe()["fused_geglu"]
    assert not _pipe(tiny_model, dtype="float32", vae_dtype="float32").engine.describe()["fused_geglu"]


def test_view_cache_spills_to_pinned_host_and_returns():
    from vfrt.engines.base import ViewEncoding
    from vfrt.runtime.cache import ViewCache
    c = ViewCache("cuda", max_device_entries=2)
    encs = [ViewEncoding(clip=torch.randn(1, 8, device="cuda"), latent=torch.randn(1, 4, 2, 2, device="cuda"))
            for _ in range(4)]
    for i, e in enumerate(encs):
        c.put(i, e)
    assert c.host_entries == 2
    back = c.get(0)
    assert back.clip.is_cuda and torch.equal(back.clip, encs[0].clip)


@pytest.mark.parametrize("c_in,c_out,hw,k,stride", [(1280, 1280, 4, 3, 1), (2560, 1280, 8, 3, 1), (1280, 1280, 8, 3, 2),
                                                     (1280, 1280, 8, 1, 1), (640, 1280, 8, 3, 1)])
def test_triton_conv_matches_cudnn_at_unet_shapes(c_in, c_out, hw, k, stride):
    """The split-reduction kernel at the UNet's 8x8 / 4x4 shapes, fp16: within fp16 rounding of cuDNN."""
    from vfrt.engines.conv_triton import conv2d_small, conv2d_triton
    g = torch.Generator(device="cuda").manual_seed(c_in + hw)
    w = (torch.randn((c_out, c_in, k, k), device="cuda", generator=g) / (c_in * k * k) ** 0.5).half().contiguous(
        memory_format=torch.channels_last)
    b = torch.randn((c_out,), device="cuda", generator=g).half()
    for rows in (2, 13):
        x = torch.randn((rows, c_in, hw, hw), device="cuda", generator=g).half().contiguous(
            memory_format=torch.channels_last)
        exact = F.conv2d(x.double(), w.double(), b.double(), stride, k // 2)
        for out in (conv2d_triton(x, w, b, stride, k // 2), conv2d_small(x, w, b, stride, k // 2)):
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert (out.double() - exact).abs().max().item() <= 2 ** -9 * exact.abs().max().item()


def test_triton_conv_is_on_by_default_for_the_uncompiled_fp16_step_only(tiny_model):
    from vfrt import EngineConfig
    assert EngineConfig(device="cuda", dtype="float16", compile=False).resolve().triton_conv
    assert not EngineConfig(device="cuda", dtype="float32", vae_dtype="float32").resolve().triton_conv
    assert not EngineConfig(device="cuda", compile=True, dtype="float16").resolve().triton_conv


def test_the_policy_switch_to_compiled_keeps_results(tiny_model, image, monkeypatch):
    """The API's adaptive policy on CUDA: uncompiled (Triton convs) first, compiled (cuDNN convs) once the process
    has generated enough views; the graphs are re-captured and the images agree within fp16 rounding."""
    import vfrt.engines.config as config
    monkeypatch.setattr(config, "compile_pays_off", lambda device, workload: workload >= 4)
    pipe = _pipe(tiny_model, dtype="float16", compile=None)
    a = pipe.orbit(image, views=36, generate=2, sampler=_sampler(10, 1), preprocess=False)
    assert not pipe.engine.describe()["compile"] and pipe.engine.describe()["triton_conv"]
    b = pipe.orbit(image, views=36, generate=2, sampler=_sampler(10), noise=a.noise, preprocess=False)
    assert pipe.engine.describe()["unet_compiled"] and not pipe.engine.describe()["triton_conv"]
    assert np.abs(a.images - b.images).max() <= 2e-2


def test_step_cache_clear_then_capture_again(tiny_model, image):
    """clear() drops every graph; the next view captures into a fresh memory pool (PyTorch frees a private pool
    with its last graph, and capturing into a freed pool asserts)."""
    pipe = _pipe(tiny_model, dtype="float16")
    a = pipe.orbit(image, views=36, generate=2, sampler=_sampler(6, 1), preprocess=False)
    steps = pipe.engine.step_cache
    assert steps.captured
    steps.clear()
    assert not steps.captured and steps.capacity["rows"] == 0
    b = pipe.orbit(image, views=36, generate=2, sampler=_sampler(6), noise=a.noise, preprocess=False)
    assert np.array_equal(a.images, b.images)
