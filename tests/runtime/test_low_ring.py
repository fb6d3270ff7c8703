"""The low ring (`vfrt run --low-ring L`): a second ring of views below the orbit, for reconstruction.

The orbit itself stays the original's view for view; the ring's plans follow single-target mode's
rules (SPEC §5) with the azimuth wrapped; its cameras reach `transforms.json`, which `vfrt recon` reads.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vfrt import EngineConfig, Pipeline, SamplerConfig
from vfrt.runtime.poses import DROP_DISTANCE, low_ring_azimuth, plan_low_ring, plan_orbit


def _wrapped(a: float) -> float:
    a = a % (2 * math.pi)
    return min(a, 2 * math.pi - a)


@pytest.mark.parametrize("n_views, n_low, polar_deg", [(36, 12, 45.0), (8, 5, 30.0), (4, 1, 60.0)])
def test_low_ring_plans_follow_the_single_mode_rules(n_views, n_low, polar_deg):
    polar = math.radians(polar_deg)
    plans = plan_low_ring(n_views, n_low, polar)
    assert len(plans) == n_low
    orbit_az = [0.0] + [p.pose[1] for p in plan_orbit(n_views)]
    slot_pose = [(0.0, a) for a in orbit_az]                         # slot s: input, then orbit view s - 1
    assert sorted(round(math.degrees(p.pose[1]) % 360, 6) for p in plans) == \
        sorted(round(j * 360 / n_low % 360, 6) for j in range(n_low))
    for j, plan in enumerate(plans):
        target = (plan.pose[0], plan.pose[1])
        assert plan.pose[0] == pytest.approx(polar) and plan.pose[1] == pytest.approx(low_ring_azimuth(j, n_low))
        assert plan.references[0] == 0 and plan.weights.sum() == pytest.approx(1.0, abs=1e-6)
        dist = [abs(target[0] - slot_pose[s][0]) + _wrapped(target[1] - slot_pose[s][1]) for s in plan.references]
        assert all(d < DROP_DISTANCE + 1e-6 for d in dist[1:])
        # every slot within reach is used (nothing dropped that the rule keeps)
        within = [s for s, p in enumerate(slot_pose) if abs(target[0] - p[0]) + _wrapped(target[1] - p[1])
                  < DROP_DISTANCE - 1e-6]
        assert set(within) - {0} <= set(plan.references.tolist())
        w_in = math.exp(-dist[0] / math.pi / 0.5) if plan.K > 1 else 1.0
        assert plan.weights[0] == pytest.approx(w_in, rel=1e-5)
        if plan.K > 2:                                            # nearer references weigh more
            rest = np.array(dist[1:])
            assert np.all(np.diff(plan.weights[1:][np.argsort(rest)]) <= 1e-7)
        for s, t in zip(plan.references, plan.pose_conditions):
            d_az = target[1] - slot_pose[s][1]
            assert t == pytest.approx([target[0] - slot_pose[s][0], math.sin(d_az), math.cos(d_az), 0.0], abs=1e-5)
        slot_pose.append(target)


def test_low_ring_arguments_are_checked():
    with pytest.raises(ValueError, match="at least 1 view"):
        plan_low_ring(36, 0, 0.5)
    with pytest.raises(ValueError, match="polar offset"):
        plan_low_ring(36, 4, math.pi)


def test_run_config_refuses_what_a_low_ring_cannot_do():
    from vfrt.runtime.run import RunConfig
    assert RunConfig(views=6, low_ring=3).generated_views == 8
    with pytest.raises(ValueError, match="orbit mode"):
        RunConfig(mode="single", delta_azimuth=20.0, low_ring=2)
    with pytest.raises(ValueError, match="complete orbit"):
        RunConfig(views=6, generate=3, low_ring=2)
    with pytest.raises(ValueError, match="between the poles"):
        RunConfig(views=6, low_ring=2, elevation=-30.0, low_ring_polar=70.0)


def test_low_ring_run_folder_keeps_the_orbit_and_adds_the_ring(tiny_model, photo, tmp_path):
    from vfrt.recon.data import load_views
    from vfrt.runtime.run import RunConfig, run_to_folder
    pipe = Pipeline(tiny_model, EngineConfig(backend="reference", device="cpu"))
    sampler = SamplerConfig(steps=4, seed=5)
    plain = run_to_folder(pipe, photo, RunConfig(views=6, sampler=sampler, elevation=20.0), tmp_path / "plain")
    ringed = run_to_folder(pipe, photo, RunConfig(views=6, sampler=sampler, elevation=20.0, low_ring=3),
                           tmp_path / "ringed")
    for i in range(6):                       # the orbit is the same, view for view
        assert (ringed / f"views/{i:03d}.png").read_bytes() == (plain / f"views/{i:03d}.png").read_bytes()
    assert sorted(p.name for p in (ringed / "views").glob("low_*.png")) == ["low_000.png", "low_001.png",
                                                                           "low_002.png"]
    frames = json.loads((ringed / "transforms.json").read_text())["frames"]
    assert [f["file_path"] for f in frames] == [f"views/{i:03d}.png" for i in range(6)] + \
        [f"views/low_{j:03d}.png" for j in range(3)]
    assert [f["elevation_deg"] for f in frames] == pytest.approx([20.0] * 6 + [-25.0] * 3, abs=1e-9)
    assert [f["azimuth_deg"] for f in frames[6:]] == pytest.approx([0.0, 120.0, 240.0])
    cams = json.loads((ringed / "cameras.json").read_text())["views"]
    assert len(cams) == 9 and cams[7]["elevation_deg"] == pytest.approx(-25.0)
    meta = json.loads((ringed / "run.json").read_text())
    assert [round(v["pose_deg"][0]) for v in meta["generated_views"]] == [0] * 5 + [45] * 3
    data = load_views(ringed)                # what `vfrt recon` trains on: both rings, their cameras
    assert data.n_views == 9 and data.source == "transforms.json"
    sin_elev = data.c2w[:, 2, 3] / np.linalg.norm(data.c2w[:, :3, 3], axis=1)
    assert sin_elev == pytest.approx([math.sin(math.radians(20))] * 6 + [math.sin(math.radians(-25))] * 3, abs=1e-5)


def test_cli_refuses_a_low_ring_with_batches(tmp_path, photo):
    from click.testing import CliRunner

    from vfrt.cli.main import cli
    res = CliRunner().invoke(cli, ["run", str(photo), str(photo), "--low-ring", "4", "--batch", "2",
                                   "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--low-ring runs one photo at a time" in res.output
