"""The GEGLU projection of a transformer block's feed-forward as one fused Triton GEMM.

``GEGLU`` computes ``a, g = (x W^T + b).chunk(2, -1); y = a * gelu(g)``. Through cuBLAS that is a
GEMM writing the (M, 2N) product and a second, memory-bound pass reading it back to write the
(M, N) result. Here one kernel keeps both halves of an output tile in registers (two accumulators,
weight rows ``n`` and ``N + n``) and writes only ``y``: at K = 25 the level-0 blocks' product is
136 MB per call, so this saves ~3 x 68 MB of traffic per call (docs/PERF.md, run 6).

Numerics: fp32 accumulation, bias, exact erf-GELU and the product in fp32, one rounding to the
output dtype (the unfused path rounds the GEMM output and the GELU to fp16 first), so the two agree
to fp16 rounding. fp32 inputs follow ``torch.backends.cuda.matmul.allow_tf32`` (off by default:
full fp32 products, as cuBLAS).

The kernel runs on CUDA, or on the CPU through Triton's interpreter (``TRITON_INTERPRET=1`` set
before Triton is imported), which the CPU tests use. ``geglu_projection`` is registered as the
custom op ``vfrt::geglu_projection``, so ``torch.compile`` keeps it as one opaque call (its shapes
stay dynamic) and CUDA graphs capture its launch.
"""
from __future__ import annotations

import torch

from vfrt.engines.triton_support import INTERPRET, tl, triton


if triton is not None:
    @triton.jit
    def _geglu_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                      EVEN_K: tl.constexpr, IEEE_FP32: tl.constexpr):
        """y[m, n] = (x W[n]^T + b[n]) * gelu(x W[N + n]^T + b[N + n]) for one (BM, BN) tile.

        x: (M, K) row stride stride_xm; W: (2N, K) row stride stride_wn (nn.Linear layout);
        b: (2N,); y: (M, N) row stride stride_ym. IEEE_FP32: full-precision fp32 products (else
        Triton's default, TF32, for fp32 inputs; fp16/bf16 inputs are unaffected).
        """
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BM)
        num_pid_n = tl.cdiv(N, BN)
        group = GROUP_M * num_pid_n                  # grouped tile order: neighbours share W in L2
        first_m = (pid // group) * GROUP_M
        size_m = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % size_m
        pid_n = (pid % group) // size_m
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        m_ok = rm < M
        n_ok = rn < N
        x_ptrs = x_ptr + rm[:, None] * stride_xm + rk[None, :]
        wa_ptrs = w_ptr + rn[None, :] * stride_wn + rk[:, None]          # (BK, BN) view of W[n, k]
        wg_ptrs = wa_ptrs + N * stride_wn
        acc_a = tl.zeros((BM, BN), dtype=tl.float32)
        acc_g = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BK)):
            if EVEN_K:
                a = tl.load(x_ptrs, mask=m_ok[:, None], other=0.0)
                wa = tl.load(wa_ptrs, mask=n_ok[None, :], other=0.0)
                wg = tl.load(wg_ptrs, mask=n_ok[None, :], other=0.0)
            else:
                k_ok = rk < K - k * BK
                a = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
                wa = tl.load(wa_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
                wg = tl.load(wg_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            if IEEE_FP32:
                acc_a = tl.dot(a, wa, acc_a, input_precision="ieee")
                acc_g = tl.dot(a, wg, acc_g, input_precision="ieee")
            else:
                acc_a = tl.dot(a, wa, acc_a)
                acc_g = tl.dot(a, wg, acc_g)
            x_ptrs += BK
            wa_ptrs += BK
            wg_ptrs += BK
        ba = tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        bg = tl.load(b_ptr + N + rn, mask=n_ok, other=0.0).to(tl.float32)
        va = acc_a + ba[None, :]
        vg = acc_g + bg[None, :]
        y = va * (0.5 * vg * (1.0 + tl.erf(vg * 0.7071067811865476)))
        tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])



# (BM, BN, BK, warps, stages) by problem size, from timing every candidate configuration at the 36-view
# orbit's shapes on the H100 (benchmarks/profile_step.py --geglu; docs/PERF.md run 6). A fixed table
# instead of Triton's autotuner: autotuning each new row count cost ~3 s at the first step of a new K.
def config_for(M: int, K: int) -> tuple[int, int, int, int, int]:
    if M <= 256:
        return 64, 64, 64, 4, 4
    if K >= 1280 and 512 < M <= 1024:
        return 64, 256, 64, 8, 3
    if K <= 320 and M <= 2048:
        return 64, 64, 32, 4, 5
    return 128, 128, 32, 8, 4


def geglu_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The unfused GEGLU (what :class:`vfrt.models.unet.GEGLU` computes): (..., K) -> (..., N)."""
    a, g = torch.nn.functional.linear(x, weight, bias).chunk(2, dim=-1)
    return a * torch.nn.functional.gelu(g)


def geglu_launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 config: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """Launch the kernel: ``config`` (BM, BN, BK, warps, stages) overrides the fixed table (for sweeps)."""
    K = x.shape[-1]
    N2 = weight.shape[0]
    if N2 % 2 or weight.shape[1] != K or bias.shape != (N2,):
        raise ValueError(f"GEGLU weight must be (2N, {K}) with bias (2N,), got {tuple(weight.shape)} "
                         f"and {tuple(bias.shape)}")
    N = N2 // 2
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    b = bias.contiguous()
    M = x2.shape[0]
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    if M == 0:
        return y.reshape(*x.shape[:-1], N)
    if config is not None:
        bm, bn, bk, warps, stages = config
    elif INTERPRET:  # the interpreter runs tiles one by one: small tiles keep the CPU tests quick
        bm, bn, bk, warps, stages = 32, 32, 32, 4, 1
    else:
        bm, bn, bk, warps, stages = config_for(M, K)
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    _geglu_kernel[grid](x2, w, b, y, M, N, K, x2.stride(0), w.stride(0), y.stride(0), BM=bm, BN=bn, BK=bk,
                        GROUP_M=8, EVEN_K=K % bk == 0, num_warps=warps, num_stages=stages,
                        IEEE_FP32=x2.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32)
    return y.reshape(*x.shape[:-1], N)


@torch.library.custom_op("vfrt::geglu_projection", mutates_args=())
def geglu_projection(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Fused ``a * gelu(g)`` of ``(a, g) = (x W^T + b).chunk(2, -1)``.

    Args:
        x: (..., K) activations (fp16/bf16 on CUDA; any float dtype under the interpreter).
        weight: (2N, K) the GEGLU ``proj`` weight; bias: (2N,).
    Returns: (..., N) in x's dtype.
    """
    if triton is None:
        raise RuntimeError("the fused GEGLU kernel needs Triton (pip install 'vfrt[triton]')")
    return geglu_launch(x, weight, bias)


@geglu_projection.register_fake
def _(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0] // 2))
