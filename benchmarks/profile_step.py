"""Where does one fast-engine step spend its GPU time?  (needs CUDA; full-size random weights)

For each variant (compile on/off, cuDNN autotuning on/off, attention backend) it captures the step
graph for each K, times replays (median of CUDA events) and, with --profile, records the kernels
of a few replays with torch.profiler and groups them (convolution, GEMM, attention, fused
Triton, other). It also times self-attention alone for the UNet's head shapes under every SDPA
backend. Writes JSON + text tables to --out.

    python benchmarks/profile_step.py --ks 1,12,25 --variants eager,compile,compile+gemm64 --convs --profile --out prof

Variants are assembled from the public engine parts (network specs, executors, ``FastEngine``); the
experiments that lost their A/B (conv-as-GEMM, Inductor option overrides) live here, not in the library.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from vfrt.engines.executors import CompiledExecutor


INDUCTOR_TOKENS = {"c1x1mm": "conv_1x1_as_mm", "freeze": "freezing", "cdt": "coordinate_descent_tuning"}


class InductorOptionsExecutor(CompiledExecutor):
    """The compiled executor with Inductor config overrides (experiments only: none won its A/B, docs/PERF.md)."""

    def __init__(self, spec, module, options: dict):
        super().__init__(spec, module)
        self.options = options

    def _compile(self, module):
        return torch.compile(module, options=dict(self.options), dynamic=None)


def variant_engine(model, opts: set):
    """A fast engine for one '+'-joined variant, assembled from public parts (specs, executors, FastEngine)."""
    from vfrt.engines.config import EngineConfig
    from vfrt.engines.executors import EagerExecutor
    from vfrt.engines.fast import FastEngine
    from vfrt.engines.specs import NETWORK_NAMES, build_networks
    inductor = {option: True for token, option in INDUCTOR_TOKENS.items() if token in opts}
    config = EngineConfig(backend="fast", device="cuda", compile="compile" in opts and not inductor,
                          fused_geglu="nogeglu" not in opts, triton_conv="notconv" not in opts and "compile" not in opts,
                          attention="flash" if "flash" in opts else "auto").resolve()
    nets = build_networks(model, config.device, config.torch_dtype, config.torch_vae_dtype,
                          channels_last=config.channels_last, attention=config.attention,
                          fused_geglu=config.fused_geglu, triton_conv=config.triton_conv)
    specs = nets.specs()
    executors = {name: EagerExecutor(specs[name], nets.module(name)) for name in NETWORK_NAMES}
    if config.compile:
        executors["unet_step"] = CompiledExecutor(specs["unet_step"], nets.unet_step)
    elif inductor:
        executors["unet_step"] = InductorOptionsExecutor(specs["unet_step"], nets.unet_step, inductor)
    return FastEngine(executors, config, networks=nets)


@contextlib.contextmanager
def gemm_convs(max_pixels: int):
    """Route convolutions with <= max_pixels output pixels per image through the conv-as-GEMM experiment."""
    if not max_pixels:
        yield
        return
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent / "experiments" / "conv_gemm.py"
    spec = importlib.util.spec_from_file_location("conv_gemm_experiment", path)
    conv_gemm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv_gemm)
    real = F.conv2d

    def routed(x, weight, bias=None, stride=1, padding=0, *rest):
        k = weight.shape[-1]
        ho = (x.shape[-2] + 2 * padding - k) // stride + 1
        wo = (x.shape[-1] + 2 * padding - k) // stride + 1
        if not rest and x.is_contiguous(memory_format=torch.channels_last) and ho * wo <= max_pixels:
            return conv_gemm.conv2d_as_gemm(x, weight, bias, stride, padding)
        return real(x, weight, bias, stride, padding, *rest)
    F.conv2d = routed
    try:
        yield
    finally:
        F.conv2d = real


def kernel_category(name: str) -> str:
    n = name.lower()
    if n.startswith("triton"):
        return "triton (fused)"
    if "flash" in n or "fmha" in n or "attention" in n or "sdpa" in n:
        return "attention"
    if "conv" in n or "implicit" in n or "xmma_fprop" in n or "cudnn" in n or "fprop" in n or "dgrad" in n:
        return "convolution"
    if "gemm" in n or "cutlass" in n or "nvjet" in n or "cublas" in n or "sm90_xmma" in n:
        return "gemm"
    if "norm" in n:
        return "norm"
    return "other"


def profile_kernels(fn, n: int = 5) -> dict:
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    per_name = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if getattr(e, "device_type", None) is None or str(e.device_type) != "DeviceType.CUDA":
            continue
        dur = getattr(e, "device_time", None)
        if dur is None:
            dur = e.cuda_time
        per_name[e.name][0] += dur / 1e3 / n        # ms per step
        per_name[e.name][1] += 1
    cats = defaultdict(float)
    for name, (ms, _) in per_name.items():
        cats[kernel_category(name)] += ms
    top = sorted(per_name.items(), key=lambda kv: -kv[1][0])[:40]
    return {"kernels_per_step": sum(c for _, c in per_name.values()) / n,
            "kernel_ms_per_step": sum(ms for ms, _ in per_name.values()),
            "by_category_ms": dict(sorted(cats.items(), key=lambda kv: -kv[1])),
            "top": [(name[:140], round(ms, 4), cnt // n) for name, (ms, cnt) in top]}


def time_ms(fn, repeats=30, warmup=3):
    from vfrt.runtime.benchmark import _median_ms
    return _median_ms(fn, repeats, warmup)


def attention_bench(out: dict) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    res = {}
    for rows in (2, 13, 26):
        for heads, n, d in ((8, 1024, 40), (8, 256, 80), (8, 64, 160)):
            q, k, v = (torch.randn((rows, heads, n, d), device="cuda", dtype=torch.float16) for _ in range(3))
            flops = 4 * rows * heads * n * n * d
            for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                       SDPBackend.MATH):
                key = f"rows{rows}_h{heads}_n{n}_d{d}_{be.name}"
                try:
                    with sdpa_kernel([be]):
                        ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), repeats=50)
                    res[key] = {"ms": ms, "tflops": flops / ms / 1e9}
                except Exception as exc:  # noqa: BLE001 - report unsupported backends
                    res[key] = {"error": str(exc)[:200]}
            if d == 40:  # zero-padded head dim (exact: zero q/k columns add 0 to the scores; v columns are sliced off)
                for dp in (48, 64):
                    qp, kp, vp = (F.pad(t, (0, dp - d)) for t in (q, k, v))
                    for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
                        key = f"rows{rows}_h{heads}_n{n}_d{d}pad{dp}_{be.name}"
                        try:
                            with sdpa_kernel([be]):
                                ms = time_ms(lambda: F.scaled_dot_product_attention(qp, kp, vp, scale=d ** -0.5),
                                             repeats=50)
                            res[key] = {"ms": ms, "tflops": flops / ms / 1e9}
                        except Exception as exc:  # noqa: BLE001
                            res[key] = {"error": str(exc)[:200]}
    out["attention"] = res


def graph_time_us(fn, inner: int = 20, repeats: int = 20) -> float:
    """Device time of fn() in microseconds: median over replays of a CUDA graph of `inner` calls."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(inner):
            fn()
    return time_ms(g.replay, repeats) * 1e3 / inner


def conv_bench(model, out: dict, rows_list=(2, 13, 26)) -> None:
    """Every distinct UNet convolution: cuDNN (channels-last fp16) vs one GEMM over gathered taps."""
    from vfrt.engines.conv_gemm import conv2d_as_gemm
    shapes = unet_conv_shapes(model)
    res = []
    for (ci, co, k, st, pad, h, w), count in sorted(shapes.items(), key=lambda kv: -kv[0][5]):
        wt = torch.randn((co, ci, k, k), device="cuda", dtype=torch.float16).contiguous(
            memory_format=torch.channels_last) * 0.02
        b = torch.randn((co,), device="cuda", dtype=torch.float16)
        for rows in rows_list:
            x = torch.randn((rows, ci, h, w), device="cuda", dtype=torch.float16).contiguous(
                memory_format=torch.channels_last)
            with torch.no_grad():
                t_cudnn = graph_time_us(lambda: F.conv2d(x, wt, b, st, pad))
                t_gemm = graph_time_us(lambda: conv2d_as_gemm(x, wt, b, st, pad))
            ho = (h + 2 * pad - k) // st + 1
            flops = 2 * rows * ho * ho * co * ci * k * k
            res.append({"cin": ci, "cout": co, "k": k, "stride": st, "hw_in": h, "hw_out": ho, "count": count,
                        "rows": rows, "cudnn_us": t_cudnn, "gemm_us": t_gemm,
                        "cudnn_tflops": flops / t_cudnn / 1e6, "gemm_tflops": flops / t_gemm / 1e6})
            print(f"conv {ci}->{co} k{k} s{st} {h}x{w} x{count} rows {rows}: cudnn {t_cudnn:.1f} us, "
                  f"gemm {t_gemm:.1f} us", flush=True)
    out["convs"] = res
    for rows in rows_list:
        tc = sum(r["cudnn_us"] * r["count"] for r in res if r["rows"] == rows)
        tg = sum(r["gemm_us"] * r["count"] for r in res if r["rows"] == rows)
        best = {}
        for r in res:
            if r["rows"] == rows:
                key = r["hw_out"] ** 2
                best.setdefault(key, [0.0, 0.0])
                best[key][0] += r["cudnn_us"] * r["count"]
                best[key][1] += r["gemm_us"] * r["count"]
        print(f"rows {rows}: all convs cudnn {tc:.0f} us, gemm {tg:.0f} us; per output size (pixels: cudnn, gemm) "
              + ", ".join(f"{p}: {a:.0f}/{g:.0f}" for p, (a, g) in sorted(best.items())), flush=True)


def unet_conv_shapes(model, max_hw_out: int = 10**9):
    """{(C_in, C_out, k, stride, padding, H, W): count} of every convolution in one UNet forward
    (recorded by wrapping ``torch.nn.functional.conv2d`` during one eager forward of the UNet step)."""
    from collections import Counter

    from vfrt.engines.specs import build_networks
    nets = build_networks(model, "cuda", torch.float16, torch.float16, channels_last=True)
    shapes = Counter()
    real = F.conv2d

    def record(x, weight, bias=None, stride=1, padding=0, *rest):
        k = weight.shape[-1]
        st = stride if isinstance(stride, int) else stride[0]
        pad = padding if isinstance(padding, int) else padding[0]
        if (x.shape[2] + 2 * pad - k) // st + 1 <= max_hw_out:
            shapes[(x.shape[1], weight.shape[0], k, st, pad, x.shape[2], x.shape[3])] += 1
        return real(x, weight, bias, stride, padding, *rest)
    spec = nets.specs()["unet_step"]
    inputs = spec.sample_inputs({"rows": 2}, device="cuda")
    F.conv2d = record
    try:
        with torch.no_grad():
            nets.unet_step(**inputs)
    finally:
        F.conv2d = real
    del nets
    torch.cuda.empty_cache()
    return shapes


def conv_triton_bench(model, out: dict, rows_list=(2, 4, 8, 13, 26), max_hw_out: int = 16) -> None:
    """Small-output UNet convolutions: cuDNN vs the split-reduction Triton kernel over candidate configurations.

    The data behind ``vfrt.engines.conv_triton.config_for``: per (shape, rows) the cuDNN time, every
    configuration's time and the best one, with its max abs difference from cuDNN.
    """
    import triton

    from vfrt.engines.conv_triton import conv2d_triton
    shapes = unet_conv_shapes(model, max_hw_out)
    res = []
    for (ci, co, k, st, pad, h, w), count in sorted(shapes.items(), key=lambda kv: -kv[0][5]):
        wt = (torch.randn((co, ci, k, k), device="cuda", dtype=torch.float16) * (ci * k * k) ** -0.5).contiguous(
            memory_format=torch.channels_last)
        b = torch.randn((co,), device="cuda", dtype=torch.float16)
        ho = (h + 2 * pad - k) // st + 1
        for rows in rows_list:
            if ho > 8 and rows > 4:   # 16x16 outputs: only the smallest row counts can be latency-bound
                continue
            x = torch.randn((rows, ci, h, w), device="cuda", dtype=torch.float16).contiguous(
                memory_format=torch.channels_last)
            M, N, R = rows * ho * ho, co, k * k * ci
            with torch.no_grad():
                ref = F.conv2d(x, wt, b, st, pad)
                t_cudnn = graph_time_us(lambda: F.conv2d(x, wt, b, st, pad), inner=10, repeats=10)
            entry = {"cin": ci, "cout": co, "k": k, "stride": st, "hw_in": h, "hw_out": ho, "count": count,
                     "rows": rows, "M": M, "N": N, "R": R, "cudnn_us": t_cudnn, "configs": []}
            for bm in (16, 32, 64, 128):
                if bm > 2 * max(M, 16):
                    continue
                for bn in (32, 64, 128):
                    for bk in (64, 128):
                        if ci % bk:
                            continue
                        chunks = R // bk
                        tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
                        for split in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32):
                            if split > 1 and (split > chunks // 2 or tiles * split > 1100 or tiles >= 264):
                                continue
                            if split > 1 and tiles * split < 24:
                                continue
                            cfg = (bm, bn, bk, split, 8 if bm * bn >= 8192 else 4, 3 if bk == 128 else 4)
                            try:
                                t = graph_time_us(lambda: conv2d_triton(x, wt, b, st, pad, config=cfg), inner=10,
                                                  repeats=10)
                            except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory
                                print(f"config {cfg} failed: {str(exc)[:120]}", flush=True)
                                continue
                            entry["configs"].append([list(cfg), t])
            best_cfg, best_t = min(entry["configs"], key=lambda c: c[1])
            with torch.no_grad():
                err = (conv2d_triton(x, wt, b, st, pad, config=tuple(best_cfg)).float() - ref.float()).abs().max()
            entry.update(best=best_cfg, best_us=best_t, max_abs_vs_cudnn=float(err))
            res.append(entry)
            print(f"tconv {ci}->{co} k{k} s{st} {h}->{ho} x{count} rows {rows:2d} (M {M}): cudnn {t_cudnn:6.1f} us, "
                  f"triton best {best_t:6.1f} us {best_cfg}  err {float(err):.1e}", flush=True)
    out["conv_triton"] = res
    for rows in sorted({r["rows"] for r in res}):
        tc = sum(r["cudnn_us"] * r["count"] for r in res if r["rows"] == rows)
        tb = sum(min(r["cudnn_us"], r["best_us"]) * r["count"] for r in res if r["rows"] == rows)
        print(f"rows {rows}: these convs cudnn {tc:.0f} us/step, best of both {tb:.0f} us/step", flush=True)


def geglu_bench(out: dict, rows_list=(2, 13, 26)) -> None:
    """The feed-forward GEGLU projection per UNet level: Inductor (cuBLAS GEMM + fused pointwise) vs one Triton GEMM."""
    from vfrt.engines.geglu_triton import geglu_projection, geglu_reference
    unfused = torch.compile(geglu_reference, dynamic=False)
    res = []
    for hw, c in ((1024, 320), (256, 640), (64, 1280)):
        w = torch.randn((8 * c, c), device="cuda", dtype=torch.float16) * c ** -0.5
        b = torch.randn((8 * c,), device="cuda", dtype=torch.float16)
        for rows in rows_list:
            x = torch.randn((rows, hw, c), device="cuda", dtype=torch.float16)
            with torch.no_grad():
                err = (geglu_projection(x, w, b).float() - geglu_reference(x.float(), w.float(), b.float())).abs().max()
                t_unfused = graph_time_us(lambda: unfused(x, w, b))
                t_fused = graph_time_us(lambda: geglu_projection(x, w, b))
            flops = 2 * rows * hw * c * 8 * c
            r = {"hw": hw, "c": c, "rows": rows, "unfused_us": t_unfused, "fused_us": t_fused,
                 "fused_tflops": flops / t_fused / 1e6, "max_abs_err_vs_fp32": float(err)}
            res.append(r)
            print(f"geglu hw {hw} c {c} rows {rows}: inductor {t_unfused:.1f} us, fused {t_fused:.1f} us "
                  f"({r['fused_tflops']:.0f} TFLOP/s), max err {float(err):.2e}", flush=True)
    out["geglu"] = res
    # every configuration of the fused kernel, per shape (the data behind its fixed configuration table)
    from vfrt.engines.geglu_triton import geglu_launch
    configs = [(bm, bn, bk, w, st) for bm, bn, bk, w, st in
               ((128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 128, 32, 8, 4),
                (64, 64, 64, 4, 4), (128, 64, 32, 4, 5), (64, 64, 32, 4, 5), (256, 64, 64, 8, 3),
                (64, 256, 64, 8, 3), (128, 128, 64, 8, 4), (128, 64, 64, 8, 4), (128, 128, 64, 4, 3),
                (64, 128, 32, 4, 5), (128, 256, 32, 8, 3))]
    table = []
    for hw, c in ((1024, 320), (256, 640), (64, 1280)):
        w = torch.randn((8 * c, c), device="cuda", dtype=torch.float16) * c ** -0.5
        b = torch.randn((8 * c,), device="cuda", dtype=torch.float16)
        for rows in (2, 5, 13, 26):
            x = torch.randn((rows * hw, c), device="cuda", dtype=torch.float16)
            for bm, bn, bk, nw, st in configs:
                def launch():
                    geglu_launch(x, w, b, config=(bm, bn, bk, nw, st))
                try:
                    t = graph_time_us(launch)
                except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory
                    t = None
                    print(f"config {bm}x{bn}x{bk} w{nw} s{st} failed: {str(exc)[:120]}", flush=True)
                table.append({"hw": hw, "c": c, "rows": rows, "config": [bm, bn, bk, nw, st], "us": t})
            best = min((r for r in table if r["hw"] == hw and r["rows"] == rows and r["us"]), key=lambda r: r["us"])
            print(f"geglu configs hw {hw} c {c} rows {rows}: best {best['config']} {best['us']:.1f} us", flush=True)
    out["geglu_configs"] = table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="1,12,25")
    ap.add_argument("--variants", default="eager,eager+gemm64,compile,compile+gemm64",
                    help="comma-separated; each a '+'-joined set of: eager|compile, gemmN (GEMM convs up to N "
                         "output pixels), cudnnbench (torch.backends.cudnn.benchmark), Inductor options c1x1mm "
                         "(conv_1x1_as_mm), freeze (freezing), cdt (coordinate_descent_tuning), nogeglu (unfused GEGLU), notconv (cuDNN for every conv), flash (no cuDNN attention)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--attention", action="store_true")
    ap.add_argument("--convs", action="store_true")
    ap.add_argument("--geglu", action="store_true", help="time the fused GEGLU kernel against Inductor's")
    ap.add_argument("--conv-triton", action="store_true",
                    help="time the split-reduction Triton convolution's configurations against cuDNN (<= 16x16 outputs)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="prof")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    from vfrt.models import Zero123
    from vfrt.runtime.benchmark import bind_random_view
    from vfrt.runtime.schedule import make_ddim_schedule

    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "variants": {}}
    if args.attention:
        attention_bench(out)
        with open(os.path.join(args.out, "profile.json"), "w") as f:
            json.dump(out, f, indent=1)
    if args.geglu:
        geglu_bench(out)
        with open(os.path.join(args.out, "profile.json"), "w") as f:
            json.dump(out, f, indent=1)
    torch.manual_seed(0)
    model = Zero123.from_config(None).eval()
    if args.conv_triton:
        conv_triton_bench(model, out)
        with open(os.path.join(args.out, "profile.json"), "w") as f:
            json.dump(out, f, indent=1)
    if args.convs:
        conv_bench(model, out)
        with open(os.path.join(args.out, "profile.json"), "w") as f:
            json.dump(out, f, indent=1)
    sched = make_ddim_schedule(75, 1.0)
    ks = [int(k) for k in args.ks.split(",")]
    for variant in [v for v in args.variants.split(",") if v]:
        opts = set(variant.split("+"))
        torch.backends.cudnn.benchmark = "cudnnbench" in opts
        gemm = [int(o[4:]) for o in opts if o.startswith("gemm")]
        t0 = time.perf_counter()
        eng = variant_engine(model, opts)
        v = {"build_s": time.perf_counter() - t0, "step_ms": {}, "capture_s": {}, "profile": {}}
        gen = torch.Generator().manual_seed(0)
        steps = eng.step_cache
        for K in ks:
            den, _ = bind_random_view(eng, K, 256, sched, gen)
            x = torch.randn((1, 4, 32, 32), generator=gen)
            noise = torch.randn((sched.num_steps, K, 4, 32, 32), generator=gen)
            steps.load(den.view, x.cuda(), den.noise_bar(noise, (4, 32, 32)))
            t0 = time.perf_counter()
            with gemm_convs(gemm[0] if gemm else 0):      # only traced/captured kernels matter for the replays
                steps.capture()
            torch.cuda.synchronize()
            v["capture_s"][K] = time.perf_counter() - t0

            def replay():
                steps.rewind()
                steps.replay(1)
            v["step_ms"][K] = time_ms(replay, args.repeats)
            if args.profile:
                v["profile"][K] = profile_kernels(replay)
            print(f"{variant} K={K}: {v['step_ms'][K]:.3f} ms (capture {v['capture_s'][K]:.1f} s)", flush=True)
        out["variants"][variant] = v
        del eng, steps, den
        torch.cuda.empty_cache()
        with open(os.path.join(args.out, "profile.json"), "w") as f:
            json.dump(out, f, indent=1)

    lines = []
    for variant, v in out["variants"].items():
        for K, p in v["profile"].items():
            lines.append(f"== {variant} K={K}: step {v['step_ms'][K]:.3f} ms, kernels {p['kernels_per_step']:.0f}/step, "
                         f"kernel time {p['kernel_ms_per_step']:.3f} ms")
            lines.append("   " + ", ".join(f"{c} {ms:.3f}" for c, ms in p["by_category_ms"].items()))
            for name, ms, cnt in p["top"][:25]:
                lines.append(f"   {ms:8.4f} ms x{cnt:<4d} {name}")
    for key, r in out.get("attention", {}).items():
        lines.append(f"attn {key}: " + (f"{r['ms']:.4f} ms {r['tflops']:.0f} TFLOP/s" if "ms" in r else r["error"]))
    text = "\n".join(lines)
    with open(os.path.join(args.out, "profile.txt"), "w") as f:
        f.write(text + "\n")
    for variant, v in out["variants"].items():
        print(variant, {K: round(ms, 3) for K, ms in v["step_ms"].items()})


if __name__ == "__main__":
    main()
