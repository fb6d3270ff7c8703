"""Where vfrt keeps what it builds, and content fingerprints of big files that are computed once.

An engine directory is keyed on the weights it was built from, so ``vfrt run -c CKPT`` has to know
the checkpoint's content hash. Reading 8 GB every run would cost more than the engines save, so
:class:`DigestIndex` remembers each file's sha256 under a key that changes whenever the file may
have: ``realpath | size | mtime_ns | inode``. A file that is rewritten, replaced or touched gets a
new key and is hashed again; a file that is only read keeps its hash. (A same-size in-place edit
that also restores the modification time defeats it; nothing short of re-reading the file would
not.)

The cache lives in ``$VFRT_CACHE_DIR``, else ``$XDG_CACHE_HOME/vfrt``, else ``~/.cache/vfrt``:

================================  ============================================================
``engines/<key>/``                one engine directory per build (:mod:`vfrt.engines.engine_dir`)
``digests.json``                  the :class:`DigestIndex`
``load_probes.json``              verdicts of loading compiled code in a child process
                                  (:mod:`vfrt.engines.toolchain`)
================================  ============================================================

Every JSON file here is a :class:`JsonStore`: updated under a file lock and replaced atomically,
so concurrent processes never see or write a half-written file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

CACHE_ENV = "VFRT_CACHE_DIR"
_CHUNK = 8 << 20


def cache_dir() -> Path:
    """The root of vfrt's cache (not created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "vfrt"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes (streamed; never the whole file in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class JsonStore:
    """A small JSON object on disk, shared by processes: read freely, updated under a file lock.

    A missing, unreadable or corrupt file reads as empty (it is a cache: the worst case is
    recomputing); an unwritable location makes ``update`` a logged no-op for the same reason.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def update(self, change: Callable[[dict], None]) -> None:
        """Apply ``change`` to the current contents (in place) and write the result atomically."""
        from filelock import FileLock
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path) + ".lock"):
                data = self.read()
                change(data)
                write_text_atomic(self.path, json.dumps(data, indent=1, sort_keys=True))
        except OSError as exc:
            log.debug("could not update %s (%s); continuing without caching", self.path, exc)


def stat_key(path: Path) -> str:
    """``realpath|size|mtime_ns|inode``: changes whenever the file at ``path`` may have changed."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return f"{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"


class DigestIndex:
    """sha256 of files (and of folders: of their files' names and hashes), each computed once.

    Args:
        path: the index file (default ``<cache>/digests.json``).
    """

    def __init__(self, path: Path | None = None):
        self.store = JsonStore(path if path is not None else cache_dir() / "digests.json")

    def lookup(self, path: Path) -> str | None:
        """The recorded sha256 of a file, or None when it was never hashed in its current state."""
        return self.store.read().get(stat_key(path))

    def record(self, path: Path, digest: str) -> None:
        """Remember ``digest`` for the file as it is now (older entries of the same path are dropped)."""
        key = stat_key(path)
        real = key.split("|", 1)[0]

        def change(data: dict) -> None:
            for old in [k for k in data if k.split("|", 1)[0] == real]:
                del data[old]
            data[key] = digest
        self.store.update(change)

    def digest(self, path: Path) -> str:
        """sha256 of a file (hashed only when not recorded), or of a folder's ``relpath<TAB>sha256`` lines."""
        path = Path(path)
        if path.is_dir():
            lines = [f"{p.relative_to(path).as_posix()}\t{self.digest(p)}\n"
                     for p in sorted(path.rglob("*")) if p.is_file()]
            return hashlib.sha256("".join(lines).encode()).hexdigest()
        known = self.lookup(path)
        if known is not None:
            return known
        size = path.stat().st_size
        if size > 1 << 30:
            log.warning("fingerprinting %s once (%.1f GB; remembered until the file changes)", path, size / 1e9)
        digest = sha256_file(path)
        self.record(path, digest)
        return digest

    def total_size(self, path: Path) -> int:
        """Bytes of a file, or of every file under a folder (a cheap pre-filter before hashing)."""
        path = Path(path)
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
