"""The fused GEGLU Triton kernel agrees with the unfused GEGLU, alone and inside the fast engine.

On a machine without a GPU the kernel runs through Triton's interpreter (tests/conftest.py sets
``TRITON_INTERPRET=1``); on a GPU the same tests run the compiled kernel.
"""
import numpy as np
import pytest
import torch

from vfrt import EngineConfig, Pipeline, SamplerConfig
from vfrt.engines.geglu_triton import geglu_projection, geglu_reference
from vfrt.hardware import triton_runs_on

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(not triton_runs_on(DEVICE), reason="needs Triton (CUDA or TRITON_INTERPRET=1)")


@pytest.mark.parametrize("lead,k,n", [((2, 70), 64, 96), ((33,), 320, 40), ((1, 3, 5), 96, 16), ((2, 64), 40, 24)])
def test_matches_unfused_geglu_fp32(lead, k, n):
    """fp32 in and out, fresh random inputs, sizes that are not multiples of the tiles: <= 1e-5 relative."""
    g = torch.Generator().manual_seed(hash((lead, k, n)) % 2**31)
    x = torch.randn((*lead, k), generator=g).to(DEVICE)
    w = (torch.randn((2 * n, k), generator=g) / k ** 0.5).to(DEVICE)
    b = torch.randn((2 * n,), generator=g).to(DEVICE)
    ref = geglu_reference(x.double(), w.double(), b.double())
    out = geglu_projection(x, w, b)
    assert out.shape == (*lead, n) and out.dtype == torch.float32
    # full fp32 products (TF32 only where torch.backends.cuda.matmul.allow_tf32 asks for it)
    assert (out.double() - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_matches_unfused_geglu_fp16():
    """fp16 in and out: within fp16 rounding of the exact result (one rounding instead of three)."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn((3, 50, 128), generator=g).half().to(DEVICE)
    w = (torch.randn((2 * 64, 128), generator=g) / 128 ** 0.5).half().to(DEVICE)
    b = torch.randn((128,), generator=g).half().to(DEVICE)
    exact = geglu_reference(x.double(), w.double(), b.double())
    out = geglu_projection(x, w, b)
    assert out.dtype == torch.float16
    err = (out.double() - exact).abs()
    assert err.max().item() <= 2 ** -10 * max(1.0, exact.abs().max().item())
    assert torch.isfinite(out).all()


def test_rejects_a_weight_that_does_not_fit():
    x = torch.randn((4, 8), device=DEVICE)
    with pytest.raises(ValueError, match="GEGLU weight"):
        geglu_projection(x, torch.randn((5, 8), device=DEVICE), torch.randn((5,), device=DEVICE))
    with pytest.raises(ValueError, match="GEGLU weight"):
        geglu_projection(x, torch.randn((6, 7), device=DEVICE), torch.randn((6,), device=DEVICE))


def test_custom_op_has_a_consistent_fake_implementation():
    """torch.compile sees the op through its fake (meta) implementation: shapes and dtypes must agree."""
    x = torch.randn((2, 5, 64), device=DEVICE)
    w, b = torch.randn((48, 64), device=DEVICE), torch.randn((48,), device=DEVICE)
    torch.library.opcheck(geglu_projection, (x, w, b), test_utils=("test_schema", "test_faketensor"))


@pytest.fixture(scope="module")
def image():
    return torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_fast_engine_with_fused_geglu_matches_reference(tiny_model, image, monkeypatch):
    """The fused feed-forward inside the fast engine: the same orbit as the reference engine (fp32, CPU)."""
    if DEVICE != "cpu":
        pytest.skip("the fp32 engine comparison runs on the CPU")
    import vfrt.engines.geglu_triton as geglu_triton
    calls = []

    def counted(*args):
        calls.append(args[0].shape)
        return geglu_projection(*args)
    monkeypatch.setattr(geglu_triton, "geglu_projection", counted)      # read when the engine configures
    sampler = SamplerConfig(steps=6, seed=4)
    ref = Pipeline(tiny_model, EngineConfig(backend="reference", device="cpu")).orbit(
        image, views=36, generate=2, sampler=sampler, preprocess=False)
    fast = Pipeline(tiny_model, EngineConfig(device="cpu", fused_geglu=True))
    assert fast.engine.describe()["fused_geglu"]
    out = fast.orbit(image, views=36, generate=2, sampler=sampler, noise=ref.noise, preprocess=False)
    assert calls, "the fused kernel was never called"
    assert np.abs(out.images - ref.images).max() <= 1e-4


def test_fused_geglu_is_off_by_default_on_the_cpu():
    assert not EngineConfig(device="cpu").resolve().fused_geglu
