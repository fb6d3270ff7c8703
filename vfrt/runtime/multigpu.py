"""Orbits on several GPUs of one host: one process per GPU, every step's rows split between them.

    from vfrt.runtime.multigpu import CheckpointPipeline, run_multi_gpu
    from vfrt.runtime.run import RunConfig
    outcomes = run_multi_gpu(CheckpointPipeline("zero123-xl.ckpt"), ["chair.png"], RunConfig(), ["runs/chair"],
                             gpus=2)               # [Path("runs/chair")], or the exception per photo

Each process (rank r on ``cuda:r``) loads the model, joins an NCCL process group and runs the same
generation: the same plans, the same host-drawn noise; the step gives it a contiguous slice of each
step's rows and one all-reduce per step combines the guided eps (:mod:`vfrt.engines.distributed`).
Rank 0 prepares the photos, hands them to the others, and alone writes the output folders - the
same folders :func:`vfrt.runtime.run.run_to_folder` writes. The calling process only starts the
ranks and relays rank 0's progress and results; any rank failing stops them all with one
:class:`~vfrt.engines.distributed.DistributedError`.

The same code runs on the CPU with the gloo backend (tests). ``batch`` > 1 also batches several
photos' orbits across the GPUs (each step's rows of all objects are split).
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue as queue_module
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from vfrt.engines.config import EngineConfig
from vfrt.engines.distributed import (NCCL_ENVIRONMENT, DistBackend, DistributedError, RowSplit, init_row_split,
                                      leave_row_split)
from vfrt.runtime.noise import NoiseBank
from vfrt.runtime.preprocess import PreparedImage, load_image
from vfrt.runtime.sampler import SamplerConfig


@dataclass(frozen=True)
class CheckpointPipeline:
    """How each rank loads its :class:`~vfrt.runtime.pipeline.Pipeline` (picklable: it crosses processes).

    The engine choices are used as given, with each rank's own device.
    """

    checkpoint: str
    config: str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    trust_checkpoint: bool = False
    use_ema: bool = True

    def __call__(self, device: str):
        from vfrt.runtime.pipeline import Pipeline
        return Pipeline.from_checkpoint(self.checkpoint, self.config, engine=replace(self.engine, device=device),
                                        trust_checkpoint=self.trust_checkpoint, use_ema=self.use_ema)


@dataclass
class RankContext:
    """What a task running on one rank gets: who it is, its device, its share of the steps."""

    rank: int
    world_size: int
    device: torch.device
    split: RowSplit
    _messages: Any = None

    @property
    def writer(self) -> bool:
        """Rank 0 writes outputs and reports progress."""
        return self.rank == 0

    def share(self, obj):
        """Rank 0's ``obj`` on every rank (a collective: every rank calls it at the same point)."""
        import torch.distributed as dist
        box = [obj if self.writer else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def report(self, *message) -> None:
        """Send a message to the launching process's ``on_message`` (rank 0 only; others are ignored)."""
        if self.writer and self._messages is not None:
            self._messages.put(("message", message))


def spawn_ranks(task: Callable[[RankContext], Any], gpus: int, *, backend: DistBackend | None = None,
                on_message: Callable[..., None] | None = None):
    """Run ``task`` in ``gpus`` new processes (rank r on ``cuda:r``, or the CPU with gloo) and return what
    rank 0's task returned.

    ``task`` must be picklable (a module-level function or an instance of a module-level class): the
    processes are started with "spawn". ``on_message(*message)`` receives rank 0's :meth:`RankContext.report`
    calls in this process, while the ranks run.

    Raises:
        DistributedError: too few GPUs, or a rank failed (the others are stopped; the message names it).
    """
    import torch.multiprocessing as mp
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise DistributedError(f"gpus must be an integer >= 1, got {gpus!r}")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("nccl", "gloo"):
        raise DistributedError(f"backend must be nccl or gloo, got {backend!r}")
    if backend == "nccl" and torch.cuda.device_count() < gpus:
        raise DistributedError(f"{gpus} GPUs were requested, but this machine has {torch.cuda.device_count()}")
    context = mp.get_context("spawn")
    messages = context.Queue()
    result: dict = {}

    def drain() -> None:
        while True:
            try:
                kind, payload = messages.get_nowait()
            except queue_module.Empty:
                return
            if kind == "result":
                result["value"] = payload
            elif on_message is not None:
                on_message(*payload)

    with tempfile.TemporaryDirectory(prefix="vfrt-ranks-") as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        with _environment(NCCL_ENVIRONMENT):      # the ranks start with it (no NVLink multicast); not this process
            procs = mp.start_processes(_rank_main, args=(gpus, backend, init_file, task, messages), nprocs=gpus,
                                       join=False, start_method="spawn")
        try:
            while not procs.join(timeout=0.2):
                drain()
        except mp.ProcessRaisedException as exc:
            raise DistributedError(f"a rank of the {gpus}-process run failed:\n{_last_lines(str(exc))}") from None
        except mp.ProcessExitedException as exc:
            raise DistributedError(f"a rank of the {gpus}-process run exited abnormally: {exc}") from None
        drain()
    if "value" not in result:
        raise DistributedError("rank 0 finished without a result")
    return result["value"]


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """os.environ with ``values`` set, restored afterwards."""
    old = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _last_lines(text: str, n: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _rank_main(rank: int, world_size: int, backend: DistBackend, init_file: str, task, messages) -> None:
    """Entry point of one rank (started by :func:`spawn_ranks`)."""
    logging.basicConfig(level=logging.WARNING, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if device.type == "cpu":        # the ranks share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    split = init_row_split(rank, world_size, backend, init_file, device)
    try:
        value = task(RankContext(rank, world_size, device, split, messages))
        if rank == 0:
            messages.put(("result", value))
    finally:
        leave_row_split()


# ---------------------------------------------------------------------- the tasks
@dataclass(frozen=True)
class FolderTask:
    """Every rank: load the pipeline, split its steps, run :func:`vfrt.runtime.run.run_many_to_folders`."""

    make_pipeline: Callable[[str], Any]
    images: tuple[str, ...]
    cfg: Any                                  # RunConfig
    out_dirs: tuple[str, ...]
    batch: int = 1
    noise: tuple[NoiseBank | None, ...] | None = None
    overwrite: bool = False
    resume: bool = True

    def __call__(self, ctx: RankContext) -> list:
        from vfrt.runtime.run import run_many_to_folders
        pipe = self.make_pipeline(str(ctx.device))
        pipe.engine.distribute(ctx.split)
        return run_many_to_folders(pipe, list(self.images), self.cfg, list(self.out_dirs), batch=self.batch,
                                   noise=None if self.noise is None else list(self.noise),
                                   overwrite=self.overwrite, resume=self.resume,
                                   on_view=lambda i, done, total: ctx.report("view", i, done, total),
                                   share=ctx.share, writer=ctx.writer)


@dataclass(frozen=True)
class OrbitTask:
    """Every rank: load the pipeline, split its steps, run :meth:`Pipeline.orbit_many`; rank 0 returns the
    results. The photos are prepared on rank 0 and handed to the others."""

    make_pipeline: Callable[[str], Any]
    images: tuple
    views: int = 36
    generate: int | None = None
    sampler: SamplerConfig | None = None
    batch: int = 1
    noise: tuple[NoiseBank | None, ...] | None = None
    preprocess: bool = True

    def __call__(self, ctx: RankContext) -> list:
        pipe = self.make_pipeline(str(ctx.device))
        pipe.engine.distribute(ctx.split)
        prepared = [PreparedImage(load_image(im, pipe.resolution, self.preprocess)) for im in self.images] \
            if ctx.writer else None
        prepared = ctx.share(prepared)
        return pipe.orbit_many(prepared, views=self.views, generate=self.generate, sampler=self.sampler,
                               batch=self.batch, noise=self.noise, preprocess=self.preprocess)


def run_multi_gpu(make_pipeline: Callable[[str], Any], images: Sequence, cfg, out_dirs: Sequence, *, gpus: int,
                  batch: int = 1, noise: Sequence[NoiseBank | None] | None = None, overwrite: bool = False,
                  resume: bool = True, on_view: Callable[[int, int, int], None] | None = None,
                  backend: DistBackend | None = None) -> list:
    """Write one orbit folder per photo (as :func:`vfrt.runtime.run.run_many_to_folders`), every step split
    across ``gpus`` GPUs.

    Args:
        make_pipeline: ``make_pipeline(device) -> Pipeline``, picklable (e.g. :class:`CheckpointPipeline`).
        images, cfg, out_dirs, batch, noise, overwrite, resume: as for ``run_many_to_folders``.
        on_view: ``(photo index, done, total)`` after each generated view, called in this process.
        backend: "nccl" (default with CUDA) or "gloo" (CPU).
    Returns:
        Per photo, the finished folder's path or the exception that stopped it.
    """
    task = FolderTask(make_pipeline, tuple(str(i) for i in images), cfg, tuple(str(o) for o in out_dirs), batch,
                      None if noise is None else tuple(noise), overwrite, resume)
    relay = None if on_view is None else (lambda kind, *args: on_view(*args))
    return spawn_ranks(task, gpus, backend=backend, on_message=relay)


def orbit_multi_gpu(make_pipeline: Callable[[str], Any], images: Sequence, views: int = 36, *, gpus: int,
                    generate: int | None = None, sampler: SamplerConfig | None = None, batch: int = 1,
                    noise: Sequence[NoiseBank | None] | None = None, preprocess: bool = True,
                    backend: DistBackend | None = None) -> list:
    """:meth:`Pipeline.orbit_many` with every step split across ``gpus`` GPUs; returns the
    :class:`~vfrt.runtime.pipeline.GenerationResult` per photo. ``images``: paths or arrays (picklable)."""
    task = OrbitTask(make_pipeline, tuple(Path(i) if isinstance(i, str) else i for i in images), views, generate,
                     sampler, batch, None if noise is None else tuple(noise), preprocess)
    return spawn_ranks(task, gpus, backend=backend)
