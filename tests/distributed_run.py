"""Run by ``tests/test_distributed.py`` under ``torchrun --nproc_per_node=2`` (a helper, not a test module).

``python distributed_run.py <data root> <update file> <kill after epoch> <amc-finetune overrides...>``, in each
process:

1. :func:`objectness_update`: one epoch of amc's Trainer on 8 demo images, global batch 4, with the BatchNorm
   statistics frozen and the objectness loss alone (settings where splitting a batch over processes cannot
   change the gradient); rank 0 saves the weight update to ``<update file>``. The test compares it with the
   same call in one process (``SINGLE``).
2. ``amc-finetune <overrides>`` as ``torchrun -m amc.cli.finetune`` runs it, except that rank 0 kills itself
   (SIGKILL) right after saving the resume state of epoch ``<kill after epoch>`` (0: never): a run killed
   between two epochs, which the test then resumes with the real ``torchrun -m amc.cli.finetune resume=DIR``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from amc.cli.finetune import main as finetune_command
from amc.data.datasets import load_dataset
from amc.data.loaders import TrainSet
from amc.models import load_model
from amc.pruning.apply import apply_policy
from amc.pruning.baselines import uniform_policy
from amc.pruning.space import ChannelRounding, PruningSpace
from amc.train import distributed
from amc.train.loss import YOLOv7Loss, scale_hyp
from amc.train.trainer import Trainer, TrainConfig

SIZE = 96
#: fine-tuning hyper-parameters with the box and class terms off: the objectness loss is a mean over every grid
#: cell of every image, so the global batch's loss is the mean of equal shares, whatever the split
OBJECTNESS_ONLY = {"lr0": 0.01, "lrf": 0.01, "momentum": 0.937, "weight_decay": 0.0005, "warmup_epochs": 0.0,
                   "warmup_momentum": 0.8, "warmup_bias_lr": 0.01, "box": 0.0, "cls": 0.0, "cls_pw": 1.0,
                   "obj": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0, "fliplr": 0.5, "mosaic": 1.0,
                   "scale": 0.5, "translate": 0.1, "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4}


def _frozen_batch_norm(model: torch.nn.Module) -> None:
    """BatchNorm layers that stay in eval mode (their running statistics) when the trainer calls ``train()``:
    the stand-in, on the CPU, for SyncBatchNorm (torch implements it for GPUs only)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.train = lambda mode=True, m=m: torch.nn.Module.train(m, False)  # noqa: ARG005


def objectness_update(data_root: str, save_dir: Path, where: distributed.Distributed) -> torch.Tensor | None:
    """The weight update of one epoch (8 images, global batch 4, augmented) of the demo model pruned to 50%
    FLOPs, BatchNorm frozen, objectness loss only; None on ranks above 0."""
    teacher, _ = load_model("demo-model")
    space = PruningSpace.from_model(teacher, 256, ChannelRounding(4, 4, 0.9))
    student, _ = apply_policy(teacher, space, uniform_policy(space, 0.5).ratios, "l1")
    _frozen_batch_norm(student)
    start = torch.cat([p.detach().flatten().clone() for p in student.parameters()])
    data = load_dataset("demo", data_root, "train").subset(8, 0)
    config = TrainConfig(epochs=1, batch_size=4, nominal_batch_size=4, warmup_min_iters=0, workers=0, seed=0,
                         save_dir=save_dir, progress=False, tensorboard=False)
    trainer = Trainer(student, TrainSet(data, img_size=SIZE, augment=True, hyp=OBJECTNESS_ONLY, seed=0),
                      OBJECTNESS_ONLY, YOLOv7Loss(student, scale_hyp(OBJECTNESS_ONLY, 3, 3, SIZE)), config,
                      torch.device("cpu"), dist=where)
    trainer.fit()
    if not where.main:
        return None
    return torch.cat([p.detach().flatten() for p in student.parameters()]) - start


def _kill_after(epochs: int) -> None:
    """Rank 0 dies (SIGKILL, no clean-up) right after it saved the resume state of ``epochs`` epochs."""
    save = Trainer._save_state

    def save_then_die(self: Trainer, epochs_done: int) -> None:
        save(self, epochs_done)
        if epochs_done == epochs:
            os.kill(os.getpid(), signal.SIGKILL)

    Trainer._save_state = save_then_die


def main() -> None:
    data_root, update_file, kill_after, *overrides = sys.argv[1:]
    torch.set_num_threads(1)
    where = distributed.start(distributed.launch(), torch.device("cpu"), "gloo")
    update = objectness_update(data_root, Path(update_file).parent / f"trainer-{where.rank}", where)
    if update is not None:
        torch.save(update, update_file)
    if int(kill_after):
        _kill_after(int(kill_after))
    sys.argv = ["amc-finetune", *overrides]  # the command, as `torchrun -m amc.cli.finetune` runs it
    finetune_command()


if __name__ == "__main__":
    main()
