"""Where a NeuS training step of `vfrt recon` spends its time: torch.profiler over N steps of the chair.

    python benchmarks/profile_recon_step.py cuda 100 > profile.txt     # default preset, 36 views at 256 px
    python benchmarks/profile_recon_step.py cpu 4                      # quick preset, 64 px: a smoke test
    python benchmarks/profile_recon_step.py cuda 100 graph             # the step captured as a CUDA graph

Prints the wall of N steps (unprofiled, after a warm-up run that compiles the Triton kernels), then, for a
profiled run, the wall, the summed GPU kernel time and the launch count, and the operators sorted by GPU and
by CPU time. GPU time well below the wall means the step is bound by the host's launches (docs/RECON.md).
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vfrt.recon.config import ReconConfig  # noqa: E402
from vfrt.recon.data import load_views  # noqa: E402
from vfrt.recon.testobjects import write_object_orbit  # noqa: E402
from vfrt.recon.trainer import train_neus  # noqa: E402


def main(device: str, steps: int, graph: bool = False) -> None:
    cuda = device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()
    orbit = write_object_orbit(Path(tempfile.mkdtemp()) / "orbit", "chair", 36, 256 if cuda else 64, 30.0, 0.004, device)
    cfg = ReconConfig.from_preset("default" if cuda else "quick", device=device, cuda_graph=graph)
    data = load_views(orbit, elevation_deg=cfg.elevation_deg, image_size=cfg.image_size, min_views=cfg.min_views)
    train_neus(data, dataclasses.replace(cfg, steps=max(2, steps // 2)))        # warm-up: Triton compiles
    sync()
    t = time.perf_counter()
    train_neus(data, dataclasses.replace(cfg, steps=steps))
    sync()
    print(f"{steps} steps (incl. setup: hull, fields) {time.perf_counter() - t:.2f} s", flush=True)
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t = time.perf_counter()
        train_neus(data, dataclasses.replace(cfg, steps=steps))
        sync()
        wall = time.perf_counter() - t
    events = prof.key_averages()
    gpu_s = sum(e.self_device_time_total for e in events) / 1e6
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cudaLaunchKernelExC"))
    print(f"profiled {steps} steps: wall {wall:.2f} s, GPU kernel time {gpu_s:.2f} s, kernel launches {launches}")
    if cuda:
        print(events.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cuda", int(sys.argv[2]) if len(sys.argv) > 2 else 100,
         len(sys.argv) > 3 and sys.argv[3] == "graph")
