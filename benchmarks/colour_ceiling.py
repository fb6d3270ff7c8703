"""How much of a reconstruction's colour error is the colours' own: the baked vertex colours against the
best vertex colours the mesh could carry, and against the true mesh baked the same way.

Usage::

    python benchmarks/colour_ceiling.py ORBIT_DIR RECON_DIR [--lam 0.1]

``ORBIT_DIR``: a test-object orbit written by ``bench_recon.py --workdir W`` (``W/orbit_chair``: views,
``transforms.json``, ``reference.ply``); ``RECON_DIR``: its reconstruction (``W/recon_chair``, ``mesh.ply``
with the baked vertex colours). Prints colour PSNR (``vfrt.recon.metrics.colour_psnr``: either silhouette,
both silhouettes, whole images) of

* ``bake``: the mesh as written (colours from the views by visibility, ``vfrt.recon.bake``);
* ``least squares``: the vertex colours that minimise the squared error of the mesh rendered unlit from
  every input camera, over the pixels inside both silhouettes (each pixel is its face's barycentric mix
  of three vertex colours: a linear problem, solved by conjugate gradients with a pull ``lam`` towards
  the bake) - the ceiling of any vertex-colour bake on this mesh;
* ``true mesh, baked``: ``reference.ply`` coloured by the same bake: the colour error left with a
  perfect shape.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import trimesh

from vfrt.recon.bake import visible_colours
from vfrt.recon.data import load_views
from vfrt.recon.metrics import colour_psnr
from vfrt.recon.render_mesh import rasterize


def _coloured(mesh, colours: torch.Tensor):
    out = mesh.copy()
    out.visual.vertex_colors = (np.clip(colours.numpy(), 0.0, 1.0) * 255).round().astype(np.uint8)
    return out


def least_squares_colours(mesh, data, start: torch.Tensor, lam: float, iters: int = 100) -> torch.Tensor:
    """(V, 3) vertex colours minimising sum_p |sum_k b_pk c_{v_pk} - y_p|^2 + lam |c - start|^2 over the
    pixels p inside both the rendered mesh and the view's mask."""
    verts = torch.as_tensor(np.array(mesh.vertices), dtype=torch.float32)
    faces = torch.as_tensor(np.array(mesh.faces), dtype=torch.int64)
    idx, bary, target = [], [], []
    for i, w2c in enumerate(np.linalg.inv(np.asarray(data.c2w, dtype=np.float64))):
        frag = rasterize(verts, faces, torch.as_tensor(w2c, dtype=torch.float32), data.intrinsics)
        both = frag.mask & torch.as_tensor(data.masks[i] > 0.5)
        idx.append(faces[frag.face_id[both]])
        bary.append(frag.bary[both])
        target.append(torch.as_tensor(data.images[i])[both])
    idx, bary, target = torch.cat(idx), torch.cat(bary), torch.cat(target)

    def forward(c):                                   # (V, 3) -> (P, 3) rendered pixels
        return (bary[..., None] * c[idx]).sum(1)

    def adjoint(r):                                   # (P, 3) -> (V, 3)
        out = torch.zeros(verts.shape[0], 3)
        out.index_add_(0, idx.reshape(-1), (bary[..., None] * r[:, None, :]).reshape(-1, 3))
        return out

    def normal(c):
        return adjoint(forward(c)) + lam * c

    rhs = adjoint(target) + lam * start
    x = start.clone()
    r = rhs - normal(x)
    p, rs = r.clone(), (r * r).sum(0)
    for _ in range(iters):
        ap = normal(p)
        alpha = rs / (p * ap).sum(0)
        x, r = x + alpha * p, r - alpha * ap
        rn = (r * r).sum(0)
        if float(rn.max()) < 1e-10:
            break
        p, rs = r + (rn / rs) * p, rn
    return x.clamp(0.0, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("orbit")
    ap.add_argument("recon")
    ap.add_argument("--lam", type=float, default=0.1, help="pull towards the bake (per vertex, squared)")
    args = ap.parse_args()
    data = load_views(args.orbit)
    mesh = trimesh.load(f"{args.recon}/mesh.ply", process=False)
    baked = torch.as_tensor(np.array(mesh.visual.vertex_colors)[:, :3] / 255.0, dtype=torch.float32)
    ref = trimesh.load(f"{args.orbit}/reference.ply", process=False)
    rv = torch.as_tensor(np.array(ref.vertices), dtype=torch.float32)
    rf = torch.as_tensor(np.array(ref.faces), dtype=torch.int64)
    rn = torch.as_tensor(np.array(ref.vertex_normals), dtype=torch.float32)
    ref_colours, _ = visible_colours(rv, rn, rv, rf, data)
    rows = [("bake", _coloured(mesh, baked)),
            ("least squares", _coloured(mesh, least_squares_colours(mesh, data, baked, args.lam))),
            ("true mesh, baked", _coloured(ref, ref_colours))]
    print(f"{'colours':<18} {'either':>8} {'both':>8} {'whole':>8}  silhouette share of the error  (PSNR dB)")
    for name, m in rows:
        c = colour_psnr(m, data)
        print(f"{name:<18} {c.psnr:8.2f} {c.psnr_shared:8.2f} {c.psnr_full:8.2f}  {c.silhouette_error_share:.2f}")


if __name__ == "__main__":
    main()
