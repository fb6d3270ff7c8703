"""The serve building blocks on their own: photo checks, settings -> RunConfig, the queue, the config."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from vfrt.runtime.run import RunConfig
from vfrt.runtime.sampler import SamplerConfig
from vfrt.serve.config import ServeConfig
from vfrt.serve.errors import QueueFull, SettingsError, UploadRejected
from vfrt.serve.queue import JobQueue
from vfrt.serve.uploads import check_image, safe_name

pytest.importorskip("pydantic", reason="the serve extra is not installed (pip install 'vfrt[serve]')")
from vfrt.serve.settings import JobSettings  # noqa: E402
from vfrt.serve.store import resolve_inside  # noqa: E402


def _encode(fmt: str, size=(40, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (10, 200, 30)[:len(mode)] if mode != "L" else 128).save(buf, fmt)
    return buf.getvalue()


LIMITS = dict(max_bytes=100_000, max_pixels=100 * 100)


@pytest.mark.parametrize("fmt, mode, suffix", [("PNG", "RGBA", ".png"), ("JPEG", "RGB", ".jpg"),
                                               ("WEBP", "RGB", ".webp"), ("BMP", "L", ".bmp"),
                                               ("TIFF", "RGB", ".tif")])
def test_accepted_images_keep_a_safe_name_with_the_right_suffix(fmt, mode, suffix):
    checked = check_image(_encode(fmt, mode=mode), "../../My Photo (1).PNG", **LIMITS)
    assert (checked.format, checked.width, checked.height) == (fmt, 40, 30)
    assert checked.name == ("My_Photo_1.png" if fmt == "PNG" else "My_Photo_1" + suffix)


@pytest.mark.parametrize("given, expected", [(None, "photo.png"), ("", "photo.png"), ("..", "photo.png"),
                                             ("C:\\\\Users\\\\x\\\\chair.PNG", "chair.png"), (".hidden.png", "hidden.png"),
                                             ("a/b/../../../etc/passwd", "passwd.png"), ("é漢字.png", "photo.png")])
def test_safe_names(given, expected):
    assert safe_name(given, "PNG") == expected


def test_the_pixel_limit_is_checked_before_decoding(monkeypatch):
    data = _encode("PNG", size=(200, 100))
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    with pytest.raises(UploadRejected, match="200x100 = 0.0 megapixels") as err:
        check_image(data, "x.png", **LIMITS)
    assert err.value.status == 413 and decoded == []


@pytest.mark.parametrize("data, status, message", [
    (b"", 400, "empty"),
    (b"\x89PNG\r\n\x1a\n" + bytes(30), 415, "not an image"),       # a signature, then nothing usable
    (_encode("GIF"), 415, "GIF images are not accepted"),
    (b"hello, I am text", 415, "not an image"),
    (_encode("PNG")[:60], 400, "truncated or corrupt"),
    (_encode("JPEG", size=(90, 90))[:-300], 400, "truncated or corrupt"),
    (bytes(100_001), 413, "at most 0.1 MiB"),
])
def test_rejected_uploads(data, status, message):
    with pytest.raises(UploadRejected, match=message) as err:
        check_image(data, "x.png", **LIMITS)
    assert err.value.status == status


def test_default_settings_are_the_originals():
    d = JobSettings()
    cfg = d.run_config()
    assert cfg == RunConfig()                          # vfrt run's defaults: 36 views, sampler defaults, auto segment
    assert cfg.sampler == SamplerConfig() and cfg.sampler.steps == 75 and cfg.sampler.guidance == 3.0
    multi = JobSettings(mode="multi", extra_poses=["0, 180"]).run_config(["/x/back.png"])
    assert multi.sampler.auto_temp == 1.0 and multi.extra_inputs == (("/x/back.png", 0.0, 180.0, 0.0),)
    ringed = JobSettings(low_ring=12).run_config()
    assert (ringed.low_ring, ringed.low_ring_polar, ringed.generated_views) == (12, 45.0, 47)


@pytest.mark.parametrize("settings, limits, message", [
    (dict(mode="multi", extra_poses=["0,180", "1,2,3"]), {}, "got 1 image"),
    (dict(mode="multi", extra_poses=["0"]), {}, "expected POLAR,AZIMUTH"),
    (dict(mode="multi", extra_poses=["a,b"]), {}, "expected POLAR,AZIMUTH"),
    (dict(views=40), dict(max_views=36), "views must be <= 36"),
    (dict(steps=100), dict(max_steps=50), "steps must be <= 50"),
    (dict(mode="single", azimuth=170), dict(max_views=10), "would generate 17 views"),
    (dict(eta=-1), {}, "eta must be"),
    (dict(views=30, low_ring=8), dict(max_views=36), "would generate 37 views"),
    (dict(mode="single", azimuth=20, low_ring=4), {}, "a low ring is for orbit mode"),
])
def test_settings_errors(settings, limits, message):
    extra = ["/x/back.png"] if settings.get("mode") == "multi" else []
    with pytest.raises(SettingsError, match=message):
        JobSettings(**settings).run_config(extra, **limits)


def test_settings_parse_reports_every_bad_field():
    with pytest.raises(SettingsError, match=r"views: .*integer.*; noise_mode: "):
        JobSettings.parse({"views": "many", "noise_mode": "loud"})


def test_the_queue_is_bounded_fifo_and_batches_compatible_items():
    q = JobQueue(3, retry_after_s=9)
    for item in ("a1", "b1", "a2"):
        q.put(item)
    with pytest.raises(QueueFull) as err:
        q.put("a3")
    assert err.value.retry_after_s == 9 and "3 jobs waiting" in err.value.message
    q.put("a3", bounded=False)                         # restored jobs were admitted before
    assert [q.position(x) for x in ("a1", "b1", "a2", "a3", "zz")] == [1, 2, 3, 4, None]
    assert q.take(2, key=lambda s: s[0]) == ["a1", "a2"]          # the oldest, and one more like it
    assert q.take(5, key=lambda s: s[0]) == ["b1"]
    assert q.remove("a3") and not q.remove("a3") and len(q) == 0 and q.take(2, key=str) == []


def test_resolve_inside(tmp_path):
    (tmp_path / "job" / "run").mkdir(parents=True)
    (tmp_path / "job" / "run" / "a.png").write_bytes(b"x")
    (tmp_path / "other.txt").write_text("no")
    job = tmp_path / "job"
    assert resolve_inside(job, "run/a.png") == (job / "run" / "a.png").resolve()
    for bad in ("../other.txt", str(tmp_path / "other.txt"), "run", "run/../../other.txt", "a\x00b", ""):
        assert resolve_inside(job, bad) is None, bad


@pytest.mark.parametrize("host, public", [("127.0.0.1", False), ("localhost", False), ("::1", False),
                                          ("0.0.0.0", True), ("192.168.1.5", True), ("example.org", True)])
def test_config_knows_when_the_server_is_reachable_from_elsewhere(host, public):
    assert ServeConfig(host=host).public is public


@pytest.mark.parametrize("bad, message", [(dict(port=0), "port"), (dict(queue_size=0), "queue_size"),
                                          (dict(max_upload_bytes=10), "max_upload_bytes"), (dict(host=" "), "host")])
def test_config_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        ServeConfig(**bad)
