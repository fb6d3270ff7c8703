"""Noise sources for the sampler: a seeded generator, or a replayed noise bank (issue 2, item 4).

Draw order matches the original sampler, view by view:
    x_T            (1, 4, h, w)    one draw, expanded to the K references;
    step noise     (K_v, 4, h, w)  one draw per UNet step, one independent normal per reference.

Noise-bank file (``.npz``):
    x_T             float32 (V, 1, 4, h, w)   initial latent of generated view v
    K               int64   (V,)              per-step draws of view v: its reference count, or 1
                                              when one draw is shared by all references
    step_noise_vXX  float32 (S, K_v, 4, h, w) per-step, per-reference draws (XX: zero-padded v)

Noise directory (the same arrays as raw little-endian float32 files: what the C++ runtime reads and
records, so both runtimes can be fed the same noise; :meth:`NoiseBank.save_raw`, :meth:`NoiseBank.load_raw`)::

    noise.json            {"format": "vfrt-noise-raw", "version": 1, "dtype": "float32", "byte_order": "little",
                           "views": [{"x_T": "x_T_v00.f32", "x_T_shape": [1, C, h, w],
                                      "step_noise": "step_noise_v00.f32", "step_noise_shape": [S, K, C, h, w]}]}
    x_T_vXX.f32, step_noise_vXX.f32   C order
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vfrt.atomic import atomic_folder


class NoiseBankError(ValueError):
    """A noise bank does not fit the run it is used for (wrong counts or shapes)."""


def _step_key(v: int) -> str:
    return f"step_noise_v{v:02d}"


#: the index of a noise directory (:meth:`NoiseBank.save_raw`)
RAW_INDEX = "noise.json"
RAW_FORMAT = "vfrt-noise-raw"


@dataclass
class NoiseBank:
    """All random draws of one run, replayable exactly.

    Attributes:
        x_T: list of V float32 arrays (1, 4, h, w).
        step_noise: list of V float32 arrays (S, K_v, 4, h, w).
    """

    x_T: list[np.ndarray] = field(default_factory=list)
    step_noise: list[np.ndarray] = field(default_factory=list)

    @property
    def num_views(self) -> int:
        return len(self.x_T)

    @property
    def K(self) -> np.ndarray:
        return np.array([s.shape[1] for s in self.step_noise], dtype=np.int64)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the bank atomically (temp file + rename), so a crash never leaves half a file."""
        path = Path(path)
        if len(self.x_T) != len(self.step_noise):
            raise NoiseBankError("x_T and step_noise must hold the same number of views")
        arrays = {"x_T": np.stack(self.x_T).astype(np.float32) if self.x_T else np.zeros((0, 1, 4, 0, 0), np.float32),
                  "K": self.K}
        for v, s in enumerate(self.step_noise):
            arrays[_step_key(v)] = s.astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
        os.close(fd)
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def save_raw(self, directory: str | os.PathLike) -> Path:
        """Write the bank as a noise directory (module docstring): raw float32 files and a JSON index,
        into a temporary sibling renamed into place. An existing noise directory there is replaced."""
        directory = Path(directory)
        if len(self.x_T) != len(self.step_noise):
            raise NoiseBankError("x_T and step_noise must hold the same number of views")
        if directory.exists() and not (directory / RAW_INDEX).is_file():
            raise NoiseBankError(f"{directory} exists and is not a noise directory; choose another path")
        with atomic_folder(directory) as tmp:
            views = []
            for v, (x, steps) in enumerate(zip(self.x_T, self.step_noise)):
                entry = {"x_T": f"x_T_v{v:02d}.f32", "x_T_shape": list(x.shape),
                         "step_noise": f"{_step_key(v)}.f32", "step_noise_shape": list(steps.shape)}
                np.ascontiguousarray(x, dtype="<f4").tofile(tmp / entry["x_T"])
                np.ascontiguousarray(steps, dtype="<f4").tofile(tmp / entry["step_noise"])
                views.append(entry)
            (tmp / RAW_INDEX).write_text(json.dumps({"format": RAW_FORMAT, "version": 1, "dtype": "float32",
                                                     "byte_order": "little", "views": views}, indent=1))
        return directory

    @classmethod
    def load_raw(cls, directory: str | os.PathLike) -> "NoiseBank":
        """Read a noise directory (:meth:`save_raw`, or one the C++ runtime recorded)."""
        directory = Path(directory)
        try:
            index = json.loads((directory / RAW_INDEX).read_text())
        except (OSError, ValueError) as exc:
            raise NoiseBankError(f"{directory} is not a noise directory (no readable {RAW_INDEX})") from exc
        if not isinstance(index, dict) or index.get("format") != RAW_FORMAT or index.get("version") != 1 \
                or index.get("dtype") != "float32" or index.get("byte_order") != "little":
            raise NoiseBankError(f"{directory / RAW_INDEX} is not a '{RAW_FORMAT}' version 1 index")
        bank = cls()
        try:
            for entry in index["views"]:
                for file, shape, out in ((entry["x_T"], entry["x_T_shape"], bank.x_T),
                                         (entry["step_noise"], entry["step_noise_shape"], bank.step_noise)):
                    if Path(file).name != file:
                        raise NoiseBankError(f"{directory}: file name {file!r} is not plain")
                    data = np.fromfile(directory / file, dtype="<f4")
                    if data.size != int(np.prod(shape)):
                        raise NoiseBankError(f"{directory / file} holds {data.size} floats, its shape {tuple(shape)} "
                                             f"needs {int(np.prod(shape))}")
                    out.append(data.reshape(shape).astype(np.float32))
        except (KeyError, TypeError, OSError) as exc:
            raise NoiseBankError(f"{directory / RAW_INDEX} is malformed ({type(exc).__name__}: {exc})") from exc
        for v, (x, steps) in enumerate(zip(bank.x_T, bank.step_noise)):
            if x.ndim != 4 or x.shape[0] != 1 or steps.ndim != 5 or steps.shape[2:] != x.shape[1:]:
                raise NoiseBankError(f"{directory}: view {v} has x_T {x.shape} and step noise {steps.shape}")
        return bank

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NoiseBank":
        """A run's ``noise.npz``, or a noise directory (:meth:`load_raw`)."""
        path = Path(path)
        if path.is_dir():
            return cls.load_raw(path)
        if not path.is_file():
            raise NoiseBankError(f"noise bank not found: {path}")
        if not zipfile.is_zipfile(path):
            raise NoiseBankError(f"{path} is not a noise bank (the noise.npz a vfrt run writes)")
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:  # a damaged archive
            raise NoiseBankError(f"{path} is a damaged noise bank ({type(exc).__name__}); use the noise.npz of "
                                 "a finished vfrt run") from exc
        with data:
            if "x_T" not in data or "K" not in data:
                raise NoiseBankError(f"{path} lacks 'x_T' or 'K'; keys: {sorted(data.keys())[:8]}")
            x_T = data["x_T"]
            Ks = data["K"]
            if x_T.ndim != 5 or x_T.shape[1] != 1 or Ks.shape != (x_T.shape[0],):
                raise NoiseBankError(f"{path}: x_T must be (V,1,C,h,w) and K (V,), got {x_T.shape} and {Ks.shape}")
            steps = []
            for v in range(x_T.shape[0]):
                key = _step_key(v)
                if key not in data:
                    raise NoiseBankError(f"{path}: missing '{key}' for view {v}")
                s = data[key]
                if s.ndim != 5 or s.shape[1] != int(Ks[v]) or s.shape[2:] != x_T.shape[2:]:
                    raise NoiseBankError(f"{path}: '{key}' has shape {s.shape}; expected (S, {int(Ks[v])}, "
                                         f"{', '.join(map(str, x_T.shape[2:]))})")
                steps.append(np.ascontiguousarray(s, dtype=np.float32))
            return cls(x_T=[np.ascontiguousarray(x, dtype=np.float32) for x in x_T], step_noise=steps)


def _draw_view(gen: torch.Generator, K: int, num_steps: int,
               latent_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One generated view's draws from ``gen``, in the original sampler's order: x_T (1, C, h, w), then
    the step noise (S, K, C, h, w) (K = 0 consumes nothing)."""
    x_T = torch.randn((1, *latent_shape), generator=gen, dtype=torch.float32)
    steps = torch.randn((num_steps, K, *latent_shape), generator=gen, dtype=torch.float32)
    return x_T, steps


class SeededNoiseBank(NoiseBank):
    """The draws of a seeded run, drawn again from the seed when first read.

    A 36-view orbit's draws fill 0.75 GB of host memory; a seeded run keeps only how to redraw them
    (seed, per-view draw counts, steps, latent shape), so ``GenerationResult.noise`` costs nothing until
    a caller reads or saves it. Reading it gives the very arrays the run used (the same CPU generator
    and order as :class:`NoiseSource`); they are kept once drawn.
    """

    def __init__(self, seed: int, draws: list[int], num_steps: int, latent_shape: tuple[int, int, int]):
        self.seed, self.draws = int(seed), [int(k) for k in draws]
        self.num_steps, self.latent_shape = int(num_steps), tuple(int(n) for n in latent_shape)
        self._drawn: NoiseBank | None = None

    def _materialised(self) -> NoiseBank:
        if self._drawn is None:
            gen = torch.Generator(device="cpu").manual_seed(self.seed)
            bank = NoiseBank()
            for k in self.draws:
                x_T, steps = _draw_view(gen, k, self.num_steps, self.latent_shape)
                bank.x_T.append(x_T.numpy())
                bank.step_noise.append(steps.numpy())
            self._drawn = bank
        return self._drawn

    @property
    def x_T(self) -> list[np.ndarray]:
        return self._materialised().x_T

    @property
    def step_noise(self) -> list[np.ndarray]:
        return self._materialised().step_noise

    @property
    def num_views(self) -> int:
        return len(self.draws)

    @property
    def K(self) -> np.ndarray:
        return np.array(self.draws, dtype=np.int64)

    @property
    def materialised(self) -> bool:
        """Whether the arrays have been drawn (read or saved) yet."""
        return self._drawn is not None

    def __repr__(self) -> str:
        return (f"SeededNoiseBank(seed={self.seed}, views={self.num_views}, steps={self.num_steps}, "
                f"latent={self.latent_shape}, materialised={self.materialised})")


class NoiseSource:
    """Hands out the draws of one run, view by view; ``recorded`` is the bank of the draws handed out.

    Use ``NoiseSource.from_seed(seed)`` (torch CPU generator: identical on every machine) or
    ``NoiseSource.from_bank(bank)`` (exact replay; shapes and counts are checked). Nothing is copied to
    record: a replay's record is the bank's first views, a seeded run's a :class:`SeededNoiseBank`.
    """

    def __init__(self, generator: torch.Generator | None = None, bank: NoiseBank | None = None,
                 seed: int | None = None):
        if (generator is None) == (bank is None):
            raise ValueError("give exactly one of generator or bank")
        if generator is not None and seed is None:
            raise ValueError("a generator needs the seed it was started from (to redraw the record)")
        self._gen = generator
        self._bank = bank
        self._seed = seed
        self._drawn: list[int] = []          # K of each view handed out so far
        self._shape: tuple[int, tuple[int, int, int]] | None = None

    @classmethod
    def from_seed(cls, seed: int) -> "NoiseSource":
        g = torch.Generator(device="cpu")
        g.manual_seed(int(seed))
        return cls(generator=g, seed=int(seed))

    @classmethod
    def from_bank(cls, bank: NoiseBank) -> "NoiseSource":
        return cls(bank=bank)

    @property
    def is_replay(self) -> bool:
        return self._bank is not None

    @property
    def recorded(self) -> NoiseBank:
        """The draws handed out so far, as a bank that replays them exactly."""
        n = len(self._drawn)
        if self._bank is not None:
            return NoiseBank(x_T=list(self._bank.x_T[:n]), step_noise=list(self._bank.step_noise[:n]))
        num_steps, latent_shape = self._shape if self._shape is not None else (0, (0, 0, 0))
        return SeededNoiseBank(self._seed, self._drawn, num_steps, latent_shape)

    def check_plan(self, Ks, num_steps: int, latent_shape: tuple[int, int, int]) -> None:
        """Fail early, before any compute, if a replayed bank does not fit the planned run."""
        if self._bank is None:
            return
        b = self._bank
        if b.num_views < len(Ks):
            raise NoiseBankError(f"noise bank holds {b.num_views} views; the run generates {len(Ks)}")
        for v, k in enumerate(Ks):
            want = (num_steps, int(k), *latent_shape)
            if tuple(b.step_noise[v].shape) != want or tuple(b.x_T[v].shape) != (1, *latent_shape):
                raise NoiseBankError(f"noise bank view {v}: step noise {tuple(b.step_noise[v].shape)}, x_T "
                                     f"{tuple(b.x_T[v].shape)}; the run needs {want} and {(1, *latent_shape)}")

    def view(self, v: int, K: int, num_steps: int,
             latent_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draws for generated view v: x_T (1, C, h, w) and step noise (S, K, C, h, w), float32 CPU.

        Views are handed out in order (v = 0, 1, ...), each once. ``K = 0``: x_T only (the step noise is
        drawn on the device: the sampler's "fast" noise mode).
        """
        if v != len(self._drawn):
            raise ValueError(f"noise for view {v} asked after {len(self._drawn)} views: views are drawn in order")
        shape = (int(num_steps), tuple(int(n) for n in latent_shape))
        if self._shape is not None and shape != self._shape:
            raise ValueError(f"view {v} asks for {shape}, earlier views for {self._shape}")
        if self._bank is not None:
            if v >= self._bank.num_views:
                raise NoiseBankError(f"noise bank has no view {v}")
            x_T = torch.from_numpy(self._bank.x_T[v].copy())
            steps = torch.from_numpy(self._bank.step_noise[v].copy())
            if tuple(steps.shape) != (num_steps, K, *latent_shape):
                raise NoiseBankError(f"noise bank view {v}: {tuple(steps.shape)} != {(num_steps, K, *latent_shape)}")
        else:
            x_T, steps = _draw_view(self._gen, K, num_steps, latent_shape)
        self._shape = shape
        self._drawn.append(int(K))
        return x_T, (steps if K else None)
