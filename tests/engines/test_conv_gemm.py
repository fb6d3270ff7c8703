"""Convolution as one GEMM over gathered taps agrees with F.conv2d, and the fast engine using it with the reference."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vfrt import Pipeline
from vfrt.engines.conv_gemm import conv2d_as_gemm, gemm_weight


@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (3, 1, 0), (3, 2, 0)])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_conv2d_on_fresh_random_inputs(k, stride, padding, channels_last, bias):
    g = torch.Generator().manual_seed(hash((k, stride, padding, channels_last, bias)) % 2**31)
    for b, c, co, h, w in [(2, 8, 16, 8, 8), (3, 5, 7, 5, 6), (1, 16, 4, 4, 4)]:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x = torch.randn((b, c, h, w), generator=g).contiguous(memory_format=fmt)
        wt = torch.randn((co, c, k, k), generator=g).contiguous(memory_format=fmt)
        bb = torch.randn((co,), generator=g) if bias else None
        ref = F.conv2d(x, wt, bb, stride, padding)
        out = conv2d_as_gemm(x, wt, bb, stride, padding)
        assert out.shape == ref.shape
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.isfinite(out).all()
        assert (out - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_gemm_weight_is_a_view_of_a_channels_last_weight():
    wt = torch.randn((6, 4, 3, 3)).contiguous(memory_format=torch.channels_last)
    w2 = gemm_weight(wt)
    assert w2.shape == (6, 36) and w2.data_ptr() == wt.data_ptr()


def test_rejects_a_weight_that_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        conv2d_as_gemm(torch.randn((1, 4, 8, 8)), torch.randn((2, 3, 3, 3)), None, 1, 1)


@pytest.fixture(scope="module")
def image():
    return torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(3)) * 2 - 1


@pytest.mark.parametrize("max_pixels", [0, 16, 10**6])
def test_fast_engine_with_gemm_convs_matches_reference(tiny_model, image, max_pixels):
    """None, some (<= 4x4 outputs) or all convolutions as GEMMs: the same orbit as the reference engine (fp32, CPU)."""
    ref = Pipeline(tiny_model, device="cpu", backend="reference").orbit(image, views=36, generate=3, steps=8, seed=4,
                                                                        preprocess=False)
    fast = Pipeline(tiny_model, device="cpu", backend="fast", channels_last=True, gemm_conv_max_pixels=max_pixels)
    assert fast.engine.unet.gemm_conv_max_pixels == max_pixels
    out = fast.orbit(image, views=36, generate=3, steps=8, noise=ref.noise, preprocess=False)
    assert np.abs(out.images - ref.images).max() <= 1e-4


def test_gemm_convs_need_channels_last(tiny_model):
    with pytest.raises(ValueError, match="channels_last"):
        Pipeline(tiny_model, device="cpu", backend="fast", channels_last=False, gemm_conv_max_pixels=64)
