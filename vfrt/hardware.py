"""What this machine can run: device resolution, Triton availability, out-of-memory detection.

One place for the questions every layer asks (runtime, engines, recon, CLI), so that a device
string is validated the same way everywhere and before anything heavy (weights) is loaded.
Imports nothing else of vfrt.
"""
from __future__ import annotations

import importlib.util
import os
import re

import torch

#: what ``--device`` / ``device=`` accept everywhere
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

#: the exception type torch raises when device memory runs out (torch < 2.5 only has the CUDA one)
TorchOutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class DeviceError(ValueError):
    """A requested device is malformed or not present on this machine."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None -> cuda when PyTorch sees a GPU, else cpu; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` checked.

    Raises:
        DeviceError: with a message that names the accepted values, or why the device is unusable.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = "auto" if device is None else str(device).strip().lower()
    if not _DEVICE_RE.match(name):
        raise DeviceError(f"unknown device {device!r}: use {DEVICE_CHOICES}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} was requested, but PyTorch sees no CUDA GPU on this machine "
                              f"(torch {torch.__version__}); use the cpu device")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"device {name!r} was requested, but this machine has {count} CUDA GPU(s) "
                              f"(cuda:0..cuda:{count - 1})")
    return dev


def cuda_capability(device: torch.device | str) -> tuple[int, int] | None:
    """(major, minor) compute capability of a CUDA device, None for the CPU."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(dev))


def device_name(device: torch.device | str) -> str:
    """Human-readable name: the GPU's marketing name, or ``"cpu"``."""
    dev = torch.device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def triton_importable() -> bool:
    """True when the ``triton`` package is installed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """True when Triton kernels run on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_runs_on(device: torch.device | str) -> bool:
    """True where Triton kernels can run: a CUDA device with Triton installed, or the CPU under the interpreter."""
    if not triton_importable():
        return False
    return torch.device(device).type == "cuda" or triton_interpreted()


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device out-of-memory error (the typed one, or an older RuntimeError saying so)."""
    return isinstance(exc, TorchOutOfMemoryError) or (isinstance(exc, RuntimeError)
                                                      and "out of memory" in str(exc).lower())
