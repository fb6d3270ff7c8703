"""Fused Triton kernels of the multiresolution hash encoding (forward and backward).

Same layout and arithmetic as :func:`vfrt.recon.hashgrid.hash_encode_reference` (read that
first). One program encodes ``BLOCK`` points at every level (a runtime loop over levels, the
8 corners unrolled). The backward kernel recomputes indices and weights and scatters
``w * dL/dout`` into the table gradient with ``atomic_add`` (fp32); when the positions need a
gradient it also accumulates ``dL/dx = sum_l sum_c (dL/dout . v_c) dw_c/dx`` in registers.
Second derivatives (double backward) are not implemented: NeuS takes its SDF gradient by
finite differences, so the eikonal loss never needs them.

Import this module lazily (it imports Triton); the kernels run on CUDA, or on CPU tensors under
Triton's interpreter (``TRITON_INTERPRET=1`` must be set before this module is imported).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from vfrt.recon.config import HashGridConfig
from vfrt.recon.hashgrid_layout import level_metadata

BLOCK = 128


@triton.jit
def _corner(i0, i1, i2, f0, f1, f2, c: tl.constexpr, res, dense, T: tl.constexpr):
    """Index, weight and the three partial weights (d w / d frac_k) of corner ``c``."""
    d0: tl.constexpr = c & 1
    d1: tl.constexpr = (c >> 1) & 1
    d2: tl.constexpr = (c >> 2) & 1
    cx = i0 + d0
    cy = i1 + d1
    cz = i2 + d2
    s0 = f0 if d0 else 1.0 - f0
    s1 = f1 if d1 else 1.0 - f1
    s2 = f2 if d2 else 1.0 - f2
    sg0 = 1.0 if d0 else -1.0
    sg1 = 1.0 if d1 else -1.0
    sg2 = 1.0 if d2 else -1.0
    r1 = (res + 1).to(tl.int64)
    idx_dense = cx + cy * r1 + cz * (r1 * r1)
    p1 = tl.full(cx.shape, 2654435761, tl.int64)
    p2 = tl.full(cx.shape, 805459861, tl.int64)
    idx_hash = (cx ^ (cy * p1) ^ (cz * p2)) & (T - 1)
    idx = tl.where(dense != 0, idx_dense, idx_hash)
    return idx, s0 * s1 * s2, sg0 * s1 * s2, s0 * sg1 * s2, s0 * s1 * sg2

@triton.jit
def _sanitize(x):
    """Clamp to [0, 1]; NaN -> 0, so a diverged model can never index outside the table."""
    x = tl.where(x == x, x, 0.0)
    return tl.minimum(tl.maximum(x, 0.0), 1.0)


@triton.jit
def _cell(x0, x1, x2, res):
    resf = res.to(tl.float32)
    p0 = x0 * resf
    p1 = x1 * resf
    p2 = x2 * resf
    b0 = tl.minimum(tl.floor(p0), resf - 1.0)
    b1 = tl.minimum(tl.floor(p1), resf - 1.0)
    b2 = tl.minimum(tl.floor(p2), resf - 1.0)
    return (b0.to(tl.int64), b1.to(tl.int64), b2.to(tl.int64), p0 - b0, p1 - b1, p2 - b2, resf)

@triton.jit
def fwd(x_ptr, table_ptr, out_ptr, res_ptr, dense_ptr, N,
        L: tl.constexpr, T: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    m = offs < N
    fo = tl.arange(0, F)
    x0 = _sanitize(tl.load(x_ptr + offs * 3 + 0, mask=m, other=0.0))
    x1 = _sanitize(tl.load(x_ptr + offs * 3 + 1, mask=m, other=0.0))
    x2 = _sanitize(tl.load(x_ptr + offs * 3 + 2, mask=m, other=0.0))
    m2 = m[:, None] & (fo[None, :] < F)
    for lvl in range(L):
        res = tl.load(res_ptr + lvl)
        dense = tl.load(dense_ptr + lvl)
        i0, i1, i2, f0, f1, f2, resf = _cell(x0, x1, x2, res)
        tbase = table_ptr + lvl * (T * F)
        acc = tl.zeros((BLOCK, F), dtype=tl.float32)
        for c in tl.static_range(8):
            idx, w, g0, g1, g2 = _corner(i0, i1, i2, f0, f1, f2, c, res, dense, T)
            v = tl.load(tbase + idx[:, None] * F + fo[None, :], mask=m2, other=0.0)
            acc += w[:, None] * v
        tl.store(out_ptr + offs[:, None] * (L * F) + lvl * F + fo[None, :], acc, mask=m2)

@triton.jit
def bwd(x_ptr, table_ptr, grad_out_ptr, grad_table_ptr, grad_x_ptr, res_ptr, dense_ptr, N,
        L: tl.constexpr, T: tl.constexpr, F: tl.constexpr, NEED_DX: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    m = offs < N
    fo = tl.arange(0, F)
    r0 = tl.load(x_ptr + offs * 3 + 0, mask=m, other=0.0)
    r1 = tl.load(x_ptr + offs * 3 + 1, mask=m, other=0.0)
    r2 = tl.load(x_ptr + offs * 3 + 2, mask=m, other=0.0)
    x0 = _sanitize(r0)
    x1 = _sanitize(r1)
    x2 = _sanitize(r2)
    m2 = m[:, None] & (fo[None, :] < F)
    gx0 = tl.zeros((BLOCK,), dtype=tl.float32)
    gx1 = tl.zeros((BLOCK,), dtype=tl.float32)
    gx2 = tl.zeros((BLOCK,), dtype=tl.float32)
    for lvl in range(L):
        res = tl.load(res_ptr + lvl)
        dense = tl.load(dense_ptr + lvl)
        i0, i1, i2, f0, f1, f2, resf = _cell(x0, x1, x2, res)
        g = tl.load(grad_out_ptr + offs[:, None] * (L * F) + lvl * F + fo[None, :], mask=m2, other=0.0)
        tbase = lvl * (T * F)
        for c in tl.static_range(8):
            idx, w, d0, d1, d2 = _corner(i0, i1, i2, f0, f1, f2, c, res, dense, T)
            ptrs = tbase + idx[:, None] * F + fo[None, :]
            tl.atomic_add(grad_table_ptr + ptrs, w[:, None] * g, mask=m2)
            if NEED_DX:
                v = tl.load(table_ptr + ptrs, mask=m2, other=0.0)
                gv = tl.sum(g * v, axis=1) * resf
                gx0 += gv * d0
                gx1 += gv * d1
                gx2 += gv * d2
    if NEED_DX:
        # torch.clamp passes the gradient on [0, 1] (inclusive) and blocks it outside
        gx0 = tl.where((r0 >= 0.0) & (r0 <= 1.0), gx0, 0.0)
        gx1 = tl.where((r1 >= 0.0) & (r1 <= 1.0), gx1, 0.0)
        gx2 = tl.where((r2 >= 0.0) & (r2 <= 1.0), gx2, 0.0)
        tl.store(grad_x_ptr + offs * 3 + 0, gx0, mask=m)
        tl.store(grad_x_ptr + offs * 3 + 1, gx1, mask=m)
        tl.store(grad_x_ptr + offs * 3 + 2, gx2, mask=m)


def _kernels():
    return fwd, bwd


@functools.lru_cache(maxsize=32)
def _metadata(cfg: HashGridConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    res, dense = level_metadata(cfg)
    return (torch.tensor(res, dtype=torch.int32, device=device),
            torch.tensor([int(d) for d in dense], dtype=torch.int32, device=device))


class _HashEncodeTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig) -> torch.Tensor:
        fwd, _ = _kernels()
        x = x.contiguous().float()
        table = table.contiguous()
        n = x.shape[0]
        res_t, dense_t = _metadata(cfg, x.device)
        out = torch.empty(n, cfg.output_dim, device=x.device, dtype=torch.float32)
        if n > 0:
            fwd[(triton_cdiv(n, BLOCK),)](x, table, out, res_t, dense_t, n, L=cfg.n_levels, T=cfg.table_size,
                                           F=cfg.n_features_per_level, BLOCK=BLOCK)
        ctx.save_for_backward(x, table)
        ctx.cfg = cfg
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        _, bwd = _kernels()
        x, table = ctx.saved_tensors
        cfg: HashGridConfig = ctx.cfg
        n = x.shape[0]
        need_dx = bool(ctx.needs_input_grad[0])
        grad_table = torch.zeros_like(table)
        grad_x = torch.empty_like(x) if need_dx else torch.empty(1, device=x.device)
        res_t, dense_t = _metadata(cfg, x.device)
        if n > 0:
            bwd[(triton_cdiv(n, BLOCK),)](x, table, grad_out.contiguous().float(), grad_table, grad_x, res_t, dense_t,
                                           n, L=cfg.n_levels, T=cfg.table_size, F=cfg.n_features_per_level,
                                           NEED_DX=need_dx, BLOCK=BLOCK)
        return (grad_x if need_dx else None), grad_table, None


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def hash_encode_triton(x: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig) -> torch.Tensor:
    """Fused hash encoding; same contract as :func:`~vfrt.recon.hashgrid.hash_encode_reference`.

    Args:
        x: (N, 3) float32 in ``[0, 1]^3`` (clamped), CUDA or CPU under ``TRITON_INTERPRET=1``.
        table: (L, T, F) float32.
    Returns:
        (N, L * F) float32; gradients w.r.t. ``table`` and ``x`` (first order only).
    """
    return _HashEncodeTriton.apply(x, table, cfg)
