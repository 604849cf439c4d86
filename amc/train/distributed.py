"""Data-parallel training in several processes: ``torchrun`` (or the tasks of a submitit Slurm job), PyTorch's
``DistributedDataParallel``, and what makes N processes train like one process with the same global batch.

* :func:`launch` reads which process this is from the launcher's environment; :func:`start` joins the process
  group (``nccl`` on CUDA, ``gloo`` on the CPU, :func:`backend_for`).
* :class:`ShardedBatchSampler`: every process draws the one-process shuffle of an epoch (the same seed on every
  rank) and takes its share of each global batch, so step k of N processes trains on exactly the images of step
  k of one process (a ``DistributedSampler`` draws its own permutation: the same data, other batches).
* :func:`data_parallel` wraps the trained modules (the model and the loss's own trainable modules, e.g. the
  distillation adapters) in one ``DistributedDataParallel``, which averages their gradients over the processes.
  The trainer multiplies each process's loss by the number of processes (YOLOv7's own rule): the YOLOv7 and
  distillation losses are ``batch x a per-batch mean``, so the averaged gradient is the one-process gradient of
  the global batch, up to each process normalizing its terms by its own share (see docs/scaling.md).

Example (what :class:`amc.train.trainer.Trainer` does with ``dist=``)::

    where = start(launch(), device, "gloo", timeout_min=30)
    sampler = ShardedBatchSampler(RandomSampler(train_set), batch_size=16, world_size=where.world_size,
                                  rank=where.rank)
    net = data_parallel(model, adapters, device)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sized
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from submitit import JobEnvironment
from submitit.helpers import TorchDistributedEnvironment
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from amc.errors import AmcError, ConfigError

BACKENDS = ("auto", "nccl", "gloo")


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a data-parallel run; one process is rank 0 of 1.

    Attributes:
        rank: this process's global rank (0 writes the run's files).
        world_size: the number of processes.
        local_rank: its rank on this machine (its GPU: ``cuda:<local_rank>``).
        local_world_size: the processes on this machine.
        backend: the process group's backend once joined (:func:`start`), else None.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """Several processes train together."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: evaluates, saves, logs and prints for the run."""
        return self.rank == 0


#: One process (the trainer's default).
SINGLE = Distributed()


def launch() -> Distributed:
    """This process's place in a distributed launch, read from the environment (the group is not joined yet).

    torchrun (and any ``env://`` launcher) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``.
    In a submitit job of several tasks (Hydra's submitit launcher with ``tasks_per_node > 1``) they are exported
    from submitit's job environment first (the job's first node hosts the rendezvous). Otherwise: one process.
    """
    env = os.environ
    if "RANK" not in env and env.get("SUBMITIT_EXECUTOR") and JobEnvironment().num_tasks > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return SINGLE
    world = int(env["WORLD_SIZE"])
    return Distributed(rank=int(env["RANK"]), world_size=world, local_rank=int(env.get("LOCAL_RANK", 0)),
                       local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)))


def backend_for(device: torch.device, asked: str = "auto") -> str:
    """The process group's backend: ``auto`` is ``nccl`` on CUDA and ``gloo`` on the CPU; ``nccl`` is refused on
    the CPU (it only moves CUDA tensors)."""
    asked = str(asked).strip().lower()
    if asked not in BACKENDS:
        raise ConfigError(f"distributed.backend must be one of {', '.join(BACKENDS)}, got {asked!r}")
    if asked == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if asked == "nccl" and device.type != "cuda":
        raise ConfigError("distributed.backend=nccl needs CUDA devices: use gloo (or auto) on the CPU")
    return asked


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Images per step of one process: the global ``batch_size`` split evenly; a remainder is refused."""
    if batch_size % world_size:
        raise ConfigError(f"batch_size={batch_size} cannot be split over {world_size} processes: the global batch "
                          f"is split evenly (each process takes batch_size / {world_size}); use a multiple of "
                          f"{world_size}")
    return batch_size // world_size


def start(where: Distributed, device: torch.device, backend: str, timeout_min: float = 30.0) -> Distributed:
    """Join the process group of ``where`` (``env://`` rendezvous) on ``backend``; one process joins nothing.

    On CUDA the process is bound to ``device`` first (NCCL's communicator and ``broadcast_object`` use the
    current device). ``timeout_min`` bounds how long a collective waits for the other processes (rank 0
    evaluating and saving between epochs keeps the others waiting that long at most).
    """
    if not where.enabled:
        return where
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=where.rank,
                                world_size=where.world_size, timeout=timedelta(minutes=timeout_min))
    return replace(where, backend=backend)


def stop(wait: bool = False) -> None:
    """Leave the process group (when joined).

    ``wait``: first wait until every process gets here (a run that ended well). A process that tears its gloo
    group down and exits while rank 0 is still evaluating and saving can abort in gloo's threads ("terminate
    called without an active exception", SIGABRT: measured 2 of 12 resumed 2-process fine-tunes); after an error
    no process waits, as the others may never arrive (a process that ended well waits for one that failed after the
    last collective at most the group's timeout, ``distributed.timeout_min``).
    """
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_object(obj: Any, where: Distributed) -> Any:
    """Rank 0's ``obj`` (picklable), on every process; ``obj`` itself with one process."""
    if not where.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(values: torch.Tensor, where: Distributed, device: torch.device) -> torch.Tensor:
    """The mean of ``values`` over the processes (on the CPU, as given); ``values`` with one process."""
    if not where.enabled:
        return values
    total = values.detach().to(device, torch.float64)  # NCCL reduces CUDA tensors only
    dist.all_reduce(total)
    return (total / where.world_size).to(values.device, values.dtype)


@contextmanager
def errors_from_rank_zero(where: Distributed) -> Iterator[None]:
    """Errors every process meets alike (a config value, a missing file): rank 0 reports them, the others end
    quietly with the same exit code (2), so a refused command prints one ``error:`` line, not one per process.

    Use it only around steps that fail alike on every rank: an error only a rank > 0 meets would end silently.
    """
    try:
        yield
    except AmcError:
        if where.main:
            raise
        raise SystemExit(2) from None


class ShardedBatchSampler(Sampler[list[int]]):
    """Rank ``rank``'s share of each global batch of ``sampler``'s order: the batches of one process with
    ``batch_size`` images, each split over ``world_size`` processes.

    ``sampler`` must give every process the same order (a ``RandomSampler`` drawing from torch's global generator,
    seeded alike on every rank each epoch: the trainer's per-epoch seed). Every process then yields
    ``ceil(len(sampler) / batch_size)`` batches; process r gets the r-th of W consecutive slices of each global
    batch, so W processes see the micro-batches of one process that accumulates W batches of
    ``batch_size / W`` images per step. A last global batch with fewer images than processes is topped up from
    the start of the epoch's order, so that no process gets an empty batch (as ``DistributedSampler`` pads).
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, world_size: int, rank: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.sampler, self.batch_size, self.world_size, self.rank = sampler, batch_size, world_size, rank

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size) if isinstance(self.sampler, Sized) else 0

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.sampler)  # the epoch's one-process order, drawn once, the same on every rank
        for first in range(0, len(order), self.batch_size):
            batch = order[first:first + self.batch_size]
            if len(batch) < self.world_size:
                batch += [order[i % len(order)] for i in range(self.world_size - len(batch))]
            size, longer = divmod(len(batch), self.world_size)  # slices differ by one image at most
            first = self.rank * size + min(self.rank, longer)
            yield batch[first:first + size + (self.rank < longer)]


class _Trained(nn.Module):
    """The modules trained together (the model, the loss's trainable modules): one ``DistributedDataParallel``
    averages all their gradients. The forward pass is the model's; the loss uses ``extra`` itself."""

    def __init__(self, model: nn.Module, extra: nn.Module | None) -> None:
        super().__init__()
        self.model, self.extra = model, extra

    def forward(self, images: torch.Tensor) -> Any:
        return self.model(images)


def data_parallel(model: nn.Module, extra: nn.Module | None, device: torch.device) -> DistributedDataParallel:
    """``model`` (and ``extra``) as this process's replica: rank 0's weights are copied to every process now, and
    every backward pass averages the gradients over the processes. Call it in every process, after any resume
    state is loaded. BatchNorm statistics are rank 0's (``broadcast_buffers``) unless the model was converted to
    SyncBatchNorm (:func:`sync_batch_norm`)."""
    return DistributedDataParallel(_Trained(model, extra), device_ids=[device.index] if device.type == "cuda" else None)


def sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with its BatchNorm layers computing statistics over the global batch (in place; the same parameter
    and buffer tensors, so an optimizer built before still holds them). CUDA only: torch's SyncBatchNorm has no
    CPU kernels."""
    if device.type != "cuda":
        raise ConfigError("sync_bn=true needs CUDA devices (torch's SyncBatchNorm has no CPU kernels): set "
                          "distributed.sync_bn=false on the CPU")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
