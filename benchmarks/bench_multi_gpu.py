"""One 36-view orbit on 1, 2 (and 4) GPUs of one host: each step's rows split across the GPUs.

    PYTHONPATH=$PWD python benchmarks/bench_multi_gpu.py --gpus 1,2 --out multi_gpu.json

For each GPU count G a fresh set of G processes (vfrt.runtime.multigpu.spawn_ranks, NCCL, no NVLink
multicast) builds the full-size random-weight model, compiles the UNet (first view), captures the step
graph of every row count the orbit meets, then times ``--repeats`` warm orbits (Pipeline.orbit, 35
generated views, 75 DDIM steps) between barriers. Rank 0 reports; its images are compared with the
1-GPU run's (same noise: fp16 kernels at other row counts). ``--tiny`` runs the same code on the CPU
(gloo, the tests' tiny model): a check of the code path only.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from scale_common import RandomPipeline, command_line, machine, main_of, precapture, random_images, sync
from vfrt.runtime.benchmark import psnr
from vfrt.runtime.multigpu import spawn_ranks
from vfrt.runtime.poses import plan_orbit
from vfrt.runtime.sampler import SamplerConfig

log = logging.getLogger("bench_multi_gpu")


@dataclass(frozen=True)
class TimeOrbit:
    """What every rank runs (picklable: it crosses processes)."""

    make_pipeline: RandomPipeline
    views: int
    steps: int
    repeats: int

    def __call__(self, ctx) -> dict:
        import torch.distributed as dist
        pipe = self.make_pipeline(str(ctx.device))
        pipe.engine.distribute(ctx.split)
        size = pipe.resolution
        sampler = SamplerConfig(steps=self.steps, seed=1)
        schedule = sampler.schedule(pipe.model_config.schedule)
        photo = random_images(1, size, seed=2)[0]
        t0 = time.perf_counter()
        pipe.orbit(photo, views=self.views, generate=1, sampler=sampler, preprocess=False)
        first_view_s = time.perf_counter() - t0
        ks = sorted({p.K for p in plan_orbit(self.views)})
        capture, _ = precapture(pipe.engine, ks, [1], schedule, size)
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        seconds = []
        for _ in range(self.repeats):
            dist.barrier()
            t0 = time.perf_counter()
            out = pipe.orbit(photo, views=self.views, sampler=sampler, preprocess=False)
            sync(ctx.device)
            dist.barrier()
            seconds.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(ctx.device) / 1e9 if ctx.device.type == "cuda" else None
        return {"orbit_s": seconds, "first_view_s": first_view_s, "capture": capture[1], "peak_allocated_gb": peak,
                "engine": pipe.engine.describe(), "images": out.images, "finite": bool(np.isfinite(out.images).all())}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", default="1,2", help="GPU counts to time, e.g. 1,2 or 1,2,4")
    p.add_argument("--views", type=int, default=36)
    p.add_argument("--steps", type=int, default=75)
    p.add_argument("--repeats", type=int, default=2, help="warm orbits timed per GPU count")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--tiny", action="store_true", help="CPU + gloo, tiny model: check the code path (no measurement)")
    p.add_argument("--out", default="multi_gpu.json")
    return p.parse_args(argv)


def run(args, argv) -> dict:
    counts = sorted({int(g) for g in args.gpus.split(",")})
    backend = "gloo" if args.tiny else "nccl"
    task = TimeOrbit(RandomPipeline(tiny=args.tiny, compile=False if args.no_compile else None), args.views,
                     args.steps, args.repeats)
    res = {**machine("cpu" if args.tiny else "cuda"), "backend": backend, "views": args.views,
           "command": command_line("benchmarks/bench_multi_gpu.py", argv), "runs": {}}
    images = {}
    for g in counts:
        t0 = time.perf_counter()
        out = spawn_ranks(task, g, backend=backend)
        images[g] = out.pop("images")
        out["launch_to_end_s"] = time.perf_counter() - t0
        out["orbit_best_s"] = min(out["orbit_s"])
        res["runs"][str(g)] = out
        log.info("%d GPU(s): orbit %s s", g, [round(s, 2) for s in out["orbit_s"]])
    if 1 in images:
        for g in counts:
            entry = res["runs"][str(g)]
            entry["speedup"] = res["runs"]["1"]["orbit_best_s"] / entry["orbit_best_s"]
            entry["max_abs_vs_1_gpu"] = float(np.abs(images[g] - images[1]).max())
            entry["psnr_vs_1_gpu_db"] = min(psnr(a, b) for a, b in zip(images[g], images[1]))
    return res


def format_table(res: dict) -> str:
    lines = [f"{res['gpu']} x {max(int(g) for g in res['runs'])} ({res['backend']})  torch {res['torch']}  "
             f"{res['views']}-view orbit",
             f"{'GPUs':>4} {'orbit s (best)':>15} {'all':>16} {'x 1 GPU':>8} {'first view s':>13} {'captures':>9} "
             f"{'capture s':>10} {'peak GB':>8} {'max|d|':>8} {'PSNR dB':>8}"]
    for g, r in res["runs"].items():
        peak = r["peak_allocated_gb"]
        lines.append(f"{g:>4} {r['orbit_best_s']:>15.2f} {str([round(s, 2) for s in r['orbit_s']]):>16} "
                     f"{r.get('speedup', float('nan')):>8.2f} {r['first_view_s']:>13.1f} {r['capture']['graphs']:>9d} "
                     f"{r['capture']['seconds']:>10.1f} {float('nan') if peak is None else peak:>8.2f} "
                     f"{r.get('max_abs_vs_1_gpu', float('nan')):>8.4f} {r.get('psnr_vs_1_gpu_db', float('nan')):>8.1f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    return main_of(parse, run, format_table, argv)


if __name__ == "__main__":
    main()
