"""The C++ runtime (libvfrt, vfrt-bench) against the Python runtime on the same engine directory.

    python benchmarks/bench_cpp.py --work .bench_engines --out cpp_h200.json    # the engines bench_engines.py built
    python benchmarks/bench_cpp.py --engines DIR --out cpp_h200.json            # any `vfrt build-engines` directory
    python benchmarks/bench_cpp.py --engines DIR --views 4 --steps 4 --jobs 2   # CPU, tiny engines (the CPU test)

Steps, each GPU step in a fresh process (so neither runtime warms the other's caches):

build      CMake configure + build of libvfrt and vfrt-bench (Release, ``--jobs``) into ``--build-dir``
           (default ``<work>/cpp_build``, reused: a second call only relinks what changed), with the compiler
           that built the engines' packages (the manifest's toolchain.cxx when it exists here, else $CXX).
toolchain  the engines are opened in a vfrt-bench child (``--open-only``). A fix bench_engines.py recorded
           (``<work>/toolchain_fix.json``) is applied from the start; if the child still dies of a signal,
           the libstdc++ files vfrt.engines.toolchain would preload are tried in children and the first that
           loads is applied to every later process, C++ and Python alike, and recorded in the JSON.
python     ``Pipeline.from_engines``: the model input of examples/chair.png written as a PNG (what `vfrt run`
           writes as input.png; both runtimes then read that PNG with no preprocessing), the orbit's first
           view with ``--seed`` (its draws saved as a noise directory), then ``--repeat`` orbits of
           ``--views`` views (the first captures the CUDA graphs, the later ones are warm).
cpp        vfrt-bench: the first view again, replaying Python's draws -> max |C++ - Python| on that view;
           then ``--repeat`` orbits: wall time, time per phase, and per UNet step the host's launch time
           (graph replays) vs the GPU's time (CUDA events).

Prints a table and writes the JSON (rewritten after every step, so a run cut short keeps what it measured).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "examples" / "chair.png"
#: C++ vs Python on the first view, same packages and draws: both run the same compiled networks; only
#: the guided update's float32 arithmetic order may differ (fp16 engines: well below one fp16 ulp at 1)
AGREE_TOLERANCE = 1e-3
T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')} +{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ building
class CppBuildUnavailable(RuntimeError):
    """This machine lacks what the C++ runtime's build needs (CMake, a compiler, a system package)."""


@dataclass(frozen=True)
class CppBuild:
    directory: Path
    seconds: float
    cxx: str

    def program(self, name: str) -> Path:
        return self.directory / name


def build_cpp(build_dir: Path, *, jobs: int, cxx: str | None = None, targets: tuple[str, ...] = (),
              install: Path | None = None, python: str = sys.executable, timeout: int = 1200,
              cmake_args: tuple[str, ...] = ()) -> CppBuild:
    """Configure (Release) and build the C++ runtime; ``targets`` empty: everything (tests and examples);
    ``cmake_args``: more ``-D...`` settings (e.g. ``-DVFRT_TORCH_CMAKE=ON``, docs/CPP.md).

    Raises :class:`CppBuildUnavailable` when CMake, the compiler or a dependency CMakeLists.txt names is
    missing (its "vfrt: missing dependency" line), ``RuntimeError`` with the log's tail on any other failure.
    """
    cmake = shutil.which("cmake")
    cxx = cxx or os.environ.get("CXX") or "c++"
    if cmake is None or shutil.which(cxx) is None:
        raise CppBuildUnavailable(f"the C++ runtime needs CMake and a C++ compiler (cmake: {cmake}, {cxx}: "
                                  f"{shutil.which(cxx)})")
    build_dir = Path(build_dir)
    generator = ["-G", "Ninja"] if shutil.which("ninja") and not (build_dir / "Makefile").exists() else []
    configure = [cmake, "-S", str(ROOT), "-B", str(build_dir), *generator, "-DCMAKE_BUILD_TYPE=Release",
                 f"-DPython3_EXECUTABLE={python}", f"-DCMAKE_CXX_COMPILER={shutil.which(cxx)}"]
    if install is not None:
        configure.append(f"-DCMAKE_INSTALL_PREFIX={install}")
    configure += list(cmake_args)
    build = [cmake, "--build", str(build_dir), "-j", str(jobs), *[a for t in targets for a in ("--target", t)]]
    steps = [configure, build] + ([[cmake, "--install", str(build_dir)]] if install is not None else [])
    t0 = time.perf_counter()
    for cmd in steps:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if out.returncode != 0:
            text = out.stdout + out.stderr
            missing = [line for line in text.splitlines() if "vfrt: missing dependency" in line]
            if missing:
                raise CppBuildUnavailable(missing[0].strip(" -*"))
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{text[-6000:]}")
    return CppBuild(build_dir, time.perf_counter() - t0, shutil.which(cxx) or cxx)


# ------------------------------------------------------------------------------------------ helpers
def newest_engine_dir(work: Path) -> Path:
    """The engine directory bench_engines.py built last into ``<work>/cache``."""
    found = sorted((work / "cache" / "engines").glob("*/manifest.json"))
    if not found:
        raise SystemExit(f"no engines under {work / 'cache' / 'engines'}: give --engines DIR or run "
                         f"benchmarks/bench_engines.py --phases ckpt,toolchain,build first")
    return max(found, key=lambda p: p.stat().st_mtime).parent


def compiler_of(manifest: dict) -> str | None:
    """The compiler that built the packages, when it exists on this machine (one toolchain for both)."""
    cxx = (manifest.get("toolchain") or {}).get("cxx")
    return cxx if cxx and shutil.which(cxx) else None


def run_json(cmd: list[str], env: dict, timeout: int) -> dict:
    """Run a program that prints one JSON object; RuntimeError with its stderr when it fails."""
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} exited with {out.returncode}: {(out.stderr or out.stdout)[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def loading_env(bench: Path, engines: Path, manifest: dict, env: dict) -> tuple[dict, dict]:
    """The environment in which vfrt-bench opens ``engines`` without crashing, and what was done to get it.

    The same remedy the Python side applies (vfrt.engines.toolchain): a libstdc++ preloaded when the
    packages' C++ crashes a process on load; tried in children, never in this process.
    """
    from vfrt.engines.toolchain import Toolchain, preload_candidates, probe_outcome
    probe = [str(bench), "--engines", str(engines), "--open-only"]

    def attempt(candidate: dict) -> tuple[bool, str]:
        out = subprocess.run(probe, env=candidate, capture_output=True, text=True, timeout=600, check=False)
        if out.returncode == 0:
            return True, out.stdout.strip()
        if out.returncode > 0:           # a vfrt error (mismatch, corrupt, ...): no environment fixes it
            raise RuntimeError(f"vfrt-bench cannot open {engines}: {out.stderr.strip()[-2000:]}")
        return False, probe_outcome(out.returncode, out.stderr).detail

    ok, detail = attempt(env)
    record = {"first_attempt": "loads" if ok else detail, "LD_PRELOAD": env.get("LD_PRELOAD")}
    if ok:
        return env, record
    toolchain = Toolchain.from_dict(manifest["toolchain"]) if manifest.get("toolchain") else None
    tried = []
    for lib in preload_candidates(toolchain) if toolchain else []:
        candidate = {**env, "LD_PRELOAD": " ".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)}
        ok, detail = attempt(candidate)
        tried.append({"LD_PRELOAD": candidate["LD_PRELOAD"], "loads": ok, "detail": detail})
        if ok:
            say(f"the engines load in C++ with LD_PRELOAD={candidate['LD_PRELOAD']}; applied to every process")
            return candidate, {**record, "tried": tried, "LD_PRELOAD": candidate["LD_PRELOAD"]}
    raise RuntimeError(f"vfrt-bench cannot load {engines} ({record['first_attempt']}); tried {tried}")


# ------------------------------------------------------------------------------------------ the Python worker
def python_worker(args) -> None:
    """In a fresh process: the input PNG, the first view + its draws, then the timed orbits."""
    import numpy as np
    import torch
    from PIL import Image

    from vfrt.runtime.pipeline import Pipeline
    from vfrt.runtime.preprocess import load_image, to_uint8
    from vfrt.runtime.sampler import SamplerConfig
    work = Path(args.scratch)
    t0 = time.perf_counter()
    pipe = Pipeline.from_engines(args.engines)
    out = {"open_seconds": time.perf_counter() - t0, "resolution": pipe.resolution}
    Image.fromarray(to_uint8(load_image(IMAGE, pipe.resolution)[0])).save(work / "input.png")

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    sampler = SamplerConfig(steps=args.steps, seed=args.seed)
    first = pipe.orbit(work / "input.png", args.views, generate=1, sampler=sampler, preprocess=False)
    first.noise.save_raw(work / "first_view_noise")
    np.save(work / "python_first_view.npy", first.images[0])
    orbits = []
    for _ in range(args.repeat):
        sync()
        t = time.perf_counter()
        result = pipe.orbit(work / "input.png", args.views, sampler=sampler, preprocess=False)
        sync()
        orbits.append({"total": time.perf_counter() - t, "generated": len(result.images)})
    Path(args.result).write_text(json.dumps({**out, "orbits": orbits}))


# ------------------------------------------------------------------------------------------ orchestration
def measure(args) -> dict:
    import numpy as np
    engines = Path(args.engines).resolve() if args.engines else newest_engine_dir(Path(args.work).resolve())
    work = Path(args.work).resolve()
    scratch = work / "cpp_bench"
    scratch.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((engines / "manifest.json").read_text())
    res = {"command": " ".join([sys.executable, *sys.argv]), "started": datetime.now(timezone.utc).isoformat(),
           "engines": str(engines), "backend": manifest["backend"], "precision": manifest["precision"],
           "platform": manifest["platform"], "views": args.views, "steps": args.steps, "seed": args.seed}

    def save() -> None:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=2, default=str))
        os.replace(tmp, args.out)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "PYTHONUNBUFFERED": "1"}
    if (work / "cache").is_dir() and not args.engines:
        env["VFRT_CACHE_DIR"] = str(work / "cache")          # bench_engines.py's cache: its digests are reused
    fix_file = work / "toolchain_fix.json"
    if fix_file.exists():
        env.update(json.loads(fix_file.read_text()))
        res["toolchain_fix_from_bench_engines"] = json.loads(fix_file.read_text())

    say(f"building the C++ runtime into {args.build_dir or work / 'cpp_build'} (-j{args.jobs})")
    build = build_cpp(Path(args.build_dir) if args.build_dir else work / "cpp_build", jobs=args.jobs,
                      cxx=compiler_of(manifest), targets=("vfrt-bench",), cmake_args=tuple(args.cmake_arg))
    res["build"] = {"seconds": round(build.seconds, 1), "cxx": build.cxx, "dir": str(build.directory)}
    save()
    bench = build.program("vfrt-bench")
    say(f"built in {build.seconds:.0f} s with {build.cxx}; checking that the engines load in C++")
    env, res["toolchain"] = loading_env(bench, engines, manifest, env)
    save()

    say("Python runtime (Pipeline.from_engines): input, first view + its draws, orbits")
    result_file = scratch / "python.result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "python", "--engines", str(engines),
           "--scratch", str(scratch), "--result", str(result_file), "--views", str(args.views),
           "--steps", str(args.steps), "--seed", str(args.seed), "--repeat", str(args.repeat)]
    proc = subprocess.run(cmd, env=env, timeout=args.timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the Python worker exited with {proc.returncode}")
    res["python"] = json.loads(result_file.read_text())
    save()

    say("C++ runtime (vfrt-bench): the first view under Python's draws, then orbits")
    raw = scratch / "cpp_raw"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir()
    common = [str(bench), "--engines", str(engines), "--image", str(scratch / "input.png"), "--views",
              str(args.views), "--steps", str(args.steps)]
    first = run_json([*common, "--generate", "1", "--repeat", "1", "--noise", str(scratch / "first_view_noise"),
                      "--raw", str(raw)], env, args.timeout)
    py_view = np.load(scratch / "python_first_view.npy")                       # (3, H, W)
    cpp_view = np.fromfile(raw / "v00.f32", dtype="<f4").reshape(py_view.shape[1], py_view.shape[2], 3)
    diff = float(np.abs(cpp_view.transpose(2, 0, 1) - py_view).max())
    res["agreement"] = {"first_view_max_abs": diff, "tolerance": AGREE_TOLERANCE, "ok": diff <= AGREE_TOLERANCE,
                        "cpp_first_view_seconds": first["runs"][0]["total"]}
    save()
    res["cpp"] = run_json([*common, "--seed", str(args.seed), "--repeat", str(args.repeat)], env, args.timeout)
    res["finished"] = datetime.now(timezone.utc).isoformat()
    res["table"] = table(res)
    save()
    return res


def table(res: dict) -> str:
    py, cpp = res["python"]["orbits"], res["cpp"]["runs"]
    rows = [("orbit", "Python (s)", "C++ (s)")]
    for i in range(max(len(py), len(cpp))):
        label = "first orbit (graph captures)" if i == 0 else f"warm orbit {i}"
        rows.append((label, f"{py[i]['total']:.2f}" if i < len(py) else "-", f"{cpp[i]['total']:.2f}" if i < len(cpp) else "-"))
    rows.append(("engines opened in", f"{res['python']['open_seconds']:.2f}", f"{res['cpp']['open_seconds']:.2f}"))
    warm = cpp[-1]
    steps = max(warm["unet_steps"], 1)
    lines = [f"{a:<30} {b:>11} {c:>9}" for a, b, c in rows]
    lines.append(f"C++ warm orbit, per UNet step: host launch {1e3 * warm['denoise_launch'] / steps:.3f} ms, "
                 f"GPU {1e3 * warm['denoise_device'] / steps:.3f} ms (CUDA events; 0 on the CPU), "
                 f"wall {1e3 * warm['denoise'] / steps:.3f} ms; {warm['unet_steps']} steps, "
                 f"graphs: {res['cpp']['graphs']}")
    lines.append(f"C++ vs Python, first view, same draws: max abs {res['agreement']['first_view_max_abs']:.3g} "
                 f"(tolerance {AGREE_TOLERANCE:g}: {'ok' if res['agreement']['ok'] else 'EXCEEDED'})")
    lines.append(f"build {res['build']['seconds']} s with {res['build']['cxx']}; loading: {res['toolchain']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", help="an engine directory (default: the newest under <work>/cache/engines)")
    parser.add_argument("--work", default=str(ROOT / ".bench_engines"), help="bench_engines.py's work folder")
    parser.add_argument("--out", default="cpp_bench.json")
    parser.add_argument("--build-dir", help="CMake build folder (default <work>/cpp_build)")
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--cmake-arg", action="append", default=[], help="more CMake settings, as --cmake-arg=-DVFRT_TORCH_CMAKE=ON")
    parser.add_argument("--views", type=int, default=36)
    parser.add_argument("--steps", type=int, default=75)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=2, help="orbits per runtime (the first captures graphs)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per child process")
    parser.add_argument("--worker", choices=["python"], help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "python":
        python_worker(args)
        return 0
    sys.path.insert(0, str(ROOT))
    res = measure(args)
    print(res["table"], flush=True)
    return 0 if res["agreement"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
