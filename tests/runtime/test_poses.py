"""SPEC §5: orbit order, K sequence, weights and windows; single-target and multi-input plans."""
import math

import numpy as np
import pytest

from vfrt.runtime.poses import orbit_azimuth, orbit_order, plan_multi_input, plan_orbit, plan_single


def test_orbit_generation_order_alternates_sides():
    az = [math.degrees(orbit_azimuth(v, 36)) for v in range(6)]
    assert az == pytest.approx([10, -10, 20, -20, 30, -30])


def test_orbit_K_sequence_for_36_views():
    Ks = [p.K for p in plan_orbit(36)]
    assert len(Ks) == 35
    assert sum(Ks) == 443 and max(Ks) == 25 and Ks[0] == 1
    assert Ks[:12] == list(range(1, 13))


def test_orbit_weights_by_independent_computation():
    plans = plan_orbit(36, inference_temp=0.5, auto_temp=0.5)
    angles = [0.0] + [orbit_azimuth(v, 36) for v in range(35)]
    for v, p in enumerate(plans):
        assert p.weights.sum() == pytest.approx(1.0, abs=1e-6)
        assert p.references[0] == 0
        tgt = angles[v + 1]
        d = np.array([abs((tgt - angles[r] + np.pi) % (2 * np.pi) - np.pi) for r in range(v + 1)])
        kept = [r for r in range(v + 1) if r == 0 or d[r] < np.radians(125) - 1e-6]
        assert list(p.references) == kept
        if v == 0:
            assert p.weights.tolist() == [1.0]
            continue
        w_in = math.exp(-(v + 1) / 36 / 0.5)
        others = d[kept[1:]]
        soft = np.exp(-others / others.max() / 0.5)
        expected = np.concatenate([[w_in], soft / soft.sum() * (1 - w_in)])
        np.testing.assert_allclose(p.weights, expected, atol=1e-6)
        # T = [0, sin, cos, 0] of target minus reference azimuth
        delta = np.array([tgt - angles[r] for r in kept])
        np.testing.assert_allclose(p.pose_conditions[:, 1], np.sin(delta), atol=1e-6)
        np.testing.assert_allclose(p.pose_conditions[:, 2], np.cos(delta), atol=1e-6)
        assert np.all(p.pose_conditions[:, [0, 3]] == 0)


def test_generate_limits_and_temperatures():
    assert len(plan_orbit(36, generate=4)) == 4
    assert len(plan_orbit(8)) == 7
    for bad in (dict(generate=0), dict(generate=36)):
        with pytest.raises(ValueError):
            plan_orbit(36, **bad)
    with pytest.raises(ValueError):
        plan_orbit(36, inference_temp=0)
    with pytest.raises(ValueError):
        plan_orbit(1)


def test_orbit_order_puts_positive_azimuths_first():
    az = [orbit_azimuth(v, 36) for v in range(35)]
    order = orbit_order(az)
    sorted_deg = np.degrees(np.mod(np.array(az)[order], 2 * np.pi))
    np.testing.assert_allclose(sorted_deg, np.arange(10, 360, 10), atol=1e-4)


def test_single_mode_intermediate_views():
    plans = plan_single(math.radians(-20), math.radians(65), 0.3)
    assert len(plans) == 7  # ceil(65 / 10)
    for v, p in enumerate(plans):
        frac = (v + 1) / 7
        assert p.pose == pytest.approx((math.radians(-20) * frac, math.radians(65) * frac, 0.3 * frac), abs=1e-6)
        assert p.weights.sum() == pytest.approx(1.0, abs=1e-6)
    last = plans[-1]
    # input reference: T = [d_polar, sin d_az, cos d_az, d_radius] of the full delta
    np.testing.assert_allclose(last.pose_conditions[0], [math.radians(-20), math.sin(math.radians(65)),
                                            math.cos(math.radians(65)), 0.3], atol=1e-6)
    d_in = math.radians(20) + math.radians(65)
    assert last.weights[0] == pytest.approx(math.exp(-d_in / math.pi / 0.5), rel=1e-5)


def test_single_mode_wraps_azimuth_and_drops_far_references():
    plans = plan_single(0.0, math.radians(350), 0.0)    # = -10 degrees
    assert len(plans) == 1 and plans[0].pose[1] == pytest.approx(math.radians(-10), abs=1e-6)
    long = plan_single(0.0, math.radians(170), 0.0)
    assert len(long) == 17
    last = long[-1]
    assert last.references[0] == 0  # input kept although 170 degrees away
    assert all(abs(math.radians(170) - long[r - 1].pose[1]) < math.radians(125) for r in last.references[1:])


def test_single_mode_radius_only_generates_one_view_and_rejects_nonsense():
    assert len(plan_single(0.0, 0.0, 0.5)) == 1
    with pytest.raises(ValueError):
        plan_single(math.nan, 0.0)
    with pytest.raises(ValueError):
        plan_single(math.radians(200), 0.0)


def test_multi_input_weights():
    poses = [[0, 0, 0], [math.radians(10), math.radians(120), 0], [0, math.radians(-120), 0]]
    plans = plan_multi_input(poses, 36, inference_temp=0.5, auto_temp=1.0)
    assert [p.K for p in plans[:2]] == [3, 4]
    p0 = plans[0]
    d = np.array([math.radians(10), math.radians(110) + math.radians(10), math.radians(130)])
    soft = np.exp(-d / d.max())
    np.testing.assert_allclose(p0.weights, soft / soft.sum(), atol=1e-6)
    p5 = plans[5]
    assert p5.weights.sum() == pytest.approx(1.0, abs=1e-6)
    assert p5.weights[:3].sum() == pytest.approx(math.exp(-5 / 35 / 0.5), rel=1e-5)
    with pytest.raises(ValueError):
        plan_multi_input([[0.1, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError):
        plan_multi_input([[0, 0, 0]])


def test_targets_with_no_generated_reference_in_reach_lean_on_the_input():
    plans = plan_orbit(4)                       # +90, -90 (180 from +90: dropped), 180
    assert [p.references.tolist() for p in plans] == [[0], [0], [0, 1, 2]]
    assert plans[1].weights.tolist() == [1.0]
    multi = plan_multi_input([[0, 0, 0], [0, math.radians(180), 0]], n_views=4)
    for p in multi:
        assert p.weights.sum() == pytest.approx(1.0, abs=1e-6)
