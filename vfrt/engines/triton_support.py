"""Optional Triton for the engines' kernels: the import, the CPU interpreter switch, where kernels can run.

Triton is the `triton` extra. ``TRITON_INTERPRET=1`` (set before Triton is imported, as tests/conftest.py
does on machines without a GPU) runs the kernels on the CPU through Triton's interpreter.
"""
from __future__ import annotations

from vfrt.hardware import triton_interpreted, triton_runs_on

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is missing
    triton = None
    tl = None

#: read once at import, as Triton itself does
INTERPRET = triton_interpreted()
triton_kernels_available = triton_runs_on   # where the engines' kernels can run (CUDA, or the CPU interpreted)

