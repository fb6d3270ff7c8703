"""Folders that appear complete or not at all: written in a hidden sibling, renamed into place when done."""
from __future__ import annotations

import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def replace_folder(ready: str | Path, target: str | Path) -> None:
    """Put the finished folder ``ready`` at ``target`` (same file system) by renames only.

    An existing ``target`` (callers decide beforehand whether overwriting is allowed) is renamed aside to
    ``.<name>.old-<random>``, ``ready`` renamed into place, and only then the old one deleted, so an
    interruption never leaves a half-deleted ``target``; when the rename into place fails, the old folder
    goes back. A crash between the renames can leave a ``.<name>.old-*`` sibling for the caller to sweep.
    """
    ready, target = Path(ready), Path(target)
    if not target.exists():
        ready.rename(target)
        return
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    target.rename(aside)
    try:
        ready.rename(target)
    except BaseException:
        aside.rename(target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``target`` (``.<name>.XXXX``, same file system).

    When the ``with`` body finishes, the folder replaces ``target`` (:func:`replace_folder`); when it raises,
    the folder is deleted and ``target`` is left as it was. Creating the parent or the folder raises ``OSError``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        replace_folder(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
