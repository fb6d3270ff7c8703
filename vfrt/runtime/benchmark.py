"""Reference vs fast engine on the same weights: per-K step latency, orbit time, memory, fidelity.

Used by ``vfrt bench`` and ``benchmarks/bench_orbit.py``. Step latencies are medians of CUDA-event
timings after warm-up. The reference orbit time is *estimated* from its per-K step latencies
(sum over the orbit's views of 76 x step(K_v)) because running it costs minutes; the fast orbit
is run for real, cold (including CUDA-graph captures) and warm.
"""
from __future__ import annotations

import json
import logging
import math
import platform
import statistics
import time
from datetime import datetime, timezone

from dataclasses import replace

import numpy as np
import torch

from vfrt.engines.config import EngineConfig
from vfrt.runtime.poses import plan_orbit
from vfrt.runtime.sampler import SamplerConfig
from vfrt.runtime.schedule import make_ddim_schedule

log = logging.getLogger(__name__)


def _median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def _random_refs(engine, K, size, gen):
    imgs = [torch.rand((1, 3, size, size), generator=gen) * 2 - 1 for _ in range(K)]
    return [engine.encode_view(im) for im in imgs]


def bind_random_view(engine, K, size, schedule, gen, guidance=3.0):
    """Bind K random reference views (random images, poses, weights) for timing; returns (denoiser, w)."""
    refs = _random_refs(engine, K, size, gen)
    T = torch.randn((K, 4), generator=gen)
    w = torch.softmax(torch.randn(K, generator=gen), 0)
    return engine.bind(refs, T, w, schedule, guidance), w


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [-1, 1] (peak-to-peak 2)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


def run_benchmark(model, engine: EngineConfig, *, ks=(1, 2, 4, 8, 12, 16, 20, 25), repeats: int = 30,
                  ref_repeats: int = 5, orbit: bool = True, fidelity: bool = True, reference: bool = True) -> dict:
    """Run the benchmark; ``model`` is a CPU :class:`Zero123` (full size for meaningful numbers), ``engine``
    the fast engine's choices (backend "fast" on a CUDA device; unset choices resolve as for a long run)."""
    from vfrt.engines import create_engine
    from vfrt.runtime.pipeline import Pipeline
    if not torch.cuda.is_available():
        raise RuntimeError("the benchmark needs a CUDA GPU")
    engine = replace(engine, backend="fast", expected_views=engine.expected_views or 10 ** 6)
    choices = engine.resolve()
    dev = choices.device
    if dev.type != "cuda":
        raise RuntimeError("the benchmark needs a CUDA device")
    size = int(model.config.unet.image_size) * 8
    sched = make_ddim_schedule(75, 1.0)
    gen = torch.Generator().manual_seed(0)
    res = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__, "python": platform.python_version(),
           "image_size": size, "unet_params": sum(p.numel() for p in model.unet.parameters()),
           "steps_per_view": sched.num_steps}

    # ---------------------------------------------------------------- fast engine
    torch.cuda.reset_peak_memory_stats(dev)
    torch.cuda.empty_cache()
    fast = create_engine(model, engine)
    res.update(fast.describe())
    res["fast_weights_gb"] = torch.cuda.memory_allocated(dev) / 1e9
    fast_ms, fast_eager_ms = {}, {}
    steps = fast.step_cache
    for K in ks:
        den, _ = bind_random_view(fast, K, size, sched, gen)
        x = torch.randn((1, 4, size // 8, size // 8), generator=gen)
        noise = torch.randn((sched.num_steps, K, 4, size // 8, size // 8), generator=gen)
        steps.load(den.view, x.to(dev), den.noise_bar(noise, tuple(x.shape[1:])))
        t0 = time.perf_counter()
        steps.capture()
        torch.cuda.synchronize(dev)
        res.setdefault("fast_first_capture_s", time.perf_counter() - t0)  # includes compiling, when compiled

        def replay():
            steps.rewind()
            steps.replay(1)
        fast_ms[K] = _median_ms(replay, repeats)

        def eager():
            steps.rewind()
            steps.step_eager()
        fast_eager_ms[K] = _median_ms(eager, max(5, repeats // 3))
        log.info("fast K=%d: graph %.2f ms, eager %.2f ms", K, fast_ms[K], fast_eager_ms[K])
    res["unet_compiled"] = fast.describe()["unet_compiled"]  # after the first forward: False if compiling failed
    res["fast_step_ms"] = fast_ms
    res["fast_eager_step_ms"] = fast_eager_ms

    plans = plan_orbit(36)
    if orbit:
        pipe = Pipeline.from_engine(fast, model.config)
        img = torch.rand((1, 3, size, size), generator=gen) * 2 - 1
        torch.cuda.reset_peak_memory_stats(dev)
        steps.clear()
        t0 = time.perf_counter()
        pipe.orbit(img, views=36, preprocess=False, sampler=SamplerConfig(seed=1))
        res["fast_orbit_cold_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = pipe.orbit(img, views=36, preprocess=False, sampler=SamplerConfig(seed=1))
        res["fast_orbit_warm_s"] = time.perf_counter() - t0
        res["fast_orbit_peak_allocated_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
        res["fast_orbit_peak_reserved_gb"] = torch.cuda.max_memory_reserved(dev) / 1e9
        res["fast_orbit_images_finite"] = bool(np.isfinite(out.images).all())
        # where the peak comes from: one VAE decode, one K=25 view (graph already captured)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        fast.decode(torch.randn((1, 4, size // 8, size // 8), device=dev))
        res["fast_decode_extra_gb"] = (torch.cuda.max_memory_allocated(dev) - base) / 1e9
        den, _ = bind_random_view(fast, 25, size, sched, gen)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        den.run(torch.randn((1, 4, size // 8, size // 8)), torch.randn((sched.num_steps, 25, 4, size // 8, size // 8)))
        res["fast_view_k25_extra_gb"] = (torch.cuda.max_memory_allocated(dev) - base) / 1e9
        res["fast_resident_gb"] = base / 1e9
    res["orbit_sum_K"] = int(sum(p.K for p in plans))

    # ---------------------------------------------------------------- reference engine
    if reference:
        fidelity_inputs = None
        if fidelity:
            g2 = torch.Generator().manual_seed(5)
            img = torch.rand((1, 3, size, size), generator=g2) * 2 - 1
            fidelity_inputs = img
            pipe_f = Pipeline.from_engine(fast, model.config)
            fast_first = pipe_f.orbit(img, views=36, generate=2, preprocess=False, sampler=SamplerConfig(seed=3))
        del fast, steps
        torch.cuda.empty_cache()
        ref = create_engine(model, EngineConfig(backend="reference", device=str(dev)))
        ref_ms = {}
        for K in ks:
            den, _ = bind_random_view(ref, K, size, sched, gen)
            x = torch.randn((1, 4, size // 8, size // 8), generator=gen, device="cpu").to(dev)
            n = torch.randn((K, 4, size // 8, size // 8), generator=gen).to(dev)
            ref_ms[K] = _median_ms(lambda: den.step(x, 10, n), ref_repeats, warmup=1)
            log.info("reference K=%d: %.2f ms", K, ref_ms[K])
        res["reference_step_ms"] = ref_ms
        kk = np.array(sorted(ref_ms))
        est = sum(sched.num_steps * float(np.interp(p.K, kk, [ref_ms[k] for k in kk])) for p in plans) / 1e3
        res["reference_orbit_estimated_s"] = est
        res["speedup_step"] = {K: ref_ms[K] / fast_ms[K] for K in ks}
        if fidelity:
            pipe_r = Pipeline.from_engine(ref, model.config)
            ref_first = pipe_r.orbit(fidelity_inputs, views=36, generate=2, preprocess=False,
                                     noise=fast_first.noise)
            res["fidelity_psnr_db"] = [psnr(a, b) for a, b in zip(fast_first.images, ref_first.images)]
            res["fidelity_max_abs"] = float(np.abs(fast_first.images - ref_first.images).max())
    return res


def format_table(res: dict) -> str:
    lines = [f"GPU: {res['gpu']}  torch {res['torch']}  {res['image_size']}px  dtype {res['dtype']}  "
             f"channels_last={res['channels_last']}  compile={res.get('unet_compiled', res.get('compile'))}  "
             f"attention={res.get('attention')}  fused_geglu={res.get('fused_geglu')}  "
             f"triton_conv={res.get('triton_conv')}",
             # "no graph": the same (compiled, when compile=True) step launched from Python, without the CUDA graph
             f"{'K':>4} {'reference ms':>13} {'fast no-graph ms':>17} {'fast graph ms':>14} {'speed-up':>9}"]
    for K, f in res["fast_step_ms"].items():
        r = res.get("reference_step_ms", {}).get(K, float("nan"))
        lines.append(f"{K:>4} {r:>13.2f} {res['fast_eager_step_ms'][K]:>17.2f} {f:>14.2f} {r / f:>9.1f}")
    for key in ("fast_first_capture_s", "fast_orbit_cold_s", "fast_orbit_warm_s", "reference_orbit_estimated_s",
                "fast_orbit_peak_allocated_gb", "fast_orbit_peak_reserved_gb", "fast_weights_gb",
                "fast_resident_gb", "fast_decode_extra_gb", "fast_view_k25_extra_gb",
                "fidelity_psnr_db", "fidelity_max_abs"):
        if key in res:
            v = res[key]
            lines.append(f"{key}: {[round(x, 2) for x in v] if isinstance(v, list) else round(v, 3)}")
    return "\n".join(lines)


def save_json(res: dict, path) -> None:
    with open(path, "w") as f:
        json.dump(res, f, indent=2, default=str)
