"""End to end: quick preset on CPU, NaN detection, the `vfrt recon` command, config validation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vfrt.recon import ConfigError, HashGridConfig, ReconConfig, TrainingDivergedError, reconstruct
from vfrt.recon.data import load_views

TINY = dict(steps=12, image_size=32, mc_resolution=32, turntable_frames=2, turntable_size=32, nan_check_every=4,
            rays_per_batch=128, foreground_rays_per_batch=32, hull_resolution=24,
            hashgrid=HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, finest_resolution=32),
            color_hashgrid=HashGridConfig(n_levels=2, log2_hashmap_size=10, base_resolution=8, finest_resolution=16))
DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo_orbit"


def test_quick_preset_end_to_end(tiny_orbit, tmp_path):
    cfg = ReconConfig.from_preset("quick", **TINY)
    res = reconstruct(tiny_orbit, tmp_path / "out", cfg, reference_mesh=tiny_orbit / "reference.ply")
    for fmt in ("ply", "obj", "glb"):
        assert res.mesh_paths[fmt].stat().st_size > 0
    assert res.turntable is not None and res.turntable.exists()
    assert res.n_faces > 100 and res.metrics is not None and res.metrics.chamfer < 0.2
    assert json.loads((tmp_path / "out" / "recon.json").read_text())["volume"] > 0
    summary = json.loads((tmp_path / "out" / "recon.json").read_text())
    assert summary["backend"] in ("reference", "triton", "tcnn") and summary["config"]["preset"] == "quick"
    base = summary["flat_base"]                    # an orbit from 30 degrees above: a floor under the object
    assert base["up"] == pytest.approx([0.0, 0.0, 1.0], abs=1e-6) and base["volume_below"] >= 0.0
    import trimesh

    mesh = trimesh.load(res.mesh_paths["ply"], force="mesh")
    assert mesh.visual.vertex_colors.shape[0] == len(mesh.vertices) and mesh.volume > 0


def test_nan_during_training_is_reported(tiny_orbit, monkeypatch):
    import vfrt.recon.trainer as trainer

    real = trainer.render_rays
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 6:  # step index 5
            out.color = out.color * float("nan")
        return out

    monkeypatch.setattr(trainer, "render_rays", poisoned)
    cfg = ReconConfig.from_preset("quick", **TINY)
    with pytest.raises(TrainingDivergedError, match="step 5"):
        trainer.train_neus(load_views(tiny_orbit, image_size=32), cfg)


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown preset"):
        ReconConfig.from_preset("fast")
    with pytest.raises(ConfigError, match="elevation"):
        ReconConfig(elevation_deg=95)
    with pytest.raises(ConfigError, match="multiple of up_sample_steps"):
        ReconConfig(n_importance=33)
    with pytest.raises(ConfigError, match="unknown ReconConfig field"):
        ReconConfig.from_preset("quick", stepz=3)
    assert ReconConfig.from_preset("quick", steps=None).steps == ReconConfig.from_preset("quick").steps == 600


def test_cli_recon_runs(tiny_orbit, tmp_path):
    from vfrt.cli.recon import recon

    res = CliRunner().invoke(recon, [str(tiny_orbit), "-o", str(tmp_path / "p"), "--preset", "quick", "--steps", "2",
                                     "--image-size", "16", "--mc-resolution", "16", "--no-turntable",
                                     "--grid-levels", "4", "--grid-log2-table", "12", "--grid-finest", "32", "--psnr",
                                     "--texture-size", "64", "--no-flat-base"])
    assert res.exit_code == 0, res.output
    assert "colour PSNR" in res.output
    import trimesh

    glb = trimesh.load(tmp_path / "p" / "mesh.glb", force="mesh")
    assert glb.visual.kind == "texture" and glb.volume > 0  # UV texture in the .glb
    assert trimesh.load(tmp_path / "p" / "mesh.ply", force="mesh").visual.kind == "vertex"
    assert list((tmp_path / "p").glob("*.png"))  # the .obj's texture image
    summary = json.loads((tmp_path / "p" / "recon.json").read_text())
    grid = summary["config"]["hashgrid"]
    assert (grid["n_levels"], grid["log2_hashmap_size"], grid["finest_resolution"]) == (4, 12, 32)
    assert summary["volume"] > 0 and summary["colour"]["psnr"] > 0
    assert summary["flat_base"] is None and summary["config"]["flat_base"] is False


def test_same_seed_same_mesh_on_cpu(tiny_orbit, tmp_path):
    cfg = ReconConfig.from_preset("quick", **{**TINY, "steps": 6}, device="cpu")
    a = reconstruct(tiny_orbit, tmp_path / "a", cfg, turntable=False)
    b = reconstruct(tiny_orbit, tmp_path / "b", cfg, turntable=False)
    assert (tmp_path / "a" / "mesh.ply").read_bytes() == (tmp_path / "b" / "mesh.ply").read_bytes()
    assert a.final_loss == b.final_loss


@pytest.mark.slow
def test_quick_preset_on_a_test_object(tmp_path):
    """The quick preset end to end on a perfect 36-view orbit of the toy (limbs, checked belly)."""
    from vfrt.recon.metrics import evaluate_mesh, load_mesh
    from vfrt.recon.testobjects import write_object_orbit

    orbit = write_object_orbit(tmp_path / "toy", "toy", n_views=36, image_size=256, spacing=0.006)
    res = reconstruct(orbit, tmp_path / "out", ReconConfig.from_preset("quick", device="cpu"), turntable=False,
                      evaluate_colours=True)
    m = evaluate_mesh(load_mesh(res.mesh_paths["ply"]), load_mesh(orbit / "reference.ply"), n_samples=50_000)
    assert m.chamfer <= 0.02 and m.fscore >= 0.8
    assert load_mesh(res.mesh_paths["glb"]).volume > 0
    assert res.colour.psnr_full >= 20.0


@pytest.mark.slow
def test_quick_preset_on_bundled_demo_is_accurate(tmp_path):
    res = reconstruct(DEMO, tmp_path / "out", ReconConfig.from_preset("quick"), reference_mesh=DEMO / "reference.ply")
    assert res.metrics.chamfer < 0.03 and res.metrics.fscore > 0.5


def test_bundled_demo_is_loadable():
    data = load_views(DEMO)
    assert data.n_views >= 12 and data.source == "transforms.json"
    assert (DEMO / "reference.ply").exists()


@pytest.mark.gpu
def test_default_preset_path_runs_on_cuda(tiny_orbit, tmp_path):
    """The GPU route end to end (auto backend: tcnn or the Triton kernels, fp16 colour net, colour grid,
    hull, texture) at a tiny size; quality and speed are the benchmark's job."""
    cfg = ReconConfig.from_preset("default", device="cuda", steps=30, rays_per_batch=512, foreground_rays_per_batch=64,
                                  mc_resolution=64, texture_size=128, turntable_frames=2, turntable_size=32)
    res = reconstruct(tiny_orbit, tmp_path / "out", cfg, evaluate_colours=True)
    assert res.backend in ("triton", "tcnn") and res.device.startswith("cuda")
    assert res.n_faces > 100 and res.colour.psnr_full > 10.0
    import trimesh

    assert trimesh.load(res.mesh_paths["glb"], force="mesh").visual.kind == "texture"
