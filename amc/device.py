"""Choosing the torch device from a config string, and spreading processes over the visible GPUs.

One process: :func:`select_device`. Several processes of one job: the search's parallel episode workers
(:func:`worker_devices`: round-robin over the GPUs, or the list the user gives) and the processes of a
distributed fine-tune (:func:`process_device`: one GPU per process, by its local rank).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from amc.errors import ConfigError


def gpu_count() -> int:
    """CUDA GPUs this process sees (0 without CUDA); ``CUDA_VISIBLE_DEVICES`` narrows them."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def select_device(name: str | None = "auto") -> torch.device:
    """``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``; clear error otherwise."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} asked for CUDA but no CUDA GPU is available: use device=cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name}: amc runs on cpu or cuda")
    if device.type == "cuda" and device.index is not None and device.index >= gpu_count():
        raise ConfigError(f"device={name}: this machine shows {gpu_count()} CUDA GPU(s), cuda:0 to "
                          f"cuda:{gpu_count() - 1} (CUDA_VISIBLE_DEVICES narrows them)")
    return device


def worker_devices(name: str, workers: int, listed: Sequence[str] | None = None) -> list[str]:
    """The device of each of ``workers`` worker processes (the search's parallel episodes), as config strings.

    Args:
        name: the run's device (``device.name``): ``cuda`` (and ``auto`` where CUDA is available) places the
            workers round-robin over the visible GPUs, one model copy per worker on its GPU (worker i on
            ``cuda:i mod G``); with one GPU all workers share it. ``cpu`` and an explicit ``cuda:N`` put every
            worker there.
        workers: how many worker processes.
        listed: the user's own placement (``worker_devices: [cuda:0, cuda:1]``), used round-robin when shorter
            than ``workers``: worker i runs on ``listed[i mod len(listed)]``. Each entry is checked like
            ``device=`` (a GPU this machine does not show is refused in one line).
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if listed:
        devices = [str(d).strip().lower() for d in listed]
        for d in devices:
            if d == "auto":
                raise ConfigError("worker_devices lists the devices themselves: cpu, cuda or cuda:N, not auto")
            select_device(d)  # refuses a device this machine does not have, in one line
        return [devices[i % len(devices)] for i in range(workers)]
    lowered = str(name).strip().lower()
    count = gpu_count()
    if lowered in ("cuda", "auto") and count > 1:
        return [f"cuda:{i % count}" for i in range(workers)]
    return [str(name)] * workers


def process_device(name: str, local_rank: int, local_world_size: int) -> torch.device:
    """The device of process ``local_rank`` of the ``local_world_size`` processes a distributed launch started on
    this machine (torchrun's ``LOCAL_RANK`` / ``LOCAL_WORLD_SIZE``).

    ``cuda`` (and ``auto`` where CUDA is available) gives each process its own GPU, ``cuda:<local rank>``: data
    parallel training keeps one model replica per GPU, and NCCL refuses two processes on one GPU. More processes
    than visible GPUs, or ``cuda:N`` (every process on one GPU), are refused in one line. ``cpu``: every process
    on the CPU.
    """
    lowered = (name or "auto").strip().lower()
    if lowered == "auto":
        lowered = "cuda" if torch.cuda.is_available() else "cpu"
    if lowered == "cpu" or local_world_size <= 1:
        return select_device(lowered)
    if lowered != "cuda":
        raise ConfigError(f"device={name} would put all {local_world_size} processes of this machine on one device: "
                          f"use device=cuda (process i takes cuda:i) or device=cpu")
    count = gpu_count()
    if count == 0:
        raise ConfigError(f"device={name} asked for CUDA but no CUDA GPU is available: use device=cpu or auto")
    if local_world_size > count:
        raise ConfigError(f"{local_world_size} processes on this machine but {count} visible CUDA GPU(s): start one "
                          f"process per GPU (torchrun --nproc_per_node={count})")
    return torch.device(f"cuda:{local_rank}")
