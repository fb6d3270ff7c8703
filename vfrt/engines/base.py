"""The engine protocol shared by every backend, and the DDIM update maths (SPEC §3-§4).

An engine owns the networks on a device and offers three things:

* ``encode_view(image) -> ViewEncoding``: the per-reference data that never changes between
  steps or targets (CLIP embedding, VAE posterior mean); the runtime caches it per view.
* ``bind(refs, poses, weights, schedule, guidance) -> ViewDenoiser``: conditioning for one target
  view with K references; ``ViewDenoiser.run(x_T, step_noise)`` runs the S interpolated
  DDIM steps on the one shared latent and returns it.
* ``decode(z) -> image``: VAE decode of a latent, clamped to [-1, 1].

Two engines implement it: :class:`vfrt.engines.reference.ReferenceEngine` (the original's op
order, the yardstick) and :class:`vfrt.engines.fast.FastEngine` (exact identities over executors
of the network specs; docs/ARCHITECTURE.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import torch

if TYPE_CHECKING:
    from vfrt.engines.config import ResolvedEngineConfig


@dataclass
class ViewEncoding:
    """Cached encoding of one reference view.

    Attributes:
        clip: (1, D) float32 CLIP image embedding.
        latent: (1, 4, h, w) float32 VAE posterior mean (not scaled by the scale factor).
    """

    clip: torch.Tensor
    latent: torch.Tensor


class ViewDenoiser(Protocol):
    """Runs the interpolated DDIM loop for one target view (bound references and weights)."""

    def run(self, x_T: torch.Tensor, step_noise: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """x_T: (1, 4, h, w); step_noise: (S, K, 4, h, w) per-reference draws ((S, 1, ...): one draw shared
        by all references), or None to draw on the device from ``generator`` (not replayable).

        Returns the final shared latent z_0, (1, 4, h, w) float32.
        """
        ...


class Engine(Protocol):
    name: str
    device: torch.device
    config: "ResolvedEngineConfig"

    def describe(self) -> dict:
        """The engine's resolved choices, JSON-friendly (run.json, benchmarks, `vfrt doctor`)."""
        ...

    def set_step_callback(self, on_step) -> None:
        """``on_step(done, total)`` after each denoising step (progress bars), or None."""
        ...

    def prepare(self, views_so_far: int) -> None:
        """Re-apply the workload policy (:meth:`vfrt.engines.config.EngineConfig.resolve`) before a
        generation; ``views_so_far`` counts the views generated or planned by the process."""
        ...

    def check_rows(self, rows: int) -> None:
        """Raise :class:`~vfrt.engines.specs.SpecMismatchError` (with what to do) when a view needing
        ``rows`` UNet rows (K references + the unconditional row) cannot run here; called for the
        largest view of a generation before it starts."""
        ...

    def encode_view(self, image: torch.Tensor) -> ViewEncoding:
        """image: (1, 3, H, W) float32 in [-1, 1]."""
        ...

    def bind(self, refs: Sequence[ViewEncoding], poses: torch.Tensor, weights: torch.Tensor,
             schedule, guidance: float) -> ViewDenoiser:
        """refs: K encodings (input first); poses: (K, 4) pose conditions (SPEC's T); weights: (K,) summing to 1."""
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (1, 4, h, w) -> (1, 3, H, W) float32 in [-1, 1]."""
        ...


def ddim_update(x: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor,
                sigma: torch.Tensor, sqrt_one_minus_a_t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One DDIM update per batch element, in the original ``p_sample_ddim`` operation order.

    x, eps, noise: (K, 4, h, w); the coefficients are float32 tensors broadcastable to x.
        x0     = (x - sqrt(1 - a_t) eps) / sqrt(a_t)
        x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma n
    """
    pred_x0 = (x - sqrt_one_minus_a_t * eps) / a_t.sqrt()
    dir_xt = (1.0 - a_prev - sigma ** 2).sqrt() * eps
    return a_prev.sqrt() * pred_x0 + dir_xt + sigma * noise


def combined_update_coefficients(a_t: torch.Tensor, a_prev: torch.Tensor, sigma: torch.Tensor,
                                 sqrt_one_minus_a_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients (c_x, c_eps) with  sum_k w_k x_prev_k = c_x x + c_eps (sum_k w_k eps_k) + sigma n_bar.

    Exact because the K updates share x and the weights sum to 1 (SPEC §6). Shapes follow inputs.
    """
    c_x = a_prev.sqrt() / a_t.sqrt()
    c_eps = (1.0 - a_prev - sigma ** 2).sqrt() - a_prev.sqrt() * sqrt_one_minus_a_t / a_t.sqrt()
    return c_x, c_eps
