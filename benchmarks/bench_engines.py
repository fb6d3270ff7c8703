"""Build once, start fast - measured on one GPU (needs CUDA; full-size random weights in the original format).

    python benchmarks/bench_engines.py --out engines_h200.json                       # ~8-9 min on one H200
    python benchmarks/bench_engines.py --phases ckpt,toolchain,build --out a.json    # or split across calls
    python benchmarks/bench_engines.py --phases cli,orbit,fidelity --out b.json      #   (same machine, same --work)
    python benchmarks/bench_engines.py --phases torch --out c.json                   # compiled-torch baseline, ~3 min

Phases (in this order; each is optional, each result lands in the JSON as soon as it is measured):

ckpt       write a full-size random Zero123 checkpoint in the original Lightning format (UNet + EMA, VAE,
           CLIP ViT-L/14, cc_projection, schedule buffers: ~8.6 GB) into --work, unless it is there.
toolchain  can this process load AOTInductor packages built by $CXX? (vfrt.export.aoti.check_toolchain: a
           tiny package probe-loaded in a child). On a crash it applies the fix vfrt recommends - an
           LD_PRELOAD that loaded in the child, else CXX=<a g++ matching this process> - to every later
           subprocess, and records it (also in --work, for split calls).
build      `vfrt build-engines -c CKPT --device cuda` (fresh process, timed) into the cache in --work.
cli        fresh processes of `vfrt -v run examples/chair.png -c CKPT` with the engines (--cli-runs times):
           wall time, and process start -> "sampling N views" (the log line just before the first
           view's encode and first step) and -> first view done, timed by this process as lines arrive.
captures   (CUDA only) in a fresh process, what the first orbit pays per new row count: for K = 1..25 in an
           orbit's order, the first capture() (two eager warm-up steps + the capture, shapes never run
           before), then a graph-replayed and an eager step (the data for a capture policy).
orbit      in one process: load the engines, a first and a warm 36-view orbit of examples/chair.png
           (default sampler), step latency at K = 1, 12, 25 (CUDA-graph replay, CUDA events), peak memory
           (torch's allocator + what loading the packages took from the device: their weights bypass it;
           no polling thread: CUDA calls from another thread can break a graph capture).
fidelity   the engines vs the fp32 reference backend on the first view of the orbit (same noise): PSNR
           and max abs; and per step of that view, eps of the engines' networks vs fp32 PyTorch networks
           on the fp32 trajectory (max |d eps| / max |eps| and RMS ratio, per step).
torch      baseline: the compiled PyTorch fast engine (the default of a long run) on random weights of
           the same architecture: first step (compile), first and warm orbit, step latency, peak memory.

Every GPU phase runs in a subprocess (with the toolchain fix in its environment); progress lines carry
timestamps; the JSON is rewritten after every phase, so a run cut short still reports what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("ckpt", "toolchain", "build", "cli", "captures", "orbit", "fidelity", "torch")
DEFAULT_PHASES = ("ckpt", "toolchain", "build", "cli", "orbit", "fidelity")
T0 = time.perf_counter()
IMAGE = ROOT / "examples" / "chair.png"
KS = (1, 12, 25)


def say(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')} +{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ orchestration
class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.ckpt = Path(args.ckpt).resolve() if args.ckpt else self.work / "zero123-random.ckpt"
        self.weights = ["-c", str(self.ckpt)] + (["--config", str(Path(args.config).resolve())] if args.config else [])
        self.cache = self.work / "cache"
        self.res = {"command": " ".join([sys.executable, *sys.argv]), "started": datetime.now(timezone.utc).isoformat(),
                    "work": str(self.work), "phases": {}}
        fix = self.work / "toolchain_fix.json"
        self.fix_env = json.loads(fix.read_text()) if fix.exists() else {}

    def env(self) -> dict:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep), "VFRT_CACHE_DIR": str(self.cache), "PYTHONUNBUFFERED": "1"}
        env.update(self.fix_env)
        return env

    def save(self) -> None:
        self.res["updated"] = datetime.now(timezone.utc).isoformat()
        tmp = Path(self.args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(self.res, indent=2, default=str))
        os.replace(tmp, self.args.out)

    def run(self) -> None:
        phases = [p for p in PHASES if p in self.args.phases.split(",")]
        unknown = set(self.args.phases.split(",")) - set(PHASES)
        if unknown:
            raise SystemExit(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
        say(f"phases {phases}; work dir {self.work}; JSON -> {self.args.out}")
        for phase in phases:
            say(f"=== {phase} ===")
            t = time.perf_counter()
            try:
                out = getattr(self, f"phase_{phase}")()
                self.res["phases"][phase] = {"ok": True, "seconds": round(time.perf_counter() - t, 1), **(out or {})}
            except Exception as exc:  # noqa: BLE001 - record and go on: later phases may still measure
                say(f"{phase} FAILED: {type(exc).__name__}: {exc}")
                self.res["phases"][phase] = {"ok": False, "seconds": round(time.perf_counter() - t, 1),
                                             "error": f"{type(exc).__name__}: {exc}",
                                             "traceback": traceback.format_exc()[-4000:]}
            self.save()
            say(f"{phase}: {'ok' if self.res['phases'][phase]['ok'] else 'failed'} "
                f"({self.res['phases'][phase]['seconds']} s)")
        print(table(self.res), flush=True)
        self.res["table"] = table(self.res)
        self.save()

    def worker(self, name: str, timeout: int, *extra: str) -> dict:
        """Run ``--worker name`` in a fresh process (streaming its output) and return its JSON result."""
        result = self.work / f"{name}.result.json"
        result.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--work", str(self.work),
               "--result", str(result), *extra]
        proc = subprocess.run(cmd, env=self.env(), timeout=timeout, check=False)
        data = json.loads(result.read_text()) if result.exists() else {}
        if proc.returncode != 0:
            raise RuntimeError(f"worker {name} exited with {proc.returncode}; partial result {data}")
        return data

    def engine_dir(self) -> Path:
        found = sorted((self.cache / "engines").glob("*/manifest.json")) if (self.cache / "engines").exists() else []
        if not found:
            raise RuntimeError(f"no engines in {self.cache}: run the build phase first (same --work, same machine)")
        return max(found, key=lambda p: p.stat().st_mtime).parent

    def need_ckpt(self) -> None:
        if not self.ckpt.exists():
            raise RuntimeError(f"{self.ckpt} is missing: run the ckpt phase first (same --work, same machine)")

    # ------------------------------------------------------------------ phases
    def phase_ckpt(self) -> dict:
        if self.args.ckpt or self.ckpt.exists():
            say(f"{self.ckpt} exists ({self.ckpt.stat().st_size / 1e9:.2f} GB): reused")
            return {"path": str(self.ckpt), "bytes": self.ckpt.stat().st_size, "reused": True}
        out = self.worker("ckpt", 600)
        return {"path": str(self.ckpt), "bytes": self.ckpt.stat().st_size, "reused": False, **out}

    def phase_toolchain(self) -> dict:
        """In this process: no package is ever loaded here, only probed in children."""
        sys.path.insert(0, str(ROOT))
        os.environ["VFRT_CACHE_DIR"] = str(self.cache)
        from vfrt.engines.toolchain import matching_compilers
        from vfrt.export.aoti import check_toolchain
        report = check_toolchain()
        out = {"compiler": report.toolchain.to_dict(), "process_libstdcxx": report.loaded, "loads": report.ok,
               "detail": report.detail, "preload_that_loads": list(report.preload)}
        fix = {}
        if not report.ok:
            if report.preload:
                fix = {"LD_PRELOAD": report.preload[0]}
            else:
                compilers = matching_compilers(report.loaded, report.toolchain.cxx)
                fix = {"CXX": compilers[0]} if compilers else {}
            say(f"packages built by {report.toolchain.cxx} do not load here ({report.detail}); applying {fix or 'nothing (none found)'}")
        else:
            say(f"packages built by {report.toolchain.cxx} load here ({report.detail})")
        self.fix_env = fix
        (self.work / "toolchain_fix.json").write_text(json.dumps(fix))
        return {**out, "applied_fix": fix}

    def phase_build(self) -> dict:
        self.need_ckpt()
        cmd = [sys.executable, "-m", "vfrt.cli.main", "-v", "build-engines", *self.weights, "--device", self.args.device]
        if self.args.rebuild:
            cmd.append("--force")
        if self.args.no_verify:
            cmd.append("--no-verify")
        say(" ".join(cmd))
        rc, lines, wall = run_timed(cmd, self.env(), self.args.build_timeout, echo=True)
        if rc != 0:
            raise RuntimeError(f"vfrt build-engines exited with {rc}: " + " | ".join(line for _, _, line in lines[-6:]))
        directory = self.engine_dir()
        manifest = json.loads((directory / "manifest.json").read_text())
        return {"wall_s": round(wall, 1), "reused": any("up to date" in line for _, _, line in lines),
                "dir": str(directory),
                "build_seconds_manifest": manifest["build_seconds"],
                "package_bytes": {n["name"]: n["size"] for n in manifest["networks"]},
                "verify_max_rel_error": {n["name"]: n["max_error"] for n in manifest["networks"]},
                "toolchain": manifest["toolchain"], "platform": manifest["platform"]}

    def phase_cli(self) -> dict:
        self.need_ckpt()
        directory = self.engine_dir()
        runs = [self.fresh_run(i, []) for i in range(self.args.cli_runs)]
        out = {"engine_dir": str(directory), "runs": runs}
        good = [r for r in runs if r["rc"] == 0 and r["used_engines"]]
        if good:
            for key in ("wall_s", "start_to_sampling_s", "start_to_first_view_s", "start_to_outputs_written_s"):
                values = [r[key] for r in good if r.get(key) is not None]
                out[f"median_{key}"] = round(statistics.median(values), 2) if values else None
        if self.args.cli_torch:
            out["torch_run"] = self.fresh_run(99, ["--no-engines"])
        return out

    def fresh_run(self, i: int, extra: list[str]) -> dict:
        """One `vfrt run` in a fresh process; lines are timestamped here as they arrive."""
        out_dir = self.work / "runs" / f"run{i}"
        cmd = [sys.executable, "-m", "vfrt.cli.main", "-v", "run", str(IMAGE), *self.weights, "-o", str(out_dir),
               "--overwrite", "--device", self.args.device, "--views", str(self.args.views), *extra]
        say(" ".join(cmd))
        rc, lines, wall = run_timed(cmd, self.env(), self.args.run_timeout)

        def first(pattern):
            return next((round(t, 2) for t, _, line in lines if re.search(pattern, line)), None)
        res = {"rc": rc, "wall_s": round(wall, 2), "args": extra,
               "used_engines": any(line.startswith("engines: ") for _, _, line in lines),
               "start_to_sampling_s": first(r"sampling \d+ views"), "start_to_first_view_s": first(r"view 1/\d+ done"),
               "start_to_outputs_written_s": first(r"wrote the outputs of"),
               "start_to_last_line_s": round(lines[-1][0], 2) if lines else None,
               "not_used_note": next((line for _, _, line in lines if "not using the built engines" in line), None)}
        meta = out_dir / "run.json"
        if meta.exists():
            m = json.loads(meta.read_text())
            res["generation_s"] = m.get("seconds")
            res["engine"] = m.get("engine", {}).get("engines")
        if rc != 0:
            res["tail"] = [line for _, _, line in lines[-15:]]
        say(f"run {i}: rc {rc}, wall {wall:.1f} s, sampling at {res['start_to_sampling_s']} s, first view at "
            f"{res['start_to_first_view_s']} s, engines used: {res['used_engines']}")
        return res

    def phase_orbit(self) -> dict:
        return self.worker("orbit", 420, "--engines", str(self.engine_dir()), "--device", self.args.device,
                           "--views", str(self.args.views), "--orbit-repeats", str(self.args.orbit_repeats),
                           "--step-repeats", str(self.args.step_repeats))

    def phase_captures(self) -> dict:
        return self.worker("captures", 300, "--engines", str(self.engine_dir()), "--device", self.args.device)

    def phase_fidelity(self) -> dict:
        self.need_ckpt()
        return self.worker("fidelity", 420, "--engines", str(self.engine_dir()), "--device", self.args.device,
                           *self.weights_for_worker())

    def weights_for_worker(self) -> list[str]:
        return ["--ckpt", str(self.ckpt)] + (["--config", str(Path(self.args.config).resolve())] if self.args.config
                                             else [])

    def phase_torch(self) -> dict:
        return self.worker("torch", 560, "--orbit-repeats", str(self.args.orbit_repeats), "--step-repeats",
                           str(self.args.step_repeats))


def run_timed(cmd: list[str], env: dict, timeout: float, echo: bool = False):
    """Run ``cmd``; returns (exit code, [(seconds since start, "out"/"err", line)], wall seconds). Lines are
    timed here as they arrive (and printed as they come when ``echo``); a command past ``timeout`` is killed."""
    lines: list[tuple[float, str, str]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def pump(stream, name):
        for line in stream:
            lines.append((time.perf_counter() - start, name, line.rstrip()))
            if echo and line.strip() and "Warning" not in line:
                say(f"  | {line.rstrip()[-300:]}")
    threads = [threading.Thread(target=pump, args=(proc.stdout, "out")),
               threading.Thread(target=pump, args=(proc.stderr, "err"))]
    for t in threads:
        t.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = -9
    for t in threads:
        t.join()
    return rc, lines, time.perf_counter() - start


# ------------------------------------------------------------------------------------------ workers (one process each)
def worker_ckpt(args, work: Path) -> dict:
    import torch

    from vfrt.models import Zero123
    from vfrt.models.checkpoint import to_original_state_dict
    from vfrt.models.testing import schedule_buffers
    torch.manual_seed(0)
    t = time.perf_counter()
    model = Zero123.from_config(None)
    say(f"random full-size model in {time.perf_counter() - t:.1f} s")
    ema = {n: p.detach().clone() for n, p in model.unet.named_parameters()}   # own storage: a real EMA copy's size
    sd = to_original_state_dict(model, ema)
    sd.update({"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(105000, dtype=torch.int32)})
    sd.update(schedule_buffers(model.config.schedule))
    tmp = work / "zero123-random.ckpt.tmp"
    t = time.perf_counter()
    torch.save({"state_dict": sd, "global_step": 105000, "epoch": 0}, tmp)
    os.replace(tmp, work / "zero123-random.ckpt")
    say(f"wrote {(work / 'zero123-random.ckpt').stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t:.1f} s")
    return {"unet_params": sum(p.numel() for p in model.unet.parameters()), "write_s": round(time.perf_counter() - t, 1)}


def _step_ms(engine, K: int, repeats: int, gen) -> float:
    """Median CUDA-event time of one captured step at K references (graph replay)."""
    from vfrt.runtime.benchmark import bind_random_view
    from vfrt.runtime.schedule import make_ddim_schedule
    sched = make_ddim_schedule(75, 1.0)
    den, _ = bind_random_view(engine, K, 256, sched, gen)
    steps = engine.step_cache
    _load_random(steps, den, K, sched, gen)
    steps.capture()
    times = [_replay_ms(steps) for _ in range(repeats + 3)][3:]
    return round(statistics.median(times), 3)


def _load_random(steps, den, K: int, sched, gen) -> None:
    """Load a bound random view with random x_T and step noise into the step cache (256 px: 4x32x32 latents)."""
    import torch
    steps.load(den.view, torch.randn((1, 4, 32, 32), generator=gen).cuda(),
               den.noise_bar(torch.randn((sched.num_steps, K, 4, 32, 32), generator=gen), (4, 32, 32)))


def _replay_ms(steps) -> float:
    """One graph-replayed step from step 0, timed with CUDA events (ms)."""
    import torch
    steps.rewind()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    steps.replay(1)
    b.record()
    b.synchronize()
    return a.elapsed_time(b)


def _sync(device) -> None:
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _orbit_times(pipe, image, res: dict, prefix: str, repeats: int, views: int = 36) -> None:
    import numpy as np

    from vfrt.runtime.sampler import SamplerConfig
    for label in ["first"] + [f"warm{i}" for i in range(repeats)]:
        _sync(pipe.device)
        t = time.perf_counter()
        out = pipe.orbit(image, views=views, sampler=SamplerConfig.for_mode("orbit"))
        _sync(pipe.device)
        res[f"{prefix}_orbit_{label}_s"] = round(time.perf_counter() - t, 2)
        res[f"{prefix}_orbit_finite"] = bool(np.isfinite(out.images).all())
        say(f"{prefix} orbit {label}: {res[f'{prefix}_orbit_{label}_s']} s")
    warm = [res[f"{prefix}_orbit_warm{i}_s"] for i in range(repeats)]
    res[f"{prefix}_orbit_warm_s"] = round(statistics.median(warm), 2) if warm else None


def worker_orbit(args, work: Path) -> dict:
    import torch

    from vfrt.engines.config import EngineConfig
    from vfrt.engines.engine_dir import load_engine
    from vfrt.runtime.pipeline import Pipeline
    cuda = torch.device(args.device).type == "cuda"
    free0 = torch.cuda.mem_get_info()[0] if cuda else 0
    t = time.perf_counter()
    engine = load_engine(Path(args.engines), EngineConfig(device=args.device))
    res = {"load_s": round(time.perf_counter() - t, 2), "engine": engine.describe()}
    pipe = Pipeline.from_engine(engine, engine.source.manifest.zero123_config())
    image = str(IMAGE)                  # the pipeline crops and recentres it, as `vfrt run` has it done
    if not cuda:                       # a smoke test of this code on the CPU: a short orbit only
        _orbit_times(pipe, image, res, "engines", args.orbit_repeats, args.views)
        return res
    torch.cuda.synchronize()
    res["load_device_gb"] = round((free0 - torch.cuda.mem_get_info()[0]) / 1e9, 3)
    say(f"engines loaded in {res['load_s']} s, {res['load_device_gb']} GB of device memory")
    torch.cuda.reset_peak_memory_stats()
    _orbit_times(pipe, image, res, "engines", args.orbit_repeats, args.views)
    res["peak_allocated_torch_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    res["peak_reserved_torch_gb"] = round(torch.cuda.max_memory_reserved() / 1e9, 3)
    res["peak_gb_allocated_plus_packages"] = round(res["peak_allocated_torch_gb"] + res["load_device_gb"], 3)
    free, total = torch.cuda.mem_get_info()
    res["device_used_after_orbit_gb"] = round((total - free) / 1e9, 3)     # incl. the CUDA context
    gen = torch.Generator().manual_seed(0)
    res["engines_step_ms"] = {K: _step_ms(engine, K, args.step_repeats, gen) for K in KS}
    say(f"engines step ms {res['engines_step_ms']}")
    return res


def worker_captures(args, work: Path) -> dict:
    """What a fresh process's first orbit pays per new row count: for K = 1..25 in the order an orbit meets
    them, the first ``capture()`` at that K (two eager warm-up steps + the capture, cold shapes), then one
    graph-replayed step (CUDA events) and one eager step (wall, synchronised), medians of 5."""
    import torch

    from vfrt.engines.config import EngineConfig
    from vfrt.engines.engine_dir import load_engine
    from vfrt.runtime.benchmark import bind_random_view
    from vfrt.runtime.schedule import make_ddim_schedule
    if torch.device(args.device).type != "cuda":
        raise RuntimeError("the captures phase needs CUDA graphs")
    engine = load_engine(Path(args.engines), EngineConfig(device=args.device))
    sched = make_ddim_schedule(75, 1.0)
    gen = torch.Generator().manual_seed(0)
    steps = engine.step_cache
    rows = []
    for K in range(1, 26):
        t = time.perf_counter()
        den, _ = bind_random_view(engine, K, 256, sched, gen)
        torch.cuda.synchronize()
        bind_s = time.perf_counter() - t
        _load_random(steps, den, K, sched, gen)
        torch.cuda.synchronize()
        t = time.perf_counter()
        steps.capture()
        torch.cuda.synchronize()
        capture_s = time.perf_counter() - t
        graph, eager = [], []
        for _ in range(5):
            graph.append(_replay_ms(steps))
            steps.rewind()
            torch.cuda.synchronize()
            t = time.perf_counter()
            steps.step_eager()
            torch.cuda.synchronize()
            eager.append((time.perf_counter() - t) * 1e3)
        rows.append({"K": K, "bind_s": round(bind_s, 4), "capture_s": round(capture_s, 4),
                     "graph_ms": round(statistics.median(graph), 3), "eager_ms": round(statistics.median(eager), 3)})
        say(f"K={K}: bind {bind_s:.3f} s, first capture {capture_s:.3f} s, step graph {rows[-1]['graph_ms']} ms, "
            f"eager {rows[-1]['eager_ms']} ms")
    return {"steps_per_view": sched.num_steps, "per_K": rows,
            "capture_s_total": round(sum(r["capture_s"] for r in rows), 2),
            "eager_minus_graph_s_per_view_total": round(sum((r["eager_ms"] - r["graph_ms"]) for r in rows)
                                                        * sched.num_steps / 1e3, 2)}


def worker_torch(args, work: Path) -> dict:
    import torch

    from vfrt.engines import create_engine
    from vfrt.engines.config import EngineConfig
    from vfrt.models import Zero123
    from vfrt.runtime.pipeline import Pipeline
    torch.manual_seed(0)
    model = Zero123.from_config(None).eval()
    engine = create_engine(model, EngineConfig(backend="fast", device="cuda", compile=True, expected_views=10 ** 6),
                           copy_weights=False)
    res = {"engine": engine.describe()}
    gen = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    res["torch_step_ms"] = {1: _step_ms(engine, 1, args.step_repeats, gen)}
    res["torch_first_step_incl_compile_s"] = round(time.perf_counter() - t, 1)
    say(f"compiled torch: first step (compile) {res['torch_first_step_incl_compile_s']} s")
    for K in KS[1:]:
        res["torch_step_ms"][K] = _step_ms(engine, K, args.step_repeats, gen)
    say(f"torch step ms {res['torch_step_ms']}")
    pipe = Pipeline.from_engine(engine, model.config)
    torch.cuda.reset_peak_memory_stats()
    _orbit_times(pipe, str(IMAGE), res, "torch", args.orbit_repeats)
    res["torch_peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    return res


def worker_fidelity(args, work: Path) -> dict:
    import numpy as np
    import torch

    from vfrt.engines.config import EngineConfig
    from vfrt.engines.engine_dir import load_engine
    from vfrt.engines.specs import build_networks
    from vfrt.engines.step import step_coefficients
    from vfrt.models import load_zero123
    from vfrt.runtime.benchmark import psnr
    from vfrt.runtime.pipeline import Pipeline
    from vfrt.runtime.poses import plan_orbit
    from vfrt.runtime.preprocess import load_image
    from vfrt.runtime.sampler import SamplerConfig
    dev = torch.device(args.device)
    engine = load_engine(Path(args.engines), EngineConfig(device=args.device))
    cfg = engine.source.manifest.zero123_config()
    pipe = Pipeline.from_engine(engine, cfg)
    image = load_image(IMAGE, pipe.resolution, True)          # what the pipeline feeds the networks
    sampler = SamplerConfig.for_mode("orbit")
    first = pipe.orbit(image, views=36, generate=1, sampler=sampler, preprocess=False)
    t = time.perf_counter()
    model = load_zero123(args.ckpt or work / "zero123-random.ckpt", config=args.config)
    say(f"checkpoint parsed in {time.perf_counter() - t:.1f} s")
    nets = build_networks(model, dev, torch.float32, torch.float32, channels_last=False)   # copies (fp32)
    ref = Pipeline(model, EngineConfig(backend="reference", device=args.device))
    ref_first = ref.orbit(image, views=36, generate=1, sampler=sampler, noise=first.noise, preprocess=False)
    res = {"first_view_psnr_db": round(psnr(first.images[0], ref_first.images[0]), 2),
           "first_view_max_abs": float(np.abs(first.images[0] - ref_first.images[0]).max())}
    say(f"first view vs fp32 reference: PSNR {res['first_view_psnr_db']} dB, max abs {res['first_view_max_abs']:.4f}")

    # per-step eps along the fp32 trajectory of view 0 (K = 1 reference: the input; guided, 2 rows)
    plan = plan_orbit(36, None, sampler.inference_temp, sampler.auto_temp)[0]
    schedule = sampler.schedule(cfg.schedule)
    img = image.to(dev, torch.float32)
    with torch.no_grad():
        clip, latent = nets.clip_image(img), nets.vae_encoder(img)
        pose = torch.as_tensor(plan.pose_conditions, dtype=torch.float32, device=dev).reshape(1, 4)
        cond_in = {"clip": torch.cat([torch.zeros_like(clip), clip]), "pose": torch.cat([torch.zeros_like(pose), pose]),
                   "latent": torch.cat([torch.zeros_like(latent), latent]), "keep": torch.tensor([0.0, 1.0], device=dev)}
        consts32, h0_32 = nets.conditioning(**cond_in)
        cond_e = engine.executor("conditioning").run(cond_in)
        t_steps = torch.as_tensor(schedule.timesteps, dtype=torch.int64, device=dev)
        emb32 = nets.time_embedding(t_steps)
        emb_e = engine.executor("time_embedding").run({"timesteps": t_steps})["emb"]
        coef = step_coefficients(schedule, dev)
        x = torch.as_tensor(first.noise.x_T[0], device=dev)
        latent_shape = tuple(x.shape[1:])
        nbar = torch.as_tensor(first.noise.step_noise[0], device=dev)[:, 0]     # K = 1: weight 1
        assert nbar.shape == (schedule.num_steps, *latent_shape)
        unet = engine.executor("unet_step")
        rel_max, rel_rms = [], []
        for i in range(schedule.num_steps):
            xr = x.expand(2, -1, -1, -1).contiguous()
            e32 = nets.unet_step(xr, h0_32, emb32[i:i + 1], consts32).float()
            e_e = unet.run({"x": xr, "h0": cond_e["h0"], "emb": emb_e[i:i + 1], "consts": cond_e["consts"]})["eps"].float()
            d = e_e - e32
            rel_max.append(float(d.abs().max() / e32.abs().max()))
            rel_rms.append(float(d.pow(2).mean().sqrt() / e32.pow(2).mean().sqrt()))
            e_bar = e32[:1] + sampler.guidance * (e32[1:] - e32[:1])
            x = coef[0, i] * x + coef[1, i] * e_bar + coef[2, i] * nbar[i]
    res.update({"eps_rel_max_per_step": [float(f"{v:.3g}") for v in rel_max],
                "eps_rel_rms_per_step": [float(f"{v:.3g}") for v in rel_rms],
                "eps_rel_max_worst": float(f"{max(rel_max):.3g}"),
                "eps_rel_rms_median": float(f"{statistics.median(rel_rms):.3g}")})
    say(f"eps vs fp32 per step: worst max-ratio {res['eps_rel_max_worst']}, median RMS ratio {res['eps_rel_rms_median']}")
    return res


WORKERS = {"ckpt": worker_ckpt, "captures": worker_captures, "orbit": worker_orbit, "torch": worker_torch, "fidelity": worker_fidelity}


def run_worker(args) -> None:
    work = Path(args.work)
    result = Path(args.result)
    say(f"worker {args.worker} (pid {os.getpid()})")
    data = WORKERS[args.worker](args, work)
    result.write_text(json.dumps(data, indent=2, default=str))


# ------------------------------------------------------------------------------------------ report
def table(res: dict) -> str:
    p = res["phases"]

    def get(phase, key, fmt="{}"):
        v = p.get(phase, {}).get(key)
        return "-" if v is None else fmt.format(v)
    orbit, torch_ = p.get("orbit", {}), p.get("torch", {})
    rows = [
        ("vfrt build-engines (wall, fresh process)",
         f"reused (built in {get('build', 'build_seconds_manifest', '{} s')})" if p.get("build", {}).get("reused")
         else get("build", "wall_s", "{} s"), "<= 5 min"),
        ("vfrt run chair.png, fresh process, engines (median wall)", get("cli", "median_wall_s", "{} s"),
         "<= 24 s (aim 20)"),
        ("process start -> sampling starts (median)", get("cli", "median_start_to_sampling_s", "{} s"), "<= 5 s"),
        ("process start -> first view done (median)", get("cli", "median_start_to_first_view_s", "{} s"), "-"),
        ("process start -> outputs written (median)", get("cli", "median_start_to_outputs_written_s", "{} s"), "-"),
        ("first captures of the 25 row counts (sum)", get("captures", "capture_s_total", "{} s"), "-"),
        ("orbit with engines: first / warm", f"{get('orbit', 'engines_orbit_first_s', '{} s')} / "
                                             f"{get('orbit', 'engines_orbit_warm_s', '{} s')}", "<= 20.9 s (aim 18)"),
        ("orbit compiled torch: first / warm", f"{get('torch', 'torch_orbit_first_s', '{} s')} / "
                                               f"{get('torch', 'torch_orbit_warm_s', '{} s')}", "(baseline)"),
        ("step ms K=1/12/25 engines", "/".join(str(orbit.get("engines_step_ms", {}).get(str(k), "-")) for k in KS),
         "-"),
        ("step ms K=1/12/25 compiled torch",
         "/".join(str(torch_.get("torch_step_ms", {}).get(str(k), "-")) for k in KS), "-"),
        ("peak GPU: torch-allocated + packages", get("orbit", "peak_gb_allocated_plus_packages", "{} GB"), "<= 4 GB"),
        ("GPU in use after the orbits (incl. context)", get("orbit", "device_used_after_orbit_gb", "{} GB"), "-"),
        ("first view vs fp32 reference: PSNR", get("fidelity", "first_view_psnr_db", "{} dB"), "-"),
        ("eps vs fp32: worst step max-ratio / median RMS ratio",
         f"{get('fidelity', 'eps_rel_max_worst')} / {get('fidelity', 'eps_rel_rms_median')}", "-"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  {'measured':>22}  target"]
    lines += [f"{a:<{width}}  {b:>22}  {c}" for a, b, c in rows]
    failed = [k for k, v in p.items() if not v.get("ok")]
    if failed:
        lines.append(f"FAILED phases: {failed} (see their 'error' in the JSON)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="engines_bench.json", help="JSON written after every phase")
    ap.add_argument("--phases", default=",".join(DEFAULT_PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    ap.add_argument("--work", default=str(ROOT / ".bench_engines"),
                    help="checkpoint, cache (engines) and runs; git-ignored in the repository by default")
    ap.add_argument("--rebuild", action="store_true", help="build even if the engines exist (--force)")
    ap.add_argument("--no-verify", action="store_true", help="build without comparing the networks with PyTorch")
    ap.add_argument("--cli-runs", type=int, default=2, help="fresh `vfrt run` processes with engines")
    ap.add_argument("--cli-torch", action="store_true", help="also one fresh `vfrt run --no-engines` (~60 s)")
    ap.add_argument("--orbit-repeats", type=int, default=1, help="warm orbits after the first")
    ap.add_argument("--step-repeats", type=int, default=20, help="timed replays per K")
    ap.add_argument("--build-timeout", type=int, default=480)
    ap.add_argument("--run-timeout", type=int, default=180)
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--engines", help=argparse.SUPPRESS)
    # for a smoke test of this script on the CPU with a tiny checkpoint (`vfrt make-test-checkpoint`):
    ap.add_argument("--ckpt", help="use these weights instead of writing the random full-size checkpoint")
    ap.add_argument("--config", help="their ldm YAML")
    ap.add_argument("--device", default="cuda", help="where engines are built and run (cpu: smoke test only)")
    ap.add_argument("--views", type=int, default=36, help="views of the fresh `vfrt run`s and of the orbit phase")
    args = ap.parse_args()
    if args.worker:
        sys.path.insert(0, str(ROOT))
        run_worker(args)
        return
    Bench(args).run()


if __name__ == "__main__":
    main()
