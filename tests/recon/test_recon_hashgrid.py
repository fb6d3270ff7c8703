"""Hash-grid encoding: reference properties, fused Triton kernel vs reference, backend choice.

The Triton tests run on CPU through Triton's interpreter (``TRITON_INTERPRET=1``, set here
before the kernel module is imported) and on CUDA when present. Tolerances: values 1e-5
absolute plus the position rounding of the finest level (``4 * R_max * 2^-24 * max|table|``:
the compiled kernel may contract ``x * R - floor(x * R)`` into an FMA), gradients 1e-4 of the
largest gradient (the kernel accumulates in another order, with atomics).
"""
from __future__ import annotations

import os

import pytest
import torch

from vfrt.recon.config import HashGridConfig
from vfrt.recon.errors import BackendUnavailableError
from vfrt.recon.hashgrid import (HashGridEncoding, corner_indices, hash_encode_reference, level_metadata,
                                 resolve_backend)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SMALL = HashGridConfig(n_levels=5, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4,
                       finest_resolution=48)


def test_default_levels():
    cfg = HashGridConfig()
    res, dense = level_metadata(cfg)
    assert res[0] == 16 and res[-1] == 2048 and len(res) == 16
    assert all(a < b for a, b in zip(res, res[1:]))
    assert dense[:3] == [True, True, True] and not any(dense[-8:])  # (R+1)^3 <= 2^19 only for R <= 79


def test_indices_in_range():
    g = torch.Generator().manual_seed(0)
    c = torch.randint(0, 2049, (1000, 3), generator=g)
    idx = corner_indices(c, 2048, False, 2**19)
    assert idx.min() >= 0 and idx.max() < 2**19
    d = corner_indices(torch.tensor([[16, 16, 16]]), 16, True, 2**19)
    assert int(d) == 17**3 - 1


def test_reference_is_continuous_and_matches_finite_difference_gradient():
    torch.manual_seed(1)
    table = torch.randn(SMALL.n_levels, SMALL.table_size, 2, dtype=torch.float32)
    x = torch.rand(64, 3) * 0.9 + 0.05
    # continuity across a cell boundary of the coarsest level
    b = torch.tensor([[0.25, 0.5, 0.5]])
    e = 1e-6
    lo = hash_encode_reference(b - torch.tensor([[e, 0, 0]]), table, SMALL)
    hi = hash_encode_reference(b + torch.tensor([[e, 0, 0]]), table, SMALL)
    assert (lo - hi).abs().max() < 1e-3
    # d/dx by autograd vs central differences (fp32, away from cell boundaries on average)
    xg = x.clone().requires_grad_()
    w = torch.randn(SMALL.output_dim)
    (hash_encode_reference(xg, table, SMALL) @ w).sum().backward()
    h = 1e-3
    fd = torch.stack([((hash_encode_reference(x + h * torch.eye(3)[k], table, SMALL)
                        - hash_encode_reference(x - h * torch.eye(3)[k], table, SMALL)) @ w) / (2 * h) for k in range(3)], -1)
    close = ((xg.grad - fd).abs() < 0.05 * fd.abs().max()).float().mean()
    assert close > 0.8  # FD straddles cell boundaries for a few points


def _compare(device: str, n: int, cfg: HashGridConfig, seed: int):
    from vfrt.recon.hashgrid_triton import hash_encode_triton

    g = torch.Generator().manual_seed(seed)
    table = torch.randn(cfg.n_levels, cfg.table_size, cfg.n_features_per_level, generator=g).to(device)
    x = torch.rand(n, 3, generator=g)
    x[:4] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [-0.1, 1.2, 0.3]])  # edges, clamping
    x = x.to(device)
    grad_out = torch.randn(n, cfg.output_dim, generator=g).to(device)
    xr, tr = x.clone().requires_grad_(), table.clone().requires_grad_()
    xt, tt = x.clone().requires_grad_(), table.clone().requires_grad_()
    out_r = hash_encode_reference(xr, tr, cfg)
    out_t = hash_encode_triton(xt, tt, cfg)
    (out_r * grad_out).sum().backward()
    (out_t * grad_out).sum().backward()
    # p = x * R has an ulp of R * 2^-24; the compiled kernel may fuse x * R - floor(p) into an FMA,
    # so the trilinear weights may differ by that much at the finest level (the interpreter does not).
    atol = 1e-5 + 4 * cfg.finest_resolution * 2.0**-24 * float(table.abs().max())
    torch.testing.assert_close(out_t, out_r, atol=atol, rtol=1e-5)
    scale_t = tr.grad.abs().max()
    assert (tt.grad - tr.grad).abs().max() <= 1e-4 * scale_t
    scale_x = xr.grad.abs().max()
    assert (xt.grad - xr.grad).abs().max() <= 1e-4 * scale_x


@pytest.mark.parametrize("seed", [0, 1])
def test_triton_matches_reference_cpu_interpreter(seed):
    pytest.importorskip("triton")
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("interpreter test: CPU only")
    _compare("cpu", 257, SMALL, seed)  # 257: a partial block


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [SMALL, HashGridConfig()], ids=["small", "default"])
def test_triton_matches_reference_cuda(cfg):
    pytest.importorskip("triton")
    _compare("cuda", 100_003, cfg, seed=int(torch.randint(0, 2**31 - 1, ()).item()))


def test_backend_resolution_on_cpu(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "reference"
    assert resolve_backend("reference", cpu) == "reference"
    with pytest.raises(BackendUnavailableError, match="tinycudann"):
        resolve_backend("tcnn", cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if pytest.importorskip("triton"):
        with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
            resolve_backend("triton", cpu)


def test_module_level_mask_skips_levels():
    enc = HashGridEncoding(SMALL, "reference")
    with torch.no_grad():
        enc.table.normal_()
    enc.set_active_levels(2)
    out = enc(torch.rand(10, 3))
    assert out[:, 4:].abs().max() == 0 and out[:, :4].abs().max() > 0


def test_encoding_backends_reports_what_runs_here(monkeypatch):
    from vfrt.recon.hashgrid import encoding_backends

    cpu = encoding_backends("cpu")
    assert cpu["device"] == "cpu" and cpu["reference"] is True and cpu["tcnn"] is False
    assert cpu["auto"] == "reference"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert encoding_backends("cpu")["triton"] is False
    default = encoding_backends()
    assert set(default) == {"device", "reference", "triton", "tcnn", "auto"}
    assert default[default["auto"]] is True  # auto picks a backend that runs


def test_tcnn_layout_reference_interpolates_the_grid_exactly():
    """In tinycudann's layout, features that are a linear function of the grid point come back exactly
    (trilinear interpolation reproduces linear functions): checks offsets, strides, scale and +0.5."""
    from vfrt.recon.hashgrid import hash_encode_tcnn_reference, tcnn_level_layout

    cfg = HashGridConfig(n_levels=3, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4,
                         finest_resolution=12)
    layout = tcnn_level_layout(cfg)
    assert all(res**3 <= size for _, res, _, size in layout)  # all dense at this size
    params = torch.zeros(sum(size for *_, size in layout) * 2)
    a = torch.tensor([0.3, -1.2, 2.0])
    for lvl, (scale, res, offset, size) in enumerate(layout):
        g = torch.arange(res, dtype=torch.float32)
        grid = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1)  # (x, y, z) coords
        value = (grid @ a).permute(2, 1, 0).reshape(-1)  # row = x + y res + z res^2
        rows = params[offset * 2:(offset + res**3) * 2].view(res**3, 2)
        rows[:, 0] = value
        rows[:, 1] = lvl + 1.0
    x = torch.rand(500, 3, generator=torch.Generator().manual_seed(3)) * 0.98 + 0.01
    out = hash_encode_tcnn_reference(x, params, cfg)
    for lvl, (scale, res, _, _) in enumerate(layout):
        pos = x * scale + 0.5
        inner = (torch.floor(pos) + 1 < res).all(-1)  # beyond the last grid point tcnn wraps around (as here)
        assert inner.float().mean() > 0.5
        torch.testing.assert_close(out[inner, 2 * lvl], pos[inner] @ a, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(out[inner, 2 * lvl + 1], torch.full((int(inner.sum()),), lvl + 1.0))


def test_tcnn_layout_hashed_levels_stay_in_range():
    from vfrt.recon.hashgrid import hash_encode_tcnn_reference, tcnn_level_layout

    cfg = HashGridConfig(n_levels=4, log2_hashmap_size=8, base_resolution=4, finest_resolution=64)
    layout = tcnn_level_layout(cfg)
    assert any(res**3 > size for _, res, _, size in layout) and all(size <= 256 for *_, size in layout)
    params = torch.randn(sum(size for *_, size in layout) * 2)
    out = hash_encode_tcnn_reference(torch.rand(100, 3), params, cfg)
    assert out.shape == (100, 8) and torch.isfinite(out).all()


@pytest.mark.gpu
def test_tcnn_matches_its_layout_reference():
    """Kept honest: when tinycudann imports, its encoding must equal the PyTorch model of its layout."""
    from vfrt.recon.hashgrid import encoding_backends, hash_encode_tcnn_reference

    if not encoding_backends("cuda")["tcnn"]:
        pytest.skip("tinycudann does not import here (the fused Triton kernel is used instead)")
    cfg = HashGridConfig(n_levels=8, log2_hashmap_size=15, base_resolution=16, finest_resolution=512)
    enc = HashGridEncoding(cfg, "tcnn").cuda()
    with torch.no_grad():
        enc.tcnn.params.normal_()
    x = torch.rand(20_000, 3, device="cuda")
    out = enc(x)
    ref = hash_encode_tcnn_reference(x, enc.tcnn.params.detach().float(), cfg)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
