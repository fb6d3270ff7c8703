"""Small-output convolutions as a split-reduction implicit GEMM in Triton (channels-last, fp16/bf16).

At the UNet's 8x8 and 4x4 levels and small K a convolution has few output pixels (rows x h x w,
e.g. 2 x 4 x 4 = 32) and a long reduction (9 x 1280 = 11,520 or 9 x 2560). cuDNN then runs
64x64 tiles that each walk the whole reduction on a handful of SMs: 43 such launches take ~23 us
each at K = 1 where reading their weights takes ~10 us (docs/PERF.md, run 5). Here the reduction
is split over ``SPLIT`` thread blocks per output tile, so the whole GPU streams the weights; each
block writes fp32 partial sums and a second small kernel adds them (in a fixed order:
deterministic), adds the bias and rounds once to the output dtype.

The convolution is computed as an implicit GEMM, nothing is gathered in memory:
``y[m, n] = sum_r A[m, r] W[n, r]`` with ``m = (b, oh, ow)``, ``r = (kh, kw, c)`` and
``A[m, r] = x[b, oh*s - p + kh, ow*s - p + kw, c]`` (zero outside the image). A channels-last
weight ``(C_out, C_in, kh, kw)`` is stored as ``(C_out, kh, kw, C_in)``, i.e. ``W`` is a view.
Numerics: fp32 accumulation (like cuDNN), a different summation order, one final rounding.

:func:`conv2d_small` is the custom op ``vfrt::conv2d_small`` (opaque to ``torch.compile``, so the
row count stays dynamic and nothing recompiles per K). It picks, at run time and per call, the
Triton kernel or cuDNN from a fixed table measured on the H100 (docs/PERF.md, run 7): the Triton
kernel only where it was faster. On the CPU the kernel runs under Triton's interpreter (tests).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vfrt.engines.triton_support import INTERPRET, tl, triton, triton_kernels_available


if triton is not None:
    @triton.jit
    def _conv_partial_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, C, H, W, HO, WO, sxb, sxh, sxw, swn, chunks, SPLIT,
                             KS: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, BM: tl.constexpr,
                             BN: tl.constexpr, BK: tl.constexpr, PARTIAL: tl.constexpr, HAS_BIAS: tl.constexpr,
                             GROUP_M: tl.constexpr, IEEE_FP32: tl.constexpr):
        """One (BM, BN) output tile over reduction chunks [s*chunks/SPLIT, (s+1)*chunks/SPLIT), s = program_id(1).

        x: NHWC with strides (sxb, sxh, sxw, 1); w: (N, KS*KS*C) row stride swn; chunks = KS*KS*C/BK
        (C % BK == 0, so a chunk lies in one tap). PARTIAL False (SPLIT == 1): writes bias + result in
        y's dtype to y (M, N). PARTIAL True: writes fp32 partial sums to y (SPLIT, M, N).
        """
        pid = tl.program_id(0)
        split = tl.program_id(1)
        num_pid_m = tl.cdiv(M, BM)
        num_pid_n = tl.cdiv(N, BN)
        group = GROUP_M * num_pid_n               # grouped tile order: neighbours share W in L2
        first_m = (pid // group) * GROUP_M
        size_m = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % size_m
        pid_n = (pid % group) // size_m
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        m_ok = rm < M
        n_ok = rn < N
        hw = HO * WO
        bb = rm // hw
        rem = rm % hw
        ih0 = (rem // WO) * STRIDE - PAD
        iw0 = (rem % WO) * STRIDE - PAD
        x_row = x_ptr + bb * sxb
        w_col = w_ptr + rn[None, :] * swn + rk[:, None]                       # (BK, BN) view of W[n, r]
        c_begin = split * chunks // SPLIT
        c_end = (split + 1) * chunks // SPLIT
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for c in range(c_begin, c_end):
            r0 = c * BK
            tap = r0 // C
            ci = r0 - tap * C
            ih = ih0 + tap // KS
            iw = iw0 + tap % KS
            ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load((x_row + ih * sxh + iw * sxw + ci)[:, None] + rk[None, :], mask=ok[:, None], other=0.0)
            wt = tl.load(w_col + r0, mask=n_ok[None, :], other=0.0)
            if IEEE_FP32:
                acc = tl.dot(a, wt, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, wt, acc)
        mask = m_ok[:, None] & n_ok[None, :]
        if not PARTIAL:
            if HAS_BIAS:
                acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(y_ptr + split * M * N + rm[:, None] * N + rn[None, :], acc, mask=mask)

    @triton.jit
    def _sum_partials_kernel(p_ptr, b_ptr, y_ptr, MN, N, SPLIT, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
        """y[i] = sum_s p[s, i] (+ bias[i % N]) (s in order), rounded once to y's dtype."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < MN
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs % N, mask=ok, other=0.0).to(tl.float32)
        for s in range(SPLIT):
            acc += tl.load(p_ptr + s * MN + offs, mask=ok, other=0.0)
        tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------- launch configuration
MAX_OUTPUT_PIXELS = 64   # h' x w' up to which a convolution may take the kernel (8x8; 16x16 measured slower)


def config_for(M: int, c_in: int, k: int, hw_out: int) -> tuple[int, int, int, int, int, int] | None:
    """(BM, BN, BK, SPLIT, warps, stages) for a convolution with M = rows x h' x w' output pixels, or None for cuDNN.

    From timing 1-11 split factors x 18 tile shapes at every UNet convolution with <= 16x16 outputs and
    2-26 rows on the H100 (``benchmarks/profile_step.py --conv-triton``; docs/PERF.md run 7), then
    choosing per M bucket the one configuration with the least total time over the UNet's shapes.
    The kernel wins for 3x3 convolutions with <= 8x8 outputs up to M = 128 (K <= 7 at 4x4, K = 1 at
    8x8): 26 -> 13.5 us for a 1280-channel 3x3 at 4x4 and 2 rows, where reading the weights takes
    ~10 us. Beyond that, at 16x16, and for 1x1 convolutions cuDNN was as fast or faster.
    """
    if k != 3 or hw_out > MAX_OUTPUT_PIXELS or c_in % 128:
        return None
    if M <= 32:
        return 32, 128, 128, 12, 4, 3
    if M <= 64:
        return 64, 64, 128, 12, 4, 3
    if M <= 128:
        return 64, 64, 128, 6, 4, 3
    return None


def may_use_triton(c_in: int, k: int, hw_out: int, interpreted: bool = INTERPRET) -> bool:
    """Whether :func:`conv2d_small` can ever pick the Triton kernel for this convolution (at some row count).

    Only such convolutions are worth routing through the op: for the others it would call cuDNN from
    inside an opaque op, which costs Inductor its own handling of the convolution. ``interpreted``: the
    kernels run under Triton's CPU interpreter (the tests), where every eligible shape takes the kernel.
    """
    if interpreted:   # the CPU tests' tiny models: every small-output convolution with C_in % 16 == 0
        return c_in % 16 == 0 and hw_out <= MAX_OUTPUT_PIXELS
    return config_for(1, c_in, k, hw_out) is not None


def supports(x_shape, weight_shape, stride: int, padding: int) -> bool:
    """Whether the kernel handles this convolution (square 1x1/3x3 kernels, 'same'-style padding, C_in % 16 == 0)."""
    c_out, c_in, kh, kw = weight_shape
    return (kh == kw and kh in (1, 3) and padding == kh // 2 and stride in (1, 2) and c_in % 16 == 0
            and x_shape[1] == c_in)


def conv2d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int,
                  config: tuple[int, int, int, int, int, int] | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` through the Triton kernel (no cuDNN fallback).

    Args:
        x: (B, C, H, W), channels-last memory (any other layout is copied once).
        weight: (C_out, C, k, k), k in (1, 3), padding = k // 2; bias: (C_out,) or None.
        config: (BM, BN, BK, SPLIT, warps, stages); default: the measured table (or a generic split).
    Returns: (B, C_out, H', W') in channels-last memory, x's dtype.
    """
    if triton is None:
        raise RuntimeError("the Triton convolution needs Triton (pip install 'vfrt[triton]')")
    if not supports(x.shape, weight.shape, stride, padding):
        raise ValueError(f"conv2d_triton: unsupported convolution: input {tuple(x.shape)}, weight "
                         f"{tuple(weight.shape)}, stride {stride}, padding {padding}")
    b, c, h, w = x.shape
    c_out, _, k, _ = weight.shape
    ho = (h + 2 * padding - k) // stride + 1
    wo = (w + 2 * padding - k) // stride + 1
    xh = x.permute(0, 2, 3, 1)
    if xh.stride(-1) != 1:
        xh = xh.contiguous()
    w2 = weight.permute(0, 2, 3, 1).reshape(c_out, k * k * c)   # a view for a channels-last weight
    if w2.stride(-1) != 1:
        w2 = w2.contiguous()
    has_bias = bias is not None
    if not has_bias:
        bias = w2   # any pointer: never read
    y = torch.empty((b, ho, wo, c_out), device=x.device, dtype=x.dtype)
    M, N, R = b * ho * wo, c_out, k * k * c
    if M == 0:
        return y.permute(0, 3, 1, 2)
    if config is None:
        if INTERPRET:  # the interpreter runs tile by tile: few, large tiles keep the CPU tests quick
            config = (64, 64, next(bk for bk in (64, 32, 16) if c % bk == 0), 2, 4, 1)
        else:
            config = config_for(M, c, k, ho * wo) or (64, 64, 64, 1, 4, 3)
            if c % config[2]:
                config = (*config[:2], next(bk for bk in (64, 32, 16) if c % bk == 0), *config[3:])
    bm, bn, bk, split, warps, stages = config
    if c % bk:
        raise ValueError(f"conv2d_triton: C_in {c} is not a multiple of the block {bk}")
    chunks = R // bk
    split = max(1, min(split, chunks))
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn), split)
    out = y if split == 1 else torch.empty((split, M, N), device=x.device, dtype=torch.float32)
    _conv_partial_kernel[grid](xh, w2, bias, out, M, N, c, h, w, ho, wo, xh.stride(0), xh.stride(1), xh.stride(2),
                               w2.stride(0), chunks, split, KS=k, STRIDE=stride, PAD=padding, BM=bm, BN=bn, BK=bk,
                               PARTIAL=split > 1, HAS_BIAS=has_bias, GROUP_M=8, num_warps=warps, num_stages=stages,
                               IEEE_FP32=x.dtype == torch.float32 and not torch.backends.cudnn.allow_tf32)
    if split > 1:
        block = 1024
        _sum_partials_kernel[(triton.cdiv(M * N, block),)](out, bias, y, M * N, N, SPLIT=split,
                                                            HAS_BIAS=has_bias, BLOCK=block)
    return y.permute(0, 3, 1, 2)


def _use_triton(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> bool:
    if triton is None or not triton_kernels_available(x.device) or not supports(x.shape, weight.shape, stride, padding):
        return False
    if INTERPRET:
        return x.shape[1] % 16 == 0
    b, c, h, w = x.shape
    k = weight.shape[-1]
    ho = (h + 2 * padding - k) // stride + 1
    wo = (w + 2 * padding - k) // stride + 1
    return config_for(b * ho * wo, c, k, ho * wo) is not None


@torch.library.custom_op("vfrt::conv2d_small", mutates_args=())
def conv2d_small(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                 padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)``: the Triton kernel where the table says it is faster, else cuDNN.

    Args:
        x: (B, C, H, W), channels-last memory (torch.compile hands the op exactly the strides the
            caller's traced tensor has: make it channels-last there, or the op copies it);
        weight: (C_out, C, k, k) channels-last; bias: (C_out,) or None (inside a compiled graph,
            leave it out and add it after the op: Inductor fuses that add into the next kernel,
            while cuDNN would add it in a separate pass).
    Returns: (B, C_out, H', W') in channels-last memory.
    """
    if _use_triton(x, weight, stride, padding):
        return conv2d_triton(x, weight, bias, stride, padding)
    return F.conv2d(x, weight, bias, stride, padding).contiguous(memory_format=torch.channels_last)


@conv2d_small.register_fake
def _(x, weight, bias, stride, padding):
    b, c, h, w = x.shape
    k = weight.shape[-1]
    ho = (h + 2 * padding - k) // stride + 1
    wo = (w + 2 * padding - k) // stride + 1
    return x.new_empty((b, weight.shape[0], ho, wo)).contiguous(memory_format=torch.channels_last)
