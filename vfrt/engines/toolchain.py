"""Will compiled C++ (an AOTInductor package) load in this process, or crash it?

A package's wrapper is C++ built by the machine's compiler and linked against that compiler's
libstdc++; it then runs inside a Python process that has already loaded *some* libstdc++. When the
two differ, loading can segfault (seen on a GPU machine whose ``CXX`` was another GCC than the
system's: the wrapper's ``std::regex`` crashed on load). A segfault cannot be caught, so it is
detected before an in-process load:

1. the build records the compiler and the libstdc++ it links (:class:`Toolchain`, in the manifest);
2. before the first in-process load, one artifact is loaded in a **child** process
   (:func:`probe_load`); a crash there costs a child, not this process. The verdict is remembered
   per (toolchain, this Python, the libstdc++ it has mapped - ``/proc/self/maps`` -, ``LD_PRELOAD``,
   torch) in ``<cache>/load_probes.json``, so a build pays for it and the runs after it do not;
3. a libstdc++ that differs between the two is what predicts a crash: the build checks for it
   before compiling anything (:func:`vfrt.export.aoti.check_toolchain`), and ``vfrt doctor`` shows it;
4. a crash becomes :class:`~vfrt.engines.engine_errors.EngineLoadError` naming the fixes that were
   *tried in a child and worked* (``LD_PRELOAD=<libstdc++>``) and the rebuild with a compiler whose
   libstdc++ is the one this process uses (``CXX=...``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping

from vfrt.engines.engine_errors import EngineLoadError
from vfrt.engines.fingerprint import JsonStore, cache_dir

log = logging.getLogger(__name__)

#: where distributions put the system libstdc++ (LD_PRELOAD candidates besides the compiler's own)
SYSTEM_LIBSTDCXX = ("/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6",
                    "/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/aarch64-linux-gnu/libstdc++.so.6")
PROBE_TIMEOUT_S = 300
#: loads an AOTInductor package and exits 0 (run in a child: argv = package, device index). Through the
#: package loader a run uses (vfrt.engines.executors.aoti.load_package): ``torch._inductor.aoti_load_package``
#: also imports Inductor and probes the processor's vector ISAs (a fresh Python per ISA), which took most of
#: the probe's 50-60 s on the H200 machine (docs/PERF.md); it remains the fallback where that loader is missing.
AOTI_PROBE = """
import sys, torch
path, index = sys.argv[1], int(sys.argv[2])
try:
    from torch._C._aoti import AOTIModelPackageLoader
    AOTIModelPackageLoader(path, "model", False, 1, index)
except (ImportError, AttributeError, TypeError):
    import torch._inductor
    torch._inductor.aoti_load_package(path, device_index=index)
print("loaded")
"""


@dataclass(frozen=True)
class Toolchain:
    """The C++ compiler that built a package: its path, version and the libstdc++ it links (realpath;
    None when the compiler does not say)."""

    cxx: str
    version: str
    libstdcxx: str | None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "Toolchain":
        return cls(str(data["cxx"]), str(data["version"]), data.get("libstdcxx"))


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def compiler_libstdcxx(cxx: str) -> str | None:
    """Realpath of the libstdc++ that ``cxx`` links programs against, or None if it does not say."""
    out = _run([cxx, "-print-file-name=libstdc++.so.6"])
    return os.path.realpath(out) if out and os.path.isabs(out) and os.path.exists(out) else None


def describe_compiler(cxx: str) -> Toolchain:
    """:class:`Toolchain` of the compiler ``cxx`` (a name on PATH or a path)."""
    path = shutil.which(cxx) or cxx
    version = _run([path, "-dumpfullversion"]) or (_run([path, "--version"]).splitlines() or ["unknown"])[0]
    return Toolchain(path, version, compiler_libstdcxx(path))


def loaded_libstdcxx(maps: Path = Path("/proc/self/maps")) -> str | None:
    """Realpath of the libstdc++ this process has mapped (None: none, or no /proc)."""
    try:
        text = Path(maps).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        path = line.split()[-1] if line.split() else ""
        if "/libstdc++.so" in path:
            return os.path.realpath(path)
    return None


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of loading an artifact in a child process: ``ok``, else what happened (signal or error)."""

    ok: bool
    detail: str = ""


Probe = Callable[[Path, Mapping[str, str]], ProbeResult]


def probe_outcome(returncode: int, stderr: str) -> ProbeResult:
    """A child's exit status as a :class:`ProbeResult` (a negative code is the signal that killed it)."""
    if returncode == 0:
        return ProbeResult(True)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return ProbeResult(False, f"the loading process was killed by {name}")
    tail = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or ["no message"]
    return ProbeResult(False, f"loading failed: {tail[0][:300]}")


def probe_load(package: Path, env: Mapping[str, str], code: str = AOTI_PROBE, device_index: int = -1) -> ProbeResult:
    """Load ``package`` in a child Python with environment ``env``; never raises for what the child does."""
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(package), str(device_index)], env=dict(env),
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"loading did not finish within {PROBE_TIMEOUT_S} s")
    return probe_outcome(proc.returncode, proc.stderr)


def _with_preload(env: Mapping[str, str], library: str) -> dict[str, str]:
    out = dict(env)
    out["LD_PRELOAD"] = " ".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    return out


def preload_candidates(toolchain: Toolchain) -> list[str]:
    """libstdc++ files worth preloading: the compiler's own, then the system's (existing, distinct)."""
    seen, out = set(), []
    for path in (toolchain.libstdcxx, *SYSTEM_LIBSTDCXX):
        if path and os.path.exists(path) and os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            out.append(path)
    return out


def matching_compilers(loaded: str | None, exclude: str) -> list[str]:
    """Compilers on this machine whose libstdc++ is the one this process has loaded."""
    if loaded is None:
        return []
    out = []
    for name in ("g++", "/usr/bin/g++", "c++", "/usr/bin/c++"):
        path = shutil.which(name)
        if path and path != exclude and path not in out and compiler_libstdcxx(path) == loaded:
            out.append(path)
    return out


class LoadabilityCheck:
    """Decides whether packages built by a :class:`Toolchain` load in this process (see the module docstring).

    Args:
        probe: loads an artifact in a child (default :func:`probe_load`; tests pass a stub).
        verdicts: where verdicts are remembered (default ``<cache>/load_probes.json``).
        loaded: the libstdc++ this process uses (default: read from /proc/self/maps).
        env: the environment children inherit (default: this process's).
    """

    def __init__(self, probe: Probe = probe_load, verdicts: JsonStore | None = None, loaded: str | None = None,
                 env: Mapping[str, str] | None = None):
        self.probe = probe
        self.verdicts = verdicts if verdicts is not None else JsonStore(cache_dir() / "load_probes.json")
        self.loaded = loaded if loaded is not None else loaded_libstdcxx()
        self.env = dict(os.environ if env is None else env)

    def key(self, toolchain: Toolchain) -> str:
        """What a verdict depends on: the toolchain, this interpreter, its libstdc++ and LD_PRELOAD."""
        import torch
        parts = [json.dumps(toolchain.to_dict(), sort_keys=True), sys.executable, str(self.loaded),
                 self.env.get("LD_PRELOAD", ""), torch.__version__]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]

    def verdict(self, toolchain: Toolchain, package: Path) -> dict:
        """``{"ok": bool, "detail": str, "preload": [libstdc++ that made it load]}``: remembered, else probed
        (even with the same libstdc++ on both sides: one child per environment is cheap insurance)."""
        key = self.key(toolchain)
        known = self.verdicts.read().get(key)
        if isinstance(known, dict) and "ok" in known:
            return known
        same = toolchain.libstdcxx is not None and toolchain.libstdcxx == self.loaded
        (log.info if same else log.warning)(
            "checking once, in a child process, that code built by %s loads here (its libstdc++ %s, this process "
            "uses %s)", toolchain.cxx, toolchain.libstdcxx, self.loaded)
        started = time.perf_counter()
        result = self.probe(Path(package), self.env)
        log.info("the child %s in %.1f s", "loaded it" if result.ok else "failed", time.perf_counter() - started)
        verdict = {"ok": result.ok, "detail": result.detail, "preload": []}
        if not result.ok:
            verdict["preload"] = [lib for lib in preload_candidates(toolchain)
                                  if self.probe(Path(package), _with_preload(self.env, lib)).ok]
        self.verdicts.update(lambda data: data.__setitem__(key, verdict))
        return verdict

    def ensure(self, toolchain: Toolchain | None, package: Path, rebuild: str | None = None) -> None:
        """Return if ``package`` (built by ``toolchain``) loads here; else raise :class:`EngineLoadError`."""
        if toolchain is None:
            return
        verdict = self.verdict(toolchain, package)
        if verdict["ok"]:
            return
        fixes = [f"run with LD_PRELOAD={lib} (tried: it loads)" for lib in verdict["preload"]]
        compilers = matching_compilers(self.loaded, toolchain.cxx)
        if compilers:
            fixes.append(f"rebuild with the compiler matching this process: CXX={compilers[0]} "
                         + (rebuild or "vfrt build-engines ..."))
        else:
            fixes.append("rebuild with a C++ compiler whose libstdc++ is the one this process loads "
                         f"({self.loaded}): CXX=<that g++> " + (rebuild or "vfrt build-engines ..."))
        raise EngineLoadError(
            f"compiled code built by {toolchain.cxx} {toolchain.version} (libstdc++ {toolchain.libstdcxx}) does not "
            f"load in this process, which uses libstdc++ {self.loaded}: {verdict['detail']}", " or ".join(fixes))
