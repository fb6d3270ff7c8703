"""The conv-as-GEMM experiment (benchmarks/experiments/conv_gemm.py, lost its A/B: docs/PERF.md) still agrees
with F.conv2d, so the benchmark that compares it measures the same function."""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

_path = Path(__file__).resolve().parents[2] / "benchmarks" / "experiments" / "conv_gemm.py"
_spec = importlib.util.spec_from_file_location("conv_gemm_experiment", _path)
conv_gemm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conv_gemm)
conv2d_as_gemm, gemm_weight = conv_gemm.conv2d_as_gemm, conv_gemm.gemm_weight


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
