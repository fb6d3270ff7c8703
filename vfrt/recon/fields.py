"""NeuS fields: SDF network on the hash encoding, colour network, learned variance.

References: NeuS (Wang et al., NeurIPS 2021) eq. 1-4; geometric initialisation of
Atzmon & Lipman (SAL, CVPR 2020), as used by IDR/NeuS; hash encoding as in instant-nsr-pl.

SDF gradients are taken by **finite differences** (as instant-nsr-pl and NeuS2 do with hash
grids), here tetrahedral differences (4 evaluations, see
:meth:`SDFNetwork.forward_with_gradient`). The eikonal loss
then needs only first-order backward through the encoding, which the fused Triton kernel
provides. ``eps`` follows the finest active level (coarse-to-fine, see :meth:`SDFNetwork.set_progress`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vfrt.recon.config import ReconConfig
from vfrt.recon.hashgrid import HashGridEncoding


class SDFNetwork(nn.Module):
    """``x (N, 3) world in [-bound, bound]^3 -> sdf (N,), feature (N, feature_dim)``, float32.

    Input of the MLP is ``[x, enc((x / bound + 1) / 2)]``; geometric init makes the initial
    SDF approximately ``|x| - init_radius``.
    """

    def __init__(self, cfg: ReconConfig, backend: str, bound: float = 1.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.bound = bound
        self.encoding = HashGridEncoding(cfg.hashgrid, backend=backend, seed=cfg.seed)
        dims = [3 + self.encoding.output_dim] + [cfg.sdf_hidden] * cfg.sdf_layers + [1 + cfg.feature_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = nn.Softplus(beta=100)
        self._geometric_init(cfg.init_radius)
        # the finite-difference offsets and their length live with the module, on its device: a host value
        # copied to the GPU at every step would be a pageable copy, which waits for the GPU (the host could no
        # longer run ahead of it), and a CUDA graph of the training step reads both at every replay
        self.register_buffer("tetra", _TETRA.clone(), persistent=False)
        self.register_buffer("fd_eps", torch.tensor(2.0 * bound / cfg.hashgrid.finest_resolution), persistent=False)
        self.set_progress(cfg.hashgrid.n_levels)

    def _geometric_init(self, radius: float) -> None:
        g = torch.Generator().manual_seed(self.cfg.seed + 1)
        with torch.no_grad():
            for i, lin in enumerate(self.layers):
                out_dim, in_dim = lin.weight.shape
                if i == len(self.layers) - 1:
                    lin.weight.normal_(math.sqrt(math.pi) / math.sqrt(in_dim), 1e-4, generator=g)
                    lin.bias.fill_(-radius)
                else:
                    lin.weight.normal_(0.0, math.sqrt(2.0) / math.sqrt(out_dim), generator=g)
                    lin.bias.zero_()
                    if i == 0:
                        lin.weight[:, 3:] = 0.0  # encoding starts switched off: a clean sphere

    def set_progress(self, n_active_levels: int) -> None:
        """Enable the ``n_active_levels`` coarsest levels; finite-difference eps follows the finest."""
        n = max(1, min(self.cfg.hashgrid.n_levels, n_active_levels))
        if n == getattr(self, "_n_active", None):
            return
        self._n_active = n
        self.encoding.set_active_levels(n)
        res = self.cfg.hashgrid.resolutions[n - 1]
        self.fd_eps.fill_(2.0 * self.bound / res * 0.5 / 3**0.5)  # offsets of length half a cell of the finest active level

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = ((x / self.bound) + 1.0) * 0.5
        h = torch.cat([x, self.encoding(u)], dim=-1)
        for i, lin in enumerate(self.layers):
            h = lin(h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h[:, 0], h[:, 1:]

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)[0]

    def forward_with_gradient(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SDF, feature and finite-difference gradient ``(N,), (N, F), (N, 3)`` from 4 evaluations.

        Tetrahedral differences: with ``v_k`` the 4 vertices ``(+-1, +-1, +-1)`` of a regular
        tetrahedron (``sum_k v_k v_k^T = 4 I``), ``grad f ~ sum_k v_k f(x + eps v_k) / (4 eps)``
        and ``f(x) ~ mean_k f(x + eps v_k)`` (both O(eps^2)). 4 SDF evaluations instead of the
        7 of centre + central differences.
        """
        n = x.shape[0]
        eps = self.fd_eps.to(device=x.device, dtype=x.dtype)  # () and (4, 3); no copies when x is where the module is
        v = self.tetra.to(device=x.device, dtype=x.dtype)
        pts = (x[None] + eps * v[:, None]).reshape(-1, 3)
        sdf_all, feat_all = self.forward(pts)
        s = sdf_all.reshape(4, n)
        grad = torch.einsum("kn,kc->nc", s, v) / (4.0 * eps)
        return s.mean(0), feat_all.reshape(4, n, -1).mean(0), grad


_TETRA = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])


class ColorNetwork(nn.Module):
    """``[x, normal, view_dir, feature(, enc_c(x))] -> rgb in [0, 1]`` (NeuS' "idr" colour mode, normalised normal).

    With ``cfg.color_hashgrid`` the network has its own hash encoding of the position: sharp
    colour patterns then live in that table instead of in the SDF's features, which otherwise
    learn to carry them and raise bumps on the surface along the pattern's edges.
    """

    def __init__(self, cfg: ReconConfig, backend: str = "reference") -> None:
        super().__init__()
        self.encoding = None
        extra = 0
        if cfg.color_hashgrid is not None:
            self.encoding = HashGridEncoding(cfg.color_hashgrid, backend=backend, seed=cfg.seed + 7)
            extra = self.encoding.output_dim
        dims = [9 + cfg.feature_dim + extra] + [cfg.color_hidden] * cfg.color_layers + [3]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x, normal, view_dir, feature) -> torch.Tensor:
        n = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        parts = [x, n, view_dir, feature]
        if self.encoding is not None:
            parts.append(self.encoding(((x.detach() + 1.0) * 0.5)).to(feature.dtype))
        return torch.sigmoid(self.mlp(torch.cat(parts, dim=-1)).float())


class VarianceNetwork(nn.Module):
    """Learned NeuS sharpness ``inv_s = max(exp(10 * variance), floor)`` (the 1/s of the logistic density).

    ``floor`` is set by the trainer's sharpness schedule: the learned value alone rises slowly
    in a short training, and a blurry density fattens thin parts (the mask loss then pulls the
    surface outwards to make grazing rays opaque).
    """

    def __init__(self, init: float) -> None:
        super().__init__()
        self.variance = nn.Parameter(torch.tensor(float(init)))
        self.register_buffer("floor", torch.tensor(1e-6), persistent=False)  # on the device: read by a captured step

    def set_floor(self, value: float) -> None:
        """The sharpness floor (values below 1e-6 mean none)."""
        self.floor.fill_(max(1e-6, float(value)))

    def inv_s(self) -> torch.Tensor:
        return torch.maximum(torch.exp(self.variance * 10.0), self.floor).clamp_max(1e6)


@dataclass
class NeuSFields:
    """The three trained networks, bundled."""

    sdf: SDFNetwork
    color: ColorNetwork
    variance: VarianceNetwork

    def modules(self) -> list[nn.Module]:
        return [self.sdf, self.color, self.variance]

    def to(self, device: torch.device) -> "NeuSFields":
        for m in self.modules():
            m.to(device)
        return self


def build_fields(cfg: ReconConfig, backend: str) -> NeuSFields:
    torch.manual_seed(cfg.seed)
    return NeuSFields(SDFNetwork(cfg, backend, bound=1.0), ColorNetwork(cfg, backend), VarianceNetwork(cfg.variance_init))
