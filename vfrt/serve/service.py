"""``JobService``: jobs from upload to result folder, shared by the HTTP API and the page.

One bounded :class:`~vfrt.serve.queue.JobQueue` feeds one :class:`Worker` thread per pipeline
(one pipeline per GPU: each worker owns its ``Pipeline`` and is the only thread that uses it),
so every user of the server waits in the same line and a GPU runs one job at a time.

A worker takes a *batch*: the oldest job plus queued jobs with the same sampling settings
(:meth:`Job.batch_key <vfrt.serve.store.Job.batch_key>`, at most ``ServeConfig.batch_size``).
:meth:`Worker.run_batch` runs them one after another today; when the pipeline can sample several
objects in one step (batched orbits), that one method hands the batch over in one call.

Generation goes through :func:`vfrt.runtime.run.run_to_folder`, so a job's ``run/`` folder is
exactly what ``vfrt run`` writes for the same photo and settings (resumable ``run.partial/``).

Cancelling: a waiting job leaves the queue at once. A running job stops *between views*: the
engine's loop over the sampling steps of a view is not interruptible by design (it may be one CUDA
graph), so the request is noticed when the current view is finished (``on_view`` raises), or at
the next progress report of a reconstruction (every ``ReconConfig.nan_check_every`` training
steps). Segmenting the photo before the first view is not interrupted either.
"""
from __future__ import annotations

import importlib.util
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Sequence

from vfrt.atomic import replace_folder
from vfrt.serve.config import ServeConfig
from vfrt.serve.errors import JobNotFound, JobStateError, QueueFull, ServeError, SettingsError
from vfrt.serve.queue import JobQueue
from vfrt.serve.settings import JobSettings
from vfrt.serve.store import JOB_ID, Job, load_jobs, new_job_id, resolve_inside
from vfrt.serve.uploads import check_image

log = logging.getLogger(__name__)


class _StopJob(Exception):
    """Raised from a progress callback to leave the runtime between two views (or training steps)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason        # "cancel" or "shutdown"


class JobService:
    """The job queue and its workers.

    Args:
        config: limits and places.
        pipelines: one loaded :class:`~vfrt.runtime.pipeline.Pipeline` per GPU (a worker each).

    Jobs of earlier runs in ``config.runs_dir`` are listed at once; the workers run from
    :meth:`start` (the app's startup) to :meth:`stop` (its shutdown; a stopped service stays stopped).
    """

    def __init__(self, config: ServeConfig, pipelines: Sequence):
        if not pipelines:
            raise ValueError("JobService needs at least one pipeline")
        self.config = config
        self.resolution = int(pipelines[0].resolution)
        self._cond = threading.Condition()
        self._jobs: dict[str, Job] = {}
        self._queue: JobQueue[Job] = JobQueue(config.queue_size, config.retry_after_s)
        self._stopping = False
        self.workers = [Worker(self, pipe, i) for i, pipe in enumerate(pipelines)]
        config.runs_dir.mkdir(parents=True, exist_ok=True)
        self._restore()

    # ------------------------------------------------------------------------ lifecycle
    def _restore(self) -> None:
        """List the jobs of earlier runs; queue again those that were waiting or running."""
        for job in load_jobs(self.config.runs_dir):
            self._jobs[job.id] = job
            if job.state in ("queued", "running"):
                job.state, job.message = "queued", "resumed after a server restart"
                self._queue.put(job, bounded=False)
                job.save()
        if self._jobs:
            log.info("found %d earlier jobs in %s (%d queued again)", len(self._jobs), self.config.runs_dir,
                     len(self._queue))

    def start(self) -> None:
        if self._stopping:
            raise RuntimeError("this JobService was stopped; make a new one")
        for worker in self.workers:
            if not worker.is_alive():
                worker.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers at their next view boundary; interrupted jobs stay queued on disk and
        resume at the next start."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for worker in self.workers:
            if worker.is_alive():
                worker.join(timeout)

    # ------------------------------------------------------------------------ requests
    def submit(self, photos: Sequence[tuple[bytes, str | None]], settings: JobSettings) -> dict:
        """Queue a job for ``photos`` ([(data, file name)], the photo first, then extra input views).

        Raises:
            UploadRejected, SettingsError, QueueFull: nothing is stored then.
        """
        if not photos:
            raise SettingsError("a job needs a photo")
        if len(photos) - 1 > self.config.max_extra_inputs:
            raise SettingsError(f"at most {self.config.max_extra_inputs} extra input views per job, "
                                f"got {len(photos) - 1}")
        checked = [check_image(data, name, max_bytes=self.config.max_upload_bytes, max_pixels=self.config.max_pixels)
                   for data, name in photos]
        rel = [f"photos/{i}/{c.name}" for i, c in enumerate(checked)]
        job_id = new_job_id()
        job = Job(id=job_id, folder=self.config.runs_dir / job_id, settings=settings, photos=rel)
        job.run_config(self.config.max_views, self.config.max_steps)      # SettingsError before any write
        with self._cond:
            self._refuse_when_stopping()
            self._queue.check_room()
        for path, image in zip(rel, checked):
            (job.folder / path).parent.mkdir(parents=True, exist_ok=True)
            (job.folder / path).write_bytes(image.data)
        with self._cond:
            try:
                self._refuse_when_stopping()
                self._queue.put(job)
            except ServeError:
                shutil.rmtree(job.folder, ignore_errors=True)
                raise
            self._jobs[job.id] = job
            job.save()
            self._cond.notify_all()
            log.info("job %s queued (%s, %d views, %d steps)", job.id, settings.mode, settings.views, settings.steps)
            state = self._state(job)
        return self._with_files(job, state)

    def cancel(self, job_id: str) -> dict:
        """Cancel a waiting job now, or a running one at its next view (see the module docstring)."""
        with self._cond:
            job = self._job(job_id)
            if job.state == "queued":
                self._queue.remove(job)
                self._finish(job, "cancelled", "cancelled before it started")
            elif job.state == "running":
                job.cancel.set()
                job.message = "cancelling: stops when the current " + ("view" if job.stage == "views" else "step") \
                              + " is finished"
                job.touch()
                self._cond.notify_all()
            else:
                raise JobStateError(f"job {job_id} has already ended ({job.state}); nothing to cancel")
            state = self._state(job)
        return self._with_files(job, state)

    def reconstruct(self, job_id: str) -> dict:
        """Queue the mesh stage of a job whose views are done (no-op when it has a mesh already)."""
        missing = [m for m in ("trimesh", "skimage", "scipy") if importlib.util.find_spec(m) is None]
        if missing:
            raise ServeError(f"reconstruction needs {', '.join(missing)}: pip install 'vfrt[serve]'")
        with self._cond:
            job = self._job(job_id)
            if job.state in ("queued", "running"):
                raise JobStateError(f"job {job_id} is still {job.state}; reconstruct once its views are done")
            if job.has_mesh:
                return self._with_files(job, self._state(job))
            if not job.has_views:
                raise JobStateError(f"job {job_id} has no finished views to reconstruct ({job.state})")
            if job.settings.mode == "single":
                raise JobStateError("a single-pose job has no orbit to reconstruct; use mode orbit or multi")
            self._refuse_when_stopping()
            self._queue.put(job)
            job.stage, job.state, job.message, job.finished = "mesh", "queued", "", None
            job.cancel.clear()
            job.save()
            job.touch()
            self._cond.notify_all()
            state = self._state(job)
        return self._with_files(job, state)

    def status(self, job_id: str) -> dict:
        with self._cond:
            job = self._job(job_id)
            state = self._state(job)
        return self._with_files(job, state)

    def jobs(self) -> list[dict]:
        """Every job, newest first."""
        with self._cond:
            states = [(j, self._state(j)) for j in sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)]
        return [self._with_files(job, state) for job, state in states]

    def wait(self, job_id: str, version: int, timeout: float) -> dict:
        """The job's status once its version differs from ``version`` (or after ``timeout`` seconds)."""
        with self._cond:
            job = self._job(job_id)
            self._cond.wait_for(lambda: job.version != version or self._stopping, timeout)
            state = self._state(job)
        return self._with_files(job, state)

    def file(self, job_id: str, relative: str) -> Path:
        """The path of a file inside the job's folder; :class:`JobNotFound` for anything else
        (including ``..``, absolute paths and links that lead outside)."""
        with self._cond:
            job = self._job(job_id)
        path = resolve_inside(job.folder, relative)
        if path is None:
            raise JobNotFound(f"job {job_id} has no file {relative!r}")
        return path

    def info(self) -> dict:
        """The server's limits and load (``GET /api/info``)."""
        with self._cond:
            running = sum(j.state == "running" for j in self._jobs.values())
            waiting = len(self._queue)
        return {"workers": [w.describe() for w in self.workers], "resolution": self.resolution,
                "queue": {"waiting": waiting, "running": running, "capacity": self.config.queue_size},
                "limits": {"max_upload_bytes": self.config.max_upload_bytes, "max_pixels": self.config.max_pixels,
                           "max_extra_inputs": self.config.max_extra_inputs, "max_views": self.config.max_views,
                           "max_steps": self.config.max_steps},
                "defaults": JobSettings().model_dump()}

    # ------------------------------------------------------------------------ internals (lock held)
    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id) if JOB_ID.match(job_id or "") else None
        if job is None:
            raise JobNotFound(f"no job {job_id!r}")
        return job

    def _refuse_when_stopping(self) -> None:
        if self._stopping:
            raise QueueFull("the server is shutting down", self.config.retry_after_s)

    def _state(self, job: Job) -> dict:
        """The job's status fields that the lock guards (see :meth:`_with_files` for the rest)."""
        now = time.time()
        eta = job.eta_s(now)
        return {"id": job.id, "state": job.state, "stage": job.stage, "message": job.message,
                "created": job.created, "started": job.started, "finished": job.finished,
                "queue_position": self._queue.position(job),
                "progress": {"done": job.done, "total": job.total, "unit": "views" if job.stage == "views" else "steps",
                             "elapsed_s": None if job.started is None or job.state != "running"
                             else round(now - job.started, 2),
                             "eta_s": None if eta is None else round(eta, 1)},
                "settings": job.settings.model_dump(), "photos": job.photos, "version": job.version}

    @staticmethod
    def _with_files(job: Job, state: dict) -> dict:
        """``state`` plus what the job folder holds, read without the lock (a worker may be renaming a
        finished folder meanwhile: the listing is then the one before or after)."""
        return {**state, "has_views": job.has_views, "has_mesh": job.has_mesh, "views": job.views(),
                "files": job.files()}

    def _finish(self, job: Job, state: str, message: str) -> None:
        job.state, job.message, job.finished = state, message, time.time()
        job.save()
        job.touch()
        self._cond.notify_all()

    # ------------------------------------------------------------------------ called by workers
    def _next_batch(self) -> list[Job] | None:
        """Block until jobs wait; mark a batch running and return it (None when stopping)."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or len(self._queue) > 0)
            if self._stopping:
                return None
            batch = self._queue.take(self.config.batch_size, Job.batch_key)
            for job in batch:
                job.state, job.started, job.finished, job.message = "running", time.time(), None, ""
                job.done, job.total, job.rate_origin = 0, 0, None
                job.save()
                job.touch()
            self._cond.notify_all()
            return batch

    def _progress(self, job: Job, done: int, total: int) -> None:
        """A view (or training step) finished: record it; leave the runtime if asked to stop."""
        with self._cond:
            job.progress(done, total)
            job.touch()
            self._cond.notify_all()
            if self._stopping:
                raise _StopJob("shutdown")
            if job.cancel.is_set():
                raise _StopJob("cancel")

    def _set_stage(self, job: Job, stage: str) -> None:
        with self._cond:
            job.stage, job.done, job.total, job.rate_origin, job.started = stage, 0, 0, None, time.time()
            job.save()
            job.touch()
            self._cond.notify_all()

    def _ended(self, job: Job, state: str, message: str) -> None:
        with self._cond:
            if state == "queued":           # interrupted by a shutdown: resumes at the next start
                job.state, job.message = "queued", "interrupted by a server stop; resumes at the next start"
                job.save()
                job.touch()
                self._cond.notify_all()
            else:
                self._finish(job, state, message)


class Worker(threading.Thread):
    """Owns one pipeline (one GPU) and runs the jobs it takes from the service's queue."""

    def __init__(self, service: JobService, pipeline, index: int):
        super().__init__(name=f"vfrt-serve-worker-{index}", daemon=True)
        self.service = service
        self.pipeline = pipeline
        self.index = index

    def describe(self) -> dict:
        return {"index": self.index, "device": str(self.pipeline.device), "backend": self.pipeline.backend}

    def run(self) -> None:
        while True:
            batch = self.service._next_batch()
            if batch is None:
                return
            self.run_batch(batch)

    def run_batch(self, jobs: list[Job]) -> None:
        """Run compatible jobs (equal :meth:`Job.batch_key`). One after another for now: the place
        where a batched orbit call of the pipeline takes them together."""
        for job in jobs:
            self.run_job(job)

    def run_job(self, job: Job) -> None:
        """One job to its end state; every failure becomes the job's message, never the worker's end."""
        from vfrt.runtime.run import run_to_folder
        service = self.service
        try:
            if job.cancel.is_set():
                raise _StopJob("cancel")
            if job.stage == "views":
                if not job.has_views:       # a restart after the views were written finishes the job only
                    cfg = job.run_config(service.config.max_views, service.config.max_steps)
                    run_to_folder(self.pipeline, job.folder / job.photos[0], cfg, job.run_dir,
                                  on_view=lambda done, total: service._progress(job, done, total))
                job.write_views_zip()
                if not job.settings.reconstruct:
                    service._ended(job, "done", f"{len(job.views())} views")
                    return
                service._set_stage(job, "mesh")
            self._reconstruct(job)
            service._ended(job, "done", "mesh ready")
        except _StopJob as stop:
            if stop.reason == "shutdown":
                service._ended(job, "queued", "")
                return
            partial = job.run_partial if job.stage == "views" else job.recon_partial
            shutil.rmtree(partial, ignore_errors=True)
            service._ended(job, "cancelled", f"cancelled after {job.done} of {job.total} "
                                             + ("views" if job.stage == "views" else "training steps"))
        except Exception as exc:            # the job fails; the worker and the server go on
            expected = _expected_errors()
            if not isinstance(exc, expected):
                log.exception("job %s failed", job.id)
            detail = str(exc) if isinstance(exc, expected) else f"internal error ({type(exc).__name__}: {exc})"
            self._free_device_memory()
            service._ended(job, "failed", detail)

    def _reconstruct(self, job: Job) -> None:
        from vfrt.recon import reconstruct
        cfg = self.service.config.recon
        shutil.rmtree(job.recon_partial, ignore_errors=True)
        reconstruct(job.run_dir, job.recon_partial, cfg,
                    progress=lambda step, loss: self.service._progress(job, step, cfg.steps))
        replace_folder(job.recon_partial, job.recon_dir)

    def _free_device_memory(self) -> None:
        import torch
        if self.pipeline.device.type == "cuda":
            torch.cuda.empty_cache()


def _expected_errors() -> tuple[type[BaseException], ...]:
    """The runtime's and recon's own errors: their message is the job's message, without a traceback."""
    from vfrt.recon import ReconError
    from vfrt.runtime.media import MediaError
    from vfrt.runtime.noise import NoiseBankError
    from vfrt.runtime.pipeline import GPUOutOfMemoryError, NonFiniteOutputError
    from vfrt.runtime.preprocess import ImageInputError
    from vfrt.runtime.run import RunError
    from vfrt.runtime.segment import SegmentationError
    return (RunError, ImageInputError, NoiseBankError, NonFiniteOutputError, GPUOutOfMemoryError, SegmentationError,
            MediaError, ReconError, ServeError)
