"""torchrun / DistributedDataParallel helpers.

Launch ``K`` processes on one machine with::

    torchrun --standalone --nproc_per_node=K -m ndd train ...

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed`
reads them and joins the process group (NCCL on CUDA, Gloo on the CPU). Without
them it returns a single-process :class:`DistInfo` and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ndd.device import resolve_device

__all__ = ["DistInfo", "init_distributed", "shutdown_distributed", "all_reduce_mean", "barrier", "window_means"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, metrics and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one.

    Args:
        device: as for :func:`resolve_device`; under torchrun each process takes
            ``cuda:<LOCAL_RANK>``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            # device_id lets NCCL bind its communicator eagerly to this rank's GPU.
            kwargs = {"device_id": dev} if dev.type == "cuda" else {}
            dist.init_process_group(backend=backend, **kwargs)
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def shutdown_distributed() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.distributed:
        dist.barrier()


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``values`` over ranks (a copy; the input is untouched)."""
    out = values.detach().clone()
    if info.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= info.world_size
    return out


def window_means(rows: list[dict[str, float]], info: DistInfo) -> dict[str, float]:
    """Per-key means of metric rows (all with the same keys), averaged over the ranks too.

    Every rank must call it at the same step (a collective when distributed).
    """
    keys = sorted(rows[0])
    means = torch.tensor([sum(r[k] for r in rows) / len(rows) for k in keys], dtype=torch.float64)
    if info.distributed:
        means = all_reduce_mean(means.to(info.device), info).cpu()
    return dict(zip(keys, means.tolist(), strict=True))
