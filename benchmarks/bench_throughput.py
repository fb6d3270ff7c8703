"""Orbits per hour on one GPU: one orbit at a time against batched orbits (Pipeline.orbit_many).

    PYTHONPATH=$PWD python benchmarks/bench_throughput.py --sizes 1,2,4,8 --out throughput.json

Full-size Zero123 with random weights, fp16, compiled UNet, CUDA graphs, 36-view orbits (35 generated),
75 DDIM steps. For each batch size N, N photos' orbits run together (one wave: they join and leave
together, as every wave of a long run does, all orbits having the same views); orbits/hour =
N x 3600 / seconds. N = 1 is one orbit at a time (the same loop as Pipeline.orbit).

Before any timing: one view (the compile), then the graph of every row count N(K + 1) the timed runs
meet is captured ("capture" in the JSON: graphs and seconds per N - the one-off cost a new row count
has). Also per N: the median step at K = 1, 12, 25, and how far a batched object's images are from
the same photo's one-at-a-time orbit (max abs, PSNR; fp16 kernels at other batch shapes).
``--tiny`` runs the same code on the CPU with the tests' tiny model: a check of the code path only.
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from scale_common import RandomPipeline, command_line, machine, main_of, precapture, random_images, step_ms, sync
from vfrt.runtime.benchmark import psnr
from vfrt.runtime.poses import plan_orbit
from vfrt.runtime.sampler import SamplerConfig

log = logging.getLogger("bench_throughput")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1,2,4,8", help="batch sizes N to time (1 = one orbit at a time)")
    p.add_argument("--views", type=int, default=36, help="views per orbit, input included")
    p.add_argument("--steps", type=int, default=75, help="DDIM steps (75 runs 76 UNet steps per view)")
    p.add_argument("--repeats", type=int, default=20, help="replays per median step time")
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-compile", action="store_true", help="time the uncompiled UNet")
    p.add_argument("--tiny", action="store_true", help="CPU, tiny model: check the code path (no measurement)")
    p.add_argument("--out", default="throughput.json")
    return p.parse_args(argv)


def run(args, argv=None) -> dict:
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    device = "cpu" if args.tiny else args.device
    pipe = RandomPipeline(tiny=args.tiny, compile=False if args.no_compile else None)(device)
    size = pipe.resolution
    sampler = SamplerConfig(steps=args.steps, seed=1)
    schedule = sampler.schedule(pipe.model_config.schedule)
    plans = plan_orbit(args.views)
    ks = sorted({p.K for p in plans})
    photos = random_images(max(sizes), size, seed=2)
    res = {**machine(device), "command": command_line("benchmarks/bench_throughput.py", argv),
           "engine": pipe.engine.describe(), "views": args.views, "generated_views": len(plans),
           "steps_per_view": schedule.num_steps, "sum_K": int(sum(p.K for p in plans)), "sizes": sizes}

    t0 = time.perf_counter()                     # the compile (first step) and the first view's graph
    pipe.orbit(photos[0], views=args.views, generate=1, sampler=sampler, preprocess=False)
    res["first_view_s"] = time.perf_counter() - t0
    res["engine"] = pipe.engine.describe()       # unet_compiled is known after the first step
    capture, bound = precapture(pipe.engine, ks, sizes, schedule, size)
    res["capture"] = {str(n): v for n, v in capture.items()}
    res["step_ms"] = {str(n): {str(K): step_ms(pipe.engine, bound[K], n, args.repeats) for K in (1, 12, 25)
                               if K in bound} for n in sizes}

    runs, alone = {}, None
    for n in sizes:
        sync(device)
        t0 = time.perf_counter()
        outs = pipe.orbit_many(photos[:n], views=args.views, sampler=sampler, batch=n, preprocess=False)
        sync(device)
        seconds = time.perf_counter() - t0
        entry = {"seconds": seconds, "seconds_per_orbit": seconds / n, "orbits_per_hour": n * 3600 / seconds,
                 "finite": bool(all(np.isfinite(o.images).all() for o in outs))}
        if n == 1:
            alone = outs[0]
        elif alone is not None:
            entry["max_abs_vs_one_at_a_time"] = float(np.abs(outs[0].images - alone.images).max())
            entry["psnr_vs_one_at_a_time_db"] = min(psnr(a, b) for a, b in zip(outs[0].images, alone.images))
        runs[str(n)] = entry
        log.info("N=%d: %.1f s, %.0f orbits/hour", n, seconds, entry["orbits_per_hour"])
    if "1" in runs:
        for entry in runs.values():
            entry["speedup"] = entry["orbits_per_hour"] / runs["1"]["orbits_per_hour"]
    res["runs"] = runs
    return res


def format_table(res: dict) -> str:
    e = res["engine"]
    lines = [f"{res['gpu']}  torch {res['torch']}  dtype {e['dtype']}  compiled={e.get('unet_compiled')}  "
             f"{res['views']}-view orbits ({res['generated_views']} generated, sum K = {res['sum_K']}), "
             f"{res['steps_per_view']} steps/view; first view (compile) {res['first_view_s']:.1f} s",
             f"{'N':>3} {'s total':>9} {'s/orbit':>8} {'orbits/h':>9} {'x one':>6} {'step K=1':>9} {'K=12':>8} "
             f"{'K=25':>8} {'captures':>9} {'capture s':>10} {'max|d|':>8} {'PSNR dB':>8}"]
    for n, r in res["runs"].items():
        st, cap = res["step_ms"].get(n, {}), res["capture"].get(n, {})
        lines.append(f"{n:>3} {r['seconds']:>9.1f} {r['seconds_per_orbit']:>8.2f} {r['orbits_per_hour']:>9.0f} "
                     f"{r.get('speedup', float('nan')):>6.2f} {st.get('1', float('nan')):>9.2f} "
                     f"{st.get('12', float('nan')):>8.2f} {st.get('25', float('nan')):>8.2f} "
                     f"{cap.get('graphs', 0):>9d} {cap.get('seconds', 0.0):>10.1f} "
                     f"{r.get('max_abs_vs_one_at_a_time', float('nan')):>8.4f} "
                     f"{r.get('psnr_vs_one_at_a_time_db', float('nan')):>8.1f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    return main_of(parse, run, format_table, argv)


if __name__ == "__main__":
    main()
