"""`vfrt run PHOTOS --ray` with GPU workers (one per GPU of the machine): the same folders as `vfrt run` on one
GPU, up to the rounding of fp16 kernels that may pick other algorithms in another process."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vfrt.cli.main import cli
from vfrt.runtime.scaleout import SUMMARY_NAME

pytestmark = pytest.mark.gpu


def test_gpu_workers_match_a_one_gpu_run(local_ray, photo_dir, tiny_checkpoint, tmp_path):
    import torch
    args = [str(photo_dir), "-c", str(tiny_checkpoint.ckpt), "--config", str(tiny_checkpoint.yaml), "--steps", "4",
            "--views", "4", "--device", "cuda", "-q", "--save-noise"]
    res = CliRunner().invoke(cli, ["run", *args, "-o", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["run", *args, "-o", str(tmp_path / "ray"), "--ray"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "ray" / SUMMARY_NAME).read_text())
    assert len(summary["workers"]) == min(4, torch.cuda.device_count()) and summary["done"] == 4
    assert all(w["device"].startswith("cuda") and w["gpu"] for w in summary["workers"])
    for stem in ("p0", "p1", "p2", "p3"):
        one, ray = tmp_path / "one" / stem, tmp_path / "ray" / stem
        assert (one / "noise.npz").read_bytes() == (ray / "noise.npz").read_bytes()
        for view in sorted((one / "views").iterdir()):
            a = np.asarray(Image.open(view), dtype=np.int16)
            b = np.asarray(Image.open(ray / "views" / view.name), dtype=np.int16)
            assert np.abs(a - b).max() <= 2, f"{stem}/{view.name}"
