"""Photos per hour with 1 and with N GPUs through the scale-out runner (`vfrt run PHOTOS --ray`).

    PYTHONPATH=$PWD python benchmarks/bench_scaleout.py --gpus 1,2 --photos 8 --views 8 --out scaleout.json
    PYTHONPATH=$PWD python benchmarks/bench_scaleout.py --gpus 1,2 --launcher processes --out scaleout.json

Each GPU count k runs the same photos (copies of examples/chair.png, one output folder each) on k workers,
each worker one GPU that loads the weights once: full-size Zero123 architecture with random weights,
written once as an original-format .safetensors (or ``--checkpoint``), fp16 fast engine, CUDA graphs,
uncompiled UNet for every k (``--compile`` compiles for every k: the automatic policy would compile
only where a worker's share of views is large, which is not a fair comparison).

Launchers: ``ray`` (default) is :func:`vfrt.runtime.scaleout.run_on_ray` on one local Ray instance;
``processes`` starts one Python process per GPU (``CUDA_VISIBLE_DEVICES``) that pulls photos from a
shared queue - no Ray, for a machine where Ray is not installed. Both run the same
:class:`~vfrt.runtime.scaleout.PhotoWorker`. Reported per k: start-up (workers ready: Ray, model
loads), wall, photos/hour over the whole wall and after start-up, speed-up over the smallest k (after
start-up: what a long run converges to), photos per worker. ``--tiny`` runs the same code on the CPU
with the tests' tiny model (k = CPU workers): a check of the code path, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from vfrt.engines.config import EngineConfig
from vfrt.runtime.run import RunConfig
from vfrt.runtime.sampler import SamplerConfig
from vfrt.runtime.scaleout import (PhotoJob, PhotoWorker, RayOptions, ScaleoutSummary, WorkerSpec, run_on_ray)
from vfrt.version import __version__

log = logging.getLogger("bench_scaleout")
ROOT = Path(__file__).resolve().parents[1]


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", default="1,2", help="GPU counts k to time (comma-separated; the smallest is the baseline)")
    p.add_argument("--photos", type=int, default=8, help="photos per run (a multiple of every k keeps workers even)")
    p.add_argument("--views", type=int, default=8, help="views per orbit, input included")
    p.add_argument("--steps", type=int, default=75, help="DDIM steps (75 runs 76 UNet steps per view)")
    p.add_argument("--launcher", choices=("ray", "processes"), default="ray")
    p.add_argument("--checkpoint", help="real weights instead of random ones (.ckpt / .safetensors / diffusers)")
    p.add_argument("--config", help="the checkpoint's ldm YAML")
    p.add_argument("--compile", action="store_true", help="compile the UNet in every worker")
    p.add_argument("--workdir", help="where the weights and outputs go [default: a temporary folder, removed]")
    p.add_argument("--tiny", action="store_true", help="CPU, tiny model: check the code path (no measurement)")
    p.add_argument("--out", default="scaleout.json")
    return p.parse_args(argv)


def write_random_checkpoint(folder: Path) -> Path:
    """Full-size Zero123 with random weights (torch seed 0) as an original-format .safetensors (no EMA)."""
    import torch
    from safetensors.torch import save_file

    from vfrt.models import Zero123
    from vfrt.models.checkpoint import to_original_state_dict
    from vfrt.models.testing import schedule_buffers
    torch.manual_seed(0)
    model = Zero123.from_config(None)
    state = to_original_state_dict(model)
    state.update(schedule_buffers(model.config.schedule))
    path = folder / "zero123-random.safetensors"
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))
    return path


def make_photos(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    photos = [folder / f"photo_{i:03d}.png" for i in range(count)]
    for photo in photos:
        shutil.copyfile(ROOT / "examples" / "chair.png", photo)
    return photos


def _process_worker(spec: WorkerSpec, index: int, jobs, results) -> None:
    """One process of the ``processes`` launcher: load once, then photos from ``jobs`` until None."""
    worker = PhotoWorker(spec, index)
    results.put(("ready", worker.describe()))
    while (job := jobs.get()) is not None:
        results.put(("outcome", worker.run(job)))


def run_processes(jobs: list[PhotoJob], spec: WorkerSpec, count: int, gpu: bool) -> ScaleoutSummary:
    """The photos over ``count`` processes (one GPU each when ``gpu``), fed from one queue."""
    t0 = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    queue, results = context.Queue(), context.Queue()
    for job in jobs:
        queue.put(job)
    for _ in range(count):
        queue.put(None)
    procs, visible = [], os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        for i in range(count):
            if gpu:                      # a spawned child reads the environment it starts with
                os.environ["CUDA_VISIBLE_DEVICES"] = str(i)
            procs.append(context.Process(target=_process_worker, args=(spec, i, queue, results)))
            procs[-1].start()
    finally:
        if visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible
    workers, outcomes, startup = [], [], None
    # every worker reports ready exactly once, even one that found the queue empty (a fast worker can take
    # all the photos before a slow one has loaded): wait for all of them, or start-up goes unmeasured
    while len(outcomes) < len(jobs) or len(workers) < count:
        kind, item = results.get(timeout=1800)
        if kind == "ready":
            workers.append(item)
            if item["load_error"]:
                raise RuntimeError(f"worker {item['index']} could not load the model: {item['load_error']}")
            if len(workers) == count:
                startup = time.perf_counter() - t0
        else:
            outcomes.append(item)
    for proc in procs:
        proc.join()
    return ScaleoutSummary("processes", sorted(workers, key=lambda w: w["index"]), outcomes,
                           startup_seconds=startup or 0.0, wall_seconds=time.perf_counter() - t0,
                           gpus_per_worker=1.0 if gpu else 0.0)


def main(argv=None) -> dict:
    args = parse(argv)
    counts = sorted({int(k) for k in args.gpus.split(",")})
    import torch
    gpu = not args.tiny
    if gpu and torch.cuda.device_count() < max(counts):
        sys.exit(f"--gpus {args.gpus} needs {max(counts)} CUDA GPUs; this machine has {torch.cuda.device_count()}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vfrt-scaleout-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        if args.tiny:
            from vfrt.models import write_tiny_checkpoint
            tiny = write_tiny_checkpoint(work / "tiny")
            checkpoint, config = tiny.safetensors, str(tiny.yaml)
        else:
            checkpoint = Path(args.checkpoint) if args.checkpoint else write_random_checkpoint(work)
            config = args.config
        weights_seconds = time.perf_counter() - t0
        photos = make_photos(work / "photos", args.photos)
        engine = EngineConfig(backend="fast", device="cpu" if args.tiny else "auto", compile=args.compile)
        run_cfg = RunConfig(views=args.views, sampler=SamplerConfig(steps=args.steps))
        spec = WorkerSpec(checkpoint=str(checkpoint), model_config=config, engine=engine, run=run_cfg)
        ray = None
        if args.launcher == "ray":
            try:
                import ray
            except ImportError:
                sys.exit("Ray is not installed here: pip install 'vfrt[ray]', or use --launcher processes")
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING,
                     **({"num_cpus": max(counts)} if args.tiny else {}))
        runs = {}
        try:
            for k in counts:
                out = work / f"out_{args.launcher}_{k}"
                jobs = [PhotoJob(p, out / p.stem) for p in photos]
                log.info("%d photos on %d %s worker(s) (%s)", len(jobs), k, "GPU" if gpu else "CPU", args.launcher)
                if ray is not None:
                    summary = run_on_ray(jobs, spec, RayOptions(workers=k, gpus_per_worker=1.0 if gpu else 0.0))
                else:
                    summary = run_processes(jobs, spec, k, gpu)
                runs[str(k)] = summary.as_dict()
                shutil.rmtree(out, ignore_errors=True)
        finally:
            if ray is not None:
                ray.shutdown()
        base = runs[str(counts[0])]
        for k in counts:
            r = runs[str(k)]
            r["speedup_after_startup"] = round(r["photos_per_hour_after_startup"]
                                               / base["photos_per_hour_after_startup"], 3)
            r["speedup"] = round(r["photos_per_hour"] / base["photos_per_hour"], 3)
        res = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "vfrt": __version__,
               "torch": torch.__version__, "ray": ray.__version__ if ray is not None else None,
               "python": platform.python_version(), "host": platform.node(),
               "gpu": torch.cuda.get_device_name(0) if gpu else None, "gpus_on_host": torch.cuda.device_count(),
               "command": "python benchmarks/bench_scaleout.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "launcher": args.launcher, "photos": args.photos, "views": args.views, "steps": args.steps,
               "compile": args.compile, "weights": "given" if args.checkpoint else "random full size"
               if not args.tiny else "tiny", "weights_write_seconds": round(weights_seconds, 1), "runs": runs}
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(format_table(res))
    return res


def format_table(res: dict) -> str:
    lines = [f"{res['launcher']} launcher, {res['photos']} photos x {res['views']} views, {res['steps']} steps, "
             f"{res['gpu'] or 'CPU'}",
             f"{'k':>3} {'done':>5} {'failed':>6} {'start-up s':>10} {'wall s':>8} {'photos/h':>9} "
             f"{'after start-up':>14} {'speed-up':>8}  per worker"]
    for k, r in res["runs"].items():
        lines.append(f"{k:>3} {r['done']:>5} {r['failed']:>6} {r['startup_seconds']:>10.1f} {r['wall_seconds']:>8.1f} "
                     f"{r['photos_per_hour']:>9.0f} {r['photos_per_hour_after_startup']:>14.0f} "
                     f"{r['speedup_after_startup']:>8.2f}  {r['photos_per_worker']}")
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main()
