"""Smoke test and overhead of `vfrt serve` on one GPU: a live server on loopback, real HTTP jobs.

    python benchmarks/serve_smoke.py --out serve_smoke.json [--checkpoint zero123-xl.ckpt] [--views 12] [--jobs 3]

Full-size random weights unless --checkpoint (the views are noise either way without real
weights; timings are what matters). Steps, one process, exits by itself (about 1-2 minutes on an H100):

1. warm-up: one short orbit through the pipeline (CUDA graphs captured, kernels loaded);
2. direct: ``run_to_folder`` on the pipeline, timed;
3. api: the same photo and settings as one HTTP job (submit -> poll -> done), timed, and whether its
   views are byte-identical to the direct run's;
4. queue: ``--jobs`` jobs submitted at once; each one's wait and total, and the wall time for all;
5. cancel: a job cancelled after its first view ends "cancelled" with no partial folder left.

Prints one table and writes JSON (numbers go to docs/SERVE.md only when measured).
"""
from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "real_images" / "chair_7_rgba.png"


def _pipeline(args):
    import torch

    from vfrt import EngineConfig, Pipeline
    engine = EngineConfig(device=args.device, compile=False)     # no one-off compile inside a smoke test
    if args.checkpoint:
        return Pipeline.from_checkpoint(args.checkpoint, args.config, engine=engine)
    from vfrt.models import Zero123
    torch.manual_seed(0)
    return Pipeline(Zero123.from_config(None).eval(), engine, copy_weights=False)


def _serve(service):
    import uvicorn

    from vfrt.serve.app import create_app
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def _wait(client, job_id, timeout=600.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = client.get(f"/api/jobs/{job_id}").json()
        if st["state"] not in ("queued", "running"):
            return st
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not end within {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="serve_smoke.json")
    parser.add_argument("--checkpoint", "-c")
    parser.add_argument("--config")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--steps", type=int, default=75)
    parser.add_argument("--jobs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")

    import httpx

    from vfrt.runtime.run import RunConfig, run_to_folder
    from vfrt.runtime.sampler import SamplerConfig
    from vfrt.serve.config import ServeConfig
    from vfrt.serve.service import JobService

    work = Path(tempfile.mkdtemp(prefix="vfrt_serve_smoke_"))
    t = time.perf_counter()
    pipe = _pipeline(args)
    res = {"device": str(pipe.device), "backend": pipe.backend, "views": args.views, "steps": args.steps,
           "load_s": round(time.perf_counter() - t, 2), "command": " ".join(["python"] + sys.argv)}
    try:
        import torch
        res["gpu"] = torch.cuda.get_device_name(pipe.device) if pipe.device.type == "cuda" else None
    except Exception:
        res["gpu"] = None
    cfg = RunConfig(views=args.views, sampler=SamplerConfig(steps=args.steps, seed=7))

    t = time.perf_counter()
    run_to_folder(pipe, PHOTO, RunConfig(views=4, sampler=SamplerConfig(steps=args.steps)), work / "warmup")
    res["warmup_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    run_to_folder(pipe, PHOTO, cfg, work / "direct")
    res["direct_s"] = round(time.perf_counter() - t, 2)

    service = JobService(ServeConfig(runs_dir=work / "jobs", ui=False, queue_size=max(4, args.jobs)), [pipe])
    server, thread, url = _serve(service)
    form = {"views": str(args.views), "steps": str(args.steps), "seed": "7"}
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            def submit(**extra):
                r = client.post("/api/jobs", files={"image": (PHOTO.name, PHOTO.read_bytes(), "image/png")},
                                data={**form, **extra})
                r.raise_for_status()
                return r.json()["id"]

            t = time.perf_counter()
            job = _wait(client, submit())
            res["api_s"] = round(time.perf_counter() - t, 2)
            res["api_state"] = job["state"]
            res["api_overhead_s"] = round(res["api_s"] - res["direct_s"], 2)
            direct = sorted((work / "direct" / "views").glob("*.png"))
            served = sorted((work / "jobs" / job["id"] / "run" / "views").glob("*.png"))
            res["api_views_equal_direct"] = len(direct) == len(served) > 0 and all(
                a.read_bytes() == b.read_bytes() for a, b in zip(direct, served))

            t = time.perf_counter()
            ids = [submit(seed=str(100 + i)) for i in range(args.jobs)]
            ends = [_wait(client, i) for i in ids]
            res["queue_wall_s"] = round(time.perf_counter() - t, 2)
            res["queue_states"] = [e["state"] for e in ends]
            res["queue_waits_s"] = [round(e["started"] - e["created"], 2) for e in ends]
            res["queue_runs_s"] = [round(e["finished"] - e["started"], 2) for e in ends]

            cancel_id = submit(seed="9")
            while client.get(f"/api/jobs/{cancel_id}").json()["progress"]["done"] < 1:
                time.sleep(0.02)
            client.post(f"/api/jobs/{cancel_id}/cancel")
            st = _wait(client, cancel_id)
            res["cancel"] = {"state": st["state"], "message": st["message"],
                             "partial_left": (work / "jobs" / cancel_id / "run.partial").exists()}
    finally:
        server.should_exit = True
        thread.join(30)
    ok = (res["api_state"] == "done" and all(s == "done" for s in res["queue_states"])
          and res["cancel"]["state"] == "cancelled" and not res["cancel"]["partial_left"])
    res["ok"] = ok
    Path(args.out).write_text(json.dumps(res, indent=2))
    rows = [("device / backend", f"{res['device']} ({res['gpu']}) / {res['backend']}"),
            ("load, warm-up (s)", f"{res['load_s']}, {res['warmup_s']}"),
            (f"direct run_to_folder, {args.views} views x {args.steps} steps (s)", res["direct_s"]),
            ("same job over HTTP, submit -> done (s)", f"{res['api_s']} (overhead {res['api_overhead_s']})"),
            ("HTTP job views == direct views", res["api_views_equal_direct"]),
            (f"{args.jobs} jobs at once: wall (s)", res["queue_wall_s"]),
            ("  waits in queue (s)", res["queue_waits_s"]), ("  run times (s)", res["queue_runs_s"]),
            ("cancel after the first view", f"{res['cancel']['state']}: {res['cancel']['message']}"),
            ("all ok", ok)]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"JSON: {args.out}; job folders in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
