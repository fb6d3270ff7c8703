"""The public Python API: :class:`Pipeline` (issue 2, item 5).

    from vfrt import Pipeline, NoiseBank
    pipe = Pipeline.from_checkpoint("zero123-xl.ckpt", config=None, device="cuda", backend="fast")
    out = pipe.orbit("chair.png", views=36)          # 35 generated views, generation order
    out = pipe.single("chair.png", delta_polar=-20.0, delta_azimuth=65.0)

All angles are degrees at this API; results carry radians. The sampling loop is the same for
every backend: plans (references, weights, pose conditions) come from :mod:`vfrt.runtime.poses`,
noise from :mod:`vfrt.runtime.noise`, and each target view is one ``engine.bind(...).run(...)``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from vfrt.engines import create_engine
from vfrt.runtime.cache import ViewCache
from vfrt.runtime.noise import NoiseBank, NoiseSource
from vfrt.runtime.poses import ViewPlan, orbit_order, plan_multi_input, plan_orbit, plan_single
from vfrt.runtime.preprocess import load_image
from vfrt.runtime.schedule import make_ddim_schedule

log = logging.getLogger(__name__)

class NonFiniteOutputError(RuntimeError):
    """A generated view contains NaN or inf (bad weights, or fp16 overflow)."""


_TORCH_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)   # torch < 2.5: only the latter


class GPUOutOfMemoryError(_TORCH_OOM):
    """The GPU ran out of memory while generating view ``view`` with ``K`` references.

    A ``torch.OutOfMemoryError`` (callers catching that still catch this), with advice on what to lower.
    """

    def __init__(self, view: int, K: int, backend: str, dtype: torch.dtype | None, detail: str):
        self.view, self.K, self.backend, self.dtype = view, K, backend, dtype
        #: what to lower first, besides fewer views or the CPU: the fp16 fast backend, or fp16 on it
        self.try_fast_backend = backend == "reference"
        self.try_float16 = not self.try_fast_backend and dtype == torch.float32
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
        noise: the noise bank this run used (replay it for an identical result).
        mode: "orbit", "single" or "multi".
        n_views: N of an orbit (0 in single mode).
        seconds: wall time of the generation (encode + sample + decode).
    """

    images: np.ndarray
    azimuths: np.ndarray
    poses: np.ndarray
    references: list[np.ndarray]
    weights: list[np.ndarray]
    inputs: np.ndarray
    noise: NoiseBank
    mode: str
    n_views: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

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


def _resolve_device(device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but PyTorch sees no CUDA GPU; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise RuntimeError(f"unsupported device {device!r}: vfrt runs on 'cpu' or 'cuda'")
    return dev


class Pipeline:
    """ViewFusion generation around one loaded Zero123 model and one engine backend."""

    def __init__(self, model, *, device="auto", backend: str = "reference", max_cached_views: int | None = None,
                 **engine_kwargs):
        """``max_cached_views``: keep at most this many reference encodings on the GPU; older ones
        spill to pinned host memory and come back when used (None: keep all)."""
        self.device = _resolve_device(device)
        self.max_cached_views = max_cached_views
        if backend == "auto":
            backend = "fast" if self.device.type == "cuda" else "reference"
        self.backend = backend
        self.model_config = model.config
        self.engine = create_engine(backend, model, self.device, **engine_kwargs)

    @classmethod
    def from_engine(cls, engine, model_config, *, max_cached_views: int | None = None) -> "Pipeline":
        """Wrap an engine that already exists (e.g. to share one fast engine between runs)."""
        pipe = cls.__new__(cls)
        pipe.device, pipe.backend, pipe.model_config = engine.device, engine.name, model_config
        pipe.engine, pipe.max_cached_views = engine, max_cached_views
        return pipe

    @classmethod
    def from_checkpoint(cls, path, config=None, *, device="auto", backend: str = "reference",
                        trust_checkpoint: bool = False, use_ema: bool = True, max_cached_views: int | None = None,
                        **engine_kwargs) -> "Pipeline":
        """Load an original Zero123 ``.ckpt`` / ``.safetensors`` (EMA applied) and build the engine."""
        from vfrt.models import load_zero123
        model = load_zero123(path, config=config, trust_checkpoint=trust_checkpoint, use_ema=use_ema, device="cpu")
        if backend == "auto":
            backend = "fast" if _resolve_device(device).type == "cuda" else "reference"
        if backend == "fast":
            engine_kwargs.setdefault("copy_weights", False)   # the pipeline owns this model
        return cls(model, device=device, backend=backend, max_cached_views=max_cached_views, **engine_kwargs)

    # ------------------------------------------------------------------ public modes
    @property
    def resolution(self) -> int:
        """Image side length the model was trained at (latent size x 8)."""
        return int(self.model_config.unet.image_size) * 8

    def orbit(self, image, views: int = 36, generate: int | None = None, steps: int = 75, eta: float = 1.0,
              guidance: float = 3.0, inference_temp: float = 0.5, auto_temp: float = 0.5, seed: int = 0,
              noise: NoiseBank | None = None, preprocess: bool = True, *, on_view: ViewCallback | None = None,
              resume: Sequence[np.ndarray] = (), shared_noise: bool = False) -> GenerationResult:
        """A 360-degree orbit of ``views`` views (``views - 1`` generated, or ``generate``).

        ``shared_noise=True`` draws one step noise shared by all K references (ViewFusion's
        real-image script, ``my_ddim_pred_e``) instead of K independent draws (SPEC §3).
        """
        plans = plan_orbit(views, generate, inference_temp, auto_temp)
        inputs = [load_image(image, self.resolution, preprocess)]
        return self._generate("orbit", plans, inputs, views, steps, eta, guidance, seed, noise, on_view, resume,
                              shared_noise)

    def single(self, image, delta_polar: float = 0.0, delta_azimuth: float = 0.0, delta_radius: float = 0.0,
               steps: int = 75, eta: float = 1.0, guidance: float = 3.0, inference_temp: float = 0.5,
               auto_temp: float = 0.5, seed: int = 0, noise: NoiseBank | None = None, preprocess: bool = True, *,
               on_view: ViewCallback | None = None, resume: Sequence[np.ndarray] = (),
               shared_noise: bool = False) -> GenerationResult:
        """One target pose (degrees; radius in the model's units) through 10-degree intermediate views."""
        plans = plan_single(math.radians(delta_polar), math.radians(delta_azimuth), delta_radius,
                            inference_temp, auto_temp)
        inputs = [load_image(image, self.resolution, preprocess)]
        return self._generate("single", plans, inputs, 0, steps, eta, guidance, seed, noise, on_view, resume,
                              shared_noise)

    def multi_view(self, images: Sequence, poses: Sequence[Sequence[float]], views: int = 36,
                   generate: int | None = None, steps: int = 75, eta: float = 1.0, guidance: float = 3.0,
                   inference_temp: float = 0.5, auto_temp: float = 1.0, seed: int = 0,
                   noise: NoiseBank | None = None, preprocess: bool = True, *,
                   on_view: ViewCallback | None = None, resume: Sequence[np.ndarray] = (),
                   shared_noise: bool = False) -> GenerationResult:
        """Orbit from several input views; ``poses[i]`` = (polar, azimuth, radius) of input i
        relative to input 0, degrees (row 0 = zeros)."""
        if len(images) != len(poses):
            raise ValueError(f"got {len(images)} images but {len(poses)} poses")
        p = np.asarray(poses, dtype=np.float64).reshape(-1, 3)
        p_rad = np.stack([np.radians(p[:, 0]), np.radians(p[:, 1]), p[:, 2]], axis=1)
        plans = plan_multi_input(p_rad, views, generate, inference_temp, auto_temp)
        inputs = [load_image(im, self.resolution, preprocess) for im in images]
        shapes = {tuple(t.shape) for t in inputs}
        if len(shapes) != 1:
            raise ValueError(f"all input views must have the same size, got {sorted(shapes)}")
        return self._generate("multi", plans, inputs, views, steps, eta, guidance, seed, noise, on_view, resume,
                              shared_noise)

    # ------------------------------------------------------------------ the loop
    def _generate(self, mode, plans: list[ViewPlan], inputs: list[torch.Tensor], n_views, steps, eta, guidance,
                  seed, noise, on_view, resume, shared_noise: bool = False) -> GenerationResult:
        if not (guidance >= 0 and math.isfinite(guidance)):
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")
        schedule = make_ddim_schedule(steps, eta, num_train_timesteps=self.model_config.schedule.timesteps,
                                      linear_start=self.model_config.schedule.linear_start,
                                      linear_end=self.model_config.schedule.linear_end)
        H, W = inputs[0].shape[-2:]
        latent_shape = (4, H // 8, W // 8)
        source = NoiseSource.from_bank(noise) if noise is not None else NoiseSource.from_seed(seed)
        draws = [1 if shared_noise else p.K for p in plans]      # per-step noise draws of each view
        source.check_plan(draws, schedule.num_steps, latent_shape)
        if len(resume) > len(plans):
            raise ValueError(f"resume holds {len(resume)} views but the run generates {len(plans)}")

        t0 = time.perf_counter()
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
                try:
                    refs = [reference(int(s)) for s in plan.references]
                    den = self.engine.bind(refs, torch.from_numpy(plan.T), torch.from_numpy(plan.weights),
                                           schedule, guidance)
                    decoded = self.engine.decode(den.run(x_T, step_noise))
                    # The GPU work of this view is queued: draw the next view's noise (same order of
                    # draws) on the host meanwhile, instead of after waiting for the image.
                    upcoming = draw(v + 1)
                    img = decoded.float().cpu()
                except GPUOutOfMemoryError:
                    raise
                except _TORCH_OOM as exc:
                    raise GPUOutOfMemoryError(v, plan.K, self.backend, getattr(self.engine, "dtype", None),
                                              str(exc)) from exc
                if not torch.isfinite(img).all():
                    raise NonFiniteOutputError(
                        f"view {v} ({math.degrees(plan.pose[1]):+.0f} deg azimuth) came out with NaN/inf values"
                        f" on the {self.backend} backend; the weights may be corrupt, or fp16 overflowed - "
                        "try the float32 reference backend or dtype='bfloat16'")
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
            inputs=torch.cat(inputs).numpy().astype(np.float32), noise=source.recorded, mode=mode,
            n_views=n_views, seconds=seconds)
