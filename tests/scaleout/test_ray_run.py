"""`vfrt run PHOTOS --ray` on a local Ray instance (2 CPU workers): the same folders as `vfrt run`, a killed
worker's photo redone without loss or duplicates, clear errors when workers cannot start."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from vfrt.cli.main import cli
from vfrt.runtime.scaleout import FAULT_ENV, SUMMARY_NAME

PHOTO_STEMS = ["p0", "p1", "p2", "p3"]      # the photo_dir fixture's photos


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _comparable_run_json(path: Path) -> dict:
    """run.json without what may differ between two runs of the same photo: timings and the photo's path as
    given (the Ray runner passes absolute paths, for workers on other machines)."""
    meta = json.loads(path.read_text())
    meta.pop("seconds")
    for entry in meta["inputs"]:
        entry.pop("source")
    return meta


def assert_same_runs(expected: Path, got: Path) -> None:
    """Every photo's folder in ``got`` holds the same files as in ``expected``, byte for byte (views, cameras,
    grid, animations, noise bank, inputs), run.json equal but for timings and paths."""
    for stem in PHOTO_STEMS:
        a, b = expected / stem, got / stem
        assert _files(a) == _files(b), stem
        for name in _files(a) - {"run.json"}:
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"{stem}/{name}"
        assert _comparable_run_json(a / "run.json") == _comparable_run_json(b / "run.json")


def _ray_run(photo_dir, run_args, out, *extra):
    return CliRunner().invoke(cli, ["run", str(photo_dir), *run_args, "-o", str(out), "--ray", "--ray-workers", "2",
                                    *extra])


def test_ray_run_writes_the_same_folders_as_vfrt_run(local_ray, photo_dir, run_args, sequential_run, tmp_path):
    out = tmp_path / "runs"
    res = _ray_run(photo_dir, run_args, out)
    assert res.exit_code == 0, res.output
    assert "4 photos: 4 done, 0 already done, 0 failed, 0 retried" in res.output and "photos/hour" in res.output
    assert sorted(p.name for p in out.iterdir()) == [*PHOTO_STEMS, SUMMARY_NAME]
    assert_same_runs(sequential_run, out)
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert (summary["done"], summary["failed"], summary["retried"], summary["worker_deaths"]) == (4, 0, 0, 0)
    assert len(summary["workers"]) == 2 and {w["device"] for w in summary["workers"]} == {"cpu"}
    counts = summary["photos_per_worker"]
    assert sum(counts.values()) == 4 and min(counts.values()) >= 1      # both workers got photos
    assert sorted(Path(o["folder"]).name for o in summary["outcomes"]) == list(PHOTO_STEMS)
    assert summary["photos_per_hour"] > 0 and summary["wall_seconds"] >= summary["startup_seconds"] > 0


def test_a_killed_worker_photo_is_redone_and_nothing_is_lost_or_duplicated(local_ray, photo_dir, run_args,
                                                                           sequential_run, tmp_path, monkeypatch):
    """p2's first attempt kills its worker after one generated view; Ray restarts the worker, the driver hands
    p2 out again, the retry resumes from the saved view. p0 is finished already (from the sequential run) and
    is not run again."""
    out = tmp_path / "runs"
    out.mkdir()
    shutil.copytree(sequential_run / "p0", out / "p0")
    before = {name: (out / "p0" / name).stat().st_mtime_ns for name in _files(out / "p0")}
    monkeypatch.setenv(FAULT_ENV, "p2")
    res = _ray_run(photo_dir, run_args, out)
    assert res.exit_code == 0, res.output
    assert f"already done: {out / 'p0'}" in res.output
    assert "retrying:" in res.output and "p2.png (worker" in res.output and "attempt 2 of 3" in res.output
    assert "4 photos: 3 done, 1 already done, 0 failed, 1 retried (1 worker deaths)" in res.output
    # one finished folder per photo, nothing partial, nothing twice; p0 untouched
    assert sorted(p.name for p in out.iterdir()) == [*PHOTO_STEMS, SUMMARY_NAME]
    assert {name: (out / "p0" / name).stat().st_mtime_ns for name in _files(out / "p0")} == before
    assert_same_runs(sequential_run, out)
    summary = json.loads((out / SUMMARY_NAME).read_text())
    by_photo = {Path(o["image"]).stem: o for o in summary["outcomes"]}
    assert sorted(by_photo) == list(PHOTO_STEMS) and len(summary["outcomes"]) == 4
    assert by_photo["p0"]["status"] == "skipped"
    assert by_photo["p2"]["status"] == "done" and by_photo["p2"]["attempts"] == 2
    assert by_photo["p2"]["views"] == 2          # 3 generated views: 1 before the crash, 2 after resuming
    assert all(by_photo[s]["attempts"] == 1 and by_photo[s]["views"] == 3 for s in ("p1", "p3"))
    assert (summary["retried"], summary["worker_deaths"], summary["done"]) == (1, 1, 3)
    assert sum(summary["photos_per_worker"].values()) == 3


def test_workers_that_cannot_load_the_model_stop_the_run_with_one_message(local_ray, photo_dir, tiny_checkpoint,
                                                                          tmp_path):
    """The driver only reads the YAML; the workers find the weights file broken: one line, exit 1, no folder."""
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    res = CliRunner().invoke(cli, ["run", str(photo_dir), "-c", str(broken), "--config", str(tiny_checkpoint.yaml),
                                   "--steps", "4", "--views", "4", "--device", "cpu", "-o", str(tmp_path / "o"),
                                   "--ray", "--ray-workers", "1"])
    assert res.exit_code == 1, res.output
    assert "worker 0 could not load the model: CheckpointError" in res.output and "Traceback" not in res.output
    assert not any((tmp_path / "o").glob("p*"))


def test_more_workers_than_the_cluster_holds_are_refused(local_ray, photo_dir, run_args, tmp_path):
    res = CliRunner().invoke(cli, ["run", str(photo_dir), *run_args, "-o", str(tmp_path / "o"), "--ray",
                                   "--ray-workers", "3"])
    assert res.exit_code == 1 and "3 workers do not fit on the Ray cluster: it has 2 CPU(s)" in res.output
    res = CliRunner().invoke(cli, ["run", str(photo_dir), *run_args, "-o", str(tmp_path / "o"), "--ray",
                                   "--ray-gpus-per-worker", "1"])
    assert res.exit_code == 1 and "device cpu uses no GPU" in res.output


def test_an_unreachable_cluster_is_named_in_seconds(local_ray, photo_dir, run_args, tmp_path, monkeypatch):
    """A driver not yet connected to Ray, pointed at a port where nothing listens (Ray itself would retry for
    minutes)."""
    monkeypatch.setattr(local_ray, "is_initialized", lambda: False)
    res = CliRunner().invoke(cli, ["run", str(photo_dir), *run_args, "-o", str(tmp_path / "o"), "--ray",
                                   "127.0.0.1:1"])
    assert res.exit_code == 1 and "cannot reach the Ray cluster at 127.0.0.1:1" in res.output, res.output
    assert "Traceback" not in res.output
