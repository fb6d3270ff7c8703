"""Full-size ONNX export of the six engine networks: file sizes, export time, checks, and error vs PyTorch fp32.

For each precision (fp16 first, then fp32 while the time budget lasts) every network of a full-size
Zero123 with random weights is exported (``vfrt.export.onnx.export_network``: exporter, spec-stamped
I/O, external data over 2 GiB, ``onnx.checker`` + strict shape inference), then run once in ONNX
Runtime on the CPU at the spec's opt sizes (13 rows for the UNet step) on fresh random inputs and
compared with the PyTorch network in fp32 (TF32 off) and in the graph's own precision. Where
``onnxruntime-gpu`` is installed it also times the fp16 UNet step on the CUDA provider with CUDA
graphs against the eager PyTorch step. Prints a table, writes JSON (also after every network, so a
run stopped by a time limit keeps what it measured); exits 1 if any network failed.

    timeout 235 python benchmarks/bench_export.py --budget-s 160 --out export_h200.json   # GPU, full size
    python benchmarks/bench_export.py --tiny --device cpu --out tiny.json # CPU smoke run (tiny model)
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger("bench_export")


def make_model(tiny: bool):
    from vfrt.models import Zero123, tiny_config
    from vfrt.models.testing import init_nontrivial_
    torch.manual_seed(0)
    if not tiny:
        return Zero123.from_config(None).eval()        # default init, as benchmarks/bench_orbit.py
    model = Zero123.from_config(tiny_config(64)).eval()
    init_nontrivial_(model, torch.Generator().manual_seed(0))
    return model


def _outputs(module, spec, inputs, device) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        result = module(**{k: v.to(device) for k, v in inputs.items()})
    values = (result,) if isinstance(result, torch.Tensor) else result
    return {name: v.float().cpu() for name, v in zip(spec.output_names, values)}


def _errors(got: dict, want: dict) -> float:
    from vfrt.export.onnx import scaled_error
    return max(scaled_error(got[k], want[k]) for k in want)


def measure_network(name, networks, reference, specs, out_dir, config, device, seed) -> dict:
    """Export one network, check it, run it once in ONNX Runtime (CPU) and compare with PyTorch."""
    from vfrt.engines.executors.onnxruntime import OnnxRuntimeExecutor
    from vfrt.export.onnx import export_network
    spec, module = specs[name], networks.module(name)
    row = {"network": name, "sizes": spec.sizes_at("opt")}
    art = export_network(module, spec, out_dir, config, device=device)
    row.update(files={f: (out_dir / f).stat().st_size for f in art.files}, weight_bytes=art.bytes,
               export_s=art.export_seconds, checks="ok", precision=art.precision, exporter=art.exporter,
               tolerance=art.tolerance)
    inputs = spec.sample_inputs(spec.sizes_at("opt"), generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    with OnnxRuntimeExecutor(spec, out_dir / art.model, "cpu") as session:
        row["ort_load_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        got = {k: v.float() for k, v in session.run(inputs).items()}
        row["ort_cpu_run_s"] = round(time.perf_counter() - start, 2)
    row["error_vs_torch_fp32"] = _errors(got, _outputs(reference.module(name), spec, inputs, device))
    row["error_vs_torch_same_precision"] = _errors(got, _outputs(module, spec, inputs, device))
    row["within_tolerance"] = row["error_vs_torch_same_precision"] <= art.tolerance
    return row


def time_onnxruntime_cuda(networks, spec, model_path, repeats: int = 20) -> dict | None:
    """fp16 UNet step at opt rows: ONNX Runtime CUDA provider + CUDA graphs vs eager PyTorch (median ms)."""
    import onnxruntime
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return None
    from vfrt.engines.executors import EagerExecutor
    from vfrt.engines.executors.onnxruntime import OnnxRuntimeExecutor
    inputs = spec.sample_inputs(device="cuda", generator=torch.Generator().manual_seed(5))
    out = {}
    for label, ex in (("onnxruntime_cuda_graphs", OnnxRuntimeExecutor(spec, model_path, "cuda")),
                      ("torch_eager", EagerExecutor(spec, networks.unet_step))):
        with ex:
            for _ in range(3):
                ex.run(inputs)
            times = []
            for _ in range(repeats):
                torch.cuda.synchronize()
                start = time.perf_counter()
                ex.run(inputs)
                torch.cuda.synchronize()
                times.append((time.perf_counter() - start) * 1e3)
        out[label + "_ms"] = round(statistics.median(times), 3)
    return out


def run(args, save=lambda res: None) -> dict:
    """The measurements; ``save(res)`` is called after every network (partial results survive a time limit)."""
    from vfrt.engines.specs import NETWORK_NAMES, build_networks
    from vfrt.export.onnx import OnnxExportConfig, OnnxExportError
    started = time.perf_counter()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    names = tuple(args.networks.split(",")) if args.networks else NETWORK_NAMES
    unknown = [n for n in names if n not in NETWORK_NAMES]
    if unknown:
        raise SystemExit(f"unknown networks {unknown}; choose from {', '.join(NETWORK_NAMES)}")
    model = make_model(args.tiny)
    reference = build_networks(model, device, torch.float32, torch.float32, channels_last=False)
    config = OnnxExportConfig(exporter=args.exporter)
    import onnx
    import onnxruntime
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "model": "tiny" if args.tiny else "full-size random", "torch": torch.__version__, "onnx": onnx.__version__,
           "onnxruntime": onnxruntime.__version__, "ort_providers": onnxruntime.get_available_providers(),
           "exporter": config.resolved_exporter(), "opset": config.opset, "budget_s": args.budget_s,
           "precisions": {}, "command": " ".join(["python", *sys.argv])}
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="vfrt-export-"))
    for precision in args.precisions.split(","):
        spent = time.perf_counter() - started
        if res["precisions"] and spent > args.budget_s / 2:
            res["precisions"][precision] = {"skipped": f"time budget ({spent:.0f} s of {args.budget_s} s spent)"}
            continue
        dtype = getattr(torch, precision)
        networks = reference if dtype == torch.float32 else build_networks(model, device, dtype, dtype,
                                                                             channels_last=False)
        specs = networks.specs()
        out_dir = work / precision
        rows = []
        for name in names:
            log.info("%s %s ...", precision, name)
            try:
                rows.append(measure_network(name, networks, reference, specs, out_dir, config, device, args.seed))
            except OnnxExportError as exc:
                rows.append({"network": name, "error": str(exc)})
            log.info("%s", rows[-1])
            res["precisions"][precision] = {"networks": rows, "partial": True}
            save(res)
        entry = {"networks": rows, "seconds": round(time.perf_counter() - started - spent, 1)}
        if device.type == "cuda" and dtype == torch.float16 and "unet_step" in names and (out_dir / "unet_step.onnx").exists():
            entry["unet_step_cuda"] = time_onnxruntime_cuda(networks, specs["unet_step"], out_dir / "unet_step.onnx")
        res["precisions"][precision] = entry
        if not args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)
        del networks
    if not args.keep and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    res["total_s"] = round(time.perf_counter() - started, 1)
    return res


def format_table(res: dict) -> str:
    lines = [f"ONNX export on {res['device']} ({res['model']}, {res['exporter']} exporter, opset {res['opset']}, "
             f"torch {res['torch']}, onnxruntime {res['onnxruntime']})",
             f"{'precision':9} {'network':15} {'MB':>9} {'export s':>9} {'checks':>6} {'ORT cpu s':>9} "
             f"{'err vs fp32':>11} {'err vs same':>11}"]
    for precision, entry in res["precisions"].items():
        if "skipped" in entry:
            lines.append(f"{precision:9} skipped: {entry['skipped']}")
            continue
        for row in entry["networks"]:
            if "error" in row:
                lines.append(f"{precision:9} {row['network']:15} FAILED: {row['error'][:120]}")
                continue
            mb = sum(row["files"].values()) / 1e6
            lines.append(f"{precision:9} {row['network']:15} {mb:9.1f} {row['export_s']:9.1f} {row['checks']:>6} "
                         f"{row['ort_cpu_run_s']:9.2f} {row['error_vs_torch_fp32']:11.2e} "
                         f"{row['error_vs_torch_same_precision']:11.2e}")
        if entry.get("unet_step_cuda"):
            lines.append(f"{precision:9} unet_step on the CUDA provider: {entry['unet_step_cuda']}")
    lines.append("errors: max |ONNX Runtime - PyTorch| / max(1, max |PyTorch|) at the opt sizes; "
                 f"total {res['total_s']} s")
    return "\n".join(lines)


def failed(res: dict) -> bool:
    return any("error" in row or not row["within_tolerance"]
               for entry in res["precisions"].values() for row in entry.get("networks", []))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="export.json", help="JSON results file")
    ap.add_argument("--device", default="cuda", help="where the networks are traced and PyTorch runs (cuda, cpu)")
    ap.add_argument("--precisions", default="float16,float32", help="graph precisions, in order")
    ap.add_argument("--networks", default="", help="comma-separated subset (default: all six)")
    ap.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"])
    ap.add_argument("--tiny", action="store_true", help="the tiny test model instead of full size")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="start a further precision only while less than half of this is spent")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--work-dir", default="", help="export here (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the exported files")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda needs a CUDA GPU; use --device cpu")
    res = run(args, save=lambda partial: Path(args.out).write_text(json.dumps(partial, indent=2)))
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(format_table(res))
    return 1 if failed(res) else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sys.exit(main())
