"""Many photos over many workers with Ray: one actor per GPU loads the model once; each photo is a task.

    from vfrt.runtime.scaleout import PhotoJob, RayOptions, WorkerSpec, run_on_ray
    spec = WorkerSpec(checkpoint="zero123-xl.ckpt", engine=EngineConfig(), run=RunConfig(views=36))
    summary = run_on_ray([PhotoJob(p, Path("runs") / p.stem) for p in photos], spec, RayOptions())
    summary.write(Path("runs") / SUMMARY_NAME)

Why it is safe to retry a photo (the driver resubmits one whose worker died):

* every photo is written by :func:`vfrt.runtime.run.run_to_folder`: into ``OUT.partial/`` (each
  generated view saved as it finishes), renamed to ``OUT`` only when complete. A dead worker leaves
  at most a partial folder; the retry resumes it (same settings, same noise: the same views), so no
  half-written folder is ever presented as finished and no finished view is generated twice;
* a photo whose final folder is complete with the same settings (:func:`finished_run`) is not run
  again - not on a retry (the worker may have died after the rename) and not on a rerun of the command;
* the noise is seeded per run, so a photo gives the same views whichever worker runs it.

Workers are Ray actors (``num_gpus`` per worker, 1 by default: Ray pins each to its own GPU through
``CUDA_VISIBLE_DEVICES``; on a cluster without GPUs, CPU actors). An actor that dies is restarted by
Ray (``max_restarts``), reloads the model, and takes work again. The same :class:`PhotoWorker` runs
without Ray in one process (benchmarks/bench_scaleout.py's process launcher).

Test-only fault injection (off by default): when the environment variable named by
:data:`FAULT_ENV` holds a photo's file stem, the worker running that photo kills its own process
(``os._exit(1)``) right after the photo's first generated view is saved. A retry resumes after that
view, so only the first attempt dies. The driver forwards the variable to its actors.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

from vfrt.engines.config import EngineConfig
from vfrt.runtime.noise import NoiseBank
from vfrt.runtime.preprocess import PreparedImage
from vfrt.runtime.run import RunConfig, run_fingerprint, run_to_folder

log = logging.getLogger(__name__)

#: test-only: a photo stem whose first attempt kills its worker after one generated view (module docstring)
FAULT_ENV = "VFRT_TEST_CRASH_AFTER_FIRST_VIEW"
#: file name of the run summary written next to the output folders
SUMMARY_NAME = "scaleout.json"
#: a Ray address: "local" (start Ray here), "auto" (the cluster this machine belongs to), HOST:PORT, ray://HOST:PORT
_ADDRESS_RE = re.compile(r"^(local|auto|ray://[^\s/]+(:\d{1,5})?|[A-Za-z0-9._-]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5})$")
#: seconds between polls of the driver's result queue while it waits on the workers
_POLL_SECONDS = 1.0


class ScaleoutError(RuntimeError):
    """The scale-out cannot start or carry on (Ray missing, cluster unreachable, workers that cannot load)."""


def is_ray_address(address: str) -> bool:
    """Whether ``address`` has the form of a Ray address (``local``, ``auto``, ``HOST:PORT``, ``ray://HOST[:PORT]``)."""
    return bool(_ADDRESS_RE.match(address))


@dataclass(frozen=True)
class RayOptions:
    """How the photos are spread over Ray (validated on construction).

    Attributes:
        address: "local" starts a Ray instance on this machine for the run; "auto", HOST:PORT or
            ray://HOST:PORT joins a running cluster. A driver already connected to Ray (``ray.init``
            called) keeps its connection and ignores this.
        workers: actors to start (None: one per GPU of the cluster at ``gpus_per_worker``, or one per
            CPU when it has no GPU or the engine asks for the CPU; never more than there are photos).
        gpus_per_worker: GPUs each actor reserves (None: 1 when the cluster has GPUs and the engine's
            device is not the CPU, else 0); a fraction packs several actors on one GPU.
        max_attempts: tries per photo when workers die under it (>= 1); also the restarts each actor gets.
    """

    address: str = "local"
    workers: int | None = None
    gpus_per_worker: float | None = None
    max_attempts: int = 3

    def __post_init__(self):
        if not is_ray_address(self.address):
            raise ValueError(f"{self.address!r} is not a Ray address: use local, auto, HOST:PORT or ray://HOST:PORT")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ValueError(f"workers must be an integer >= 1, got {self.workers!r}")
        if self.gpus_per_worker is not None and not (math.isfinite(self.gpus_per_worker)
                                                     and 0 <= self.gpus_per_worker):
            raise ValueError(f"gpus_per_worker must be a number >= 0, got {self.gpus_per_worker!r}")
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker loads and how it runs each photo (the same for all workers).

    Attributes:
        checkpoint: the Zero123 weights (a path every worker can read: a shared filesystem on a cluster).
        model_config: the checkpoint's ldm YAML (path) or a parsed ``Zero123Config``; None: full size.
        engine: engine choices; each worker resolves them on its own device (``device`` "auto" or "cuda"
            is the GPU Ray gave the worker).
        run: the run settings, the same for every photo.
        noise: a noise bank to replay (one photo only, as in ``vfrt run --noise``).
        overwrite, resume: as in :func:`vfrt.runtime.run.run_to_folder`; a retried photo always resumes
            its partial folder.
    """

    checkpoint: str
    engine: EngineConfig
    run: RunConfig
    model_config: object | None = None
    trust_checkpoint: bool = False
    use_ema: bool = True
    noise: NoiseBank | None = None
    overwrite: bool = False
    resume: bool = True


@dataclass(frozen=True)
class PhotoJob:
    """One photo and its output folder (absolute paths on a cluster); ``prepared``: its inputs from
    :func:`vfrt.runtime.run.prepare_inputs` when the driver checked them already (saves segmenting twice)."""

    image: Path
    out_dir: Path
    prepared: tuple[PreparedImage, ...] | None = None


@dataclass(frozen=True)
class PhotoOutcome:
    """What became of one photo.

    Attributes:
        status: "done" (folder written now), "skipped" (a finished folder with the same settings was
            there already) or "failed" (``error`` says why; an unfinished ``OUT.partial`` is kept).
        worker: index of the worker that ran the last attempt (-1: none did).
        attempts: tries it took (> 1 when workers died under it).
        seconds: wall time of the last attempt in its worker.
        views: views generated by the last attempt (fewer than the run's when it resumed a partial folder).
    """

    image: str
    folder: str
    status: Literal["done", "skipped", "failed"]
    worker: int
    attempts: int = 1
    seconds: float = 0.0
    views: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Retry:
    """A photo handed out again because its worker died (``attempt``: the try about to start, 2 = first retry)."""

    image: str
    worker: int
    attempt: int
    reason: str


def finished_run(out_dir: Path, fingerprint: dict) -> bool:
    """Whether ``out_dir`` holds a complete run (run.json ``complete``) made with ``fingerprint``'s settings
    (:func:`vfrt.runtime.run.run_fingerprint`): such a photo is never run again."""
    try:
        meta = json.loads((Path(out_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("complete") is True and meta.get("fingerprint") == fingerprint


class PhotoWorker:
    """One loaded pipeline that turns photos into output folders, one at a time.

    A model that cannot be loaded does not raise here (an actor whose constructor raises is restarted
    by Ray for nothing): :meth:`describe` reports ``load_error`` and the driver stops with it.
    """

    def __init__(self, spec: WorkerSpec, index: int):
        from vfrt.runtime.pipeline import Pipeline
        self.spec, self.index = spec, index
        self.pipe, self.load_error = None, None
        try:
            self.pipe = Pipeline.from_checkpoint(spec.checkpoint, spec.model_config, engine=spec.engine,
                                                 trust_checkpoint=spec.trust_checkpoint, use_ema=spec.use_ema)
        except Exception as exc:  # noqa: BLE001 - reported whole to the driver, which stops the run
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.warning("worker %d could not load %s: %s", index, spec.checkpoint, self.load_error)

    def describe(self) -> dict:
        """Where this worker runs (JSON-friendly): index, host, pid, device, GPU name, backend, load error."""
        import torch
        info = {"index": self.index, "host": socket.gethostname(), "pid": os.getpid(),
                "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "load_error": self.load_error}
        if self.pipe is not None:
            device = self.pipe.device
            info.update(device=str(device), backend=self.pipe.backend,
                        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None)
        return info

    def run(self, job: PhotoJob, attempt: int = 1) -> PhotoOutcome:
        """Write ``job``'s output folder (or find it finished); every failure comes back as an outcome."""
        image, out = Path(job.image), Path(job.out_dir)
        outcome = dict(image=str(image), folder=str(out), worker=self.index, attempts=attempt)
        if self.pipe is None:
            return PhotoOutcome(status="failed", error=f"the model did not load: {self.load_error}", **outcome)
        t0 = time.perf_counter()
        spec = self.spec
        try:
            fingerprint = run_fingerprint(image, spec.run, spec.noise, self.pipe.backend, self.pipe.resolution)
            # a finished folder is never redone: on a retry it is this run's (the worker died after the
            # rename), on a first attempt an earlier run's (unless the caller asked to overwrite it)
            if finished_run(out, fingerprint) and (attempt > 1 or not spec.overwrite):
                return PhotoOutcome(status="skipped", **outcome)
            views = []
            crash_here = os.environ.get(FAULT_ENV) == image.stem

            def on_view(done: int, total: int) -> None:
                views.append(done)
                if crash_here and done == 1:
                    log.warning("%s is set: worker %d kills itself after the first view of %s", FAULT_ENV,
                                self.index, image.name)
                    os._exit(1)

            run_to_folder(self.pipe, image, spec.run, out, noise=spec.noise, overwrite=spec.overwrite,
                          resume=spec.resume or attempt > 1, on_view=on_view, prepared=job.prepared)
            return PhotoOutcome(status="done", seconds=time.perf_counter() - t0, views=len(views), **outcome)
        except Exception as exc:  # noqa: BLE001 - one photo's failure must not stop the worker
            log.warning("worker %d: %s failed: %s", self.index, image, exc, exc_info=not isinstance(exc, ValueError))
            return PhotoOutcome(status="failed", seconds=time.perf_counter() - t0, error=str(exc) or type(exc).__name__,
                                **outcome)


@dataclass(frozen=True)
class ScaleoutSummary:
    """Throughput and failures of a scale-out run (written as JSON next to the output folders).

    Attributes:
        launcher: "ray" (or "processes" for the benchmark's launcher without Ray).
        workers: :meth:`PhotoWorker.describe` of each worker, by index.
        outcomes: one per photo, in the order they finished.
        retried: photos handed out again after their worker died; worker_deaths: workers lost meanwhile.
        startup_seconds: from the call to every worker ready (Ray start, model loads);
        wall_seconds: from the call to the last photo finished.
    """

    launcher: str
    workers: list[dict]
    outcomes: list[PhotoOutcome]
    startup_seconds: float
    wall_seconds: float
    retried: int = 0
    worker_deaths: int = 0
    address: str | None = None
    gpus_per_worker: float = 0.0

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failures(self) -> list[PhotoOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def photos_per_worker(self) -> dict[int, int]:
        """Photos each worker generated (status "done"), every worker listed."""
        done = Counter(o.worker for o in self.outcomes if o.status == "done")
        return {w["index"]: done.get(w["index"], 0) for w in self.workers}

    def photos_per_hour(self, after_startup: bool = False) -> float:
        """Generated photos per hour of wall time (``after_startup``: not counting Ray start and model loads)."""
        seconds = self.wall_seconds - (self.startup_seconds if after_startup else 0.0)
        return 3600.0 * self.count("done") / seconds if seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"launcher": self.launcher, "address": self.address, "workers": self.workers,
                "gpus_per_worker": self.gpus_per_worker, "photos": len(self.outcomes),
                "done": self.count("done"), "skipped": self.count("skipped"), "failed": self.count("failed"),
                "retried": self.retried, "worker_deaths": self.worker_deaths,
                "startup_seconds": round(self.startup_seconds, 3), "wall_seconds": round(self.wall_seconds, 3),
                "photos_per_hour": round(self.photos_per_hour(), 2),
                "photos_per_hour_after_startup": round(self.photos_per_hour(after_startup=True), 2),
                "photos_per_worker": {str(k): v for k, v in self.photos_per_worker.items()},
                "outcomes": [dataclasses.asdict(o) for o in self.outcomes]}

    def write(self, path: Path) -> Path:
        """Write :meth:`as_dict` to ``path`` atomically (a temporary sibling, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2))
        tmp.replace(path)
        return path


# ---------------------------------------------------------------------------------------------- the Ray driver
def run_on_ray(jobs: Sequence[PhotoJob], spec: WorkerSpec, options: RayOptions | None = None, *,
               on_event: Callable[[PhotoOutcome | Retry], None] | None = None) -> ScaleoutSummary:
    """Run every job on Ray workers; returns the summary (the caller writes it).

    ``on_event`` is called in the driver with each :class:`PhotoOutcome` as it arrives and with a
    :class:`Retry` whenever a photo is handed out again. Raises :class:`ScaleoutError` when Ray is
    missing or unreachable, the cluster cannot hold the workers, or a worker cannot load the model.
    """
    options = options or RayOptions()
    ray = _import_ray()
    from ray.exceptions import RayActorError
    jobs = list(jobs)
    if not jobs:
        raise ValueError("no photos to run")
    t0 = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        _init_ray(ray, options.address)
    actors = []
    try:
        workers, gpus, cpus = plan_workers(ray.cluster_resources(), spec.engine, options, len(jobs))
        # each process expects its share of the views (the engine's compile policy counts per process)
        engine = dataclasses.replace(spec.engine, expected_views=math.ceil(len(jobs) / workers)
                                     * spec.run.generated_views)
        spec = dataclasses.replace(spec, engine=engine)
        actor_class = ray.remote(PhotoWorker)
        runtime_env = {"env_vars": {FAULT_ENV: os.environ[FAULT_ENV]}} if os.environ.get(FAULT_ENV) else None
        actors = [actor_class.options(num_gpus=gpus, num_cpus=cpus, max_restarts=options.max_attempts,
                                      max_task_retries=0, runtime_env=runtime_env).remote(spec, i)
                  for i in range(workers)]
        log.info("starting %d Ray workers (%g GPU, %d CPU each)", workers, gpus, cpus)
        try:
            infos = ray.get([a.describe.remote() for a in actors])
        except RayActorError as exc:       # the process died while starting (not a Python exception)
            raise ScaleoutError(f"a worker could not start: {str(exc).splitlines()[0]}") from exc
        broken = [i for i in infos if i["load_error"]]
        if broken:
            raise ScaleoutError(f"worker {broken[0]['index']} could not load the model: {broken[0]['load_error']}")
        startup = time.perf_counter() - t0
        outcomes, retried, deaths = _dispatch(ray, actors, jobs, options.max_attempts, on_event)
        wall = time.perf_counter() - t0
    finally:
        for actor in actors:        # frees their GPUs in a Ray instance that outlives this call
            ray.kill(actor)
        if started_here:
            ray.shutdown()
    return ScaleoutSummary(launcher="ray", workers=infos, outcomes=outcomes, startup_seconds=startup,
                           wall_seconds=wall, retried=retried, worker_deaths=deaths,
                           address=options.address, gpus_per_worker=gpus)


def plan_workers(resources: dict, engine: EngineConfig, options: RayOptions, photos: int) -> tuple[int, float, int]:
    """(workers, GPUs per worker, CPUs per worker) for a cluster with ``resources`` (``ray.cluster_resources()``).

    GPU workers reserve one CPU each; CPU workers share the cluster's CPUs (each sets its torch threads
    to its share: Ray sets ``OMP_NUM_THREADS``). Raises :class:`ScaleoutError` for what the cluster or the
    engine's device cannot do.
    """
    cluster_gpus = float(resources.get("GPU", 0.0))
    cluster_cpus = int(resources.get("CPU", 0.0))
    device = engine.device.strip().lower()
    if re.fullmatch(r"cuda:\d+", device):
        raise ScaleoutError(f"each Ray worker uses the GPU Ray gives it: use device auto or cuda, not {device!r}")
    gpus = options.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if cluster_gpus > 0 and device != "cpu" else 0.0
    if device == "cpu" and gpus > 0:
        raise ScaleoutError("device cpu uses no GPU: leave gpus_per_worker at 0")
    if device == "cuda" and gpus == 0:
        raise ScaleoutError("device cuda needs GPUs: the Ray cluster has none" if cluster_gpus == 0 else
                            "device cuda needs gpus_per_worker > 0")
    if gpus > cluster_gpus:
        raise ScaleoutError(f"each worker asks for {gpus:g} GPU(s) but the Ray cluster has {cluster_gpus:g}")
    if cluster_cpus < 1:
        raise ScaleoutError("the Ray cluster has no CPU to run a worker on")
    most = int(cluster_gpus / gpus + 1e-9) if gpus > 0 else cluster_cpus
    most = min(most, cluster_cpus)
    workers = options.workers if options.workers is not None else max(1, min(most, photos))
    if workers > most:
        what = f"{cluster_gpus:g} GPU(s) at {gpus:g} per worker" if gpus > 0 else f"{cluster_cpus} CPU(s)"
        raise ScaleoutError(f"{workers} workers do not fit on the Ray cluster: it has {what} (at most {most} workers)")
    cpus = 1 if gpus > 0 else max(1, cluster_cpus // workers)
    return workers, gpus, cpus


@dataclass
class _Queue:
    """The driver's state: photos waiting (with the attempt they are on), workers free, calls in flight."""

    waiting: deque = field(default_factory=deque)     # (job, attempt)
    free: deque = field(default_factory=deque)        # worker indices ready for a photo
    running: dict = field(default_factory=dict)       # ObjectRef -> (worker, job, attempt); job None: a probe
    deaths: Counter = field(default_factory=Counter)  # worker index -> times it died under a photo


def _dispatch(ray, actors, jobs, max_attempts: int, on_event) -> tuple[list[PhotoOutcome], int, int]:
    """Hand photos to free workers until every photo has an outcome; retry photos whose worker died.

    A worker that died is restarted by Ray; a call sent while it restarts fails, so the driver sends it a
    probe (``describe``) that Ray retries until the actor is back, and gives it photos again only then.
    A probe that fails with ``ActorDiedError`` (no restarts left) or reports a failed model load retires it.
    """
    from ray.exceptions import ActorDiedError, RayActorError
    state = _Queue(waiting=deque((job, 1) for job in jobs), free=deque(range(len(actors))))
    outcomes: list[PhotoOutcome] = []
    retried = 0

    def report(event):
        if on_event is not None:
            on_event(event)

    def fail(job, worker, attempts, error):
        outcomes.append(PhotoOutcome(str(job.image), str(job.out_dir), "failed", worker, attempts, error=error))
        report(outcomes[-1])

    def probe(worker):
        state.running[actors[worker].describe.options(max_task_retries=-1).remote()] = (worker, None, 0)

    def photos_running() -> bool:
        return any(job is not None for _, job, _ in state.running.values())

    while state.waiting or photos_running():      # a probe still out at the end is not waited for
        while state.waiting and state.free:
            worker = state.free.popleft()
            job, attempt = state.waiting.popleft()
            state.running[actors[worker].run.remote(job, attempt)] = (worker, job, attempt)
        if not state.running:           # photos left, every worker gone
            for job, attempt in state.waiting:
                fail(job, -1, attempt - 1, "no worker left: every worker died more often than it may restart")
            break
        ready, _ = ray.wait(list(state.running), num_returns=1, timeout=_POLL_SECONDS)
        if not ready:
            continue
        worker, job, attempt = state.running.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except RayActorError as exc:
            if job is None:             # a probe: back only if Ray can still restart it
                if isinstance(exc, ActorDiedError):
                    log.warning("worker %d is gone for good: %s", worker, str(exc).splitlines()[0])
                else:
                    time.sleep(_POLL_SECONDS)
                    probe(worker)
                continue
            state.deaths[worker] += 1
            reason = f"worker {worker} died ({type(exc).__name__})"
            if attempt < max_attempts:
                state.waiting.appendleft((job, attempt + 1))
                retried += 1
                report(Retry(str(job.image), worker, attempt + 1, reason))
            else:
                fail(job, worker, attempt, f"{reason}; it died under this photo on each of {attempt} attempts")
            probe(worker)
            continue
        if job is None:
            if result["load_error"]:
                log.warning("worker %d restarted but could not load the model: %s", worker, result["load_error"])
                continue
        else:
            outcomes.append(result)
            report(result)
        state.free.append(worker)
    return outcomes, retried, sum(state.deaths.values())


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ScaleoutError("Ray is not installed: pip install 'vfrt[ray]'") from exc
    return ray


#: Ray Client's default port (ray://HOST without a port)
RAY_CLIENT_PORT = 10001
#: seconds to wait for a cluster's port to answer before giving up (Ray itself retries for minutes)
CONNECT_TIMEOUT_SECONDS = 10.0


def _init_ray(ray, address: str) -> None:
    """Start a local Ray instance ("local") or join a cluster; quiet unless something goes wrong.

    A HOST:PORT or ray:// address is first checked to accept a TCP connection at all: ``ray.init`` keeps
    retrying an address where nothing listens for minutes before it fails."""
    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    if address not in ("local", "auto"):
        host, _, port = hostport.rpartition(":")
        if not host:
            host, port = hostport, str(RAY_CLIENT_PORT)
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_SECONDS).close()
        except OSError as exc:
            raise ScaleoutError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from exc
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ScaleoutError(f"cannot reach the Ray cluster at {address}: {exc}") from exc
