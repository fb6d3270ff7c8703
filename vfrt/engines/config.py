"""Engine choices in one typed place: what a user may ask for (:class:`EngineConfig`) and the one
function that turns it into concrete choices for a device and a workload (:meth:`EngineConfig.resolve`).

Every caller - the Python API, ``vfrt run``, ``vfrt bench``, tests - goes through ``resolve``, so
they make the same decisions from the same information. ``None`` means "decide for me":

=================  ========================================================================
option             ``None`` resolves to
=================  ========================================================================
backend "auto"     "fast" (the exact-identity engine; "reference" is the original's op order)
dtype / vae_dtype  float16 on CUDA, float32 on the CPU
graphs             on for CUDA (the step is captured in CUDA graphs)
channels_last      on for CUDA (faster at every K, docs/PERF.md run 3)
compile            on for CUDA with Triton when the workload reaches ``COMPILE_MIN_VIEWS``
attention          "auto" (cuDNN allowed) from ``CUDNN_ATTENTION_MIN_VIEWS`` views, else "flash"
fused_geglu        on for fp16/bf16 where Triton kernels run (docs/PERF.md run 6)
triton_conv        on for fp16/bf16 channels-last uncompiled steps where Triton runs (run 7)
=================  ========================================================================

The workload is the number of views a process expects to generate. Compiling costs tens of
seconds once per process and makes every step faster, so it pays only over enough views; cuDNN's
attention plans each new shape once and is then slightly faster. The break-even counts come from
docs/PERF.md ("Cold start", run 6). An unknown workload (``None``) counts as a short one: the
:class:`~vfrt.runtime.pipeline.Pipeline` re-resolves as its generated views add up, so a long
Python session compiles once it has shown it is long.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union, get_args

import torch

from vfrt.hardware import resolve_device, triton_importable, triton_runs_on

Backend = Literal["auto", "reference", "fast"]
Precision = Literal["float16", "bfloat16", "float32"]
Attention = Literal["auto", "flash"]
EngineSearch = Literal["auto", "off"]

#: generated views from which compiling the UNet pays for its one-off cost (docs/PERF.md, "Cold start")
COMPILE_MIN_VIEWS = 100
#: generated views from which cuDNN attention's per-shape planning pays off (docs/PERF.md, run 6)
CUDNN_ATTENTION_MIN_VIEWS = 180

TORCH_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16,
                                        "float32": torch.float32}


def compile_pays_off(device: torch.device, workload: int) -> bool:
    """Compile the UNet for a process that generates ``workload`` views? (CUDA with Triton, enough views.)"""
    return device.type == "cuda" and triton_importable() and workload >= COMPILE_MIN_VIEWS


def cudnn_attention_pays_off(workload: int) -> bool:
    """Let SDPA use cuDNN (fast steps, a plan per new shape) for ``workload`` views?"""
    return workload >= CUDNN_ATTENTION_MIN_VIEWS


class EngineConfigError(ValueError):
    """An engine option is unknown, malformed, or impossible on the chosen device."""


def _check_literal(name: str, value, allowed) -> None:
    choices = get_args(allowed)
    if value not in choices:
        raise EngineConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


@dataclass(frozen=True)
class EngineConfig:
    """What the user asks of the engine; ``None`` fields are decided by :meth:`resolve`.

    Attributes:
        backend: "auto", "reference" (fp32, original op order) or "fast" (exact identities).
        device: "auto", "cpu", "cuda" or "cuda:N".
        dtype: UNet / CLIP compute precision of the fast backend.
        vae_dtype: VAE precision of the fast backend.
        graphs: capture each denoising step in a CUDA graph.
        channels_last: NHWC activations in the UNet.
        compile: TorchInductor-compile the UNet (inside the graphs).
        attention: "auto" (PyTorch's SDPA choice, cuDNN on Hopper) or "flash" (never cuDNN).
        fused_geglu: one fused Triton GEMM per feed-forward GEGLU projection.
        triton_conv: split-reduction Triton kernel for the 8x8 / 4x4 3x3 convolutions.
        expected_views: views this process expects to generate (None: unknown, counted as it goes).
        engines: built engines (``vfrt build-engines``) for a pipeline loaded from a checkpoint: "auto" uses
            matching ones from the cache and falls back to PyTorch with a one-line warning when they do not
            fit; "off" never uses them; a path (str or Path) names an engine directory that must fit.
            Decided by :func:`vfrt.engines.engine_cache.select_engines` (one policy for API and CLI).
    """

    backend: Backend = "auto"
    device: str = "auto"
    dtype: Precision | None = None
    vae_dtype: Precision | None = None
    graphs: bool | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    attention: Attention | None = None
    fused_geglu: bool | None = None
    triton_conv: bool | None = None
    expected_views: int | None = None
    engines: Union[EngineSearch, Path] = "auto"

    def __post_init__(self):
        _check_literal("backend", self.backend, Backend)
        if isinstance(self.engines, (str, os.PathLike)) and str(self.engines) not in get_args(EngineSearch):
            object.__setattr__(self, "engines", Path(self.engines).expanduser())
        elif not isinstance(self.engines, str):
            raise EngineConfigError(f"engines must be 'auto', 'off' or an engine directory, got {self.engines!r}")
        if isinstance(self.engines, Path) and self.backend == "reference":
            raise EngineConfigError("built engines run the fast backend; backend='reference' runs in PyTorch")
        for name in ("dtype", "vae_dtype"):
            if getattr(self, name) is not None:
                _check_literal(name, getattr(self, name), Precision)
        if self.attention is not None:
            _check_literal("attention", self.attention, Attention)
        for name in ("graphs", "channels_last", "compile", "fused_geglu", "triton_conv"):
            if getattr(self, name) not in (None, True, False):
                raise EngineConfigError(f"{name} must be True, False or None (auto), got {getattr(self, name)!r}")
        if self.expected_views is not None and (not isinstance(self.expected_views, int) or self.expected_views < 0):
            raise EngineConfigError(f"expected_views must be a non-negative integer, got {self.expected_views!r}")

    def resolve(self, views_so_far: int = 0) -> "ResolvedEngineConfig":
        """Concrete choices for this machine; ``views_so_far``: views already generated by the process.

        Raises:
            DeviceError: the device is malformed or absent (before anything is loaded).
            EngineConfigError: an explicit choice the device cannot honour (e.g. fp16 on the CPU).
        """
        device = resolve_device(self.device)
        cuda = device.type == "cuda"
        backend = "fast" if self.backend == "auto" else self.backend
        if backend == "reference":
            for name in ("dtype", "vae_dtype"):
                if getattr(self, name) not in (None, "float32"):
                    raise EngineConfigError(f"the reference backend runs in float32; {name}={getattr(self, name)!r} "
                                            "needs backend='fast'")
            return ResolvedEngineConfig(backend="reference", device=device, dtype="float32", vae_dtype="float32",
                                        graphs=False, channels_last=False, compile=False, attention="auto",
                                        fused_geglu=False, triton_conv=False)
        default_precision = "float16" if cuda else "float32"
        dtype = self.dtype or default_precision
        vae_dtype = self.vae_dtype or default_precision
        if not cuda and (dtype != "float32" or vae_dtype != "float32"):
            raise EngineConfigError("float16/bfloat16 need a CUDA device; use dtype='float32' on the CPU")
        graphs = cuda if self.graphs is None else self.graphs
        if graphs and not cuda:
            raise EngineConfigError("CUDA graphs need a CUDA device")
        channels_last = cuda if self.channels_last is None else self.channels_last
        workload = max(self.expected_views or 0, views_so_far)
        compile_unet = compile_pays_off(device, workload) if self.compile is None else self.compile
        attention = self.attention or ("auto" if cudnn_attention_pays_off(workload) else "flash")
        half = dtype in ("float16", "bfloat16")
        triton_here = triton_runs_on(device)
        fused_geglu = (cuda and half and triton_here) if self.fused_geglu is None else self.fused_geglu
        if fused_geglu and not triton_here:
            raise EngineConfigError("fused_geglu needs Triton and a CUDA device (or TRITON_INTERPRET=1 on the CPU)")
        triton_conv = (cuda and half and triton_here and channels_last and not compile_unet) \
            if self.triton_conv is None else self.triton_conv
        if triton_conv and not (triton_here and channels_last):
            raise EngineConfigError("triton_conv needs Triton, channels_last=True and a CUDA device "
                                    "(or TRITON_INTERPRET=1 on the CPU)")
        return ResolvedEngineConfig(backend=backend, device=device, dtype=dtype, vae_dtype=vae_dtype, graphs=graphs,
                                    channels_last=channels_last, compile=compile_unet, attention=attention,
                                    fused_geglu=fused_geglu, triton_conv=triton_conv)


@dataclass(frozen=True)
class ResolvedEngineConfig:
    """Concrete engine choices (every field decided); made only by :meth:`EngineConfig.resolve`."""

    backend: Literal["reference", "fast"]
    device: torch.device
    dtype: Precision
    vae_dtype: Precision
    graphs: bool
    channels_last: bool
    compile: bool
    attention: Attention
    fused_geglu: bool
    triton_conv: bool

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    @property
    def torch_vae_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.vae_dtype]

    def summary(self) -> dict:
        """JSON-friendly form (for run.json, benchmarks and `vfrt doctor`)."""
        return {"backend": self.backend, "device": str(self.device), "dtype": self.dtype, "vae_dtype": self.vae_dtype,
                "graphs": self.graphs, "channels_last": self.channels_last, "compile": self.compile,
                "attention": self.attention, "fused_geglu": self.fused_geglu, "triton_conv": self.triton_conv}
