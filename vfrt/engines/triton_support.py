"""Optional Triton for the engines' kernels: the import, the CPU interpreter switch, where kernels can run,
and the grouped tile order the GEMM-shaped kernels share.

Triton is the `triton` extra. ``TRITON_INTERPRET=1`` (set before Triton is imported, as tests/conftest.py
does on machines without a GPU) runs the kernels on the CPU through Triton's interpreter.
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is missing
    triton = None
    tl = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def triton_kernels_available(device: torch.device | str) -> bool:
    """True where the engines' Triton kernels can run: CUDA with Triton, or the CPU under the interpreter."""
    if triton is None:
        return False
    return torch.device(device).type == "cuda" or INTERPRET


if triton is not None:
    @triton.jit
    def grouped_tile(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
        """Row indices (BM,) and column indices (BN,) of program ``pid``'s output tile.

        Tiles of the (cdiv(M, BM), cdiv(N, BN)) grid are visited GROUP_M row tiles at a time, so
        neighbouring programs share columns of the weight in L2. Indices may run past M and N: mask them.
        """
        num_pid_m = tl.cdiv(M, BM)
        num_pid_n = tl.cdiv(N, BN)
        group = GROUP_M * num_pid_n
        first_m = (pid // group) * GROUP_M
        size_m = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % size_m
        pid_n = (pid % group) // size_m
        return pid_m * BM + tl.arange(0, BM), pid_n * BN + tl.arange(0, BN)
