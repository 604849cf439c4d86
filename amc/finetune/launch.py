"""``amc-finetune`` in several processes: ``torchrun --nproc_per_node=N -m amc.cli.finetune ...`` (or the tasks
of a submitit Slurm job) fine-tunes with ``DistributedDataParallel`` (:mod:`amc.train.distributed`).

What the fine-tune adds to the training side: the ``distributed.*`` settings, checked the same way in every
process before any work; this process's device (one GPU per process); the run directory every process uses; and
rank 0 alone printing. Hydra names a new run's folder after the second its process started, and the processes
of one launch can straddle a second, so rank 0's folder is the run's: rank 0 checks it and sends it (or the
refusal) to the others, and a process whose Hydra made another folder removes it when it holds only Hydra's own
files. Only rank 0 locks the folder (:func:`amc.runlock.launch_rank`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from amc.config import config_number
from amc.console import console, log
from amc.device import process_device
from amc.errors import ConfigError
from amc.train.distributed import (BACKENDS, Distributed, backend_for, broadcast_object, per_rank_batch, start)


@dataclass(frozen=True)
class DistributedSettings:
    """The ``distributed.*`` knobs of ``conf/finetune.yaml`` (used only when several processes run).

    Attributes:
        backend: ``auto`` (nccl on CUDA, gloo on the CPU), ``nccl`` or ``gloo``.
        sync_bn: BatchNorm statistics over the global batch (SyncBatchNorm; CUDA only).
        timeout_min: how long a process waits for the others in one collective.
    """

    backend: str = "auto"
    sync_bn: bool = False
    timeout_min: float = 30.0

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "DistributedSettings":
        node = cfg.get("distributed")
        if node is None:  # the config of a run started before the knobs: one process's defaults
            return cls()
        backend = str(node.get("backend", "auto")).strip().lower()
        if backend not in BACKENDS:
            raise ConfigError(f"distributed.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        sync_bn = node.get("sync_bn", False)
        if not isinstance(sync_bn, bool):
            raise ConfigError(f"distributed.sync_bn must be true or false, got {sync_bn!r}")
        timeout = config_number(node, "timeout_min", float, 1e-3, prefix="distributed.") \
            if "timeout_min" in node else cls.timeout_min
        return cls(backend=backend, sync_bn=sync_bn, timeout_min=timeout)


@dataclass(frozen=True)
class Processes:
    """This process's part in the fine-tune: its place, its device, the run's settings of the processes."""

    where: Distributed
    device: torch.device
    settings: DistributedSettings


def check_processes(cfg: DictConfig, batch_size: int, where: Distributed) -> Processes:
    """Check the ``distributed.*`` settings and the batch split for ``where`` and choose this process's device;
    joins nothing. The same on every process, so every process refuses alike (rank 0 reports it)."""
    settings = DistributedSettings.from_config(cfg)
    device = process_device(str(cfg.device.name), where.local_rank, where.local_world_size)
    if where.enabled:
        per_rank_batch(batch_size, where.world_size)
        backend_for(device, settings.backend)
        if settings.sync_bn and device.type != "cuda":
            raise ConfigError("distributed.sync_bn=true needs CUDA devices (torch's SyncBatchNorm has no CPU "
                              "kernels): set distributed.sync_bn=false on the CPU")
    return Processes(where, device, settings)


def join(processes: Processes) -> Processes:
    """Join the process group (several processes; one process joins nothing) and silence the ranks above 0."""
    where = processes.where
    if not where.enabled:
        return processes
    where = start(where, processes.device, backend_for(processes.device, processes.settings.backend),
                  processes.settings.timeout_min)
    if not where.main:
        console.quiet = True  # rank 0 prints (and writes the job log) for the run
        log.disabled = True
    return Processes(where, processes.device, processes.settings)


def shared_run_dir(out: Path, where: Distributed, check: Callable[[Path], None]) -> Path:
    """The run directory of every process: rank 0's ``out``, checked by ``check`` on rank 0 (its refusal, a
    :class:`ConfigError`, is raised in every process). A rank whose own ``out`` differs (Hydra's clock moved on
    between two processes' starts) removes it when it holds only what Hydra wrote there."""
    if not where.enabled:
        check(out)
        return out
    problem = None
    if where.main:
        try:
            check(out)
        except ConfigError as e:
            problem = str(e)
    chosen, problem = broadcast_object((str(Path(out).resolve()), problem), where)
    if problem is not None:
        raise ConfigError(problem)
    chosen = Path(chosen)
    if not where.main and Path(out).resolve() != chosen:
        _remove_hydra_only(Path(out))
    return chosen


def _remove_hydra_only(folder: Path) -> None:
    """Remove ``folder`` if all it holds is Hydra's own record (``.hydra/``, the job's ``.log``)."""
    if folder.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)


def describe(processes: Processes) -> dict[str, object]:
    """What ``metrics.json`` records of the processes: ``world_size``, the backend, SyncBatchNorm."""
    where = processes.where
    return {"world_size": where.world_size, "backend": where.backend,
            "sync_bn": bool(processes.settings.sync_bn and where.enabled)}
