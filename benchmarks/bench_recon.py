"""Benchmark vfrt.recon: hash-grid encoding backends, and orbit -> mesh time and quality on the
procedural test objects of :mod:`vfrt.recon.testobjects` (chair with rungs and slats, mug with a
cavity and a handle, bear-like toy with limbs; sharp colour patterns).

Usage::

    python benchmarks/bench_recon.py --objects all --preset default --out recon_h200.json   # one GPU
    python benchmarks/bench_recon.py --objects all --preset quick --skip-hashgrid --out recon_cpu.json
    python benchmarks/bench_recon.py --skip-recon --points 1048576                             # encoding only

Recon: renders a perfect ``--views`` orbit (``--size`` px, elevation 30, SPEC §8 cameras; with
``--low-ring E:N`` also N views at elevation E) of each object with the project's rasteriser, runs :func:`vfrt.recon.reconstruct` with ``--preset`` (as
``vfrt recon`` does: turntable included) and reports

* ``wall_s``: the whole reconstruct call (load, train, extract, colours, export, turntable;
  metrics excluded); the first object also pays Triton's compilation;
* ``cpu_s``: user + system CPU time of this process over the same span (all threads);
* ``cd``: Chamfer distance (metrics.py: mean Euclidean nearest-neighbour distance both ways,
  meshes normalised to longest side 1.6) and F-scores at 0.01 and 0.02;
* ``psnr``: colour PSNR of the mesh rendered unlit from the input cameras against the views,
  inside the union of both silhouettes (``psnr_shared``: inside both, the colours where the shape agrees;
  ``psnr_full``: whole images; ``silhouette_error_share``: the union's squared error on pixels inside one
  silhouette only);
* ``volume``: signed volume of the written ``mesh.ply`` / ``.obj`` / ``.glb`` (positive = outward).

Hash grid: forward and forward+backward (table gradient) on ``--points`` random points with the
default 16-level, 2^19-entry grid; medians (``triton.testing.do_bench`` on CUDA).
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
from vfrt.recon.hashgrid import encoding_backends, hash_encode_reference, init_table  # noqa: E402

log = logging.getLogger("bench_recon")


def _median_ms(fn, repeats: int, device: torch.device) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=50, rep=max(100, repeats * 5), return_mode="median"))
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def bench_hashgrid(n_points: int, repeats: int, device: torch.device) -> list[dict]:
    cfg = HashGridConfig()
    table = init_table(cfg).to(device).normal_().requires_grad_()
    xs = [torch.rand(n_points, 3, device=device) for _ in range(4)]
    g = torch.randn(n_points, cfg.output_dim, device=device)
    usable = encoding_backends(device)
    backends = {"reference": lambda x: hash_encode_reference(x, table, cfg)}
    if device.type == "cuda" and usable["triton"]:
        from vfrt.recon.hashgrid_triton import hash_encode_triton

        backends["triton"] = lambda x: hash_encode_triton(x, table, cfg)
    if usable["tcnn"]:
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
            enc(nxt()).backward(g)

        err = None
        if name == "triton":
            out = enc(xs[0]).detach()
            err = float((out - ref_out).norm() / ref_out.norm())
        rows.append({"backend": name, "points": n_points, "fwd_ms": _median_ms(fwd, repeats, device),
                     "fwd_bwd_ms": _median_ms(fwd_bwd, repeats, device), "rel_err_vs_reference": err})
        log.info("hashgrid %s: %s", name, rows[-1])
    return rows


def _overrides(text: str) -> dict:
    """``"steps=400,image_size=96"`` -> ``{"steps": 400, "image_size": 96}`` (numbers parsed)."""
    out: dict = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def bench_objects(objects: list[str], args: argparse.Namespace, device: torch.device, workdir: Path) -> list[dict]:
    import trimesh

    from vfrt.recon.metrics import evaluate_mesh
    from vfrt.recon.pipeline import reconstruct
    from vfrt.recon.testobjects import write_object_orbit

    rows = []
    for name in objects:
        t = time.perf_counter()
        orbit = write_object_orbit(workdir / f"orbit_{name}", name, args.views, args.size, 30.0, args.ref_spacing,
                                   str(device), low_ring=args.low_ring)
        log.info("%s: orbit rendered in %.1f s", name, time.perf_counter() - t)
        cfg = ReconConfig.from_preset(args.preset, device=str(device), **_overrides(args.set))

        def progress(step: int, loss: float, name=name, steps=cfg.steps, t0=time.perf_counter()) -> None:
            if step % max(1, steps // 4) == 0 or step == steps:
                log.info("%s step %d loss %.4f  %.1f s", name, step, loss, time.perf_counter() - t0)

        cpu0 = time.process_time()
        res = reconstruct(orbit, workdir / f"recon_{name}", cfg, progress=progress, evaluate_colours=True,
                          turntable=not args.no_turntable)
        cpu = time.process_time() - cpu0
        ref = trimesh.load(orbit / "reference.ply", force="mesh")
        pred = trimesh.load(res.mesh_paths["ply"], force="mesh")
        m1 = evaluate_mesh(pred, ref, n_samples=args.samples, threshold=0.01)
        m2 = evaluate_mesh(pred, ref, n_samples=args.samples, threshold=0.02)
        volumes = {fmt: float(trimesh.load(p, force="mesh").volume) for fmt, p in res.mesh_paths.items()}
        rows.append({
            "object": name, "preset": args.preset, "overrides": args.set, "views": args.views, "size": args.size,
            "low_ring": args.low_ring, "flat_base": res.flat_base,
            "steps": cfg.steps, "backend": res.backend, "device": res.device,
            "wall_s": res.timings["total"], "cpu_s": cpu, "train_s": res.timings["train"],
            "extract_s": res.timings["extract"], "colour_s": res.timings["colour"], "timings_s": res.timings,
            "faces": res.n_faces, "cd": m1.chamfer, "f001": m1.fscore, "f002": m2.fscore,
            "psnr": res.colour.psnr, "psnr_full": res.colour.psnr_full, "psnr_shared": res.colour.psnr_shared,
            "silhouette_error_share": res.colour.silhouette_error_share,
            "reference_volume": float(ref.volume), "volumes": volumes,
            "volume_sign": "+" if all(v > 0 for v in volumes.values()) else "-",
        })
        log.info("recon %s: %s", name, {k: v for k, v in rows[-1].items() if k != "timings_s"})
    return rows


def print_tables(result: dict, points: int) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=150)
    env = result["env"]
    con.print(f"{env['device']}  torch {env['torch']}  {env['date']}  encoding backends {env['encoding_backends']}")
    if result["hashgrid"]:
        t = Table(title=f"hash grid, {points} points, 16 levels x 2 feats, 2^19 table (median ms)")
        for c in ("backend", "fwd_ms", "fwd_bwd_ms", "rel_err_vs_reference"):
            t.add_column(c)
        for r in result["hashgrid"]:
            t.add_row(r["backend"], f"{r['fwd_ms']:.3f}", f"{r['fwd_bwd_ms']:.3f}",
                      "-" if r["rel_err_vs_reference"] is None else f"{r['rel_err_vs_reference']:.2e}")
        con.print(t)
    if result["recon"]:
        r0 = result["recon"][0]
        t = Table(title=f"orbit -> mesh: {r0['views']} views at {r0['size']} px, preset {r0['preset']} "
                        f"{r0['overrides']} ({r0['backend']} on {r0['device']})")
        for c in ("object", "wall s", "cpu s", "train s", "CD-L2", "F@0.01", "F@0.02",
                  "colour PSNR dB (either / both silhouettes)", "volume", "faces"):
            t.add_column(c)
        for r in result["recon"]:
            t.add_row(r["object"], f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}", f"{r['train_s']:.1f}", f"{r['cd']:.4f}",
                      f"{r['f001']:.3f}", f"{r['f002']:.3f}",
                      f"{r['psnr']:.2f} / {r.get('psnr_shared', float('nan')):.2f}", r["volume_sign"], str(r["faces"]))
        con.print(t)


def main(argv: list[str] | None = None) -> dict:
    from vfrt.recon.testobjects import OBJECTS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench_recon.json"))
    p.add_argument("--points", type=int, default=1 << 20, help="hash-grid benchmark points")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--objects", default="all", help=f"'all' or a comma list of {', '.join(OBJECTS)}")
    p.add_argument("--views", type=int, default=36)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--low-ring", default=None, metavar="ELEVATION:VIEWS",
                   help="also render a second ring, e.g. --low-ring=-15:12 (views from below: the underside is seen)")
    p.add_argument("--preset", default="default", choices=["default", "quick"])
    p.add_argument("--set", default="", help="ReconConfig overrides, e.g. 'steps=1500,mc_resolution=192'")
    p.add_argument("--samples", type=int, default=100_000, help="surface samples per mesh for the metrics")
    p.add_argument("--ref-spacing", type=float, default=0.004, help="reference mesh grid spacing (world units)")
    p.add_argument("--no-turntable", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-hashgrid", action="store_true")
    p.add_argument("--skip-recon", action="store_true")
    p.add_argument("--workdir", type=Path, default=None, help="keep orbits/meshes here (default: a temp dir)")
    a = p.parse_args(argv)
    if a.low_ring:
        try:
            elevation, n = a.low_ring.split(":")
            a.low_ring = (float(elevation), int(n))
        except ValueError:
            p.error(f"--low-ring takes ELEVATION:VIEWS, e.g. -15:12 (got {a.low_ring!r})")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(a.device)
    objects = list(OBJECTS) if a.objects == "all" else [s for s in a.objects.split(",") if s]
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "threads": torch.get_num_threads(), "python": platform.python_version(), "command": " ".join(sys.argv),
           "encoding_backends": encoding_backends(device)}
    result: dict = {"env": env, "hashgrid": [], "recon": []}
    if not a.skip_hashgrid:
        result["hashgrid"] = bench_hashgrid(a.points, a.repeats, device)
        a.out.write_text(json.dumps(result, indent=2))
    if not a.skip_recon:
        with tempfile.TemporaryDirectory() as tmp:
            result["recon"] = bench_objects(objects, a, device, a.workdir or Path(tmp))
    a.out.write_text(json.dumps(result, indent=2, default=str))
    print_tables(result, a.points)
    return result


if __name__ == "__main__":
    main()
