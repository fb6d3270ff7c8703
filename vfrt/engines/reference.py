"""The reference engine: fp32 eager PyTorch, structured exactly like the original sampler.

Per step it evaluates the UNet on a batch of 2K (unconditional K, then conditional K), applies
classifier-free guidance per reference, takes the K DDIM updates with K independent noise draws
and replaces the shared latent by their weighted sum (SPEC §3-§4). It is slow on purpose: it is
the yardstick every fast path is tested against.
"""
from __future__ import annotations

from typing import Sequence

import torch

from vfrt.engines.base import ViewEncoding, ddim_update
from vfrt.engines.config import ResolvedEngineConfig


class ReferenceEngine:
    """fp32 eager engine around a loaded Zero123 (moved to ``config.device``; its weights are not copied)."""

    name = "reference"

    def __init__(self, model, config: ResolvedEngineConfig):
        if config.backend != "reference":
            raise ValueError(f"ReferenceEngine needs a config resolved for backend 'reference', got {config.backend!r}")
        self.config = config
        self.device = config.device
        self.on_step = None
        self.model = model.to(self.device).float().eval()

    def set_step_callback(self, on_step) -> None:
        """``on_step(done, total)`` after each denoising step (progress only), or None."""
        self.on_step = on_step

    def describe(self) -> dict:
        """Resolved choices (JSON-friendly)."""
        return self.config.summary()

    def prepare(self, views_so_far: int) -> None:
        """Nothing to re-decide: the reference engine has one way to run."""

    def check_rows(self, rows: int) -> None:
        """The reference runs any number of references (one UNet call per row)."""

    @torch.no_grad()
    def encode_view(self, image: torch.Tensor) -> ViewEncoding:
        image = image.to(self.device, torch.float32)
        return ViewEncoding(clip=self.model.embed_image(image).float(),
                            latent=self.model.encode_latent(image).float())

    def bind(self, refs: Sequence[ViewEncoding], poses: torch.Tensor, weights: torch.Tensor,
             schedule, guidance: float) -> "_ReferenceDenoiser":
        return _ReferenceDenoiser(self, refs, poses, weights, schedule, guidance)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        sf = self.model.config.schedule.scale_factor
        img = self.model.vae.decode((1.0 / sf) * z.to(self.device, torch.float32))
        return torch.clamp(img, min=-1.0, max=1.0)


class _ReferenceDenoiser:
    def __init__(self, engine: ReferenceEngine, refs, poses, weights, schedule, guidance):
        m, dev = engine.model, engine.device
        self.engine, self.model, self.device, self.guidance = engine, m, dev, float(guidance)
        K = len(refs)
        clip = torch.cat([r.clip for r in refs], 0)                            # (K, D)
        poses = poses.to(dev, torch.float32).reshape(K, 4)
        with torch.no_grad():
            c = m.project(clip, poses)                                         # (K, 1, ctx)
        latents = torch.cat([r.latent for r in refs], 0)                       # (K, 4, h, w)
        if self.guidance != 1.0:
            self.c_concat = torch.cat([torch.zeros_like(latents), latents], 0)  # (2K, 4, h, w)
            self.context = torch.cat([torch.zeros_like(c), c], 0)               # (2K, 1, ctx)
        else:
            self.c_concat, self.context = latents, c
        self.K = K
        self.weights = weights.to(dev, torch.float32).reshape(K, 1, 1, 1)
        self.timesteps = [int(t) for t in schedule.timesteps]
        self.coef = schedule.coefficients(dev)

    @torch.no_grad()
    def guided_eps(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """x: (K, 4, h, w) -> guided eps (K, 4, h, w), batch 2K as the original."""
        if self.guidance != 1.0:
            x_in = torch.cat([x] * 2)
        else:
            x_in = x
        t_in = torch.full((x_in.shape[0],), t, device=self.device, dtype=torch.long)
        eps = self.model.denoise(torch.cat([x_in, self.c_concat], dim=1), t_in, self.context)
        if self.guidance == 1.0:
            return eps
        e_u, e_c = eps.chunk(2)
        return e_u + self.guidance * (e_c - e_u)

    @torch.no_grad()
    def step(self, x: torch.Tensor, i: int, noise: torch.Tensor) -> torch.Tensor:
        """One interpolated step. x: (1, 4, h, w); noise: (K, 4, h, w), or (1, 4, h, w) shared by all
        references (expanded, as ``my_ddim_pred_e``). Returns (1, 4, h, w)."""
        xk = x.expand(self.K, *x.shape[1:])
        e = self.guided_eps(xk, self.timesteps[i])
        full = lambda name: torch.full((self.K, 1, 1, 1), float(self.coef[name][i]), device=self.device)
        x_prev = ddim_update(xk, e, full("a_t"), full("a_prev"), full("sigma"), full("sqrt_one_minus_a_t"),
                             noise.to(self.device, torch.float32).expand(self.K, *x.shape[1:]))
        return (x_prev * self.weights).sum(dim=0, keepdim=True)

    def run(self, x_T: torch.Tensor, step_noise: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """See :class:`vfrt.engines.base.ViewDenoiser`; without ``step_noise`` the K draws per step come from
        ``generator`` on the engine's device."""
        x = x_T.to(self.device, torch.float32)
        if step_noise is None:
            step_noise = torch.randn((len(self.timesteps), self.K, *x.shape[1:]), device=self.device,
                                     generator=generator)
        on_step = self.engine.on_step
        for i in range(len(self.timesteps)):
            x = self.step(x, i, step_noise[i])
            if on_step is not None:
                on_step(i + 1, len(self.timesteps))
        # the original decodes samples.mean(0) of K identical rows
        return x.expand(self.K, *x.shape[1:]).mean(dim=0, keepdim=True)
