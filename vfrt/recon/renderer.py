"""NeuS volume rendering with hierarchical (importance) sampling.

Implements NeuS (Wang et al. 2021): eq. 13 (discrete opacity from the SDF through the
logistic CDF), the "cos annealing" of the official code, and its up-sampling schedule
(§3.4: ``n_samples`` uniform samples, then ``up_sample_steps`` rounds of importance samples
drawn with a fixed sharpness ``64 * 2**i``). Rays live inside the unit sphere; with a visual
hull (:mod:`vfrt.recon.hull`) the uniform samples span only each ray's stretch through it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vfrt.recon.fields import NeuSFields
from vfrt.recon.hull import VisualHull


@dataclass(frozen=True)
class CosAnneal:
    """NeuS' cos-annealing ratio ``r`` and ``1 - r`` as 0-d tensors on the device, filled before each
    training step (a captured step reads them at every replay); ``1 - r`` is computed on the host, as
    with a plain number, so both forms give the same floats."""

    ratio: torch.Tensor
    rest: torch.Tensor

    @classmethod
    def zeros(cls, device: torch.device) -> "CosAnneal":
        return cls(torch.zeros((), device=device), torch.ones((), device=device))

    def fill_(self, ratio: float) -> None:
        self.ratio.fill_(ratio)
        self.rest.fill_(1.0 - ratio)


@dataclass
class RenderOutput:
    """Per-ray results of :func:`render_rays` (R rays, S samples)."""

    color: torch.Tensor  # (R, 3) composited over the background
    opacity: torch.Tensor  # (R,) sum of weights
    depth: torch.Tensor  # (R,)
    gradients: torch.Tensor  # (R * S, 3) SDF gradients at the samples (for the eikonal loss)


def near_far_from_sphere(rays_o: torch.Tensor, rays_d: torch.Tensor, radius: float = 1.0):
    """Entry/exit distances of unit-direction rays through the sphere; misses get a tiny interval."""
    b = (rays_o * rays_d).sum(-1)
    c = (rays_o * rays_o).sum(-1) - radius * radius
    disc = (b * b - c).clamp_min(1e-6)
    sq = disc.sqrt()
    near = (-b - sq).clamp_min(0.05)
    far = torch.maximum(-b + sq, near + 1e-3)
    return near, far


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n: int, det: bool = True) -> torch.Tensor:
    """Inverse-CDF sampling (NeRF). bins (R, S+1), weights (R, S) -> (R, n) sorted samples."""
    weights = weights + 1e-5
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
    if det:
        u = torch.linspace(0.5 / n, 1.0 - 0.5 / n, n, device=bins.device).expand(cdf.shape[0], n)
    else:
        u = torch.rand(cdf.shape[0], n, device=bins.device)
    u = u.contiguous()
    inds = torch.searchsorted(cdf.contiguous(), u, right=True)
    below = (inds - 1).clamp_min(0)
    above = inds.clamp_max(cdf.shape[-1] - 1)
    cdf_g0, cdf_g1 = cdf.gather(1, below), cdf.gather(1, above)
    bins_g0, bins_g1 = bins.gather(1, below), bins.gather(1, above)
    denom = cdf_g1 - cdf_g0
    denom = torch.where(denom < 1e-5, torch.ones_like(denom), denom)
    t = (u - cdf_g0) / denom
    return bins_g0 + t * (bins_g1 - bins_g0)


def _up_sample(rays_o, rays_d, z, sdf, n_importance: int, inv_s: float) -> torch.Tensor:
    """NeuS ``up_sample``: importance samples from the SDF at fixed sharpness ``inv_s``."""
    pts = rays_o[:, None] + rays_d[:, None] * z[..., None]
    radius = pts.norm(dim=-1)
    inside = (radius[:, :-1] < 1.0) | (radius[:, 1:] < 1.0)
    prev_sdf, next_sdf = sdf[:, :-1], sdf[:, 1:]
    prev_z, next_z = z[:, :-1], z[:, 1:]
    mid_sdf = (prev_sdf + next_sdf) * 0.5
    cos_val = (next_sdf - prev_sdf) / (next_z - prev_z + 1e-5)
    prev_cos = torch.cat([torch.zeros_like(cos_val[:, :1]), cos_val[:, :-1]], dim=-1)
    cos_val = torch.minimum(prev_cos, cos_val).clamp(-1e3, 0.0) * inside
    dist = next_z - prev_z
    prev_esti = mid_sdf - cos_val * dist * 0.5
    next_esti = mid_sdf + cos_val * dist * 0.5
    prev_cdf = torch.sigmoid(prev_esti * inv_s)
    next_cdf = torch.sigmoid(next_esti * inv_s)
    alpha = (prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-7], -1), -1)[:, :-1]
    weights = alpha * trans
    return sample_pdf(z, weights, n_importance, det=True).detach()


@torch.no_grad()
def importance_z_vals(fields: NeuSFields, rays_o, rays_d, near, far, n_samples: int, n_importance: int,
                      up_sample_steps: int, perturb: bool) -> torch.Tensor:
    """(R, n_samples + n_importance) sorted sample depths (no gradient)."""
    r = rays_o.shape[0]
    t = torch.linspace(0.0, 1.0, n_samples, device=rays_o.device)
    z = near[:, None] + (far - near)[:, None] * t[None]
    if perturb:
        z = z + (torch.rand(r, 1, device=z.device) - 0.5) * ((far - near) / n_samples)[:, None]
    if n_importance == 0:
        return z
    pts = rays_o[:, None] + rays_d[:, None] * z[..., None]
    sdf = fields.sdf.sdf(pts.reshape(-1, 3)).reshape(r, -1)
    per_step = n_importance // up_sample_steps
    for i in range(up_sample_steps):
        new_z = _up_sample(rays_o, rays_d, z, sdf, per_step, 64.0 * 2**i)
        new_pts = rays_o[:, None] + rays_d[:, None] * new_z[..., None]
        new_sdf = fields.sdf.sdf(new_pts.reshape(-1, 3)).reshape(r, -1)
        z, order = torch.sort(torch.cat([z, new_z], -1), -1)
        sdf = torch.cat([sdf, new_sdf], -1).gather(1, order)
    return z


def render_rays(fields: NeuSFields, rays_o: torch.Tensor, rays_d: torch.Tensor, *, n_samples: int,
                n_importance: int, up_sample_steps: int, cos_anneal_ratio: float | CosAnneal = 1.0,
                perturb: bool = False, background: float = 1.0, color_autocast: torch.dtype | None = None,
                autocast_cache: bool = True, hull: VisualHull | None = None) -> RenderOutput:
    """Render R rays (origins/unit directions (R, 3) float32) with NeuS (eq. 13).

    ``cos_anneal_ratio``: a number, or a :class:`CosAnneal` on the rays' device (what a captured training
    step reads). ``color_autocast``: run the colour network under autocast to this dtype (None:
    float32); ``autocast_cache=False`` inside CUDA-graph capture.
    """
    r = rays_o.shape[0]
    near, far = near_far_from_sphere(rays_o, rays_d)
    if hull is not None:
        near, far = hull.ray_intervals(rays_o, rays_d, near, far)
    z = importance_z_vals(fields, rays_o, rays_d, near, far, n_samples, n_importance, up_sample_steps, perturb)
    dists = z[:, 1:] - z[:, :-1]
    dists = torch.cat([dists, dists[:, -1:]], -1)
    mid_z = z + dists * 0.5
    pts = (rays_o[:, None] + rays_d[:, None] * mid_z[..., None]).reshape(-1, 3)
    dirs = rays_d[:, None].expand(r, z.shape[1], 3).reshape(-1, 3)

    sdf, feat, grad = fields.sdf.forward_with_gradient(pts)
    with torch.autocast(device_type=pts.device.type, dtype=color_autocast or torch.float16,
                        enabled=color_autocast is not None, cache_enabled=autocast_cache):
        rgb = fields.color(pts, grad, dirs, feat).float()

    inv_s = fields.variance.inv_s()
    true_cos = (dirs * grad).sum(-1)
    # NeuS official code: anneal from "half-linear" cos to the true cos for stable early training
    if isinstance(cos_anneal_ratio, CosAnneal):
        ratio, rest = cos_anneal_ratio.ratio, cos_anneal_ratio.rest
    else:
        ratio, rest = cos_anneal_ratio, 1.0 - cos_anneal_ratio
    iter_cos = -(torch.relu(-true_cos * 0.5 + 0.5) * rest + torch.relu(-true_cos) * ratio)
    d = dists.reshape(-1)
    prev_cdf = torch.sigmoid((sdf - iter_cos * d * 0.5) * inv_s)
    next_cdf = torch.sigmoid((sdf + iter_cos * d * 0.5) * inv_s)
    alpha = ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0).reshape(r, -1)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-7], -1), -1)[:, :-1]
    weights = alpha * trans
    opacity = weights.sum(-1)
    color = (weights[..., None] * rgb.reshape(r, -1, 3)).sum(1) + (1.0 - opacity)[:, None] * background
    depth = (weights * mid_z).sum(-1)
    return RenderOutput(color=color, opacity=opacity, depth=depth, gradients=grad)
