"""The fast engine: exact-math interpolated DDIM over executors of the network specs (SPEC §6).

It runs the six networks of :mod:`vfrt.engines.specs` through whatever executors it is given and
the shared step of :mod:`vfrt.engines.step`:

* ``encode_view``: ``clip_image`` and ``vae_encoder`` once per reference view (the runtime caches it);
* ``bind``: ``conditioning`` on the K references plus the unconditional row, the schedule's
  ``time_embedding`` table and update coefficients (both cached per schedule);
* ``run``: S steps of ``unet_step`` + guided combined update in the :class:`StepGraphCache`;
  ``run_batch`` advances the target views of several objects together (batched orbits);
* ``decode``: ``vae_decoder``.

:meth:`FastEngine.from_model` builds it from a loaded Zero123 with the torch executors (eager, and
compiled for the UNet when the resolved config says so). Other backends build the same engine from
other executors. :meth:`FastEngine.distribute` splits every step's rows across the processes of a
multi-GPU run (:mod:`vfrt.engines.distributed`).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Mapping, Sequence

import torch

from vfrt.engines.base import ViewEncoding
from vfrt.engines.config import EngineConfig, ResolvedEngineConfig
from vfrt.engines.executors import CompiledExecutor, EagerExecutor, Executor
from vfrt.engines.specs import NETWORK_NAMES, Networks, SpecMismatchError, build_networks
from vfrt.engines.step import BoundView, StepGraphCache, check_one_schedule, combined_noise, step_coefficients

if TYPE_CHECKING:
    from vfrt.engines.distributed import RowSplit

log = logging.getLogger(__name__)

#: references the torch executors accept (they have no built range; exported engines do)
TORCH_MAX_REFS = 1023


class FastEngine:
    """Exact-math fast backend over one executor per network.

    Args:
        executors: {network name: loaded executor} for every name in ``NETWORK_NAMES``.
        config: the resolved choices this engine runs with (dtype, graphs, ...).
        requested: what was asked (lets :meth:`prepare` re-decide the workload policy); None: fixed.
        networks: the torch modules behind the executors, when built from a model (re-used if the
            policy later swaps the UNet executor).
        source: the engine directory the executors were loaded from (:func:`vfrt.engines.engine_dir.load_engine`).
    """

    name = "fast"

    def __init__(self, executors: Mapping[str, Executor], config: ResolvedEngineConfig, *,
                 requested: EngineConfig | None = None, networks: Networks | None = None, source=None):
        missing = [n for n in NETWORK_NAMES if n not in executors]
        if missing:
            raise ValueError(f"the fast engine needs an executor for every network; missing {', '.join(missing)}")
        self.config = config
        self.device = config.device
        self.requested = requested
        self.networks = networks
        self.source = source
        self._executors = {name: executors[name].load() for name in NETWORK_NAMES}
        #: this process's share of every step in a multi-GPU run (None: the whole step here)
        self.split: RowSplit | None = None
        self.step_cache = StepGraphCache(self._executors["unet_step"], self.device, config.graphs)
        self._emb_tables: dict[tuple, torch.Tensor] = {}
        self._coefficients: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_model(cls, model, requested: EngineConfig, *, copy_weights: bool = True,
                   views_so_far: int = 0) -> "FastEngine":
        """Build the torch executors for a loaded :class:`vfrt.models.Zero123` (``model`` stays untouched
        unless ``copy_weights=False``, which converts its modules in place)."""
        config = requested.resolve(views_so_far)
        if config.backend != "fast":
            raise ValueError(f"FastEngine.from_model needs backend 'fast', the config resolves to {config.backend!r}")
        networks = build_networks(model, config.device, config.torch_dtype, config.torch_vae_dtype,
                                  channels_last=config.channels_last, attention=config.attention,
                                  fused_geglu=config.fused_geglu, triton_conv=config.triton_conv,
                                  copy_weights=copy_weights)
        return cls(_torch_executors(networks, config), config, requested=requested, networks=networks)

    # ------------------------------------------------------------------ public state
    def executor(self, name: str) -> Executor:
        """The executor running network ``name``."""
        return self._executors[name]

    def set_step_callback(self, on_step) -> None:
        """``on_step(done, total)`` after each denoising step (progress only), or None."""
        self.step_cache.on_step = on_step

    def describe(self) -> dict:
        """Resolved choices and executor kinds (JSON-friendly), e.g. for run.json and benchmarks."""
        unet = self._executors["unet_step"]
        out = {**self.config.summary(), "executors": {n: e.kind for n, e in self._executors.items()},
               "unet_compiled": bool(getattr(unet, "compiled", False))}
        if self.source is not None:
            out["engines"] = self.source.summary()
        return out

    def prepare(self, views_so_far: int) -> None:
        """Re-apply the workload policy now that the process has ``views_so_far`` generated (or planned)
        views: switches the torch UNet to the compiled executor once compiling pays off. Never undoes a
        choice; does nothing for engines built from other executors."""
        if self.requested is None or self.networks is None or self.config.compile:
            return
        new = self.requested.resolve(views_so_far)
        if not new.compile:
            return
        log.info("%d views: compiling the UNet from now on (it pays off from here; docs/PERF.md)", views_so_far)
        self.networks.unet_step.configure(attention=new.attention, fused_geglu=new.fused_geglu,
                                          triton_conv=new.triton_conv)
        spec = self._executors["unet_step"].spec
        self._executors["unet_step"] = CompiledExecutor(spec, self.networks.unet_step).load()
        on_step = self.step_cache.on_step
        self.step_cache = StepGraphCache(self._executors["unet_step"], self.device, new.graphs, self.split)
        self.step_cache.on_step = on_step
        self.config = new

    def distribute(self, split: "RowSplit | None") -> None:
        """Run this process's rows of every step from now on (``split`` from
        :func:`vfrt.engines.distributed.init_row_split`); None: the whole step again. Drops captured graphs."""
        self.split = split if split is not None and split.world_size > 1 else None
        on_step = self.step_cache.on_step
        self.step_cache = StepGraphCache(self._executors["unet_step"], self.device, self.config.graphs, self.split)
        self.step_cache.on_step = on_step

    # ------------------------------------------------------------------ per view
    @torch.no_grad()
    def encode_view(self, image: torch.Tensor) -> ViewEncoding:
        """image (1, 3, H, W) float32 in [-1, 1] -> CLIP embedding and VAE posterior mean."""
        img = {"image": image.to(self.device, torch.float32)}
        return ViewEncoding(clip=self._executors["clip_image"].run(img)["embedding"],
                            latent=self._executors["vae_encoder"].run(img)["latent"])

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, 4, h, w) -> (B, 3, H, W) float32 in [-1, 1]."""
        return self._executors["vae_decoder"].run({"latent": z.to(self.device, torch.float32)})["image"]

    @torch.no_grad()
    def bind(self, refs: Sequence[ViewEncoding], poses: torch.Tensor, weights: torch.Tensor, schedule,
             guidance: float) -> "FastDenoiser":
        """Conditioning of one target view on K references (input first): poses (K, 4) pose
        conditions (SPEC's T), weights (K,) summing to 1."""
        K = len(refs)
        self.check_rows(K + (float(guidance) != 1.0))
        dev = self.device
        clip = torch.cat([r.clip.to(dev, torch.float32) for r in refs], 0)
        latent = torch.cat([r.latent.to(dev, torch.float32) for r in refs], 0)
        pose = poses.to(dev, torch.float32).reshape(K, 4)
        keep = torch.ones((K,), device=dev)
        if float(guidance) != 1.0:   # row 0: the unconditional branch (zero context, zero latent)
            clip = torch.cat([torch.zeros_like(clip[:1]), clip], 0)
            latent = torch.cat([torch.zeros_like(latent[:1]), latent], 0)
            pose = torch.cat([torch.zeros_like(pose[:1]), pose], 0)
            keep = torch.cat([torch.zeros_like(keep[:1]), keep], 0)
        cond = self._executors["conditioning"].run({"clip": clip, "pose": pose, "latent": latent, "keep": keep})
        view = BoundView(K=K, guidance=float(guidance), h0=cond["h0"], consts=cond["consts"],
                         weights=weights.to(dev, torch.float32).reshape(K), emb_table=self._emb_table(schedule),
                         coefficients=self._step_coefficients(schedule))
        return FastDenoiser(self, view)

    @torch.no_grad()
    def run_batch(self, denoisers: Sequence["FastDenoiser"], x_T: Sequence[torch.Tensor],
                  step_noise: Sequence[torch.Tensor | None],
                  generators: Sequence[torch.Generator | None] | None = None) -> list[torch.Tensor]:
        """Denoise N bound target views (of N objects, one schedule) together, each step one UNet call over
        all their rows. Per view as :meth:`FastDenoiser.run`: x_T (1, C, h, w), step_noise (S, K or 1, C, h, w)
        or None (drawn on the device from its generator). Returns N final latents z_0, (1, C, h, w) float32;
        equal to N separate runs up to the rounding of the batched kernels."""
        if not len(denoisers) == len(x_T) == len(step_noise):
            raise ValueError(f"run_batch needs one x_T and one step noise per view; got {len(denoisers)} views, "
                             f"{len(x_T)} x_T and {len(step_noise)} noises")
        check_one_schedule([d.view for d in denoisers])
        generators = [None] * len(denoisers) if generators is None else list(generators)
        latent_shape = tuple(x_T[0].shape[1:])
        nbar = torch.cat([d.noise_bar(n, latent_shape, g) for d, n, g in zip(denoisers, step_noise, generators)], 1)
        x = torch.cat([x.to(self.device, torch.float32) for x in x_T])
        z = self.step_cache.run_batch([d.view for d in denoisers], x, nbar)
        if self.split is not None:      # identical on every rank already; make it bit-exact by construction
            self.split.broadcast(z)
        return list(z.split(1))

    def check_rows(self, rows: int) -> None:
        """Refuse, with what to do, a view that needs more rows than the executors were built for (built
        engines have a row range; a batch of views is split into calls by the step, one view is not)."""
        limit = min(self._executors[name].spec.axis("rows").max for name in ("conditioning", "unet_step"))
        if rows > limit:
            hint = "use fewer views"
            if self.source is not None:
                rebuild = self.source.manifest.rebuild_command(self.source.directory, max_refs=rows - 1)
                hint = f"rebuild them for more references ({rebuild}) or run without them (--no-engines)"
            raise SpecMismatchError(f"this view needs {rows} UNet rows (K references + the unconditional row), the "
                                    f"engine's networks take at most {limit}: {hint}")

    def _emb_table(self, schedule) -> torch.Tensor:
        key = tuple(int(t) for t in schedule.timesteps)
        if key not in self._emb_tables:
            t = torch.as_tensor(schedule.timesteps, dtype=torch.int64, device=self.device)
            self._emb_tables[key] = self._executors["time_embedding"].run({"timesteps": t})["emb"]
        return self._emb_tables[key]

    def _step_coefficients(self, schedule) -> torch.Tensor:
        key = (tuple(int(t) for t in schedule.timesteps), tuple(schedule.sigma.tolist()))
        if key not in self._coefficients:
            self._coefficients[key] = step_coefficients(schedule, self.device)
        return self._coefficients[key]


class FastDenoiser:
    """A bound target view (:class:`BoundView`); ``run`` denoises it through the engine's step cache."""

    def __init__(self, engine: FastEngine, view: BoundView):
        self.engine = engine
        self.view = view

    @torch.no_grad()
    def noise_bar(self, step_noise: torch.Tensor | None, latent_shape, generator: torch.Generator | None = None):
        """(S, 1, C, h, w) combined noise of every step (see :func:`vfrt.engines.step.combined_noise`)."""
        return combined_noise(self.view.weights, self.view.num_steps, tuple(latent_shape), step_noise, generator)

    @torch.no_grad()
    def run(self, x_T: torch.Tensor, step_noise: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """x_T (1, C, h, w); step_noise (S, K or 1, C, h, w) host draws, or None to draw n_bar on the device
        from ``generator``. Returns z_0, (1, C, h, w) float32."""
        return self.engine.run_batch([self], [x_T], [step_noise], [generator])[0]


def _torch_executors(networks: Networks, config: ResolvedEngineConfig) -> dict[str, Executor]:
    specs = networks.specs(max_refs=TORCH_MAX_REFS)
    out: dict[str, Executor] = {name: EagerExecutor(specs[name], networks.module(name)) for name in NETWORK_NAMES}
    if config.compile:
        out["unet_step"] = CompiledExecutor(specs["unet_step"], networks.unet_step)
    return out
