"""``vfrt doctor``: what this installation can do - versions, GPU, optional extras, weights.

Each check is a small function returning :class:`Row` s; :data:`CHECKS` lists them in print
order, so a later feature adds its row by appending one function. :func:`run_checks` runs
them so that one failing check becomes an ``error`` row instead of stopping the report.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import platform
import shutil
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Literal

import click

Status = Literal["ok", "missing", "warning", "error"]


@dataclass(frozen=True)
class Row:
    """One line of the report: what was checked, how it stands, and the detail a user acts on."""

    name: str
    status: Status
    detail: str


Check = Callable[[], "list[Row]"]


@lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def module_version(module: str) -> str | None:
    """Version of the installed distribution providing top-level ``module``; None when absent.

    Looks the module up without importing it (importing ray or gradio takes seconds)."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    for dist in _distributions().get(module, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "installed"


def _extra(name: str, modules: tuple[str, ...], hint: str, any_of: bool = False) -> Row:
    """A row for an optional extra: ok when all (or, with ``any_of``, one) of ``modules`` are there."""
    found = {m: module_version(m) for m in modules}
    present = [f"{m} {v}" for m, v in found.items() if v is not None]
    missing = [m for m, v in found.items() if v is None]
    ok = bool(present) if any_of else not missing
    if ok:
        return Row(name, "ok", ", ".join(present))
    return Row(name, "missing", f"{' or '.join(missing) if any_of else ', '.join(missing)} not installed ({hint})")


# ------------------------------------------------------------------------------------ the checks
def check_python() -> list[Row]:
    from vfrt import __version__
    return [Row("python", "ok", f"{platform.python_version()} ({sys.executable})"),
            Row("vfrt", "ok", __version__)]


def check_torch() -> list[Row]:
    import torch
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    return [Row("torch", "ok", f"{torch.__version__} ({build})")]


def check_gpu() -> list[Row]:
    import torch
    if not torch.cuda.is_available():
        return [Row("gpu", "missing", "no GPU: PyTorch sees no CUDA device (the reference backend runs on the CPU, slowly)")]
    rows = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        rows.append(Row(f"gpu {i}", "ok", f"{props.name}, compute capability {props.major}.{props.minor} "
                                          f"(sm_{props.major}{props.minor}), {props.total_memory / 2**30:.0f} GiB"))
    return rows


def check_triton() -> list[Row]:
    try:
        import triton
    except Exception as exc:     # ImportError, or a broken install raising anything
        return [Row("triton", "missing", f"not importable ({type(exc).__name__}: {exc}); the fast backend's "
                                         "fused kernels need it (pip install triton)")]
    return [Row("triton", "ok", triton.__version__)]


def check_outputs() -> list[Row]:
    """The base install's image and video writers (a broken install shows here)."""
    row = _extra("outputs", ("cv2", "imageio", "imageio_ffmpeg"), "pip install vfrt again: they are base dependencies")
    if row.status != "ok":
        return [row]
    import imageio_ffmpeg
    return [dataclasses.replace(row, detail=f"{row.detail}; ffmpeg {imageio_ffmpeg.get_ffmpeg_exe()}")]


def check_extras() -> list[Row]:
    return [
        _extra("extra: recon", ("trimesh", "skimage", "scipy"), "pip install 'vfrt[recon]'"),
        _extra("extra: onnx", ("onnx", "onnxruntime"), "pip install 'vfrt[onnx]'"),
        _extra("extra: tensorrt", ("tensorrt", "tensorrt_rtx"), "pip install 'vfrt[tensorrt]'", any_of=True),
        _extra("extra: ray", ("ray",), "pip install 'vfrt[ray]' (vfrt run --ray)"),
        _extra("extra: serve", ("gradio", "fastapi", "uvicorn"), "pip install 'vfrt[serve]'"),
    ]


def check_segmentation() -> list[Row]:
    from vfrt.runtime.segment import auto_method, rembg_status
    usable, why = rembg_status()
    rembg_row = Row("rembg", "ok" if usable else "missing",
                    f"{module_version('rembg')}, model {why.removeprefix('rembg with ')}" if usable else why)
    auto = auto_method()
    return [rembg_row, Row("segmentation", "ok", f"--segment auto uses {auto} for photos without alpha"
                                                 + ("" if auto == "rembg" else " (rembg would be better)"))]


def check_checkpoint() -> list[Row]:
    from vfrt.cli.common import checkpoint_candidates, find_checkpoint
    found = find_checkpoint()
    if found is None:
        places = ", ".join(str(p) for p in checkpoint_candidates())
        return [Row("checkpoint", "missing", f"no Zero123 weights found (looked at {places}); `vfrt run` says "
                                             "where to get them")]
    size = sum(f.stat().st_size for f in found.rglob("*") if f.is_file()) if found.is_dir() else found.stat().st_size
    return [Row("checkpoint", "ok", f"{found} ({size / 1e9:.2f} GB)")]


def check_recon_encoding() -> list[Row]:
    """Which hash-grid encoding `vfrt recon` uses here (tiny-cuda-nn only when it really imports)."""
    import importlib.util
    if any(importlib.util.find_spec(m) is None for m in ("trimesh", "skimage", "scipy")):
        return [Row("recon encoding", "missing", "the recon extra is not installed (pip install 'vfrt[recon]')")]
    from vfrt.recon.hashgrid import encoding_backends
    b = encoding_backends()
    where = "Triton's CPU interpreter" if b["device"] == "cpu" and b["triton"] else b["device"]
    detail = f"auto uses {b['auto']} on {where}; tiny-cuda-nn " + ("importable" if b["tcnn"] else "not importable")
    return [Row("recon encoding", "ok", detail)]


def _onnxruntime_backend() -> Row:
    """Can `vfrt build-engines --backend onnxruntime` build here, and on which devices do its engines run?"""
    import torch

    from vfrt.engines.executors.onnxruntime import import_onnxruntime
    from vfrt.export.onnx import OnnxExportError, tools
    try:
        found = tools()
    except OnnxExportError as exc:
        return Row("backend: onnxruntime", "missing", str(exc))
    cuda = "CUDAExecutionProvider" in import_onnxruntime().get_available_providers()
    gpu_note = "" if cuda or not torch.cuda.is_available() else "; on this GPU with pip install 'vfrt[onnx-gpu]'"
    return Row("backend: onnxruntime", "ok", f"onnxruntime {found['onnxruntime']}, onnx {found['onnx']} "
                                             f"({found['exporter']} exporter): builds here, runs on the CPU"
                                             f"{' and CUDA GPUs' if cuda else ''}{gpu_note}")


def _tensorrt_backend() -> Row:
    """Can `vfrt build-engines --backend tensorrt` build here, and can its plans run on this GPU?"""
    import torch

    from vfrt.engines.executors.tensorrt import (TensorRTUnavailableError, capability_name, import_tensorrt,
                                                 rtx_targets)
    try:
        trt = import_tensorrt()
    except TensorRTUnavailableError as exc:
        return Row("backend: tensorrt", "missing", str(exc))
    name, targets = f"{trt.__name__} {trt.__version__}", rtx_targets(trt)
    here = capability_name(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None
    if here is None and targets:
        return Row("backend: tensorrt", "ok", f"{name}: builds plans without a GPU (targets compute capability "
                                              f"{', '.join(targets)}); they cannot run here (PyTorch sees no GPU)")
    if here is None:
        return Row("backend: tensorrt", "warning", f"{name} builds on the GPU its plans run on; PyTorch sees none")
    if targets and here not in targets:
        return Row("backend: tensorrt", "warning", f"{name} cannot target this GPU (compute capability {here}): its "
                                                   "plans neither build for it nor run on it; TensorRT does "
                                                   "(pip install 'vfrt[tensorrt]')")
    return Row("backend: tensorrt", "ok", f"{name}: builds and runs plans on this GPU (compute capability {here})")


def check_engines() -> list[Row]:
    """Built engines: can this machine build (and run) each backend's engines, which engine directories the
    cache holds and whether each runs here, and whether the checkpoint `vfrt run` would use has engines."""
    import torch

    from vfrt.cli.common import find_checkpoint
    from vfrt.engines.engine_cache import cached_manifests
    from vfrt.engines.engine_dir import EngineError, check_artifacts, compatibility_problems, engines_root
    from vfrt.engines.toolchain import describe_compiler, loaded_libstdcxx
    from vfrt.export.aoti import inductor_compiler
    rows = []
    tc = describe_compiler(inductor_compiler())
    if module_version("torch._inductor") is None or not shutil.which(tc.cxx):
        rows.append(Row("backend: aoti", "missing", f"needs torch's Inductor and a C++ compiler ({tc.cxx} not found)"))
    else:
        loaded = loaded_libstdcxx()
        same = tc.libstdcxx is not None and tc.libstdcxx == loaded
        rows.append(Row("backend: aoti", "ok" if same else "warning",
                        f"torch {torch.__version__}, {tc.cxx} {tc.version}" + ("" if same else
                        f"; its libstdc++ ({tc.libstdcxx}) is not this process's ({loaded}): packages may "
                        "crash on load; vfrt probes them in a child first and reports the LD_PRELOAD / CXX fix")))
    rows += [_onnxruntime_backend(), _tensorrt_backend()]
    found = cached_manifests()
    if not found:
        rows.append(Row("engines", "missing", f"none built in {engines_root()} (`vfrt build-engines -c CKPT` builds "
                                              "them; `vfrt run` then starts in seconds)"))
    usable_for = set()
    for directory, manifest in found:
        if isinstance(manifest, EngineError):
            rows.append(Row(f"engines: {directory.name}", "error", str(manifest)))
            continue
        what = (f"{manifest.backend} {manifest.precision} {manifest.platform.device} "
                f"{manifest.platform.gpu_name or ''}".rstrip() + f", from {manifest.checkpoint.path}")
        device = torch.device(manifest.platform.device)
        problems = compatibility_problems(manifest, device) if device.type == "cpu" or torch.cuda.is_available() \
            else ["built for a GPU, PyTorch sees none"]
        try:
            check_artifacts(manifest, directory)
        except EngineError as exc:
            problems.append(str(exc).split("; rebuild with")[0])
        if problems:
            rows.append(Row(f"engines: {directory.name}", "warning",
                            f"{what}: not usable here ({'; '.join(problems)}); {manifest.rebuild_command(directory)}"))
        else:
            usable_for.add(manifest.checkpoint.path)
            rows.append(Row(f"engines: {directory.name}", "ok", f"{what}, built {manifest.built_at}"))
    ckpt = find_checkpoint()
    if ckpt is not None:
        has = str(ckpt.resolve()) in usable_for
        rows.append(Row("engines for checkpoint", "ok" if has else "missing",
                        f"{ckpt}: " + ("`vfrt run` uses built engines" if has else
                                       f"none usable here; build them: vfrt build-engines -c {ckpt}")))
    return rows


#: the report, in print order; add a feature's row by appending its check
CHECKS: list[Check] = [check_python, check_torch, check_gpu, check_triton, check_outputs, check_extras,
                       check_segmentation, check_recon_encoding, check_checkpoint, check_engines]


def run_checks(checks: list[Check] | None = None) -> list[Row]:
    """Every check's rows (default: :data:`CHECKS`); a check that raises becomes one ``error`` row."""
    rows = []
    for check in CHECKS if checks is None else checks:
        try:
            rows.extend(check())
        except Exception as exc:
            name = check.__name__.removeprefix("check_")
            rows.append(Row(name, "error", f"the check failed: {type(exc).__name__}: {exc}"))
    return rows


_STYLE = {"ok": "green", "missing": "yellow", "warning": "yellow", "error": "red"}


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON (name, status, detail).")
def doctor(as_json: bool) -> None:
    """Report Python / torch / CUDA versions, the GPU, Triton, optional extras, segmentation, weights and built engines."""
    rows = run_checks()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    table = Table(title="vfrt doctor")
    for column in ("check", "status", "detail"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(escape(r.name), f"[{_STYLE[r.status]}]{r.status}[/]", escape(r.detail))
    Console().print(table)
