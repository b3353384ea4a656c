"""torch.distributed set-up for ``torchrun`` (NCCL on GPUs, Gloo on CPUs) and the few collectives
the trainer needs. Without ``torchrun`` everything degrades to a single process."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from boxsup_ext.devices import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """``rank`` / ``world_size`` of this process and the ``device`` it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``world_size``-th item from position ``rank``."""
        return list(items[self.rank :: self.world_size])

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum_array(self, array: np.ndarray) -> np.ndarray:
        """Element-wise sum of a numeric array over ranks (float64 or int64 exact for counts)."""
        if not self.distributed:
            return array
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).to(self._comm_device())
        dist.all_reduce(tensor)
        return tensor.cpu().numpy().astype(array.dtype)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one."""
        return self.any_ranks(flag)[0]

    def any_ranks(self, *flags: bool) -> tuple[bool, ...]:
        """:meth:`any_rank` of each flag, in one collective."""
        if not self.distributed:
            return tuple(bool(flag) for flag in flags)
        tensor = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=self._comm_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tuple(bool(value > 0) for value in tensor.tolist())

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Copy rank 0's buffers (e.g. batch-norm running statistics) to every rank; DDP itself
        only does so at the start of each forward, so ranks end an epoch with their own."""
        if not self.distributed:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def init_distributed(device_choice: str = "auto") -> DistContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1) and pick the
    device: ``cuda:LOCAL_RANK`` when CUDA is used, else CPU. ``device_choice``: auto, cpu, cuda."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device_choice, "run.device").type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        # torch.distributed.nn binds the WORLD group in default arguments of its functions
        # (``group=group.WORLD``) when it is first imported, and DistributedDataParallel imports it.
        # Imported after init_process_group, it would keep the group alive past
        # destroy_process_group: the Gloo worker threads then live into interpreter shutdown, where
        # one that needs the GIL aborts the process ("terminate called without an active
        # exception", SIGABRT after a finished run). Imported first, the defaults hold None.
        importlib.import_module("torch.distributed.nn")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank, world_size, local_rank, device)


def shutdown_distributed() -> None:
    """Destroy the process group; with nothing else holding it, its communication threads end here
    rather than during interpreter shutdown."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
