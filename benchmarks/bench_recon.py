"""Benchmark vfrt.recon: hash-grid encoding backends and orbit -> mesh wall time + quality.

Usage::

    python benchmarks/bench_recon.py --out bench_recon.json                 # everything
    python benchmarks/bench_recon.py --skip-recon --points 1048576          # encoding only

Hash grid: forward and forward+backward (table gradient) on ``--points`` random points in
``[0,1]^3`` with the default 16-level, 2^19-entry grid; medians of ``--repeats`` timed runs
(CUDA events via ``triton.testing.do_bench`` when Triton is present, else host clock after
synchronisation), rotating among 4 input sets so the timing is not of a cached input.

Recon: renders ``--views`` views (``--size`` px, elevation 30, SPEC §8 cameras) of each
``--shapes`` demo mesh with the project's rasteriser, trains NeuS with ``--preset`` and
reports train / extraction seconds, Chamfer distance and F-score (metrics.py definitions).
Prints a table and writes JSON to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vfrt.recon.config import HashGridConfig, ReconConfig  # noqa: E402
from vfrt.recon.hashgrid import hash_encode_reference, init_table, tcnn_available, triton_available  # noqa: E402

log = logging.getLogger("bench_recon")


def _median_ms(fn, repeats: int, device: torch.device) -> float:
    if device.type == "cuda" and triton_available():
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=50, rep=max(100, repeats * 5), return_mode="median"))
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def bench_hashgrid(n_points: int, repeats: int, device: torch.device) -> list[dict]:
    cfg = HashGridConfig()
    table = init_table(cfg).to(device).normal_().requires_grad_()
    xs = [torch.rand(n_points, 3, device=device) for _ in range(4)]
    g = torch.randn(n_points, cfg.output_dim, device=device)
    backends = {"reference": lambda x: hash_encode_reference(x, table, cfg)}
    if device.type == "cuda" and triton_available():
        from vfrt.recon.hashgrid_triton import hash_encode_triton

        backends["triton"] = lambda x: hash_encode_triton(x, table, cfg)
    tcnn_enc = None
    if device.type == "cuda" and tcnn_available():
        from vfrt.recon.hashgrid import HashGridEncoding

        tcnn_enc = HashGridEncoding(cfg, "tcnn").to(device)
        backends["tcnn"] = lambda x: tcnn_enc(x)
    rows = []
    ref_out = hash_encode_reference(xs[0], table, cfg).detach()
    for name, enc in backends.items():
        it = {"i": 0}

        def nxt():
            it["i"] = (it["i"] + 1) % len(xs)
            return xs[it["i"]]

        def fwd():
            with torch.no_grad():
                enc(nxt())

        def fwd_bwd():
            table.grad = None
            out = enc(nxt())
            out.backward(g)

        err = None
        if name == "triton":
            out = enc(xs[0]).detach()
            err = float((out - ref_out).norm() / ref_out.norm())
        rows.append({"backend": name, "points": n_points, "fwd_ms": _median_ms(fwd, repeats, device),
                     "fwd_bwd_ms": _median_ms(fwd_bwd, repeats, device), "rel_err_vs_reference": err})
        log.info("hashgrid %s: %s", name, rows[-1])
    return rows


def bench_recon(shapes: list[str], views: int, size: int, preset: str, steps: int | None, device: torch.device,
                workdir: Path) -> list[dict]:
    from vfrt.recon.pipeline import reconstruct
    from vfrt.recon.render_mesh import demo_mesh, write_orbit

    rows = []
    for shape in shapes:
        orbit = write_orbit(workdir / f"orbit_{shape}", demo_mesh(shape), views, size, 30.0, device=str(device))
        cfg = ReconConfig.from_preset(preset, steps=steps, device=device.type, turntable_frames=12)
        t = time.perf_counter()
        t0 = time.perf_counter()

        def progress(step: int, loss: float) -> None:
            if step % 250 == 0 or step == cfg.steps:
                log.info("%s step %d loss %.4f  %.1f s", shape, step, loss, time.perf_counter() - t0)

        res = reconstruct(orbit, workdir / f"recon_{shape}", cfg, reference_mesh=orbit / "reference.ply",
                          progress=progress)
        total = time.perf_counter() - t
        m = res.metrics
        rows.append({"shape": shape, "views": views, "size": size, "preset": preset, "steps": cfg.steps,
                     "backend": res.backend, "train_s": res.timings["train"], "extract_s": res.timings["extract"],
                     "train_plus_extract_s": res.timings["train_plus_extract"], "total_s": total,
                     "faces": res.n_faces, "chamfer": m.chamfer, "fscore": m.fscore, "fscore_tau": m.threshold,
                     "final_loss": res.final_loss})
        log.info("recon %s: %s", shape, rows[-1])
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench_recon.json"))
    p.add_argument("--points", type=int, default=1 << 20)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--shapes", default="capsule,torus")
    p.add_argument("--views", type=int, default=36)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--preset", default="default", choices=["default", "quick"])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-hashgrid", action="store_true")
    p.add_argument("--skip-recon", action="store_true")
    p.add_argument("--workdir", type=Path, default=None, help="keep orbits/meshes here (default: a temp dir)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(a.device)
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "python": platform.python_version(), "command": " ".join(sys.argv)}
    if triton_available():
        import triton

        env["triton"] = triton.__version__
    result: dict = {"env": env, "hashgrid": [], "recon": []}
    if not a.skip_hashgrid:
        result["hashgrid"] = bench_hashgrid(a.points, a.repeats, device)
        a.out.write_text(json.dumps(result, indent=2))
    if not a.skip_recon:
        with tempfile.TemporaryDirectory() as tmp:
            wd = a.workdir or Path(tmp)
            result["recon"] = bench_recon([s for s in a.shapes.split(",") if s], a.views, a.size, a.preset, a.steps,
                                          device, wd)
    a.out.write_text(json.dumps(result, indent=2))

    from rich.console import Console
    from rich.table import Table

    con = Console(width=140)
    con.print(f"{env['device']}  torch {env['torch']}  {env['date']}")
    if result["hashgrid"]:
        t = Table(title=f"hash grid, {a.points} points, 16 levels x 2 feats, 2^19 table (median ms)")
        for c in ("backend", "fwd_ms", "fwd_bwd_ms", "rel_err_vs_reference"):
            t.add_column(c)
        for r in result["hashgrid"]:
            t.add_row(r["backend"], f"{r['fwd_ms']:.3f}", f"{r['fwd_bwd_ms']:.3f}",
                      "-" if r["rel_err_vs_reference"] is None else f"{r['rel_err_vs_reference']:.2e}")
        con.print(t)
    if result["recon"]:
        t = Table(title="orbit -> mesh")
        cols = ("shape", "views", "steps", "backend", "train_s", "extract_s", "train_plus_extract_s", "chamfer",
                "fscore", "faces")
        for c in cols:
            t.add_column(c)
        for r in result["recon"]:
            t.add_row(*[f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols])
        con.print(t)


if __name__ == "__main__":
    main()
