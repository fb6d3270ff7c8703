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
so its parameters are not interchangeable with the two others; :func:`hash_encode_tcnn_reference`
computes that layout in PyTorch, and a GPU test holds tcnn to it whenever tcnn imports.
:func:`encoding_backends` says which backends run here (for ``vfrt doctor``).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import math

import torch
from torch import nn

from vfrt.recon.config import HashGridConfig
from vfrt.recon.errors import BackendUnavailableError
from vfrt.recon.hashgrid_layout import PRIMES, level_metadata

log = logging.getLogger(__name__)



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


def _trilinear_corners(base: torch.Tensor, frac: torch.Tensor, axis_index, combine) -> tuple[torch.Tensor, torch.Tensor]:
    """Table rows and trilinear weights of the 8 corners of each point's cell, computed per axis.

    Args:
        base: (N, 3) int64 cell corner; frac: (N, 3) float position inside the cell (carries d/dx).
        axis_index: ``(corner coordinate (N, 2) int64, axis) -> (N, 2)`` per-axis index term.
        combine: ``(x term, y term, z term)`` broadcast to (N, 2, 2, 2) -> row index.
    Returns:
        idx (N, 8) int64 and w (N, 8), corner ``c = x + 2y + 4z`` (x fastest).
    """
    offs = torch.arange(2, device=base.device)
    terms = [axis_index(base[:, a, None] + offs, a) for a in range(3)]
    idx = combine(terms[0][:, None, None, :], terms[1][:, None, :, None], terms[2][:, :, None, None])
    per_axis = torch.stack([1.0 - frac, frac], dim=-1)  # (N, 3, 2)
    w = per_axis[:, 0, None, None, :] * per_axis[:, 1, None, :, None] * per_axis[:, 2, :, None, None]
    return idx.reshape(-1, 8), w.reshape(-1, 8)


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
    outs = []
    n_active = cfg.n_levels if n_active is None else n_active
    mask = cfg.table_size - 1  # T is a power of two: mod T of the 64-bit hash == of the 32-bit one
    for lvl in range(n_active):
        pos = x * res[lvl]
        base = torch.floor(pos.detach()).to(torch.int64)
        base = torch.minimum(base, torch.full_like(base, res[lvl] - 1))  # x == 1 -> last cell, weight 1
        frac = pos - base.to(pos.dtype)  # (N, 3), carries d/dx
        if dense[lvl]:
            r1 = res[lvl] + 1
            idx, w = _trilinear_corners(base, frac, lambda c, a, r1=r1: c * r1**a, lambda i, j, k: i + j + k)
        else:
            idx, w = _trilinear_corners(base, frac, lambda c, a: c * PRIMES[a],
                                        lambda i, j, k: (i ^ j ^ k) & mask)
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
    """True when ``tinycudann`` imports (a real import: a wheel built for another torch/CUDA fails here)."""
    if importlib.util.find_spec("tinycudann") is None:
        return False
    try:
        import tinycudann  # noqa: F401
    except Exception as exc:  # tcnn raises ImportError/OSError/RuntimeError for a mismatched build
        log.info("tinycudann is installed but does not import (%s): not used", exc)
        return False
    return True


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_interpreted() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


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
        if not triton_available():
            raise BackendUnavailableError("backend 'triton' needs the triton package (pip install triton)")
        if not cuda and not _triton_interpreted():
            raise BackendUnavailableError("backend 'triton' on CPU needs TRITON_INTERPRET=1 (Triton's interpreter)")
    if requested not in ("reference", "triton", "tcnn"):
        raise BackendUnavailableError(f"unknown hash-grid backend {requested!r}")
    return requested


def encoding_backends(device: str | torch.device | None = None) -> dict[str, bool | str]:
    """Which hash-grid backends can run on ``device`` here, and which one ``auto`` picks (for ``vfrt doctor``).

    ``device`` defaults to ``cuda`` when torch sees a GPU, else ``cpu``. Returns
    ``{"device": "cuda" | "cpu", "reference": True, "triton": bool, "tcnn": bool,
    "auto": "tcnn" | "triton" | "reference"}``; ``triton`` on the CPU means Triton's
    interpreter (``TRITON_INTERPRET=1``: correct, for tests, far slower than the reference).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    usable = {}
    for name in ("reference", "triton", "tcnn"):
        try:
            resolve_backend(name, dev)
            usable[name] = True
        except BackendUnavailableError:
            usable[name] = False
    return {"device": dev.type, **usable, "auto": resolve_backend("auto", dev)}


def tcnn_level_layout(cfg: HashGridConfig) -> list[tuple[float, int, int, int]]:
    """tinycudann's grid of each level: ``(scale, resolution, offset, size)`` into its flat parameters.

    tcnn places a point at ``p = x * scale + 0.5`` with ``scale = base * b**l - 1``, has
    ``resolution = ceil(scale) + 1`` grid points per axis, and gives level ``l``
    ``min(T, next_multiple_of_8(resolution**3))`` rows of ``F`` features (dense when
    ``resolution**3`` rows fit, hashed otherwise).
    """
    out, offset = [], 0
    log2_b = math.log2(cfg.per_level_scale)
    for lvl in range(cfg.n_levels):
        scale = 2.0 ** (lvl * log2_b) * cfg.base_resolution - 1.0
        res = int(math.ceil(scale)) + 1
        size = min(cfg.table_size, -(-res**3 // 8) * 8)
        out.append((scale, res, offset, size))
        offset += size
    return out


def hash_encode_tcnn_reference(x: torch.Tensor, params: torch.Tensor, cfg: HashGridConfig) -> torch.Tensor:
    """Pure-PyTorch encoding in tinycudann's own layout (what the ``tcnn`` backend must compute).

    Args:
        x: (N, 3) float32 in ``[0, 1]^3``.
        params: flat float32 parameters of ``tcnn.Encoding`` (``sum(size_l) * F``), see :func:`tcnn_level_layout`.
    Returns:
        (N, L * F) float32, level-major.
    """
    x = x.float().clamp(0.0, 1.0)
    f = cfg.n_features_per_level
    outs = []
    for scale, res, offset, size in tcnn_level_layout(cfg):
        pos = x * scale + 0.5
        base = torch.floor(pos).to(torch.int64)
        frac = pos - base.to(pos.dtype)
        if res**3 <= size:  # dense: x fastest
            idx, w = _trilinear_corners(base, frac, lambda c, a, res=res: c * res**a, lambda i, j, k: i + j + k)
        else:  # tcnn hashes in uint32
            idx, w = _trilinear_corners(base, frac, lambda c, a: c * PRIMES[a],
                                        lambda i, j, k: (i ^ j ^ k) & 0xFFFFFFFF)
        table = params[offset * f:(offset + size) * f].view(size, f)
        outs.append((w[..., None] * table[idx % size]).sum(dim=1))
    return torch.cat(outs, dim=-1)


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
            }, dtype=torch.float32)  # fp32 output: finite differences of an fp16 SDF at eps ~ 1e-3 are noise
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
