"""Parallel builds (`vfrt build-engines --jobs N`) without a real compile: the option's validation, the
scheduler of compiler children (tiny `python -c` children), and the AOTInductor exporter's wiring of it.
The real parallel compile is what the session's `aoti_engines` fixture builds (tests/export/conftest.py)."""
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vfrt.cli.main import cli
from vfrt.export import aoti, build
from vfrt.export.build import BUILD_ORDER, BuildConfig, BuildError, build_engines
from vfrt.export.jobs import ChildJob, ExportJobError, run_children

# A child that records when it ran. argv: marker folder, its name, seconds to sleep, exit status.
RECORDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    folder, name, seconds, status = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    (Path(folder) / (name + ".start")).write_text(repr(time.time()))
    time.sleep(seconds)
    if status:
        print("Traceback (most recent call last):\\n  ...\\nRuntimeError: " + name + " gave up", file=sys.stderr)
        print("\\n(the compiler's own notes after the error)", file=sys.stderr)
        sys.exit(status)
    (Path(folder) / (name + ".end")).write_text(repr(time.time()))
""")

# A child that starts a grandchild (as a compiler would), writes both pids, then waits to be stopped.
LINGERER = textwrap.dedent("""
    import os, subprocess, sys, time
    from pathlib import Path
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    Path(sys.argv[1]).write_text(f"{os.getpid()} {grandchild.pid}")
    time.sleep(120)
""")


def _recorder(folder: Path, name: str, seconds: float, status: int = 0) -> ChildJob:
    return ChildJob(name, (sys.executable, "-c", RECORDER, str(folder), name, str(seconds), str(status)))


def _lingerer(pids: Path) -> ChildJob:
    return ChildJob("unet_step", (sys.executable, "-c", LINGERER, str(pids)))


def _wait_for(path: Path, seconds: float = 30.0) -> str:
    deadline = time.monotonic() + seconds
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return path.read_text()


def _alive(pid: int) -> bool:
    """Running (a zombie is not: nobody may reap it in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _gone(pids, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(_alive(pid) for pid in pids)


# ---------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("jobs", [0, 65, True, 2.0, "4"])
def test_jobs_is_validated_once(jobs):
    with pytest.raises(BuildError, match=r"jobs must be an integer in 1\.\.64"):
        BuildConfig(jobs=jobs)


@pytest.mark.parametrize("cores, auto", [(None, 1), (1, 1), (7, 1), (8, 2), (16, 4), (64, 6)])
def test_automatic_jobs_are_a_quarter_of_the_cores_and_at_most_one_per_network(monkeypatch, cores, auto):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert BuildConfig().workers() == auto
    assert BuildConfig(jobs=3).workers() == 3 and BuildConfig(jobs=64).workers() == 64


def test_the_cli_passes_jobs_on(monkeypatch, tmp_path):
    """(Bad values: tests/cli/test_build_engines_cli.py.)"""
    seen = []

    def fake_build(checkpoint, cfg, **kwargs):
        seen.append(cfg)
        raise BuildError("stopped by the test")
    monkeypatch.setattr(build, "build_engines", fake_build)
    ckpt = tmp_path / "weights.safetensors"
    ckpt.write_bytes(b"never read")
    res = CliRunner().invoke(cli, ["build-engines", "-c", str(ckpt), "--device", "cpu", "--jobs", "3"])
    assert res.exit_code == 1 and "stopped by the test" in res.output and seen[-1].jobs == 3
    res = CliRunner().invoke(cli, ["build-engines", "-c", str(ckpt), "--device", "cpu"])
    assert res.exit_code == 1 and seen[-1].jobs is None


# -------------------------------------------------------------------------------------------- scheduler
def test_children_run_at_most_n_at_once_in_the_order_given(tmp_path):
    names = ["unet_step", "clip_image", "vae_decoder", "vae_encoder", "conditioning"]
    done = []
    run_children([_recorder(tmp_path, n, 0.6) for n in names], 2, on_done=lambda n, s: done.append((n, s)))
    spans = {n: (float((tmp_path / f"{n}.start").read_text()), float((tmp_path / f"{n}.end").read_text()))
             for n in names}
    assert sorted(n for n, _ in done) == sorted(names) and all(seconds >= 0.6 for _, seconds in done)
    most = max(sum(1 for begin, end in spans.values() if begin <= start < end) for start, _ in spans.values())
    assert most == 2
    first_end = min(spans[n][1] for n in names[:2])
    assert all(spans[n][0] >= first_end for n in names[2:])       # the first two given start first, the rest wait


def test_a_failing_child_names_its_network_and_stops_the_others(tmp_path):
    pids = tmp_path / "pids"
    jobs = [_lingerer(pids), _recorder(tmp_path, "clip_image", 0.3, status=3), _recorder(tmp_path, "vae_decoder", 0)]
    started = time.monotonic()
    with pytest.raises(ExportJobError) as failed:
        run_children(jobs, 2)
    assert failed.value.network == "clip_image"
    assert failed.value.detail == "RuntimeError: clip_image gave up (exit status 3)"
    assert time.monotonic() - started < 20                                     # not the lingerer's 120 s
    child, grandchild = map(int, _wait_for(pids).split())
    assert _gone([child, grandchild])                 # the compiler it started went with it (its process group)
    assert not (tmp_path / "vae_decoder.start").exists()                      # never started


def test_an_interrupt_stops_the_running_children(tmp_path):
    pids = tmp_path / "pids"

    def jobs():
        yield _lingerer(pids)
        _wait_for(pids)
        raise KeyboardInterrupt                     # e.g. Ctrl-C while the next network traces
    with pytest.raises(KeyboardInterrupt):
        run_children(jobs(), 2)
    assert _gone(map(int, pids.read_text().split()))


def test_a_child_killed_by_a_signal_says_so(tmp_path):
    job = ChildJob("vae_encoder", (sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    with pytest.raises(ExportJobError, match=r"^vae_encoder: killed by signal 9$"):
        run_children([job], 1)


# ------------------------------------------------------------------------------------------ aoti wiring
def _record_children(monkeypatch, launched):
    """aoti's scheduler replaced by one that takes the children in order and runs none."""
    def fake_run_children(children, workers, *, env, on_done):
        for child in children:
            launched.append((child, workers, env, [p.name for p in Path(child.argv[3]).parent.iterdir()]))
            on_done(child.network, 0.5)
    monkeypatch.setattr(aoti, "run_children", fake_run_children)


def test_the_aoti_exporter_compiles_the_longest_first_in_children(tmp_path, monkeypatch, make_networks):
    networks, specs = make_networks()
    traced, launched, done = [], [], []
    monkeypatch.setattr(aoti, "trace_network", lambda spec, module, device: (traced.append(spec.name) or "program",
                                                                           spec))
    monkeypatch.setattr(torch.export, "save", lambda program, path: Path(path).write_bytes(b"program"))
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    _record_children(monkeypatch, launched)
    jobs = [build.ExportJob(specs[n], networks.module(n), tmp_path / f"{n}.pt2") for n in BUILD_ORDER]
    got = aoti.export_in_children(jobs, torch.device("cpu"), 4, lambda n, s: done.append(n))
    assert traced == [child.network for child, *_ in launched] == list(aoti.COMPILE_ORDER) == done
    assert launched[0][0].network == "unet_step" and launched[-1][0].network == "time_embedding"
    for child, workers, env, staged in launched:
        assert child.argv[:3] == (sys.executable, "-m", "vfrt.export.aoti_compile")
        assert child.argv[4:] == (str(tmp_path / f"{child.network}.pt2"), "cpu")
        assert f"{child.network}.program.pt2" in staged                   # saved before its child starts
        assert workers == 4 and env["TORCHINDUCTOR_COMPILE_THREADS"] == "4"
        assert str(Path(aoti.__file__).resolve().parents[2]) in env["PYTHONPATH"].split(os.pathsep)
    assert got == specs and list(tmp_path.iterdir()) == []                # staging folder removed
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "7")               # the user's setting wins
    assert aoti.child_environment(4)["TORCHINDUCTOR_COMPILE_THREADS"] == "7"


def _aoti_build(tiny_checkpoint, out, jobs):
    return build_engines(tiny_checkpoint.ckpt, BuildConfig(device="cpu", jobs=jobs, verify=False),
                         config=tiny_checkpoint.yaml, out=out)


def test_one_job_exports_in_process_one_network_after_another(tmp_path, tiny_checkpoint, monkeypatch):
    exported = []

    def fake_export(spec, module, path, device):
        exported.append(spec.name)
        path.write_bytes(b"package")
        return spec
    monkeypatch.setattr(aoti, "prepare", lambda device: {})
    monkeypatch.setattr(aoti, "export_network", fake_export)
    monkeypatch.setattr(aoti, "export_in_children", lambda *a: pytest.fail("jobs=1 started children"))
    result = _aoti_build(tiny_checkpoint, tmp_path / "engines", 1)
    assert exported == list(BUILD_ORDER) and {n.name for n in result.manifest.networks} == set(BUILD_ORDER)


def test_a_failing_parallel_export_publishes_nothing_and_leaves_no_staging(tmp_path, tiny_checkpoint, monkeypatch,
                                                                          caplog):
    """Real children: clip_image's cannot read its program (the others' compile a tiny Linear until stopped)."""
    tiny = torch.export.export(torch.nn.Linear(4, 4), (torch.randn(2, 4),), strict=True)
    real_save = torch.export.save

    def save(program, path):
        if "clip_image" in str(path):
            Path(path).write_bytes(b"not a program")
        else:
            real_save(program, path)
    monkeypatch.setattr(aoti, "prepare", lambda device: {})
    monkeypatch.setattr(aoti, "trace_network", lambda spec, module, device: (tiny, spec))
    monkeypatch.setattr(torch.export, "save", save)
    out = tmp_path / "engines"
    with pytest.raises(BuildError, match=r"^exporting clip_image \(aoti\) failed: .+ \(exit status 1\)$"):
        _aoti_build(tiny_checkpoint, out, 2)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [".engines.lock"]


# ------------------------------------------------------------------------------------ the compiler child
# A parent that starts a compiler child (a tiny Linear to compile) as a build does, writes its pid and dies
# without stopping it.
ABANDONING_PARENT = textwrap.dedent("""
    import os, subprocess, sys
    from pathlib import Path
    program, package, pid_file = sys.argv[1:4]
    child = subprocess.Popen([sys.executable, "-m", "vfrt.export.aoti_compile", program, package, "cpu"],
                             stdin=subprocess.PIPE, start_new_session=True)
    Path(pid_file).write_text(str(child.pid))
    os._exit(0)
""")


def test_a_compiler_child_exits_when_its_parent_dies(tmp_path):
    program = tmp_path / "linear.program.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(4, 4), (torch.randn(2, 4),), strict=True), str(program))
    env = {**os.environ, "PYTHONPATH": str(Path(aoti.__file__).resolve().parents[2])}
    import subprocess
    subprocess.run([sys.executable, "-c", ABANDONING_PARENT, str(program), str(tmp_path / "linear.pt2"),
                    str(tmp_path / "pid")], env=env, check=True, timeout=60)
    assert _gone([int(_wait_for(tmp_path / "pid"))], seconds=8.0)
    assert not (tmp_path / "linear.pt2").exists()


def test_the_compiler_child_refuses_wrong_arguments(capsys):
    from vfrt.export import aoti_compile
    assert aoti_compile.main(["only-one"]) == 2 and "usage: python -m vfrt.export.aoti_compile" in capsys.readouterr().err


def test_cuda_builds_skip_the_cpu_isa_probe_and_cpu_builds_keep_it(monkeypatch):
    """A CUDA package holds no CPU kernels: its compile takes the processor's advertised vector ISAs instead of
    torch's per-process probe; a CPU build (whose kernels use them) probes, and the user's own setting wins."""
    import torch._inductor.config as inductor_config
    monkeypatch.delenv(aoti.VEC_ISA_OK, raising=False)
    before = inductor_config.cpp.vec_isa_ok
    with aoti.cpu_isa_settings(torch.device("cuda")):
        assert inductor_config.cpp.vec_isa_ok is True
    assert inductor_config.cpp.vec_isa_ok == before
    with aoti.cpu_isa_settings("cpu"):
        assert inductor_config.cpp.vec_isa_ok == before
    with aoti.cpu_isa_settings("cuda", environ={aoti.VEC_ISA_OK: "0"}):
        assert inductor_config.cpp.vec_isa_ok == before
