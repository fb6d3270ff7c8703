"""Folders that appear complete or not at all: written in a hidden sibling, renamed into place when done."""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``target`` (``.<name>.XXXX``, same file system).

    When the ``with`` body finishes, the folder replaces ``target`` by renames only: an existing ``target``
    (callers decide beforehand whether overwriting is allowed) is renamed aside, the new folder renamed into
    place, and only then the old one deleted, so an interruption never leaves a half-deleted ``target``.
    When the body raises, the folder is deleted and ``target`` is left as it was. Creating the parent or
    the folder raises ``OSError``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent)) if target.exists() else None
        try:
            if aside is not None:
                target.rename(aside / target.name)
            try:
                tmp.rename(target)
            except BaseException:
                if aside is not None and (aside / target.name).exists():
                    (aside / target.name).rename(target)          # the old folder goes back
                raise
        finally:
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
