"""The HTTP API on a tiny checkpoint: same outputs as `vfrt run`, progress, cancel, restart,
reconstruct, bad uploads, path traversal and a full queue."""
from __future__ import annotations

import io
import json
import threading
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vfrt.cli.main import cli

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'vfrt[serve]')")
pytest.importorskip("multipart", reason="the serve extra is not installed (pip install 'vfrt[serve]')")
from fastapi.testclient import TestClient  # noqa: E402

from vfrt.serve.api import create_api  # noqa: E402
from vfrt.serve.service import JobService  # noqa: E402

SMALL = {"steps": "4", "views": "6"}


def _png(size=(32, 32), mode="RGBA") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 30, 255)[:len(mode)]).save(buf, "PNG")
    return buf.getvalue()


def _submit(client, photo_bytes, name="chair_7_rgba.png", **fields):
    return client.post("/api/jobs", files={"image": (name, photo_bytes, "image/png")}, data=fields)


@pytest.fixture
def make_client(serve_config):
    """``make_client(pipeline, **config)`` -> (TestClient with the workers running, service)."""
    opened = []

    def make(pipeline, **overrides):
        service = JobService(serve_config(**overrides), [pipeline])
        client = TestClient(create_api(service))
        client.__enter__()              # runs the app's startup: the workers start
        opened.append(client)
        return client, service
    yield make
    for client in opened:
        client.__exit__(None, None, None)


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _comparable_run_json(path):
    meta = json.loads(path.read_text())
    meta.pop("seconds")
    for entry in meta["inputs"]:
        entry.pop("source")              # where the photo was read from: the upload folder vs the user's path
    return meta


def test_a_jobs_run_folder_equals_vfrt_run_for_the_same_seed(tiny_checkpoint, tiny_pipeline, photo, tmp_path,
                                                             make_client, wait_ended):
    client, service = make_client(tiny_pipeline)
    res = _submit(client, photo.read_bytes(), photo.name, seed="3", **SMALL)
    assert res.status_code == 202, res.text
    job = wait_ended(client, res.json()["id"])
    assert job["state"] == "done", job
    assert job["progress"] == {"done": 5, "total": 5, "unit": "views", "elapsed_s": None, "eta_s": None}
    assert job["views"] == [f"run/views/{i:03d}.png" for i in range(6)]

    cli_out = tmp_path / "cli"
    ran = CliRunner().invoke(cli, ["run", str(photo), "-c", str(tiny_checkpoint.ckpt), "--config",
                                   str(tiny_checkpoint.yaml), "--device", "cpu", "--steps", "4", "--views", "6",
                                   "--seed", "3", "-o", str(cli_out)])
    assert ran.exit_code == 0, ran.output
    run_dir = service.config.runs_dir / job["id"] / "run"
    assert _files(run_dir) == _files(cli_out)
    for rel in _files(cli_out):
        if rel != "run.json":
            assert (run_dir / rel).read_bytes() == (cli_out / rel).read_bytes(), rel
    assert _comparable_run_json(run_dir / "run.json") == _comparable_run_json(cli_out / "run.json")

    # every result file is downloadable; views.zip holds the views
    assert set(job["files"]) == {"views.zip", *(f"run/{f}" for f in _files(cli_out))}
    got = client.get(f"/api/jobs/{job['id']}/files/run/transforms.json")
    assert got.status_code == 200 and got.content == (cli_out / "transforms.json").read_bytes()
    with zipfile.ZipFile(io.BytesIO(client.get(f"/api/jobs/{job['id']}/files/views.zip").content)) as zf:
        assert zf.namelist() == [f"views/{i:03d}.png" for i in range(6)]
        assert zf.read("views/003.png") == (cli_out / "views" / "003.png").read_bytes()
    assert [j["id"] for j in client.get("/api/jobs").json()] == [job["id"]]


def test_reconstruct_a_finished_job(tiny_pipeline, photo, make_client, wait_ended):
    client, _ = make_client(tiny_pipeline)
    job_id = _submit(client, photo.read_bytes(), **SMALL).json()["id"]
    assert client.post(f"/api/jobs/{job_id}/reconstruct").status_code == 409      # views not done yet
    assert wait_ended(client, job_id)["state"] == "done"
    res = client.post(f"/api/jobs/{job_id}/reconstruct")
    assert res.status_code == 202 and res.json()["stage"] == "mesh"
    job = wait_ended(client, job_id)
    assert job["state"] == "done" and job["has_mesh"] and job["message"] == "mesh ready", job
    assert job["progress"]["total"] == 25 and job["progress"]["unit"] == "steps"
    glb = client.get(f"/api/jobs/{job_id}/files/recon/mesh.glb")
    assert glb.status_code == 200 and glb.content[:4] == b"glTF"
    # asking again is harmless: the mesh is there
    again = client.post(f"/api/jobs/{job_id}/reconstruct")
    assert again.status_code == 202 and again.json()["state"] == "done"


def test_a_single_pose_job_and_a_chained_reconstruction(tiny_pipeline, photo, make_client, wait_ended):
    client, _ = make_client(tiny_pipeline)
    single = _submit(client, photo.read_bytes(), mode="single", polar="-10", azimuth="20", steps="4").json()["id"]
    chained = _submit(client, photo.read_bytes(), reconstruct="true", **SMALL).json()["id"]
    st = wait_ended(client, single)
    assert st["state"] == "done" and st["views"][0] == "run/views/input.png" and "run/target.png" in st["files"]
    assert client.post(f"/api/jobs/{single}/reconstruct").status_code == 409
    st = wait_ended(client, chained)
    assert st["state"] == "done" and st["stage"] == "mesh" and st["has_mesh"], st


def test_cancel_a_running_job_between_views(gated_pipeline, photo, make_client, wait_ended):
    client, service = make_client(gated_pipeline)
    job_id = _submit(client, photo.read_bytes(), **SMALL).json()["id"]
    assert gated_pipeline.reached.wait(60)           # view 1 of 5 is generated; the job waits at the gate
    res = client.post(f"/api/jobs/{job_id}/cancel")
    assert res.status_code == 200 and res.json()["state"] == "running" and "cancelling" in res.json()["message"]
    gated_pipeline.gate.set()
    job = wait_ended(client, job_id)
    assert job["state"] == "cancelled" and job["message"] == "cancelled after 1 of 5 views", job
    assert gated_pipeline.generated == 1
    folder = service.config.runs_dir / job_id
    assert not (folder / "run").exists() and not (folder / "run.partial").exists() and job["files"] == []
    res = client.post(f"/api/jobs/{job_id}/cancel")
    assert res.status_code == 409 and "already ended" in res.json()["detail"]


def test_cancel_a_waiting_job_and_a_full_queue(tiny_pipeline, photo, serve_config):
    """Without the app's startup the workers do not run, so jobs stay queued."""
    service = JobService(serve_config(queue_size=2, retry_after_s=17), [tiny_pipeline])
    client = TestClient(create_api(service))
    first = _submit(client, photo.read_bytes(), **SMALL).json()
    second = _submit(client, photo.read_bytes(), **SMALL).json()
    assert (first["queue_position"], second["queue_position"]) == (1, 2)
    full = _submit(client, photo.read_bytes(), **SMALL)
    assert full.status_code == 503 and full.headers["Retry-After"] == "17"
    assert "queue is full" in full.json()["detail"]
    assert len(list(service.config.runs_dir.iterdir())) == 2           # nothing stored for the refused job
    res = client.post(f"/api/jobs/{first['id']}/cancel")
    assert res.status_code == 200 and res.json()["state"] == "cancelled"
    assert client.get(f"/api/jobs/{second['id']}").json()["queue_position"] == 1
    assert _submit(client, photo.read_bytes(), **SMALL).status_code == 202    # room again


def test_a_restart_lists_old_jobs_and_resumes_the_interrupted_one(gated_pipeline, photo, serve_config, wait_ended,
                                                                   tiny_pipeline):
    cfg = serve_config()
    first = JobService(cfg, [gated_pipeline])
    with TestClient(create_api(first)) as client:
        done_id = _submit(client, photo.read_bytes(), **SMALL).json()["id"]
        gated_pipeline.gate.set()
        assert wait_ended(client, done_id)["state"] == "done"
        gated_pipeline.gate.clear()
        gated_pipeline.reached.clear()
        gated_pipeline.generated = 0
        cut_id = _submit(client, photo.read_bytes(), seed="5", **SMALL).json()["id"]
        assert gated_pipeline.reached.wait(60)
        stopping = threading.Thread(target=first.stop)      # the server stops while view 1 waits
        stopping.start()
        gated_pipeline.gate.set()
        stopping.join(60)
    on_disk = json.loads((cfg.runs_dir / cut_id / "job.json").read_text())
    assert on_disk["state"] == "queued" and (cfg.runs_dir / cut_id / "run.partial" / "generated" / "v00.npy").is_file()

    gated_pipeline.generated = 0
    second = JobService(cfg, [gated_pipeline])
    client = TestClient(create_api(second))
    listed = {j["id"]: j for j in client.get("/api/jobs").json()}
    assert listed[done_id]["state"] == "done" and listed[done_id]["has_views"]
    assert listed[cut_id]["state"] == "queued" and "restart" in listed[cut_id]["message"]
    with client:
        job = wait_ended(client, cut_id)
    assert job["state"] == "done" and gated_pipeline.generated == 4      # view 1 was not generated again
    # and the resumed run equals an uninterrupted one
    whole = JobService(serve_config(runs_dir=cfg.runs_dir.parent / "whole"), [tiny_pipeline])
    with TestClient(create_api(whole)) as other:
        ref = wait_ended(other, _submit(other, photo.read_bytes(), seed="5", **SMALL).json()["id"])
    for i in range(6):
        a = cfg.runs_dir / cut_id / "run" / "views" / f"{i:03d}.png"
        b = whole.config.runs_dir / ref["id"] / "run" / "views" / f"{i:03d}.png"
        assert a.read_bytes() == b.read_bytes()


def _truncated_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()[:-200]


@pytest.mark.parametrize("body, name, status, message", [
    (b"%PDF-1.4 definitely not a picture", "photo.png", 415, "not an image"),
    (b"", "photo.png", 400, "empty"),
    (_truncated_png(), "photo.png", 400, "truncated or corrupt"),
    (_png((300, 300)), "big.png", 413, "megapixels"),
    (b"\x89PNG" + bytes(70_000), "huge.png", 413, "larger than this server accepts"),
])
def test_bad_uploads_are_refused_with_a_message(tiny_pipeline, serve_config, body, name, status, message):
    service = JobService(serve_config(max_upload_bytes=64_000, max_pixels=200 * 200), [tiny_pipeline])
    client = TestClient(create_api(service))
    res = _submit(client, body, name, **SMALL)
    assert res.status_code == status and message in res.json()["detail"], res.text
    assert list(service.config.runs_dir.iterdir()) == []


def test_a_body_over_the_request_limit_is_refused_declared_or_streamed(tiny_pipeline, serve_config):
    service = JobService(serve_config(max_upload_bytes=2048, max_extra_inputs=0), [tiny_pipeline])
    client = TestClient(create_api(service))
    res = _submit(client, bytes(3 * 2**20), "photo.png")        # over photo limit + form allowance (1 MiB)
    assert res.status_code == 413 and "larger than this server accepts (1.0 MiB in all)" in res.json()["detail"]

    def chunks():                                                # no Content-Length: cut off while streaming
        yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(40):
            yield bytes(2**16)
    res = client.post("/api/jobs", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert res.status_code == 413 and "larger than this server accepts" in res.json()["detail"]
    assert list(service.config.runs_dir.iterdir()) == []


@pytest.mark.parametrize("fields, message", [
    ({"steps": "1"}, "steps must be"),
    ({"steps": "500"}, "steps must be <= 250 on this server"),
    ({"views": "1"}, "views must be"),
    ({"mode": "single"}, "needs a target pose"),
    ({"views": "100"}, "views must be <= 72 on this server"),
    ({"mode": "multi"}, "at least one extra input view"),
    ({"extra_poses": "0,180"}, "for mode 'multi'"),
    ({"mode": "sideways"}, "mode"),
    ({"stepz": "4"}, "unknown field(s): stepz"),
    ({"seed": "-1"}, "seed must be"),
])
def test_bad_settings_are_refused_with_a_message(tiny_pipeline, photo, serve_config, fields, message):
    service = JobService(serve_config(), [tiny_pipeline])
    res = _submit(TestClient(create_api(service)), photo.read_bytes(), **fields)
    assert res.status_code == 422 and message in json.dumps(res.json()), res.text


def test_multi_input_jobs_pair_images_and_poses(tiny_pipeline, photo, make_client, wait_ended):
    client, service = make_client(tiny_pipeline)
    files = [("image", ("front.png", photo.read_bytes())), ("extra_images", ("back.png", photo.read_bytes()))]
    bad = client.post("/api/jobs", files=files, data={"mode": "multi", "extra_poses": ["0,180", "0,90"], **SMALL})
    assert bad.status_code == 422 and "got 1 image(s) and 2 pose(s)" in bad.json()["detail"]
    res = client.post("/api/jobs", files=files, data={"mode": "multi", "extra_poses": "0,180", **SMALL})
    assert res.status_code == 202, res.text
    job = wait_ended(client, res.json()["id"])
    assert job["state"] == "done", job
    assert job["photos"] == ["photos/0/front.png", "photos/1/back.png"]
    assert "run/inputs/1_back.png" in job["files"]


@pytest.mark.parametrize("path", ["../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd",
                                  "run/../../outside.txt", "link/secret.txt", "photos", "nope.png"])
def test_downloads_cannot_leave_the_job_folder(tiny_pipeline, photo, serve_config, path):
    service = JobService(serve_config(), [tiny_pipeline])
    client = TestClient(create_api(service))
    job_id = _submit(client, photo.read_bytes(), **SMALL).json()["id"]
    runs = service.config.runs_dir
    (runs / "outside.txt").write_text("another job's secret")
    (runs.parent / "secret").mkdir()
    (runs.parent / "secret" / "secret.txt").write_text("not yours")
    (runs / job_id / "link").symlink_to(runs.parent / "secret")
    res = client.get(f"/api/jobs/{job_id}/files/{path}")
    assert res.status_code == 404 and "not yours" not in res.text and "another job" not in res.text
    assert client.get(f"/api/jobs/{job_id}/files/job.json").status_code == 200      # inside is fine


def test_unknown_jobs_are_404_and_the_api_is_documented(tiny_pipeline, serve_config):
    client = TestClient(create_api(JobService(serve_config(), [tiny_pipeline])))
    for url in ("/api/jobs/0123456789abcdef", "/api/jobs/not-an-id", "/api/jobs/x/files/run.json"):
        res = client.get(url)
        assert res.status_code == 404 and "no job" in res.json()["detail"], url
    spec = client.get("/openapi.json").json()
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/cancel", "/api/jobs/{job_id}/reconstruct",
            "/api/jobs/{job_id}/files/{path}", "/api/info"} <= set(spec["paths"])
    form = spec["components"]["schemas"]["JobSettings"]["properties"]
    assert form["steps"]["default"] == 75 and form["views"]["default"] == 36
    info = client.get("/api/info").json()
    assert info["queue"]["capacity"] == 16 and info["workers"][0]["device"] == "cpu"
