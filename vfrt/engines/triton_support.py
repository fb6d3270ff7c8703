"""Optional Triton for the engines' kernels: the import, the CPU interpreter switch, where kernels can run.

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

