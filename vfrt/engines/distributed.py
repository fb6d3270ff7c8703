"""One orbit on several GPUs of one host: each step's rows split across processes (one per GPU).

Every process (rank) holds the whole model and runs the same deterministic loop: the same plans, the
same host-drawn noise, the same conditioning. The step (:mod:`vfrt.engines.step`) gives each rank a
contiguous slice of the step's R rows; each rank multiplies its eps by its columns of the mixing
matrix and one all-reduce (SUM) of the (N, C, h, w) partial guided eps - 16 KB per object - makes the
full combination on every rank, which then applies the identical update. The all-reduce is NCCL on
CUDA (captured inside the step's CUDA graph) and gloo on the CPU (tests).

NVLink multicast (NVLS) is never used: :func:`init_row_split` sets ``NCCL_NVLS_ENABLE=0`` and
``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` before NCCL starts.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch

from vfrt.engines.step import split_rows

log = logging.getLogger(__name__)

DistBackend = Literal["nccl", "gloo"]

#: environment every rank sets before NCCL starts (no NVLink multicast)
NCCL_ENVIRONMENT = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}


class DistributedError(RuntimeError):
    """The processes of a multi-GPU run could not start or lost each other."""


@dataclass(frozen=True)
class RowSplit:
    """This process's share of a step split across ``world_size`` processes of the default process group.

    Attributes:
        rank: this process's rank (0 .. world_size - 1); rank 0 writes the outputs.
        world_size: processes (GPUs) sharing each step.
    """

    rank: int
    world_size: int

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")

    def rows(self, total: int) -> tuple[int, int]:
        """This rank's rows ``[lo, hi)`` of a step with ``total`` rows (contiguous, sizes within one)."""
        return split_rows(total, self.world_size, self.rank)

    def reduce(self, partial: torch.Tensor) -> None:
        """Sum ``partial`` over the ranks, in place (graph-capturable with NCCL)."""
        import torch.distributed as dist
        dist.all_reduce(partial, op=dist.ReduceOp.SUM)

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Overwrite ``tensor`` with rank 0's, in place (keeps the ranks' latents bit-identical)."""
        import torch.distributed as dist
        dist.broadcast(tensor, src=0)


def init_row_split(rank: int, world_size: int, backend: DistBackend, init_file: str, device: torch.device,
                   timeout_s: float = 1800.0) -> RowSplit:
    """Join the process group of a multi-GPU run and return this rank's :class:`RowSplit`.

    ``init_file``: a path (shared by the ranks, not yet existing) for the file rendezvous. One warm-up
    all-reduce creates the NCCL communicator here, before any CUDA graph captures a collective.
    """
    import torch.distributed as dist
    for name, value in NCCL_ENVIRONMENT.items():
        os.environ[name] = value
    if backend == "nccl":
        if device.type != "cuda":
            raise DistributedError(f"the nccl backend needs CUDA devices, rank {rank} got {device}")
        torch.cuda.set_device(device)
    kwargs = {"device_id": device} if backend == "nccl" else {}
    try:
        dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s), **kwargs)
    except Exception as exc:  # noqa: BLE001 - rendezvous/NCCL failures of any kind
        raise DistributedError(f"rank {rank}/{world_size} could not join the {backend} process group: {exc}") from exc
    warm = torch.ones((1,), device=device)
    dist.all_reduce(warm)
    if int(warm.item()) != world_size:
        raise DistributedError(f"the warm-up all-reduce summed to {warm.item()}, expected {world_size}")
    log.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, device)
    return RowSplit(rank, world_size)


def leave_row_split() -> None:
    """Leave the process group (at the end of a rank's work)."""
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
