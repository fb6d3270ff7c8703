"""The public Python API: :class:`Pipeline`.

    from vfrt import Pipeline, SamplerConfig
    pipe = Pipeline.from_checkpoint("zero123-xl.ckpt")                  # device and backend: auto
    out = pipe.orbit("chair.png", views=36)                             # 35 generated views, generation order
    out = pipe.single("chair.png", delta_polar=-20.0, delta_azimuth=65.0, sampler=SamplerConfig(steps=50))
    outs = pipe.orbit_many(["a.png", "b.png", "c.png"], batch=2)        # orbits advancing together

All angles are degrees at this API; results carry radians. The sampling loop is the same for
every backend: plans (references, weights, pose conditions) come from :mod:`vfrt.runtime.poses`,
noise from :mod:`vfrt.runtime.noise`, and each target view is one ``engine.bind(...)``; the bound
views of all objects in a batch run together (``engine.run_batch``; one orbit is a batch of one).
Engine choices come from one :class:`~vfrt.engines.config.EngineConfig`, sampler settings from one
:class:`~vfrt.runtime.sampler.SamplerConfig`.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np
import torch

from vfrt.engines import create_engine
from vfrt.engines.config import EngineConfig
from vfrt.hardware import TorchOutOfMemoryError
from vfrt.runtime.cache import ViewCache
from vfrt.runtime.noise import NoiseBank, NoiseBankError, NoiseSource
from vfrt.runtime.poses import ViewPlan, orbit_order, plan_low_ring, plan_multi_input, plan_orbit, plan_single
from vfrt.runtime.preprocess import load_image
from vfrt.runtime.sampler import SamplerConfig

log = logging.getLogger(__name__)


class NonFiniteOutputError(RuntimeError):
    """A generated view contains NaN or inf (bad weights, or fp16 overflow)."""


class GPUOutOfMemoryError(TorchOutOfMemoryError):
    """The GPU ran out of memory while generating view ``view`` with ``K`` references.

    A ``torch.OutOfMemoryError`` (callers catching that still catch this), with advice on what to lower.
    """

    def __init__(self, view: int, K: int, backend: str, dtype: str, detail: str, *, batch: int = 1):
        self.view, self.K, self.backend, self.dtype, self.batch = view, K, backend, dtype, batch
        #: what to lower first, besides fewer views or the CPU: the fp16 fast backend, or fp16 on it
        self.try_fast_backend = backend == "reference"
        self.try_float16 = not self.try_fast_backend and dtype == "float32"
        advice = (f"a smaller batch ({batch} objects shared each step), " if batch > 1 else "") + \
            ("backend='fast' (fp16, ~4 GB at K = 25), " if self.try_fast_backend else
             "dtype='float16', " if self.try_float16 else "")
        super().__init__(f"the GPU ran out of memory at view {view} (K = {K} references, {backend} backend): "
                         f"try {advice}fewer views (K grows with the orbit, up to 25 for 36 views), or "
                         f"device='cpu'. CUDA said: {detail.splitlines()[0][:200] if detail else '-'}")


#: called after each generated view: (view index, image (3, H, W) float32 numpy, plan)
ViewCallback = Callable[[int, np.ndarray, ViewPlan], None]
#: the same for :meth:`Pipeline.orbit_many`: (object index, view index, image, plan)
BatchViewCallback = Callable[[int, int, np.ndarray, ViewPlan], None]


@dataclass
class GenerationResult:
    """What a generation returns.

    Attributes:
        images: (V, 3, H, W) float32 in [-1, 1], generation order (inputs excluded; in single
            mode the intermediate views, then the target last).
        azimuths: (V,) radians of each generated view relative to input view 0.
        poses: (V, 3) (polar, azimuth, radius) deltas relative to input view 0 (radians).
        references: per view, (K_v,) slot ids (0..M-1 inputs, M+j generated view j).
        weights: per view, (K_v,) interpolation weights.
        inputs: (M, 3, H, W) the input view(s) as fed to the model.
        input_poses: (M, 3) (polar, azimuth, radius) of each input relative to input 0 (radians; row 0 zeros).
        noise: the noise bank this run used (replay it for an identical result); None in the
            "fast" noise mode, which draws on the device. A seeded run's bank is a
            :class:`~vfrt.runtime.noise.SeededNoiseBank`: drawn again from the seed when first read,
            so a result holds no noise arrays (0.75 GB for a 36-view orbit) unless they are used.
        mode: "orbit", "single" or "multi".
        sampler: the sampler settings used.
        engine: the engine's resolved choices (JSON-friendly).
        n_views: N of an orbit (0 in single mode).
        seconds: wall time of the generation (encode + sample + decode); in a batch, from the
            object joining it to its last view.
    """

    images: np.ndarray
    azimuths: np.ndarray
    poses: np.ndarray
    references: list[np.ndarray]
    weights: list[np.ndarray]
    inputs: np.ndarray
    noise: NoiseBank | None
    mode: str
    input_poses: np.ndarray = field(default_factory=lambda: np.zeros((1, 3)))
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    engine: dict = field(default_factory=dict)
    n_views: int = 0
    seconds: float = 0.0

    def _ring(self, low: bool) -> np.ndarray:
        """Generation indices of the orbit's views (polar delta 0) or of the low ring's, sorted by azimuth."""
        if self.mode == "single":
            raise ValueError("orbit_images() and low_ring_images() are for orbit results")
        members = np.nonzero((self.poses[:, 0] != 0) == low)[0]
        return members[orbit_order(self.azimuths[members])]

    def orbit_images(self) -> np.ndarray:
        """(N, 3, H, W): input view 0 first, then the orbit's generated views sorted by azimuth (orbit modes;
        a low ring's views are in :meth:`low_ring_images`)."""
        return np.concatenate([self.inputs[:1], self.images[self._ring(low=False)]], axis=0)

    def low_ring_images(self) -> np.ndarray:
        """(L, 3, H, W): the low ring's views sorted by azimuth (L = 0 without one)."""
        return self.images[self._ring(low=True)]

    def low_ring_poses(self) -> np.ndarray:
        """(L, 3) (polar delta, azimuth in [0, 2 pi), radius) matching :meth:`low_ring_images`."""
        poses = self.poses[self._ring(low=True)].copy()
        poses[:, 1] = np.mod(poses[:, 1], 2 * np.pi)
        return poses

    def save(self, folder, *, elevation: float = 30.0, overwrite: bool = False, save_noise: bool = False):
        """Write this result as the folder ``vfrt run`` writes (see :func:`vfrt.runtime.run.save_result`);
        ``elevation``: the input camera's angle above the horizon, for the cameras; ``save_noise``: also the
        noise bank (``noise.npz``). Returns the folder."""
        from vfrt.runtime.run import save_result
        return save_result(self, folder, elevation=elevation, overwrite=overwrite, save_noise=save_noise)

    def orbit_azimuths(self) -> np.ndarray:
        """(N,) radians in [0, 2*pi) matching :meth:`orbit_images`."""
        return np.concatenate([[0.0], np.mod(self.azimuths[self._ring(low=False)], 2 * np.pi)])


class Pipeline:
    """ViewFusion generation around one loaded Zero123 model and one engine.

    Args:
        model: a loaded :class:`vfrt.models.Zero123` (CPU).
        engine: engine choices (default: ``EngineConfig()``, everything automatic).
        max_cached_views: keep at most this many reference encodings on the GPU; older ones spill
            to pinned host memory and come back when used (None: keep all).
        copy_weights: False lets the fast engine convert ``model`` in place (the pipeline then owns it).
    """

    def __init__(self, model, engine: EngineConfig | None = None, *, max_cached_views: int | None = None,
                 copy_weights: bool = True):
        self.engine_config = engine if engine is not None else EngineConfig()
        self.engine = create_engine(model, self.engine_config, copy_weights=copy_weights)
        #: ``on_step(done, total)`` after each denoising step of a view (progress bars), or None
        self.on_step: Callable[[int, int], None] | None = None
        self.model_config = model.config
        self.max_cached_views = max_cached_views
        self.views_generated = 0

    @classmethod
    def from_engine(cls, engine, model_config, *, max_cached_views: int | None = None) -> "Pipeline":
        """Wrap an engine that already exists (e.g. to share one fast engine between runs)."""
        pipe = cls.__new__(cls)
        pipe.engine, pipe.model_config, pipe.max_cached_views = engine, model_config, max_cached_views
        pipe.engine_config = getattr(engine, "requested", None) or EngineConfig()
        pipe.on_step = None
        pipe.views_generated = 0
        return pipe

    @classmethod
    def from_checkpoint(cls, path, config=None, *, engine: EngineConfig | None = None, trust_checkpoint: bool = False,
                        use_ema: bool = True, max_cached_views: int | None = None) -> "Pipeline":
        """Load an original Zero123 ``.ckpt`` / ``.safetensors`` or a diffusers folder (EMA applied) and
        build the engine. The engine choices are validated (device present, ...) before the weights load.

        Built engines (``vfrt build-engines``) for these weights are used instead of loading them, as
        ``engine.engines`` says (:func:`vfrt.engines.engine_cache.select_engines`: "auto" by default).
        """
        from vfrt.engines.engine_cache import select_engines
        from vfrt.models import load_zero123
        engine = engine if engine is not None else EngineConfig()
        engine.resolve()
        chosen = select_engines(path, engine, use_ema=use_ema, config=config)
        if chosen.note:
            log.warning("%s", chosen.note)
        if chosen.engine is not None:
            return cls.from_engine(chosen.engine, chosen.engine.source.manifest.zero123_config(),
                                   max_cached_views=max_cached_views)
        model = load_zero123(path, config=config, trust_checkpoint=trust_checkpoint, use_ema=use_ema, device="cpu")
        return cls(model, engine, max_cached_views=max_cached_views, copy_weights=False)

    @classmethod
    def from_engines(cls, source, *, engine: EngineConfig | None = None, use_ema: bool = True, config=None,
                     max_cached_views: int | None = None) -> "Pipeline":
        """A pipeline over built engines: ``source`` is an engine directory, or a checkpoint whose engines
        are looked up in the cache. The weights are not read (only fingerprinted once per checkpoint file).

        Raises:
            EngineError: no usable engines (the message says why and how to build them).
        """
        import dataclasses
        from pathlib import Path

        from vfrt.engines.engine_cache import select_engines
        from vfrt.engines.engine_dir import EngineError
        from vfrt.models.diffusers_format import is_diffusers_folder
        requested = engine if engine is not None else EngineConfig()
        source = Path(source).expanduser()
        if source.is_dir() and not is_diffusers_folder(source):      # an engine directory (checked on load)
            chosen = select_engines(None, dataclasses.replace(requested, engines=source))
        else:
            chosen = select_engines(source, dataclasses.replace(requested, engines="auto"), use_ema=use_ema,
                                    config=config)
            if chosen.engine is None:
                raise EngineError(chosen.note or f"no built engines for {source} in the cache",
                                  f"vfrt build-engines -c {source}")
        return cls.from_engine(chosen.engine, chosen.engine.source.manifest.zero123_config(),
                               max_cached_views=max_cached_views)

    # ------------------------------------------------------------------ public state
    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def backend(self) -> str:
        return self.engine.name

    @property
    def resolution(self) -> int:
        """Image side length the model was trained at (latent size x 8)."""
        return int(self.model_config.unet.image_size) * 8

    # ------------------------------------------------------------------ public modes
    def orbit(self, image, views: int = 36, *, generate: int | None = None, sampler: SamplerConfig | None = None,
              noise: NoiseBank | None = None, preprocess: bool = True, on_view: ViewCallback | None = None,
              resume: Sequence[np.ndarray] = (), low_ring: int = 0, low_ring_polar: float = 45.0) -> GenerationResult:
        """A 360-degree orbit of ``views`` views (``views - 1`` generated, or the first ``generate``).

        ``low_ring``: then this many more views on a second ring ``low_ring_polar`` degrees below the
        input's elevation (:func:`vfrt.runtime.poses.plan_low_ring`; the orbit must be complete), so that
        a reconstruction sees under the object. Without it the orbit is the original's, view for view.
        """
        sampler = sampler or SamplerConfig.for_mode("orbit")
        if low_ring and generate is not None and generate != views - 1:
            raise ValueError("a low ring follows a complete orbit: drop generate (or low_ring)")
        plans = plan_orbit(views, generate, sampler.inference_temp, sampler.auto_temp)
        if low_ring:
            plans += plan_low_ring(views, low_ring, math.radians(low_ring_polar), sampler.inference_temp,
                                   sampler.auto_temp)
        inputs = [load_image(image, self.resolution, preprocess)]
        return self._generate("orbit", plans, inputs, views, sampler, noise, on_view, resume)

    def single(self, image, delta_polar: float = 0.0, delta_azimuth: float = 0.0, delta_radius: float = 0.0, *,
               sampler: SamplerConfig | None = None, noise: NoiseBank | None = None, preprocess: bool = True,
               on_view: ViewCallback | None = None, resume: Sequence[np.ndarray] = ()) -> GenerationResult:
        """One target pose (degrees; radius in the model's units) through 10-degree intermediate views."""
        sampler = sampler or SamplerConfig.for_mode("single")
        plans = plan_single(math.radians(delta_polar), math.radians(delta_azimuth), delta_radius,
                            sampler.inference_temp, sampler.auto_temp)
        inputs = [load_image(image, self.resolution, preprocess)]
        return self._generate("single", plans, inputs, 0, sampler, noise, on_view, resume)

    def multi_view(self, images: Sequence, poses: Sequence[Sequence[float]], views: int = 36, *,
                   generate: int | None = None, sampler: SamplerConfig | None = None, noise: NoiseBank | None = None,
                   preprocess: bool = True, on_view: ViewCallback | None = None,
                   resume: Sequence[np.ndarray] = ()) -> GenerationResult:
        """Orbit from several input views; ``poses[i]`` = (polar, azimuth, radius) of input i
        relative to input 0, degrees (row 0 = zeros)."""
        if len(images) != len(poses):
            raise ValueError(f"got {len(images)} images but {len(poses)} poses")
        sampler = sampler or SamplerConfig.for_mode("multi")
        p = np.asarray(poses, dtype=np.float64).reshape(-1, 3)
        p_rad = np.stack([np.radians(p[:, 0]), np.radians(p[:, 1]), p[:, 2]], axis=1)
        plans = plan_multi_input(p_rad, views, generate, sampler.inference_temp, sampler.auto_temp)
        inputs = [load_image(im, self.resolution, preprocess) for im in images]
        shapes = {tuple(t.shape) for t in inputs}
        if len(shapes) != 1:
            raise ValueError(f"all input views must have the same size, got {sorted(shapes)}")
        result = self._generate("multi", plans, inputs, views, sampler, noise, on_view, resume)
        result.input_poses = p_rad
        return result

    def orbit_many(self, images: Sequence, views: int = 36, *, generate: int | None = None,
                   sampler: SamplerConfig | None = None, batch: int = 4,
                   noise: Sequence[NoiseBank | None] | None = None, preprocess: bool = True,
                   on_view: BatchViewCallback | None = None, resume: Sequence[Sequence[np.ndarray]] | None = None,
                   failures: Literal["raise", "return"] = "raise") -> list:
        """Orbits of several photos, ``batch`` of them advancing together on the engine (continuous batching).

        Every step runs the rows of all objects in the batch in one UNet call, each object with its own
        references, weights, latent and noise; an object joins when a slot frees up and leaves when its
        orbit is done (at view boundaries: all objects run the same S steps per view). Each object draws
        its noise exactly as :meth:`orbit` would (same seed or its own bank), so result i equals
        ``orbit(images[i], ...)`` up to the rounding of the batched kernels.

        Args:
            images: the photos (paths, PIL images, arrays or tensors; see :meth:`orbit`).
            batch: objects advancing together (>= 1); more photos wait for a free slot.
            noise: one noise bank (or None: from the sampler's seed) per photo.
            on_view: ``(object index, view index, image, plan)`` after each generated view.
            resume: per photo, the views it generated earlier (see :meth:`orbit`).
            failures: "raise" stops at the first failing object (as :meth:`orbit`); "return" drops it from
                the batch, keeps the others going and puts the exception at its place in the result list.
        Returns:
            One :class:`GenerationResult` per photo, in order (an exception where one failed with "return").
        """
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
        if failures not in ("raise", "return"):
            raise ValueError(f"failures must be 'raise' or 'return', got {failures!r}")
        images = list(images)
        if not images:
            raise ValueError("orbit_many needs at least one image")
        noise = [None] * len(images) if noise is None else list(noise)
        resume = [()] * len(images) if resume is None else [list(r) for r in resume]
        for name, given in (("noise banks", noise), ("resume lists", resume)):
            if len(given) != len(images):
                raise ValueError(f"got {len(images)} images but {len(given)} {name}")
        sampler = sampler or SamplerConfig.for_mode("orbit")
        plans = plan_orbit(views, generate, sampler.inference_temp, sampler.auto_temp)
        # photos are loaded (and segmented) when their object joins the batch, not all up front
        jobs = [_Job(i, "orbit", plans, functools.partial(_load_inputs, im, self.resolution, preprocess), views,
                     bank, done) for i, (im, bank, done) in enumerate(zip(images, noise, resume))]
        return self._generate_many(jobs, sampler, batch, on_view, failures)

    # ------------------------------------------------------------------ the loop
    def _generate(self, mode, plans: list[ViewPlan], inputs: list[torch.Tensor], n_views: int, sampler: SamplerConfig,
                  noise: NoiseBank | None, on_view, resume) -> GenerationResult:
        callback = None if on_view is None else (lambda _, v, image, plan: on_view(v, image, plan))
        job = _Job(0, mode, plans, lambda: inputs, n_views, noise, list(resume))
        return self._generate_many([job], sampler, 1, callback, "raise")[0]

    def _generate_many(self, jobs: list["_Job"], sampler: SamplerConfig, batch: int, on_view,
                       failures: str) -> list:
        """The sampling loop: rounds of one target view per active object, until every object is done.

        A round binds each active object's next view, denoises them together (``engine.run_batch``; one
        after another on engines without it), decodes them and hands them out. Objects join at round
        boundaries while fewer than ``batch`` are active. With one object this is the plain
        autoregressive loop of the original scripts.
        """
        schedule = sampler.schedule(self.model_config.schedule)
        latent_shape = (4, self.resolution // 8, self.resolution // 8)
        results: list = [None] * len(jobs)

        def fail(job: _Job, exc: Exception) -> None:
            """An object that cannot go on: stop everything, or leave its exception as its result."""
            if failures == "raise":
                raise exc
            results[job.index] = exc
            job.release()

        ready = []
        for job in jobs:
            try:
                job.check(sampler, schedule.num_steps, latent_shape)
                self.engine.check_rows(max(p.K for p in job.plans) + (float(sampler.guidance) != 1.0))
                ready.append(job)
            except ValueError as exc:             # a noise bank or resumed views that do not fit, or more rows
                fail(job, exc)                    # than built engines take: before any view is generated
        todo = sum(len(j.plans) - len(j.resume) for j in ready)
        self.engine.prepare(self.views_generated + todo)
        self.engine.set_step_callback(self.on_step)
        log.info("sampling %d views", todo)      # the start-up marker benchmarks/bench_engines.py times
        run_batch = getattr(self.engine, "run_batch", None)
        if run_batch is None:        # engines without a batched step (the reference): one view after another
            def run_batch(dens, x_T, step_noise, generators):
                return [d.run(x, n, g) for d, x, n, g in zip(dens, x_T, step_noise, generators)]

        pending = deque(ready)
        active: list[_Job] = []
        while pending or active:
            while pending and len(active) < batch:
                job = pending.popleft()
                try:
                    job.start(self.engine, sampler, schedule.num_steps, latent_shape, self.max_cached_views)
                except ValueError as exc:         # ImageInputError: a photo that cannot be read or used
                    fail(job, exc)
                    continue
                if job.done:           # everything was resumed
                    results[job.index] = self._result(job, sampler)
                else:
                    active.append(job)
            if not active:
                continue
            with self._clear_oom(active[0].v, active[0].plans[active[0].v], len(active)):
                dens = [job.bind(self.engine, schedule, sampler.guidance) for job in active]
                latents = run_batch(dens, [job.upcoming[0] for job in active], [job.upcoming[1] for job in active],
                                    [job.generator for job in active])
                decoded = [self.engine.decode(z) for z in latents]
                # The GPU work of this round is queued: draw the next views' noise (same order of draws
                # per object) on the host meanwhile, instead of after waiting for the images.
                for job in active:
                    job.upcoming = job.draw(job.v + 1, schedule.num_steps, latent_shape)
                images = [d.float().cpu() for d in decoded]
            still = []
            for job, img in zip(active, images):
                plan = job.plans[job.v]
                try:
                    self._check_finite(job.v, plan, img)
                except NonFiniteOutputError as exc:
                    fail(job, exc)
                    continue
                job.add(img)
                self.views_generated += 1
                if on_view is not None:
                    on_view(job.index, job.v - 1, job.images[-1], plan)
                log.info("object %d: view %d/%d done (K=%d)", job.index, job.v, len(job.plans), plan.K)
                if job.done:
                    results[job.index] = self._result(job, sampler)
                else:
                    still.append(job)
            active = still
        return results

    def _result(self, job: "_Job", sampler: SamplerConfig) -> GenerationResult:
        if self.engine.device.type == "cuda":
            torch.cuda.synchronize(self.engine.device)
        job.release()
        poses = np.array([p.pose for p in job.plans], dtype=np.float64)
        return GenerationResult(
            images=np.stack(job.images).astype(np.float32), azimuths=poses[:, 1].copy(), poses=poses,
            references=[p.references for p in job.plans], weights=[p.weights for p in job.plans],
            inputs=torch.cat(job.inputs).numpy().astype(np.float32),
            noise=job.source.recorded if sampler.replayable else None, mode=job.mode, sampler=sampler,
            engine=self.engine.describe(), n_views=job.n_views, seconds=time.perf_counter() - job.started)

    @contextlib.contextmanager
    def _clear_oom(self, v: int, plan: ViewPlan, batch: int = 1):
        """Turn a device out-of-memory error into :class:`GPUOutOfMemoryError` naming the view, K and what to lower."""
        try:
            yield
        except GPUOutOfMemoryError:
            raise
        except TorchOutOfMemoryError as exc:
            raise GPUOutOfMemoryError(v, plan.K, self.backend, self.engine.config.dtype, str(exc),
                                      batch=batch) from exc

    def _check_finite(self, v: int, plan: ViewPlan, img: torch.Tensor) -> None:
        if not torch.isfinite(img).all():
            raise NonFiniteOutputError(
                f"view {v} ({math.degrees(plan.pose[1]):+.0f} deg azimuth) came out with NaN/inf values"
                f" on the {self.backend} backend; the weights may be corrupt, or fp16 overflowed - "
                "try the float32 reference backend or dtype='bfloat16'")


class _Job:
    """One object's generation: its plans, inputs, noise and finished views (state of the loop above).

    Slots: ``pixels[0 .. M-1]`` the input views, then one per generated view (SPEC §5 slot numbering).
    """

    def __init__(self, index: int, mode: str, plans: list[ViewPlan], load_inputs: Callable[[], list[torch.Tensor]],
                 n_views: int, noise: NoiseBank | None, resume: Sequence[np.ndarray]):
        self.index, self.mode, self.plans, self.load_inputs, self.n_views = index, mode, plans, load_inputs, n_views
        self.noise, self.resume = noise, list(resume)
        # set by check(): the noise stream and the draws per view
        self.source: NoiseSource | None = None
        self.draws: list[int] = []
        # set by start(), when the object joins the batch
        self.started = 0.0
        self.inputs: list[torch.Tensor] = []
        self.pixels: list[torch.Tensor] = []
        self.cache: ViewCache | None = None
        self.generator: torch.Generator | None = None
        self.images: list[np.ndarray] = []
        self.v = 0                    # the next view to generate
        self.upcoming = None          # its draws: (x_T, step noise)

    @property
    def done(self) -> bool:
        return self.v >= len(self.plans)

    def check(self, sampler: SamplerConfig, num_steps: int, latent_shape) -> None:
        """Fail before any compute if the noise bank or the resumed views do not fit this object's run."""
        if self.noise is not None and not sampler.replayable:
            raise NoiseBankError("a noise bank replays 'exact' or 'shared' runs; noise_mode='fast' draws on the device")
        if len(self.resume) > len(self.plans):
            raise ValueError(f"resume holds {len(self.resume)} views but the run generates {len(self.plans)}")
        self.source = NoiseSource.from_bank(self.noise) if self.noise is not None else \
            NoiseSource.from_seed(sampler.seed)
        self.draws = [0 if sampler.noise_mode == "fast" else 1 if sampler.noise_mode == "shared" else p.K
                      for p in self.plans]
        self.source.check_plan(self.draws, num_steps, latent_shape)

    def start(self, engine, sampler: SamplerConfig, num_steps: int, latent_shape, max_cached_views) -> None:
        """Join the batch: a fresh view cache and noise stream; resumed views are taken over (their draws are
        still consumed, so the remaining views get the noise of an uninterrupted run)."""
        self.started = time.perf_counter()
        self.inputs = self.load_inputs()
        size = (latent_shape[1] * 8, latent_shape[2] * 8)
        if any(tuple(t.shape[-2:]) != size for t in self.inputs):
            raise ValueError(f"the input views must be {size[0]}x{size[1]}, got "
                             f"{sorted({tuple(t.shape[-2:]) for t in self.inputs})}")
        self.cache = ViewCache(engine.device, max_cached_views)
        self.pixels = list(self.inputs)
        if sampler.noise_mode == "fast":
            self.generator = torch.Generator(device=engine.device).manual_seed(sampler.seed)
        self.upcoming = self.draw(0, num_steps, latent_shape)
        for done in self.resume:
            self.upcoming = self.draw(self.v + 1, num_steps, latent_shape)
            self.add(torch.as_tensor(np.asarray(done, dtype=np.float32))[None])

    def draw(self, v: int, num_steps: int, latent_shape):
        return self.source.view(v, self.draws[v], num_steps, latent_shape) if v < len(self.plans) else None

    def bind(self, engine, schedule, guidance: float):
        """The engine's denoiser for view ``v`` (its references encoded on first use)."""
        plan = self.plans[self.v]
        refs = []
        for slot in (int(s) for s in plan.references):
            if slot not in self.cache:
                self.cache.put(slot, engine.encode_view(self.pixels[slot]))
            refs.append(self.cache.get(slot))
        return engine.bind(refs, torch.from_numpy(plan.pose_conditions), torch.from_numpy(plan.weights), schedule, guidance)

    def add(self, image: torch.Tensor) -> None:
        """View ``v`` is finished: (1, 3, H, W) float32 on the host."""
        self.pixels.append(image)
        self.images.append(image[0].numpy())
        self.v += 1

    def release(self) -> None:
        """Drop what only generation needs (reference encodings on the device, pixel copies) once it is over."""
        self.cache, self.pixels = None, []


def _load_inputs(image, resolution: int, preprocess: bool) -> list[torch.Tensor]:
    return [load_image(image, resolution, preprocess)]
