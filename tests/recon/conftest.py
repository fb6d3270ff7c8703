"""Fixtures of the recon tests: tiny orbits rendered by project code (never hand-made)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_orbit(tmp_path_factory):
    """An 8-view 48 px RGBA orbit of the demo capsule with transforms.json and reference.ply."""
    from vfrt.recon.render_mesh import demo_mesh, write_orbit

    return write_orbit(tmp_path_factory.mktemp("orbit"), demo_mesh("capsule"), n_views=8, image_size=48)
