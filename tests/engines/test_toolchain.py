"""The libstdc++ check: compiled packages whose C++ runtime differs from this process's are probe-loaded
in a child first, and a crash becomes one error naming fixes that were tried. Probes are stubbed
here, except two real child processes (one that loads, one that segfaults)."""
import os
import signal
import sys

import pytest

from vfrt.engines.engine_dir import EngineLoadError
from vfrt.engines.fingerprint import JsonStore
from vfrt.engines.toolchain import (LoadabilityCheck, ProbeResult, Toolchain, loaded_libstdcxx, preload_candidates,
                                    probe_load, probe_outcome)

OURS = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.33"
THEIRS = "/opt/gcc/lib64/libstdc++.so.6.0.34"


class StubProbe:
    """Crashes unless LD_PRELOAD holds ``works_with``; counts calls."""

    def __init__(self, works_with=None, ok=False):
        self.works_with, self.ok, self.calls = works_with, ok, []

    def __call__(self, package, env):
        self.calls.append(env.get("LD_PRELOAD", ""))
        if self.ok or (self.works_with and self.works_with in env.get("LD_PRELOAD", "")):
            return ProbeResult(True)
        return probe_outcome(-signal.SIGSEGV, "")


def _check(tmp_path, probe, loaded=OURS, env=None):
    return LoadabilityCheck(probe=probe, verdicts=JsonStore(tmp_path / "verdicts.json"), loaded=loaded,
                            env=env if env is not None else {"PATH": os.environ.get("PATH", "")})


def test_the_loaded_libstdcxx_is_read_from_the_memory_map(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libz.so.1\n7f02-7f03 r-xp 0 08:01 2 /nonexistent/libstdc++.so.6.0.33\n")
    assert loaded_libstdcxx(maps) == "/nonexistent/libstdc++.so.6.0.33"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libz.so.1\n")
    assert loaded_libstdcxx(maps) is None and loaded_libstdcxx(tmp_path / "absent") is None
    if sys.platform == "linux":
        import torch  # noqa: F401  - torch maps libstdc++ into this process
        assert loaded_libstdcxx() is not None and "libstdc++" in loaded_libstdcxx()


def test_even_the_same_libstdcxx_is_probed_once(tmp_path):
    probe = StubProbe(ok=True)
    for _ in range(2):
        _check(tmp_path, probe).ensure(Toolchain("/usr/bin/g++", "13.3.0", OURS), tmp_path / "x.pt2")
    _check(tmp_path, probe).ensure(None, tmp_path / "x.pt2")          # a backend without compiled code
    assert probe.calls == [""]


def test_another_libstdcxx_is_probed_once_and_the_verdict_remembered(tmp_path):
    probe = StubProbe(ok=True)
    toolchain = Toolchain("/opt/gcc/bin/g++", "14.2.0", THEIRS)
    _check(tmp_path, probe).ensure(toolchain, tmp_path / "x.pt2")
    _check(tmp_path, probe).ensure(toolchain, tmp_path / "x.pt2")
    assert probe.calls == [""]
    # another LD_PRELOAD is another process environment: probed again
    _check(tmp_path, probe, env={"LD_PRELOAD": OURS}).ensure(toolchain, tmp_path / "x.pt2")
    assert len(probe.calls) == 2


def test_a_crash_becomes_an_error_naming_the_fixes_that_were_tried(tmp_path, monkeypatch):
    system = tmp_path / "libstdc++.so.6"
    system.write_bytes(b"")
    compiler_lib = tmp_path / "gcc14" / "libstdc++.so.6.0.34"
    compiler_lib.parent.mkdir()
    compiler_lib.write_bytes(b"")
    monkeypatch.setattr("vfrt.engines.toolchain.SYSTEM_LIBSTDCXX", (str(system),))
    monkeypatch.setattr("vfrt.engines.toolchain.matching_compilers", lambda loaded, exclude: ["/usr/bin/g++"])
    toolchain = Toolchain("/opt/gcc/bin/g++", "14.2.0", str(compiler_lib))
    assert preload_candidates(toolchain) == [str(compiler_lib), str(system)]
    probe = StubProbe(works_with=str(system))
    with pytest.raises(EngineLoadError) as info:
        _check(tmp_path, probe).ensure(toolchain, tmp_path / "x.pt2", rebuild="vfrt build-engines -c w.ckpt")
    msg = str(info.value)
    assert "killed by SIGSEGV" in msg and f"LD_PRELOAD={system} (tried: it loads)" in msg
    assert f"LD_PRELOAD={compiler_lib}" not in msg                    # tried, did not help: not offered
    assert "CXX=/usr/bin/g++ vfrt build-engines -c w.ckpt" in msg and "/opt/gcc/bin/g++ 14.2.0" in msg
    assert probe.calls == ["", str(compiler_lib), str(system)]
    with pytest.raises(EngineLoadError):                                 # remembered: no probe the second time
        _check(tmp_path, probe).ensure(toolchain, tmp_path / "x.pt2")
    assert len(probe.calls) == 3


def test_probe_outcomes():
    assert probe_outcome(0, "") == ProbeResult(True)
    assert probe_outcome(-11, "") == ProbeResult(False, "the loading process was killed by SIGSEGV")
    failed = probe_outcome(1, "Traceback ...\nOSError: libstdc++.so.6: version `GLIBCXX_3.4.33' not found\n")
    assert not failed.ok and "GLIBCXX_3.4.33' not found" in failed.detail


def test_real_child_processes_classified(tmp_path):
    env = dict(os.environ)
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    assert probe_load(tmp_path / "none.pt2", env, code=crash) == ProbeResult(False, "the loading process was "
                                                                                     "killed by SIGSEGV")
    assert probe_load(tmp_path / "none.pt2", env, code="import sys; sys.exit(0)").ok
