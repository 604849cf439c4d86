"""Choosing the torch device from a config string."""

from __future__ import annotations

import torch

from amc.errors import ConfigError


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
    return device
