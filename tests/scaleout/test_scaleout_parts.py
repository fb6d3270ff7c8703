"""The scale-out's parts that need no Ray: options, worker planning, the summary's figures, the worker itself,
and the CLI's checks before any worker starts."""
from __future__ import annotations

import json
import shutil
import sys

import pytest
from click.testing import CliRunner

from vfrt.cli.main import cli
from vfrt.engines.config import EngineConfig
from vfrt.runtime.run import RunConfig
from vfrt.runtime.sampler import SamplerConfig
from vfrt.runtime.scaleout import (PhotoJob, PhotoOutcome, PhotoWorker, RayOptions, ScaleoutError, ScaleoutSummary,
                                   WorkerSpec, is_ray_address, plan_workers)


@pytest.mark.parametrize("address, ok", [
    ("local", True), ("auto", True), ("10.0.0.5:6379", True), ("head-node.cluster:6379", True),
    ("ray://head:10001", True), ("ray://head", True), ("[::1]:6379", True),
    ("photos/", False), ("6379", False), ("head:port", False), ("http://head:8265", False), ("", False),
])
def test_ray_addresses(address, ok):
    assert is_ray_address(address) is ok


@pytest.mark.parametrize("kwargs, message", [
    (dict(address="nowhere"), "is not a Ray address"),
    (dict(workers=0), "workers must be an integer >= 1"),
    (dict(workers=True), "workers must be an integer >= 1"),
    (dict(gpus_per_worker=-0.5), "gpus_per_worker must be a number >= 0"),
    (dict(gpus_per_worker=float("nan")), "gpus_per_worker must be a number >= 0"),
    (dict(max_attempts=0), "max_attempts must be an integer >= 1"),
])
def test_ray_options_refuse_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RayOptions(**kwargs)


FOUR_GPUS = {"CPU": 64.0, "GPU": 4.0}
CPUS_ONLY = {"CPU": 2.0}


@pytest.mark.parametrize("resources, device, workers, gpus, photos, expected", [
    (FOUR_GPUS, "auto", None, None, 100, (4, 1.0, 1)),       # one worker per GPU
    (FOUR_GPUS, "cuda", None, None, 3, (3, 1.0, 1)),         # never more workers than photos
    (FOUR_GPUS, "auto", None, 0.5, 100, (8, 0.5, 1)),        # two workers share each GPU
    (FOUR_GPUS, "auto", 2, None, 100, (2, 1.0, 1)),
    (FOUR_GPUS, "cpu", 4, None, 100, (4, 0.0, 16)),          # CPU workers share the CPUs
    (CPUS_ONLY, "auto", None, None, 100, (2, 0.0, 1)),
    (CPUS_ONLY, "auto", 1, None, 100, (1, 0.0, 2)),
])
def test_plan_workers(resources, device, workers, gpus, photos, expected):
    options = RayOptions(workers=workers, gpus_per_worker=gpus)
    assert plan_workers(resources, EngineConfig(device=device), options, photos) == expected


@pytest.mark.parametrize("resources, device, workers, gpus, message", [
    (FOUR_GPUS, "cuda:1", None, None, "use device auto or cuda, not 'cuda:1'"),
    (FOUR_GPUS, "cpu", None, 1.0, "device cpu uses no GPU"),
    (CPUS_ONLY, "cuda", None, None, "device cuda needs GPUs: the Ray cluster has none"),
    (FOUR_GPUS, "cuda", None, 0.0, "device cuda needs gpus_per_worker > 0"),
    (FOUR_GPUS, "auto", None, 8.0, "each worker asks for 8 GPU(s) but the Ray cluster has 4"),
    (FOUR_GPUS, "auto", 5, None, "5 workers do not fit on the Ray cluster: it has 4 GPU(s) at 1 per worker"),
    ({"GPU": 4.0}, "auto", None, None, "the Ray cluster has no CPU"),
])
def test_plan_workers_refuses_what_the_cluster_cannot_do(resources, device, workers, gpus, message):
    with pytest.raises(ScaleoutError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_workers(resources, EngineConfig(device=device), RayOptions(workers=workers, gpus_per_worker=gpus), 10)


def test_summary_figures(tmp_path):
    outcomes = [PhotoOutcome("a.png", "o/a", "done", 0), PhotoOutcome("b.png", "o/b", "done", 1, attempts=2),
                PhotoOutcome("c.png", "o/c", "done", 0), PhotoOutcome("d.png", "o/d", "skipped", -1, attempts=0),
                PhotoOutcome("e.png", "o/e", "failed", 1, error="no foreground")]
    workers = [{"index": 0}, {"index": 1}, {"index": 2}]
    summary = ScaleoutSummary("ray", workers, outcomes, startup_seconds=20.0, wall_seconds=60.0, retried=1,
                              worker_deaths=1)
    assert (summary.count("done"), summary.count("skipped"), summary.count("failed")) == (3, 1, 1)
    assert summary.photos_per_worker == {0: 2, 1: 1, 2: 0}
    assert summary.photos_per_hour() == pytest.approx(3 * 3600 / 60)
    assert summary.photos_per_hour(after_startup=True) == pytest.approx(3 * 3600 / 40)
    path = summary.write(tmp_path / "deep" / "scaleout.json")
    data = json.loads(path.read_text())
    assert data["photos_per_worker"] == {"0": 2, "1": 1, "2": 0} and data["failed"] == 1
    assert data["outcomes"][4]["error"] == "no foreground" and list(tmp_path.glob("deep/.*")) == []


@pytest.fixture(scope="module")
def worker(tiny_checkpoint):
    spec = WorkerSpec(checkpoint=str(tiny_checkpoint.ckpt), model_config=str(tiny_checkpoint.yaml),
                      engine=EngineConfig(device="cpu"), run=RunConfig(views=3, sampler=SamplerConfig(steps=4)))
    return PhotoWorker(spec, 7)


def test_the_worker_writes_a_photo_once_and_reports_failures(worker, photo_dir, tmp_path):
    assert worker.describe()["load_error"] is None and worker.describe()["device"] == "cpu"
    job = PhotoJob(photo_dir / "p0.png", tmp_path / "p0")
    first = worker.run(job)
    assert (first.status, first.worker, first.views, first.error) == ("done", 7, 2, None)
    assert json.loads((tmp_path / "p0" / "run.json").read_text())["complete"]
    again = worker.run(job, attempt=2)           # a retry of a photo that finished: not run again
    assert again.status == "skipped" and again.attempts == 2
    blank = tmp_path / "blank.png"
    blank.write_bytes(b"not an image")
    failed = worker.run(PhotoJob(blank, tmp_path / "blank"))
    assert failed.status == "failed" and "cannot read" in failed.error and not (tmp_path / "blank").exists()


def test_a_worker_whose_model_does_not_load_says_so(tiny_checkpoint, photo_dir, tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"junk")
    spec = WorkerSpec(checkpoint=str(broken), model_config=str(tiny_checkpoint.yaml),
                      engine=EngineConfig(device="cpu"), run=RunConfig(views=3))
    worker = PhotoWorker(spec, 0)
    assert worker.describe()["load_error"].startswith("CheckpointError")
    outcome = worker.run(PhotoJob(photo_dir / "p0.png", tmp_path / "p0"))
    assert outcome.status == "failed" and "the model did not load" in outcome.error


@pytest.mark.parametrize("where, extra, message", [
    ("before", ["--ray"], "--ray took"),                         # `--ray photos/`: the folder read as the address
    ("after", ["--ray", "nowhere"], "'nowhere' is not a Ray address"),
    ("after", ["--ray-workers", "2"], "--ray-workers and --ray-gpus-per-worker go with --ray"),
    ("after", ["--ray", "--ray-workers", "0"], "Invalid value for '--ray-workers'"),
    ("after", ["--ray", "--ray-gpus-per-worker", "-1"], "Invalid value for '--ray-gpus-per-worker'"),
])
def test_bad_ray_options_exit_2_before_anything_starts(photo_dir, run_args, tmp_path, where, extra, message):
    photos = [str(photo_dir / "p0.png"), str(photo_dir / "p1.png")]
    args = [*extra, *photos] if where == "before" else [*photos, *extra]
    res = CliRunner().invoke(cli, ["run", *args, *run_args, "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_without_ray_installed_the_run_asks_for_the_extra(photo_dir, run_args, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)        # `import ray` raises ImportError
    res = CliRunner().invoke(cli, ["run", str(photo_dir), *run_args, "-o", str(tmp_path / "o"), "--ray"])
    assert res.exit_code == 1 and "Ray is not installed: pip install 'vfrt[ray]'" in res.output
    assert "Traceback" not in res.output and not any((tmp_path / "o").glob("p*"))


def test_a_rerun_skips_finished_photos_without_starting_ray(photo_dir, run_args, sequential_run, tmp_path,
                                                            monkeypatch):
    out = tmp_path / "runs"
    shutil.copytree(sequential_run, out)
    monkeypatch.setitem(sys.modules, "ray", None)        # nothing to run: Ray is not even imported
    res = CliRunner().invoke(cli, ["run", str(photo_dir), *run_args, "-o", str(out), "--ray"])
    assert res.exit_code == 0 and "nothing to do: all 4 photos are done already" in res.output, res.output
    # other settings: the finished folders are in the way, as for `vfrt run`
    res = CliRunner().invoke(cli, ["run", str(photo_dir), *run_args, "-o", str(out), "--ray", "--seed", "3"])
    assert res.exit_code == 2 and "already exists" in res.output
