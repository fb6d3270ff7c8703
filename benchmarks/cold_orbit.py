"""Where does a *first* orbit spend the time a second orbit does not?  (needs CUDA; full-size random weights)

Builds a fast engine (compiled or not), takes its first step at --warm-ks (that compiles), then runs
the same 36-view orbit twice in one process and times every phase of every view with
``torch.cuda.synchronize`` around it, by wrapping the engine's public calls: noise draws, reference
encodes, bind, loading the step buffers, graph capture (incl. its two warm-up steps), the 76
replays, decode. Prints the per-phase totals of both orbits and per-view times, and writes JSON.

    python benchmarks/cold_orbit.py --compile --out cold.json
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch


class PhaseTimer:
    """Accumulates synchronised wall time per (orbit, view, phase)."""

    def __init__(self):
        self.orbit = "cold"
        self.view = -1
        self.t = defaultdict(float)

    def wrap(self, obj, name: str, phase: str):
        fn = getattr(obj, name)

        def timed(*a, **kw):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            torch.cuda.synchronize()
            self.t[(self.orbit, self.view, phase)] += time.perf_counter() - t0
            return out
        setattr(obj, name, timed)

    def totals(self, orbit: str) -> dict:
        out = defaultdict(float)
        for (o, _, phase), s in self.t.items():
            if o == orbit:
                out[phase] += s
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def sdpa_first_calls(res: dict) -> None:
    """Seconds of the first and second SDPA call at new batch sizes, per backend (plan building?)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    out = {}
    for be in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        for rows in (3, 5, 7):
            for heads, n, d in ((8, 1024, 40), (8, 256, 80), (8, 64, 160)):
                q, k, v = (torch.randn((rows, heads, n, d), device="cuda", dtype=torch.float16) for _ in range(3))
                times = []
                for _ in range(2):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    with sdpa_kernel([be]):
                        F.scaled_dot_product_attention(q, k, v)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                out[f"{be.name}_rows{rows}_n{n}_d{d}"] = times
                print(f"sdpa {be.name} rows {rows} n {n} d {d}: first {times[0] * 1e3:.1f} ms, "
                      f"second {times[1] * 1e3:.2f} ms", flush=True)
    res["sdpa_first_calls_s"] = out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--warm-ks", default="1", help="K values stepped once before the orbits")
    ap.add_argument("--attention", default="auto", choices=["auto", "flash"], help="the engine's attention option")
    ap.add_argument("--no-cudnn-sdpa", action="store_true", help="disable the cuDNN SDPA backend process-wide")
    ap.add_argument("--sdpa", action="store_true", help="also time first SDPA calls at new batch sizes")
    ap.add_argument("--out", default="cold.json")
    args = ap.parse_args()
    if args.no_cudnn_sdpa:
        torch.backends.cuda.enable_cudnn_sdp(False)

    from vfrt.engines import create_engine
    from vfrt.engines.config import EngineConfig
    from vfrt.models import Zero123
    from vfrt.runtime import noise as noise_mod
    from vfrt.runtime.benchmark import bind_random_view
    from vfrt.runtime.pipeline import Pipeline
    from vfrt.runtime.sampler import SamplerConfig
    from vfrt.runtime.schedule import make_ddim_schedule

    torch.manual_seed(0)
    model = Zero123.from_config(None).eval()
    t0 = time.perf_counter()
    eng = create_engine(model, EngineConfig(backend="fast", device="cuda", compile=args.compile,
                                            attention=args.attention))
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "engine": eng.describe(),
           "no_cudnn_sdpa": args.no_cudnn_sdpa, "engine_build_s": time.perf_counter() - t0, "first_step_s": {}}
    if args.sdpa:
        sdpa_first_calls(res)
    sched = make_ddim_schedule(75, 1.0)
    gen = torch.Generator().manual_seed(0)
    for K in [int(k) for k in args.warm_ks.split(",") if k]:
        den, _ = bind_random_view(eng, K, 256, sched, gen)
        t0 = time.perf_counter()
        den.run(torch.randn((1, 4, 32, 32), generator=gen), torch.randn((sched.num_steps, K, 4, 32, 32), generator=gen))
        torch.cuda.synchronize()
        res["first_step_s"][K] = time.perf_counter() - t0
        print(f"warm K={K}: {res['first_step_s'][K]:.1f} s", flush=True)

    timer = PhaseTimer()
    steps = eng.step_cache
    timer.wrap(steps, "capture", "capture (incl. 2 warm-up steps)")
    timer.wrap(steps, "replay", "replay (76 steps)")
    timer.wrap(steps, "load", "load")
    timer.wrap(eng, "bind", "bind")
    timer.wrap(eng, "encode_view", "encode_view")
    timer.wrap(eng, "decode", "decode")

    pipe = Pipeline.from_engine(eng, model.config)
    img = torch.rand((1, 3, 256, 256), generator=gen) * 2 - 1
    orig_view = noise_mod.NoiseSource.view

    def view(self, v, *a, **kw):
        timer.view = v
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = orig_view(self, v, *a, **kw)
        timer.t[(timer.orbit, v, "noise draw")] += time.perf_counter() - t0
        return out
    noise_mod.NoiseSource.view = view
    for orbit in ("cold", "warm"):
        timer.orbit = orbit
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        pipe.orbit(img, views=36, preprocess=False, sampler=SamplerConfig(seed=1))
        torch.cuda.synchronize()
        res[f"orbit_{orbit}_s"] = time.perf_counter() - t0
        res[f"phases_{orbit}_s"] = timer.totals(orbit)
        print(orbit, f"{res[f'orbit_{orbit}_s']:.2f} s", {k: round(v, 2) for k, v in res[f"phases_{orbit}_s"].items()},
              flush=True)
    per_view = defaultdict(dict)
    for (o, v, phase), s in timer.t.items():
        per_view[v][f"{o}:{phase}"] = round(s, 4)
    res["per_view"] = {str(v): d for v, d in sorted(per_view.items())}
    for v, d in sorted(per_view.items()):
        cold = sum(s for k, s in d.items() if k.startswith("cold:") and "capture" not in k)
        warm = sum(s for k, s in d.items() if k.startswith("warm:") and "capture" not in k)
        print(f"view {v:2d}: cold {cold:.3f} s warm {warm:.3f} s  capture "
              f"{d.get('cold:capture (incl. 2 warm-up steps)', 0):.3f} s", flush=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
