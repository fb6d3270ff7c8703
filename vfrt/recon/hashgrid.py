"""Multiresolution hash encoding (Müller et al., instant-ngp, SIGGRAPH 2022, §3).

This module holds the *readable pure-PyTorch reference* (autograd gives gradients w.r.t. the
table and the positions) and :class:`HashGridEncoding`, the ``nn.Module`` that picks a
backend: ``tcnn`` (tinycudann, only if importable and CUDA), ``triton`` (the fused kernel of
:mod:`vfrt.recon.hashgrid_triton`, CUDA or Triton's CPU interpreter), or ``reference``.

Layout shared by the reference and the Triton kernel (so their tables are interchangeable):

* table: ``(L, T, F)`` float32, ``T = 2**log2_hashmap_size``.
* level ``l`` has resolution ``R_l = floor(base * b**l)``; a point ``x in [0, 1]^3`` lands at
  ``p = x * R_l``, cell corner ``c = floor(p)``, weights ``w = p - c`` (trilinear).
* corner index: dense ``cx + cy (R+1) + cz (R+1)^2`` when ``(R+1)^3 <= T``, else the
  instant-ngp spatial hash ``(cx * 1 xor cy * 2654435761 xor cz * 805459861) mod T`` (eq. 4).
* output: ``(N, L * F)``, level-major (features of level 0 first).

The tinycudann backend uses tcnn's own table layout and grid offsets (``p = x * scale + 0.5``),
so its parameters are not interchangeable with the two others.
"""
from __future__ import annotations

import functools
import importlib.util
import logging

import torch
from torch import nn

from vfrt.recon.config import HashGridConfig
from vfrt.recon.errors import BackendUnavailableError

log = logging.getLogger(__name__)

PRIMES = (1, 2654435761, 805459861)
_CORNERS = torch.tensor([[(i >> 0) & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=torch.int64)


def level_metadata(cfg: HashGridConfig) -> tuple[list[int], list[bool]]:
    """Per-level resolution ``R_l`` and whether the level is dense (``(R_l+1)^3 <= T``)."""
    res = list(cfg.resolutions)
    dense = [(r + 1) ** 3 <= cfg.table_size for r in res]
    return res, dense


def corner_indices(corners: torch.Tensor, resolution: int, dense: bool, table_size: int) -> torch.Tensor:
    """Table row of integer grid corners.

    Args:
        corners: (..., 3) int64 grid coordinates in ``[0, resolution]``.
    Returns:
        (...) int64 indices in ``[0, table_size)``.
    """
    cx, cy, cz = corners.unbind(-1)
    if dense:
        r1 = resolution + 1
        return cx + cy * r1 + cz * (r1 * r1)
    h = (cx * PRIMES[0]) ^ (cy * PRIMES[1]) ^ (cz * PRIMES[2])
    return h & (table_size - 1)  # T is a power of two: mod T of the 64-bit product == of the 32-bit one


def hash_encode_reference(x: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig,
                          n_active: int | None = None) -> torch.Tensor:
    """Reference multiresolution hash encoding.

    Args:
        x: (N, 3) float32 positions in ``[0, 1]^3`` (clamped; NaN -> 0).
        table: (L, T, F) float32 feature table.
        n_active: compute only the first ``n_active`` levels; the others are zeros.
    Returns:
        (N, L * F) float32 features; differentiable w.r.t. ``table`` and ``x``.
    """
    x = torch.nan_to_num(x.float(), nan=0.0).clamp(0.0, 1.0)  # NaN positions must not index the table
    res, dense = level_metadata(cfg)
    corners = _CORNERS.to(x.device)
    outs = []
    n_active = cfg.n_levels if n_active is None else n_active
    for lvl in range(n_active):
        pos = x * res[lvl]
        base = torch.floor(pos.detach()).to(torch.int64)
        base = torch.minimum(base, torch.full_like(base, res[lvl] - 1))  # x == 1 -> last cell, weight 1
        frac = pos - base.to(pos.dtype)  # (N, 3), carries d/dx
        idx = corner_indices(base[:, None, :] + corners, res[lvl], dense[lvl], cfg.table_size)  # (N, 8)
        # trilinear weight of corner (i, j, k): prod over axes of frac or (1 - frac)
        c = corners.to(x.dtype)
        w = (c * frac[:, None, :] + (1 - c) * (1 - frac[:, None, :])).prod(dim=-1)  # (N, 8)
        feats = table[lvl][idx]  # (N, 8, F)
        outs.append((w[..., None] * feats).sum(dim=1))
    if n_active < cfg.n_levels:
        outs.append(x.new_zeros(x.shape[0], (cfg.n_levels - n_active) * cfg.n_features_per_level))
    return torch.cat(outs, dim=-1)


def init_table(cfg: HashGridConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh ``(L, T, F)`` table, uniform in ``[-1e-4, 1e-4]`` as in tinycudann."""
    t = torch.rand(cfg.n_levels, cfg.table_size, cfg.n_features_per_level, generator=generator)
    return (t * 2 - 1) * 1e-4


@functools.cache
def tcnn_available() -> bool:
    return importlib.util.find_spec("tinycudann") is not None


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_backend(requested: str, device: torch.device) -> str:
    """``auto`` -> tcnn (importable and CUDA), else triton (CUDA), else reference."""
    cuda = device.type == "cuda"
    if requested == "auto":
        if cuda and tcnn_available():
            return "tcnn"
        if cuda and triton_available():
            return "triton"
        return "reference"
    if requested == "tcnn" and not (cuda and tcnn_available()):
        raise BackendUnavailableError("backend 'tcnn' needs tinycudann (not on PyPI) and a CUDA device")
    if requested == "triton":
        import os

        if not triton_available():
            raise BackendUnavailableError("backend 'triton' needs the triton package (pip install triton)")
        if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise BackendUnavailableError("backend 'triton' on CPU needs TRITON_INTERPRET=1 (Triton's interpreter)")
    if requested not in ("reference", "triton", "tcnn"):
        raise BackendUnavailableError(f"unknown hash-grid backend {requested!r}")
    return requested


class HashGridEncoding(nn.Module):
    """Hash-grid encoding of points in ``[0, 1]^3``: ``(N, 3) -> (N, L * F)`` float32.

    ``level_mask`` (set with :meth:`set_active_levels`) zeroes the features of the finer
    levels for coarse-to-fine training. With the ``triton`` backend the encoding is not
    differentiable w.r.t. ``x`` (the fused backward writes only the table gradient); NeuS
    then takes SDF gradients by finite differences (see :mod:`vfrt.recon.fields`).
    """

    def __init__(self, cfg: HashGridConfig, backend: str = "reference", seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.backend = backend
        self.output_dim = cfg.output_dim
        g = torch.Generator().manual_seed(seed)
        if backend == "tcnn":
            import tinycudann as tcnn

            self.tcnn = tcnn.Encoding(3, {
                "otype": "HashGrid", "n_levels": cfg.n_levels, "n_features_per_level": cfg.n_features_per_level,
                "log2_hashmap_size": cfg.log2_hashmap_size, "base_resolution": cfg.base_resolution,
                "per_level_scale": cfg.per_level_scale,
            })
        else:
            self.table = nn.Parameter(init_table(cfg, g))
        self.register_buffer("level_mask", torch.ones(cfg.output_dim), persistent=False)
        self.n_active = cfg.n_levels

    @property
    def differentiable_wrt_input(self) -> bool:
        return self.backend == "reference"

    def set_active_levels(self, n_active: int) -> None:
        n = max(1, min(self.cfg.n_levels, n_active))
        mask = torch.zeros(self.cfg.n_levels, self.cfg.n_features_per_level, device=self.level_mask.device)
        mask[:n] = 1.0
        self.level_mask.copy_(mask.flatten())
        self.n_active = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "tcnn":
            out = self.tcnn(x.clamp(0.0, 1.0)).float()
        elif self.backend == "triton":
            from vfrt.recon.hashgrid_triton import hash_encode_triton

            out = hash_encode_triton(x, self.table, self.cfg)
        else:
            return hash_encode_reference(x, self.table, self.cfg, self.n_active)  # skips inactive levels
        return out * self.level_mask
