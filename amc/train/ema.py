"""Exponential moving average of model weights, as YOLOv7 trains with (and evaluates) it."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """A frozen copy of the model whose floating-point state follows the training weights.

    The decay ramps up as ``decay * (1 - exp(-updates / tau))`` so early, fast-changing weights are not
    averaged with the random initialization for long.

    Args:
        model: the model being trained.
        decay: the asymptotic decay.
        tau: ramp-up length in updates.
        updates: updates already done (when resuming).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0) -> None:
        self.ema = copy.deepcopy(model).eval()
        self.decay, self.tau, self.updates = decay, tau, updates
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        source = model.state_dict()
        for key, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(source[key].detach(), alpha=1.0 - d)
            else:
                value.copy_(source[key])
