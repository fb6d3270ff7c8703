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

    When the ``with`` body finishes, the folder replaces ``target`` (an existing ``target`` is removed
    first: callers decide beforehand whether overwriting is allowed); when it raises, the folder is
    deleted and ``target`` is left as it was. Creating the parent or the folder raises ``OSError``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
