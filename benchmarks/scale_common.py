"""Shared by bench_throughput.py and bench_multi_gpu.py: the model they time, graph pre-capture, step timing.

Full size: Zero123's architecture with random weights (``Zero123.from_config(None)``, torch seed 0, so every
process of a multi-GPU run builds the same weights), fp16, compiled UNet, CUDA graphs (what a long run
resolves to). ``tiny``: the tests' tiny architecture in fp32 on the CPU, to check the code paths.
"""
from __future__ import annotations

import json
import logging
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import torch

from vfrt.engines.config import EngineConfig
from vfrt.runtime.benchmark import bind_random_view


@dataclass(frozen=True)
class RandomPipeline:
    """``RandomPipeline(...)(device) -> Pipeline`` with random weights (picklable: it crosses processes)."""

    tiny: bool = False
    compile: bool | None = None

    def __call__(self, device: str):
        from vfrt.models import Zero123
        from vfrt.models.testing import init_nontrivial_, tiny_config
        from vfrt.runtime.pipeline import Pipeline
        torch.manual_seed(0)
        if self.tiny:
            model = Zero123.from_config(tiny_config(64)).eval()
            init_nontrivial_(model, torch.Generator().manual_seed(0))
            engine = EngineConfig(backend="fast", device=device)
        else:
            model = Zero123.from_config(None).eval()
            engine = EngineConfig(backend="fast", device=device, compile=self.compile, expected_views=10 ** 6)
        return Pipeline(model, engine, copy_weights=False)


def random_images(n: int, size: int, seed: int) -> list[torch.Tensor]:
    """n photos (1, 3, size, size) in [-1, 1], the same on every process."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand((1, 3, size, size), generator=g) * 2 - 1 for _ in range(n)]


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def precapture(engine, ks, sizes, schedule, size: int, seed: int = 0) -> tuple[dict, dict]:
    """Capture the step graph of every row count N (K + 1) the timed runs use (N in ``sizes``, K in ``ks``).

    The largest batch is loaded first, so the static buffers are sized once and no graph is dropped.
    Returns ({N: {"graphs": captured, "seconds": spent}}, {K: a bound view with K references}).
    With a row split every process must call this with the same arguments (captures are collective).
    """
    gen = torch.Generator().manual_seed(seed)
    steps = engine.step_cache
    latent = (4, size // 8, size // 8)
    views = {}
    spent = {n: {"graphs": 0, "seconds": 0.0} for n in sizes}
    for K in sorted(ks, reverse=True):
        den, _ = bind_random_view(engine, K, size, schedule, gen)
        views[K] = den.view
        for n in sorted(sizes, reverse=True):
            x = torch.randn((n, *latent), generator=gen).to(engine.device)
            nbar = torch.zeros((schedule.num_steps, n, *latent), device=engine.device)
            steps.load_batch([den.view] * n, x, nbar)
            sync(engine.device)
            t0 = time.perf_counter()
            captured = steps.capture()
            sync(engine.device)
            spent[n]["graphs"] += int(captured)
            spent[n]["seconds"] += time.perf_counter() - t0
    return spent, views


def step_ms(engine, view, n: int, repeats: int) -> float:
    """Median time of one (graph) step of n copies of ``view`` (CUDA events; wall clock on the CPU)."""
    steps = engine.step_cache
    latent = (4, *view.h0.shape[-2:])
    S = view.num_steps
    steps.load_batch([view] * n, torch.zeros((n, *latent), device=engine.device),
                     torch.zeros((S, n, *latent), device=engine.device))
    times = []
    for r in range(repeats + 2):
        steps.rewind()
        if engine.device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            steps.replay(1)
            b.record()
            b.synchronize()
            elapsed = a.elapsed_time(b)
        else:
            t0 = time.perf_counter()
            steps.replay(1)
            elapsed = (time.perf_counter() - t0) * 1e3
        if r >= 2:
            times.append(elapsed)
    return statistics.median(times)


def machine(device) -> dict:
    """Where and when (JSON-friendly)."""
    dev = torch.device(device)
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "gpus_visible": torch.cuda.device_count() if torch.cuda.is_available() else 0}


def command_line(script: str, argv) -> str:
    """The command that produced a result (recorded in its JSON)."""
    import sys
    return " ".join(["python", script] + (sys.argv[1:] if argv is None else list(argv)))


def main_of(parse, run, format_table, argv=None) -> dict:
    """A benchmark script's main: parse, run, write the JSON (``--out``), print the table."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse(argv)
    res = run(args, argv)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(format_table(res))
    return res
