"""The split-reduction Triton convolution agrees with ``F.conv2d``, alone, as a custom op and inside the engine.

Without a GPU the kernel runs through Triton's interpreter (tests/conftest.py sets ``TRITON_INTERPRET=1``);
on a GPU the same tests run the compiled kernel.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vfrt import EngineConfig, Pipeline, SamplerConfig
from vfrt.engines.conv_triton import conv2d_small, conv2d_triton
from vfrt.hardware import triton_runs_on

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(not triton_runs_on(DEVICE), reason="needs Triton (CUDA or TRITON_INTERPRET=1)")


def _problem(rows, c_in, hw, c_out, k, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((rows, c_in, hw, hw), generator=g).to(DEVICE, dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn((c_out, c_in, k, k), generator=g) / (c_in * k * k) ** 0.5).to(DEVICE, dtype).contiguous(
        memory_format=torch.channels_last)
    b = torch.randn((c_out,), generator=g).to(DEVICE, dtype)
    return x, w, b


# (rows, C_in, H=W, C_out, k, stride): odd sizes, stride 2 on even and odd inputs, 1x1, tile remainders
CASES = [(2, 32, 4, 48, 3, 1), (3, 16, 8, 16, 3, 2), (2, 32, 5, 24, 1, 1), (1, 48, 6, 32, 3, 1), (2, 32, 7, 16, 3, 2)]
# (BM, BN, BK, SPLIT, warps, stages): one tile and no split, a split whose parts differ in length, more parts
CONFIGS = [(16, 16, 16, 1, 4, 1), (32, 16, 16, 3, 4, 1), (16, 32, 16, 5, 4, 1)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("config", CONFIGS)
def test_matches_conv2d_fp32(case, config):
    """fp32 in and out, fresh random inputs: <= 1e-5 of the largest output, against an fp64 convolution."""
    rows, c_in, hw, c_out, k, stride = case
    x, w, b = _problem(rows, c_in, hw, c_out, k, seed=hash((case, config)) % 2**31)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride, k // 2)
    with torch.backends.cudnn.flags(allow_tf32=False):
        out = conv2d_triton(x, w, b, stride, k // 2, config=config)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out.double() - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("config", [(16, 16, 16, 1, 4, 1), (16, 16, 16, 3, 4, 1)])
def test_without_bias(config):
    """bias=None (what a compiled graph passes: it adds the bias in its next kernel), with and without a split."""
    x, w, _ = _problem(2, 32, 4, 24, 3, seed=13)
    ref = F.conv2d(x.double(), w.double(), None, 1, 1)
    with torch.backends.cudnn.flags(allow_tf32=False):
        out = conv2d_triton(x, w, None, 1, 1, config=config)
    assert (out.double() - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_split_partial_sums_are_deterministic():
    """The split's partial sums are added in a fixed order: two runs give the same bits."""
    x, w, b = _problem(2, 64, 4, 32, 3, seed=5)
    a = conv2d_triton(x, w, b, 1, 1, config=(16, 16, 16, 4, 4, 1))
    assert torch.equal(a, conv2d_triton(x, w, b, 1, 1, config=(16, 16, 16, 4, 4, 1)))


def test_matches_conv2d_fp16():
    """fp16 in and out: fp32 accumulation and one rounding, within fp16 rounding of the exact result."""
    x, w, b = _problem(2, 64, 4, 32, 3, seed=7, dtype=torch.float16)
    exact = F.conv2d(x.double(), w.double(), b.double(), 1, 1)
    out = conv2d_triton(x, w, b, 1, 1, config=(16, 16, 16, 3, 4, 1))
    assert out.dtype == torch.float16
    assert (out.double() - exact).abs().max().item() <= 2 ** -10 * max(1.0, exact.abs().max().item())


def test_input_in_another_memory_format_gives_the_same_result():
    x, w, b = _problem(2, 32, 4, 16, 3, seed=9)
    a = conv2d_triton(x, w, b, 1, 1, config=(16, 16, 16, 2, 4, 1))
    c = conv2d_triton(x.contiguous(), w.contiguous(), b, 1, 1, config=(16, 16, 16, 2, 4, 1))
    torch.testing.assert_close(a, c, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape,stride,padding", [((16, 32, 5, 5), 1, 2), ((16, 32, 3, 3), 1, 0),
                                                  ((16, 32, 3, 3), 3, 1), ((16, 24, 3, 3), 1, 1)])
def test_rejects_what_it_does_not_compute(shape, stride, padding):
    """5x5 kernels, padding other than k // 2, stride 3, C_in not a multiple of 16: a clear error, never a result."""
    x = torch.randn((1, shape[1], 8, 8), device=DEVICE)
    with pytest.raises(ValueError, match="unsupported convolution"):
        conv2d_triton(x, torch.randn(shape, device=DEVICE), None, stride, padding)


def test_custom_op_falls_back_to_cudnn_where_unsupported():
    """The op computes every convolution: unsupported ones go to F.conv2d, in channels-last memory."""
    x = torch.randn((2, 24, 6, 6), device=DEVICE)
    w, b = torch.randn((8, 24, 3, 3), device=DEVICE), torch.randn((8,), device=DEVICE)
    out = conv2d_small(x, w, b, 1, 1)
    torch.testing.assert_close(out, F.conv2d(x, w, b, 1, 1))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_custom_op_has_a_consistent_fake_implementation():
    """torch.compile sees the op through its fake implementation: shapes, dtypes and strides must agree."""
    x, w, b = _problem(2, 32, 4, 16, 3, seed=1)
    torch.library.opcheck(conv2d_small, (x, w, b, 2, 1), test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(conv2d_small, (x, w, b, 1, 1), test_utils=("test_schema", "test_faketensor"))


@pytest.fixture(scope="module")
def image():
    return torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_fast_engine_with_triton_convs_matches_reference(tiny_model, image, monkeypatch):
    """The kernel inside the fast engine (every tiny-model conv has <= 64 output pixels): the reference orbit."""
    if DEVICE != "cpu":
        pytest.skip("the fp32 engine comparison runs on the CPU")
    import vfrt.engines.conv_triton as conv_triton
    calls = []
    real = conv_triton.conv2d_triton

    def counted(*args, **kw):
        calls.append(tuple(args[0].shape))
        return real(*args, **kw)
    monkeypatch.setattr(conv_triton, "conv2d_triton", counted)
    sampler = SamplerConfig(steps=2, seed=4)
    ref = Pipeline(tiny_model, EngineConfig(backend="reference", device="cpu")).orbit(
        image, views=36, generate=2, sampler=sampler, preprocess=False)
    fast = Pipeline(tiny_model, EngineConfig(device="cpu", triton_conv=True, channels_last=True))
    assert fast.engine.describe()["triton_conv"]
    out = fast.orbit(image, views=36, generate=2, sampler=sampler, noise=ref.noise, preprocess=False)
    assert calls, "the Triton convolution was never called"
    assert np.abs(out.images - ref.images).max() <= 1e-4


def test_compiled_unet_with_triton_convs_matches_the_eager_one(tiny_model, image):
    """Traced by torch.compile (aot_eager: no C++ compiler needed; the bias is then added outside the op): the
    compiled UNet step equals the eager one on the same bound view."""
    if DEVICE != "cpu":
        pytest.skip("the fp32 engine comparison runs on the CPU")
    from vfrt.engines import create_engine
    from vfrt.engines.executors import CompiledExecutor
    from vfrt.runtime.schedule import make_ddim_schedule
    torch._dynamo.reset()
    eng = create_engine(tiny_model, EngineConfig(device="cpu", triton_conv=True, channels_last=True))
    eager = eng.executor("unet_step")
    traced = CompiledExecutor(eager.spec, eng.networks.unet_step, backend="aot_eager").load()
    g = torch.Generator().manual_seed(1)
    den = eng.bind([eng.encode_view(image), eng.encode_view(-image)], torch.randn((2, 4), generator=g),
                   torch.tensor([0.6, 0.4]), make_ddim_schedule(4), 3.0)
    inputs = {"x": torch.randn((1, 4, 8, 8), generator=g).expand(3, -1, -1, -1), "h0": den.view.h0,
              "emb": den.view.emb_table[:1], "consts": den.view.consts}
    got = traced.run(inputs)["eps"]
    assert traced.compiled, "the compile fell back to eager"
    torch.testing.assert_close(got, eager.run(inputs)["eps"], atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


def test_triton_convs_are_off_by_default_on_the_cpu(tiny_model):
    assert not Pipeline(tiny_model, EngineConfig(device="cpu")).engine.describe()["triton_conv"]


def test_triton_convs_need_channels_last():
    with pytest.raises(ValueError, match="channels_last"):
        EngineConfig(device="cpu", channels_last=False, triton_conv=True).resolve()


def test_an_explicit_choice_survives_the_compile_policy():
    cfg = EngineConfig(device=DEVICE, channels_last=True, triton_conv=True, compile=True).resolve()
    assert cfg.triton_conv and cfg.compile


def test_only_convolutions_that_can_take_the_kernel_are_routed():
    """Outside the interpreter, 1x1 convolutions and C_in not a multiple of 128 never reach the op."""
    from vfrt.engines.conv_triton import config_for, may_use_triton
    assert may_use_triton(1280, 3, 16, interpreted=False) and may_use_triton(640, 3, 64, interpreted=False)
    assert not may_use_triton(1280, 1, 16, interpreted=False)       # 1x1: cuDNN was as fast
    assert not may_use_triton(1280, 3, 256, interpreted=False)      # 16x16 outputs: cuDNN
    assert not may_use_triton(320, 3, 16, interpreted=False)        # C_in % 128
    assert config_for(128, 1280, 3, 64) is not None and config_for(129, 1280, 3, 64) is None
