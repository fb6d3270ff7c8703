"""Exporting several networks at once: the job an exporter gets, the error naming the network that failed,
and :func:`run_children`, which runs compiler child processes a few at a time.

:mod:`vfrt.export.build` hands every exporter the same :class:`ExportJob` list; an exporter that compiles in
child processes (:mod:`vfrt.export.aoti`) schedules them with :func:`run_children`. A compile is mostly
single-threaded C++ and Triton work, so on a many-core machine several children finish in about the time
of the longest one. Each child runs in a process group of its own, so stopping it also stops the
compiler processes it started; nothing is left running when a build fails or is interrupted. A child's
standard input is a pipe this process never writes to: it reaches its end when this process dies, even
by SIGKILL, which is how a child notices that nobody waits for it any more.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterable, Mapping

from torch import nn

from vfrt.engines.specs import NetworkSpec

log = logging.getLogger(__name__)

#: an output line that states an error: ``SomeError: ...`` (a traceback's last line), or the interpreter's own
_ERROR_LINE = re.compile(r"^([\w.]+(Error|Exception|Interrupt|Exit)\b|Fatal Python error)")
#: how long a stopped child may take to exit after SIGTERM before its process group gets SIGKILL
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class ExportJob:
    """One network to export: its spec, its module, and the artifact path to write."""

    spec: NetworkSpec
    module: nn.Module
    path: Path

    @property
    def network(self) -> str:
        return self.spec.name


class ExportJobError(RuntimeError):
    """One network's export failed: ``network`` names it, ``detail`` says why in one line."""

    def __init__(self, network: str, detail: str):
        super().__init__(f"{network}: {detail}")
        self.network, self.detail = network, detail


def one_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"`` (at most 400 characters of it)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:400] if text else '-'}"


@dataclass(frozen=True)
class ChildJob:
    """A child process that exports ``network``: ``argv`` (no shell), exit status 0 when it succeeded."""

    network: str
    argv: tuple[str, ...]


#: called as each child succeeds: (network, seconds it ran)
ChildDone = Callable[[str, float], None]


@dataclass
class _Running:
    job: ChildJob
    process: subprocess.Popen
    output: IO[bytes]
    started: float = field(default_factory=time.perf_counter)

    def failure(self) -> str:
        """The child's last error line (else its last non-blank output line), with how it exited."""
        self.output.seek(0)
        lines = [line.strip() for line in self.output.read().decode(errors="replace").splitlines() if line.strip()]
        code = self.process.returncode
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        log.debug("%s's child (%s) said:\n%s", self.job.network, how, "\n".join(lines[-40:]))
        errors = [line for line in lines if _ERROR_LINE.match(line)]
        said = (errors or lines)[-1:]
        return f"{said[0][:400]} ({how})" if said else how

    def close(self) -> None:
        self.output.close()
        self.process.stdin.close()

    def signal_group(self, signum: int) -> None:
        """Signal the child's process group (the child and the compilers it started)."""
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):     # the whole group has exited already
            if self.process.poll() is None:
                self.process.send_signal(signum)


def run_children(jobs: Iterable[ChildJob], workers: int, *, env: Mapping[str, str] | None = None,
                 on_done: ChildDone | None = None, poll_s: float = 0.05) -> None:
    """Run ``jobs`` as child processes, at most ``workers`` at once, started in the order given.

    ``jobs`` is read lazily: the next job is taken when a slot is free, so a generator can prepare it
    (trace a network) while the earlier children run. Returns when every child exited with status 0.

    Raises:
        ExportJobError: the first child that fails, naming its network and its last output line; the
            children still running are stopped first (SIGTERM to their process groups, then SIGKILL).
            On any other exception, KeyboardInterrupt included, the running children are stopped too.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    pending, running = iter(jobs), []
    try:
        while True:
            while len(running) < workers and (job := next(pending, None)) is not None:
                running.append(_start(job, env))
            if not running:
                return
            finished = [child for child in running if child.process.poll() is not None]
            if not finished:
                time.sleep(poll_s)
                continue
            for child in finished:
                running.remove(child)
                child.signal_group(signal.SIGKILL)          # compiler processes it may have left behind
                try:
                    if child.process.returncode != 0:
                        raise ExportJobError(child.job.network, child.failure())
                finally:
                    child.close()
                if on_done is not None:
                    on_done(child.job.network, time.perf_counter() - child.started)
    finally:
        _stop(running)


def _start(job: ChildJob, env: Mapping[str, str] | None) -> _Running:
    output = tempfile.TemporaryFile()
    log.debug("starting %s's child: %s", job.network, " ".join(job.argv))
    try:
        process = subprocess.Popen(job.argv, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT,
                                   env=None if env is None else dict(env), start_new_session=True)
    except BaseException:
        output.close()
        raise
    return _Running(job, process, output)


def _stop(running: list[_Running]) -> None:
    """Stop every running child and its process group: SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`."""
    for child in running:
        child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in running:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        child.signal_group(signal.SIGKILL)
        child.process.wait()
        child.close()
        log.debug("stopped %s's compiler child", child.job.network)
