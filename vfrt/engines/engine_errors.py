"""The errors of engine directories, in a module of their own so that the modules an engine directory
loads through (the executors, the C++ toolchain check) can raise them without importing
:mod:`vfrt.engines.engine_dir`, which imports them. :mod:`vfrt.engines.engine_dir` re-exports all four.
"""
from __future__ import annotations

from pathlib import Path


class EngineError(RuntimeError):
    """An engine directory cannot be used; ``rebuild`` is the command that makes a usable one."""

    def __init__(self, message: str, rebuild: str | None = None):
        self.rebuild = rebuild
        super().__init__(message + (f"; rebuild with: {rebuild}" if rebuild else ""))


class CorruptEngineError(EngineError):
    """The manifest is unreadable, or an artifact is missing, truncated or altered."""


class EngineMismatchError(EngineError):
    """The engines were built for another machine, another torch/vfrt, other weights or other options.

    ``problems`` lists every mismatch (one short sentence each).
    """

    def __init__(self, directory: Path, problems: list[str], rebuild: str | None):
        self.problems = list(problems)
        super().__init__(f"the engines in {directory} do not fit: {'; '.join(problems)}", rebuild)


class EngineLoadError(EngineError):
    """The artifacts are sound but this process cannot load them (e.g. a C++ runtime mismatch, a runtime
    that is not installed); ``fix`` is what to change (an environment variable, an install or a rebuild),
    spelled out."""

    def __init__(self, message: str, fix: str, rebuild: str | None = None):
        self.fix = fix
        super().__init__(f"{message}. Fix: {fix}", rebuild)
