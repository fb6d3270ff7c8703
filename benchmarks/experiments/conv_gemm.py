"""Convolution as one GEMM over gathered taps (im2col), for channels-last activations.

At the UNet's low resolutions (8x8, 4x4 latents) a convolution has few output pixels
(rows x h x w, e.g. 2 x 4 x 4 = 32) and a long reduction (9 x 1280 = 11,520): cuDNN's implicit-GEMM
kernels then run a handful of thread blocks that each walk the whole reduction. Gathering the
nine taps into a (rows*h*w, 9*C) matrix - a few MB at these sizes - and calling one GEMM lets
cuBLAS split the reduction across the GPU. Same products, fp32 accumulation: equal to
``F.conv2d`` up to summation order.

The weight is used in place: a channels-last conv weight (C_out, C_in, kh, kw) is stored in
(C_out, kh, kw, C_in) order, so its GEMM form (C_out, kh*kw*C_in) is a view, not a copy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gemm_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, kh, kw) conv weight -> (C_out, kh*kw*C_in) (a view for a channels-last weight)."""
    c_out = weight.shape[0]
    return weight.permute(0, 2, 3, 1).reshape(c_out, -1)


def conv2d_as_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1,
                   padding: int = 0) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` for square kernels, via one GEMM.

    Args:
        x: (B, C, H, W), any memory format (channels-last avoids a copy).
        weight: (C_out, C, k, k).
        bias: (C_out,) or None.
    Returns: (B, C_out, H', W') in channels-last memory format.
    """
    b, c, h, w = x.shape
    c_out, c_w, k, k2 = weight.shape
    if c_w != c or k != k2:
        raise ValueError(f"conv2d_as_gemm: weight {tuple(weight.shape)} does not fit input {tuple(x.shape)}")
    ho = (h + 2 * padding - k) // stride + 1
    wo = (w + 2 * padding - k) // stride + 1
    xh = x.permute(0, 2, 3, 1)                                        # (B, H, W, C)
    if k == 1 and stride == 1 and padding == 0:
        cols = xh.reshape(b * h * w, c)
    else:
        if padding:
            xh = F.pad(xh, (0, 0, padding, padding, padding, padding))
        taps = [xh[:, dy: dy + stride * (ho - 1) + 1: stride, dx: dx + stride * (wo - 1) + 1: stride, :]
                for dy in range(k) for dx in range(k)]
        cols = torch.cat(taps, dim=-1).reshape(b * ho * wo, k * k * c)  # (B*H'*W', k*k*C), tap-major
    out = F.linear(cols, gemm_weight(weight), bias)                   # (B*H'*W', C_out)
    return out.view(b, ho, wo, c_out).permute(0, 3, 1, 2)
