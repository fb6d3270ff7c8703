"""Fixtures shared by the runtime tests."""
import json

import numpy as np
import pytest


@pytest.fixture(scope="session")
def assert_same_run_folders():
    """``check(a, b)``: two finished run folders hold the same files, the same run.json apart from timings
    (and the photo's source path), the same noise bank when written, and PNGs equal within one uint8 level (the
    rounding of float images that agree to ~1e-5)."""
    from PIL import Image

    def check(a, b):
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        meta_a, meta_b = (json.loads((f / "run.json").read_text()) for f in (a, b))
        for meta in (meta_a, meta_b):
            meta.pop("seconds")
            for entry in meta["inputs"]:
                entry.pop("source")
        assert meta_a == meta_b
        for name in files:
            if name.suffix == ".png":
                pa, pb = (np.asarray(Image.open(f / name), dtype=np.int16) for f in (a, b))
                assert np.abs(pa - pb).max() <= 1, name
        if (a / "noise.npz").is_file():         # written with --save-noise (the file lists agree, checked above)
            banks = [np.load(f / "noise.npz") for f in (a, b)]
            assert sorted(banks[0].keys()) == sorted(banks[1].keys())
            for key in banks[0].keys():
                np.testing.assert_array_equal(banks[0][key], banks[1][key])
    return check
