"""The view cache: per reference slot, its encoding (CLIP embedding, VAE latent).

Each reference view is encoded once (SPEC §6) and reused by every later target. Entries live on
the engine's device; with ``max_device_entries`` set, older entries spill to pinned host memory
(CUDA) and come back on use, so a long orbit fits a small GPU.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import torch

from vfrt.engines.base import ViewEncoding


def _move(enc: ViewEncoding, device: torch.device, pin: bool = False) -> ViewEncoding:
    def mv(t: torch.Tensor) -> torch.Tensor:
        if device.type == "cpu" and pin and t.device.type == "cuda":
            out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            out.copy_(t, non_blocking=True)
            return out
        return t.to(device, non_blocking=True)
    return replace(enc, clip=mv(enc.clip), latent=mv(enc.latent))


class ViewCache:
    """slot id -> ViewEncoding, device-resident up to ``max_device_entries`` (None: unlimited)."""

    def __init__(self, device: torch.device | str, max_device_entries: int | None = None):
        self.device = torch.device(device)
        self.max_device_entries = max_device_entries
        self._device: OrderedDict[int, ViewEncoding] = OrderedDict()
        self._host: dict[int, ViewEncoding] = {}

    def __contains__(self, slot: int) -> bool:
        return slot in self._device or slot in self._host

    def __len__(self) -> int:
        return len(self._device) + len(self._host)

    def put(self, slot: int, enc: ViewEncoding) -> None:
        self._device[slot] = enc
        self._device.move_to_end(slot)
        self._spill()

    def get(self, slot: int) -> ViewEncoding:
        if slot in self._device:
            self._device.move_to_end(slot)
            return self._device[slot]
        if slot not in self._host:
            raise KeyError(f"view slot {slot} was never encoded")
        enc = _move(self._host.pop(slot), self.device)
        self.put(slot, enc)
        return enc

    @property
    def host_entries(self) -> int:
        return len(self._host)

    def _spill(self) -> None:
        if self.max_device_entries is None or self.device.type != "cuda":
            return
        while len(self._device) > self.max_device_entries:
            slot, enc = self._device.popitem(last=False)
            self._host[slot] = _move(enc, torch.device("cpu"), pin=True)
