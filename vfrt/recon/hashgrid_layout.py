"""Level layout of the multiresolution hash grid, shared by the reference encoding
(:mod:`vfrt.recon.hashgrid`) and the fused kernel (:mod:`vfrt.recon.hashgrid_triton`).

Kept apart so that neither encoding module imports the other for it (the reference module
imports the kernel module lazily, to pick a backend; the kernel module needs only this).
"""
from __future__ import annotations

from vfrt.recon.config import HashGridConfig

#: instant-ngp spatial-hash primes, one per axis (Müller et al. 2022, eq. 4)
PRIMES = (1, 2654435761, 805459861)


def level_metadata(cfg: HashGridConfig) -> tuple[list[int], list[bool]]:
    """Per-level resolution ``R_l`` and whether the level is dense (``(R_l+1)^3 <= T``)."""
    res = list(cfg.resolutions)
    dense = [(r + 1) ** 3 <= cfg.table_size for r in res]
    return res, dense
