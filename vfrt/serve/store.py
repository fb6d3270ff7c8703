"""One job on disk: its folder, ``job.json``, its result files, and safe lookups inside it.

Layout of ``<runs_dir>/<job id>/``::

    job.json         settings, photos and state (rewritten atomically at each state change)
    photos/<i>/NAME  the uploaded photos as sent (0 = the photo, 1.. = extra input views)
    run/             exactly the folder `vfrt run` writes (run.partial/ while generating: resumable)
    views.zip        run/views/ zipped, once run/ is complete
    recon/           mesh.{ply,obj,glb}, turntable, recon.json (recon.partial/ while training)

A job that was queued or running when the server stopped is listed again at the next start and
queued again; its finished views are kept in ``run.partial/`` and not generated twice.
"""
from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from vfrt.runtime.run import RunConfig
from vfrt.serve.settings import JobSettings

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
#: what a job is doing or did last: generating views, or reconstructing a mesh from them
Stage = Literal["views", "mesh"]
#: job ids: 16 lowercase hex digits (a folder name that can never be a path trick)
JOB_ID = re.compile(r"^[0-9a-f]{16}$")


def new_job_id() -> str:
    return secrets.token_hex(8)


def resolve_inside(folder: Path, relative: str) -> Path | None:
    """``folder / relative`` if it is an existing file inside ``folder`` after resolving ``..`` and
    symbolic links; None otherwise (also for absolute paths and names the OS rejects)."""
    root = folder.resolve()
    try:
        target = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if root not in target.parents or not target.is_file():
        return None
    return target


@dataclass
class Job:
    """A job's persistent record plus its live progress (``done``/``total``, not persisted).

    The service mutates jobs only under its lock; ``version`` counts changes so that pollers can
    wait for the next one.
    """

    id: str
    folder: Path
    settings: JobSettings
    photos: list[str]                    # relative to ``folder``; [0] is the photo, then the extra views
    created: float = field(default_factory=time.time)
    state: JobState = "queued"
    stage: Stage = "views"
    message: str = ""
    started: float | None = None
    finished: float | None = None
    # live state
    done: int = 0
    total: int = 0
    version: int = 0
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    rate_origin: tuple[float, int] | None = None   # (time, done) progress is measured from

    # ------------------------------------------------------------------------ places
    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    @property
    def run_partial(self) -> Path:
        return self.folder / "run.partial"

    @property
    def recon_dir(self) -> Path:
        return self.folder / "recon"

    @property
    def recon_partial(self) -> Path:
        return self.folder / "recon.partial"

    @property
    def views_zip(self) -> Path:
        return self.folder / "views.zip"

    @property
    def has_views(self) -> bool:
        return (self.run_dir / "run.json").is_file()

    @property
    def has_mesh(self) -> bool:
        return (self.recon_dir / "mesh.glb").is_file()

    def run_config(self, max_views: int | None = None, max_steps: int | None = None) -> RunConfig:
        """The RunConfig of this job, with the extra photos' absolute paths."""
        return self.settings.run_config([str(self.folder / p) for p in self.photos[1:]],
                                        max_views=max_views, max_steps=max_steps)

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share sampling steps (same plan and schedule; photo and seed may differ)."""
        if self.stage != "views":
            return ("mesh", self.id)
        s = self.settings
        return ("views", s.mode, s.views, s.generate, s.polar, s.azimuth, s.radius, s.steps, s.eta, s.guidance,
                s.inference_temp, s.auto_temp, s.noise_mode, len(self.photos))

    def touch(self) -> None:
        self.version += 1

    # ------------------------------------------------------------------------ results
    def files(self) -> list[str]:
        """Result files, relative to the folder: views.zip, run/**, recon/** (sorted)."""
        out = ["views.zip"] if self.views_zip.is_file() else []
        for sub in (self.run_dir, self.recon_dir):
            try:
                out += sorted(str(p.relative_to(self.folder)) for p in sub.rglob("*") if p.is_file())
            except FileNotFoundError:       # not there (yet), or replaced while listing
                continue
        return out

    def views(self) -> list[str]:
        """The finished views in display order (orbit order, or input then the steps to the target)."""
        views = self.run_dir / "views"
        if not views.is_dir():
            return []
        names = sorted(p.name for p in views.glob("*.png"))
        if "input.png" in names:                    # single mode: input first, then step_01 ...
            names = ["input.png"] + [n for n in names if n != "input.png"]
        return [f"run/views/{n}" for n in names]

    def write_views_zip(self) -> Path:
        """Zip ``run/views/`` to ``views.zip`` (PNG is compressed already: stored, not deflated)."""
        tmp = self.views_zip.with_suffix(".zip.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for rel in self.views():
                zf.write(self.folder / rel, rel.removeprefix("run/"))
        tmp.replace(self.views_zip)
        return self.views_zip

    # ------------------------------------------------------------------------ progress
    def progress(self, done: int, total: int, now: float | None = None) -> None:
        """Record progress; the rate (for the ETA) is measured from the first report of this stage,
        so views resumed from an earlier run do not make it look faster."""
        now = time.time() if now is None else now
        if self.rate_origin is None:
            self.rate_origin = (self.started or now, max(0, done - 1))
        self.done, self.total = done, total

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds until the stage ends, from the rate so far (None before the first report)."""
        if self.rate_origin is None or self.state != "running" or self.total <= 0:
            return None
        now = time.time() if now is None else now
        t0, d0 = self.rate_origin
        made = self.done - d0
        if made <= 0:
            return None
        return max(0.0, (now - t0) / made * (self.total - self.done))

    # ------------------------------------------------------------------------ persistence
    def record(self) -> dict:
        return {"id": self.id, "created": self.created, "state": self.state, "stage": self.stage,
                "message": self.message, "started": self.started, "finished": self.finished,
                "photos": self.photos, "settings": self.settings.model_dump()}

    def save(self) -> None:
        """Write ``job.json`` atomically (temp file + rename)."""
        tmp = self.folder / "job.json.tmp"
        tmp.write_text(json.dumps(self.record(), indent=2))
        tmp.replace(self.folder / "job.json")

    @classmethod
    def load(cls, folder: Path) -> "Job":
        data = json.loads((folder / "job.json").read_text())
        if data.get("id") != folder.name or not JOB_ID.match(folder.name):
            raise ValueError(f"{folder}: job.json does not belong to this folder")
        if data.get("state") not in get_args(JobState) or data.get("stage") not in get_args(Stage):
            raise ValueError(f"{folder}: unknown state {data.get('state')!r} / stage {data.get('stage')!r}")
        return cls(id=data["id"], folder=folder, settings=JobSettings.model_validate(data["settings"]),
                   photos=list(data["photos"]), created=float(data["created"]), state=data["state"],
                   stage=data["stage"], message=data.get("message", ""), started=data.get("started"),
                   finished=data.get("finished"))


def load_jobs(runs_dir: Path) -> list["Job"]:
    """Every job found in ``runs_dir``, oldest first; unreadable folders are skipped with a warning."""
    jobs = []
    for folder in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
        if not (folder / "job.json").is_file():
            continue
        try:
            jobs.append(Job.load(folder))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping %s: %s", folder, exc)
    return sorted(jobs, key=lambda j: j.created)
