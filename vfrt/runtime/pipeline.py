"""The public Python API: :class:`Pipeline`.

    from vfrt import Pipeline, SamplerConfig
    pipe = Pipeline.from_checkpoint("zero123-xl.ckpt")                  # device and backend: auto
    out = pipe.orbit("chair.png", views=36)                             # 35 generated views, generation order
    out = pipe.single("chair.png", delta_polar=-20.0, delta_azimuth=65.0, sampler=SamplerConfig(steps=50))

All angles are degrees at this API; results carry radians. The sampling loop is the same for
every backend: plans (references, weights, pose conditions) come from :mod:`vfrt.runtime.poses`,
noise from :mod:`vfrt.runtime.noise`, and each target view is one ``engine.bind(...).run(...)``.
Engine choices come from one :class:`~vfrt.engines.config.EngineConfig`, sampler settings from one
:class:`~vfrt.runtime.sampler.SamplerConfig`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from vfrt.engines import create_engine
from vfrt.engines.config import EngineConfig
from vfrt.hardware import TorchOutOfMemoryError
from vfrt.runtime.cache import ViewCache
from vfrt.runtime.noise import NoiseBank, NoiseBankError, NoiseSource
from vfrt.runtime.poses import ViewPlan, orbit_order, plan_multi_input, plan_orbit, plan_single
from vfrt.runtime.preprocess import load_image
from vfrt.runtime.sampler import SamplerConfig

log = logging.getLogger(__name__)


class NonFiniteOutputError(RuntimeError):
    """A generated view contains NaN or inf (bad weights, or fp16 overflow)."""


class GPUOutOfMemoryError(TorchOutOfMemoryError):
    """The GPU ran out of memory while generating view ``view`` with ``K`` references.

    A ``torch.OutOfMemoryError`` (callers catching that still catch this), with advice on what to lower.
    """

    def __init__(self, view: int, K: int, backend: str, dtype: str, detail: str):
        self.view, self.K, self.backend, self.dtype = view, K, backend, dtype
        #: what to lower first, besides fewer views or the CPU: the fp16 fast backend, or fp16 on it
        self.try_fast_backend = backend == "reference"
        self.try_float16 = not self.try_fast_backend and dtype == "float32"
        advice = ("backend='fast' (fp16, ~4 GB at K = 25), " if self.try_fast_backend else
                  "dtype='float16', " if self.try_float16 else "")
        super().__init__(f"the GPU ran out of memory at view {view} (K = {K} references, {backend} backend): "
                         f"try {advice}fewer views (K grows with the orbit, up to 25 for 36 views), or "
                         f"device='cpu'. CUDA said: {detail.splitlines()[0][:200] if detail else '-'}")


#: called after each generated view: (view index, image (3, H, W) float32 numpy, plan)
ViewCallback = Callable[[int, np.ndarray, ViewPlan], None]


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
        noise: the noise bank this run used (replay it for an identical result); None in the
            "fast" noise mode, which draws on the device.
        mode: "orbit", "single" or "multi".
        sampler: the sampler settings used.
        engine: the engine's resolved choices (JSON-friendly).
        n_views: N of an orbit (0 in single mode).
        seconds: wall time of the generation (encode + sample + decode).
    """

    images: np.ndarray
    azimuths: np.ndarray
    poses: np.ndarray
    references: list[np.ndarray]
    weights: list[np.ndarray]
    inputs: np.ndarray
    noise: NoiseBank | None
    mode: str
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    engine: dict = field(default_factory=dict)
    n_views: int = 0
    seconds: float = 0.0

    def orbit_images(self) -> np.ndarray:
        """(N, 3, H, W): input view 0 first, then generated views sorted by azimuth (orbit modes)."""
        if self.mode == "single":
            raise ValueError("orbit_images() is for orbit results")
        order = orbit_order(self.azimuths)
        return np.concatenate([self.inputs[:1], self.images[order]], axis=0)

    def orbit_azimuths(self) -> np.ndarray:
        """(N,) radians in [0, 2*pi) matching :meth:`orbit_images`."""
        order = orbit_order(self.azimuths)
        return np.concatenate([[0.0], np.mod(self.azimuths[order], 2 * np.pi)])


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
        self.model_config = model.config
        self.max_cached_views = max_cached_views
        self.views_generated = 0

    @classmethod
    def from_engine(cls, engine, model_config, *, max_cached_views: int | None = None) -> "Pipeline":
        """Wrap an engine that already exists (e.g. to share one fast engine between runs)."""
        pipe = cls.__new__(cls)
        pipe.engine, pipe.model_config, pipe.max_cached_views = engine, model_config, max_cached_views
        pipe.engine_config = getattr(engine, "requested", None) or EngineConfig()
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
              resume: Sequence[np.ndarray] = ()) -> GenerationResult:
        """A 360-degree orbit of ``views`` views (``views - 1`` generated, or the first ``generate``)."""
        sampler = sampler or SamplerConfig.for_mode("orbit")
        plans = plan_orbit(views, generate, sampler.inference_temp, sampler.auto_temp)
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
        return self._generate("multi", plans, inputs, views, sampler, noise, on_view, resume)

    # ------------------------------------------------------------------ the loop
    def _generate(self, mode, plans: list[ViewPlan], inputs: list[torch.Tensor], n_views: int, sampler: SamplerConfig,
                  noise: NoiseBank | None, on_view, resume) -> GenerationResult:
        if noise is not None and not sampler.replayable:
            raise NoiseBankError("a noise bank replays 'exact' or 'shared' runs; noise_mode='fast' draws on the device")
        schedule = sampler.schedule(self.model_config.schedule)
        H, W = inputs[0].shape[-2:]
        latent_shape = (4, H // 8, W // 8)
        source = NoiseSource.from_bank(noise) if noise is not None else NoiseSource.from_seed(sampler.seed)
        draws = [0 if sampler.noise_mode == "fast" else 1 if sampler.noise_mode == "shared" else p.K for p in plans]
        source.check_plan(draws, schedule.num_steps, latent_shape)
        if len(resume) > len(plans):
            raise ValueError(f"resume holds {len(resume)} views but the run generates {len(plans)}")
        self.engine.prepare(self.views_generated + len(plans) - len(resume))
        device_generator = None
        if sampler.noise_mode == "fast":
            device_generator = torch.Generator(device=self.engine.device).manual_seed(sampler.seed)

        t0 = time.perf_counter()
        log.info("sampling %d views", len(plans) - len(resume))
        cache = ViewCache(self.engine.device, self.max_cached_views)
        pixels = list(inputs)        # slot -> (1, 3, H, W); encoded on first use as a reference

        def reference(slot: int):
            if slot not in cache:
                cache.put(slot, self.engine.encode_view(pixels[slot]))
            return cache.get(slot)

        def draw(v: int):
            return source.view(v, draws[v], schedule.num_steps, latent_shape) if v < len(plans) else None

        images = []
        upcoming = draw(0)
        for v, plan in enumerate(plans):
            x_T, step_noise = upcoming
            if v < len(resume):           # finished earlier: keep its image, still consume its draws
                upcoming = draw(v + 1)
                img = torch.as_tensor(np.asarray(resume[v], dtype=np.float32))[None]
            else:
                with self._clear_oom(v, plan):
                    refs = [reference(int(s)) for s in plan.references]
                    den = self.engine.bind(refs, torch.from_numpy(plan.T), torch.from_numpy(plan.weights), schedule,
                                           sampler.guidance)
                    decoded = self.engine.decode(den.run(x_T, step_noise, device_generator))
                    # The GPU work of this view is queued: draw the next view's noise (same order of draws)
                    # on the host meanwhile, instead of after waiting for the image.
                    upcoming = draw(v + 1)
                    img = decoded.float().cpu()
                self._check_finite(v, plan, img)
                self.views_generated += 1
            pixels.append(img)
            images.append(img[0].numpy())
            if on_view is not None and v >= len(resume):
                on_view(v, images[-1], plan)
            log.info("view %d/%d done (K=%d)", v + 1, len(plans), plan.K)
        if self.engine.device.type == "cuda":
            torch.cuda.synchronize(self.engine.device)
        seconds = time.perf_counter() - t0
        poses = np.array([p.pose for p in plans], dtype=np.float64)
        return GenerationResult(
            images=np.stack(images).astype(np.float32), azimuths=poses[:, 1].copy(), poses=poses,
            references=[p.references for p in plans], weights=[p.weights for p in plans],
            inputs=torch.cat(inputs).numpy().astype(np.float32),
            noise=source.recorded if sampler.replayable else None, mode=mode, sampler=sampler,
            engine=self.engine.describe(), n_views=n_views, seconds=seconds)

    @contextlib.contextmanager
    def _clear_oom(self, v: int, plan: ViewPlan):
        """Turn a device out-of-memory error into :class:`GPUOutOfMemoryError` naming the view, K and what to lower."""
        try:
            yield
        except GPUOutOfMemoryError:
            raise
        except TorchOutOfMemoryError as exc:
            raise GPUOutOfMemoryError(v, plan.K, self.backend, self.engine.config.dtype, str(exc)) from exc

    def _check_finite(self, v: int, plan: ViewPlan, img: torch.Tensor) -> None:
        if not torch.isfinite(img).all():
            raise NonFiniteOutputError(
                f"view {v} ({math.degrees(plan.pose[1]):+.0f} deg azimuth) came out with NaN/inf values"
                f" on the {self.backend} backend; the weights may be corrupt, or fp16 overflowed - "
                "try the float32 reference backend or dtype='bfloat16'")
