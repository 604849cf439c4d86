"""A few distillation steps between pruning and scoring: the proxy for harsh budgets.

Why: at mild budgets a pruned detector after adaptive BN already ranks like its fine-tuned self (Spearman
rho 0.95 at 80% FLOPs on the demo), but at harsh ones every policy scores ~0 before fine-tuning and that
score hardly predicts the score after it (rho 0.47 at 50% FLOPs, ``amc-bench bench=fidelity``): the search
then optimises noise. What a user keeps is the fine-tuned model, so a policy should be judged by how well
it *recovers*. Fine-tuning every episode is far too slow; a handful of gradient steps is not, and is the
short-term fine-tuning NetAdapt (Yang et al., ECCV 2018) scores its candidates with.

The steps distil the unpruned model's outputs into the pruned one (:func:`amc.train.distill.output_distillation`,
amc-finetune's output term) on the proxy's adaptive-BN batches: no labels, no box assignment, and the
teacher's maps are computed once per search. The pruned model is a fresh copy each episode (physical path),
so the original weights are never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from amc.errors import ConfigError
from amc.models.yolo import YOLOv7
from amc.train.distill import output_distillation


@dataclass
class RecoverySettings:
    """How many distillation steps, and how large (``proxy.recover_*`` in ``conf/proxy/default.yaml``).

    Attributes:
        steps: gradient steps per episode (0 = none: the plain adaptive-BN proxy).
        lr: SGD learning rate (momentum 0.9, no weight decay).
        temperature: of the output distillation (1 = plain probabilities).
        img_size: the steps' image size (the adaptive-BN batches resized, long side; None = as they are). The
            steps are most of a recovered episode's time, which scales with the pixels.
    """

    steps: int = 0
    lr: float = 0.01
    temperature: float = 1.0
    img_size: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"proxy.recover_steps must be >= 0, got {self.steps}")
        if self.lr <= 0:
            raise ConfigError(f"proxy.recover_lr must be > 0, got {self.lr}")
        if self.temperature <= 0:
            raise ConfigError(f"proxy.recover_temperature must be > 0, got {self.temperature}")
        if self.img_size is not None and (self.img_size < 32 or self.img_size % 32):
            raise ConfigError(f"proxy.recover_img_size must be a multiple of 32 (the model's largest stride) and "
                              f">= 32, or null; got {self.img_size}")


class ShortRecovery:
    """Distils a pruned copy of ``teacher`` towards it for ``settings.steps`` SGD steps on ``batches``.

    Args:
        teacher: the unpruned model (its lead maps on ``batches`` are computed here, once).
        batches: training images already on the model's device, cycled through step after step.
        settings: see :class:`RecoverySettings`.
    """

    def __init__(self, teacher: YOLOv7, batches: Sequence[torch.Tensor], settings: RecoverySettings) -> None:
        if settings.steps > 0 and not batches:
            raise ConfigError("proxy.recover_steps needs training batches: set proxy.adaptive_bn=true")
        self.settings = settings
        self.batches = [_resized(b, settings.img_size) for b in batches] if settings.steps > 0 else list(batches)
        self.teacher_maps: list[list[torch.Tensor]] = []
        if settings.steps > 0:
            was_training = teacher.training
            teacher.eval()
            with torch.no_grad():
                nl = teacher.head.nl
                # In eval mode the head returns (decoded, raw lead maps); the raw maps are its training maps.
                self.teacher_maps = [[m.detach() for m in teacher(images)[1][:nl]] for images in self.batches]
            teacher.train(was_training)

    @property
    def enabled(self) -> bool:
        return self.settings.steps > 0

    def __call__(self, student: YOLOv7) -> float:
        """Train ``student`` in place (left in eval mode); returns the mean distillation loss of the last pass."""
        s = self.settings
        if s.steps == 0:
            return float("nan")
        params = [p for p in student.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=s.lr, momentum=0.9, nesterov=True)
        nl = student.head.nl
        student.train()
        last: list[float] = []
        try:
            with torch.enable_grad():
                for step in range(s.steps):
                    k = step % len(self.batches)
                    maps = student(self.batches[k])[:nl]
                    loss = output_distillation(maps, self.teacher_maps[k], s.temperature)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    last.append(float(loss.detach()))
        finally:
            student.eval()
            for p in params:
                p.grad = None
        tail = last[-len(self.batches):]
        return sum(tail) / len(tail)


def _resized(images: torch.Tensor, img_size: int | None) -> torch.Tensor:
    """``images`` (N, 3, H, W) scaled so that the long side is ``img_size`` (sides kept multiples of 32)."""
    if img_size is None or max(images.shape[-2:]) == img_size:
        return images
    h, w = images.shape[-2:]
    scale = img_size / max(h, w)
    size = (max(32, round(h * scale / 32) * 32), max(32, round(w * scale / 32) * 32))
    return torch.nn.functional.interpolate(images.float(), size=size, mode="area").to(images.dtype)
