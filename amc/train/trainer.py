"""The YOLOv7 training loop: SGD with warm-up and a cosine schedule, EMA, AMP on CUDA, resumable.

One component serves training from scratch (the demo checkpoint), fine-tuning pruned models and
distillation: the loss is a pluggable ``criterion(preds, targets, images) -> (loss, items)`` (a criterion may
name its items with a ``loss_names`` attribute; default box, obj, cls, total), evaluation a pluggable
``evaluate(model) -> metrics`` callable, and ``extra`` modules the loss owns (e.g. distillation adapters) are
trained with the model and kept in the resume state, but not exported.

With ``dist=`` (:mod:`amc.train.distributed`) the loop runs in several processes with
``DistributedDataParallel``: each process trains on its share of every global batch (``config.batch_size`` is
the global batch), and rank 0 alone updates the EMA, evaluates, saves and logs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from amc.atomic import atomic_file
from amc.console import ProgressLog, is_terminal, progress_settings
from amc.errors import CheckpointError
from amc.models.io import save_model
from amc.models.yolo import YOLOv7
from amc.train.distributed import (SINGLE, Distributed, ShardedBatchSampler, data_parallel, mean_over_ranks,
                                   per_rank_batch, sync_batch_norm)
from amc.train.ema import ModelEMA

Criterion = Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Evaluate = Callable[[nn.Module], dict[str, float]]
STATE_FILE = "trainer_state.pt"
LOSS_NAMES = ("box", "obj", "cls", "total")


@dataclass
class TrainConfig:
    """Knobs of the loop (hyper-parameters of the optimizer and loss live in the ``hyp`` dict).

    Attributes:
        epochs: number of epochs.
        batch_size: images per step; with several processes the global batch, each process taking
            ``batch_size / world_size`` of it.
        nominal_batch_size: gradients are accumulated up to this many images per optimizer step (official 64).
        warmup_min_iters: warm-up lasts ``max(warmup_epochs x steps per epoch, this)`` iterations.
        ema_decay, ema_tau: EMA decay and its ramp-up length in updates.
        amp: mixed precision on CUDA (ignored on the CPU).
        workers: data-loading processes.
        seed: seeds every random generator, per epoch (so a resumed run sees the same epochs).
        eval_interval: evaluate the EMA model every this many epochs (and after the last one).
        save_dir: where ``last/``, ``best/``, the resume state and TensorBoard logs go.
        resume: continue from ``save_dir/trainer_state.pt`` when it exists.
        tensorboard: write TensorBoard scalars to ``save_dir/tensorboard``.
        progress: show a progress bar on a terminal, or plain lines (one per epoch, and every
            ``amc.console.progress_settings.heartbeat_s`` seconds within an epoch) when the output is a file or
            pipe. The lines go to the job log (``amc.console.log``) either way.
        export_extra: more metadata written into the exported ``last/`` and ``best/`` models.
        sync_bn: with several processes, BatchNorm statistics over the global batch (SyncBatchNorm, CUDA only)
            instead of each process's share.
    """

    epochs: int = 100
    batch_size: int = 32
    nominal_batch_size: int = 64
    warmup_min_iters: int = 1000
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0
    amp: bool = True
    workers: int = 0
    seed: int = 0
    eval_interval: int = 1
    save_dir: Path = Path("outputs/train")
    resume: bool = False
    tensorboard: bool = True
    progress: bool = True
    export_extra: dict[str, Any] = field(default_factory=dict)
    sync_bn: bool = False


@dataclass
class TrainResult:
    """What a run produced: final and best metrics and where the models are."""

    epochs_done: int
    best_fitness: float
    best_metrics: dict[str, float]
    last_metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    last_dir: Path | None = None
    best_dir: Path | None = None


def fitness(metrics: dict[str, float]) -> float:
    """YOLOv7's model-selection score: 0.1 x mAP@0.5 + 0.9 x mAP@0.5:0.95."""
    return 0.1 * metrics.get("map50", 0.0) + 0.9 * metrics.get("map50_95", 0.0)


def parameter_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(no decay: BatchNorm weights and implicit layers, decayed: conv weights, biases), as YOLOv7 splits them."""
    no_decay, decay, biases = [], [], []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if name == "bias":
                biases.append(p)
            elif isinstance(module, nn.BatchNorm2d) or name == "implicit":
                no_decay.append(p)
            else:
                decay.append(p)
    return no_decay, decay, biases


def cosine_lr_factor(epochs: int, lrf: float) -> Callable[[float], float]:
    """The one-cycle cosine ramp from 1 to ``lrf`` over ``epochs``."""
    return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1


def _epoch_summary(record: dict[str, Any], loss_names: tuple[str, ...]) -> str:
    """An epoch's mean losses and, when it was evaluated, its mAPs, for the plain progress line."""
    parts = [" ".join(f"{n} {record[n]:.4f}" for n in loss_names if n in record)]
    parts += [f"{k} {record[k]:.4f}" for k in ("map50", "map50_95") if k in record]
    return " | ".join(p for p in parts if p)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Trains a :class:`~amc.models.yolo.YOLOv7` (any widths) on a detection ``DataLoader``-able dataset.

    Args:
        model: the model to train (moved to ``device``).
        train_set: a dataset whose items are ``(image (3,H,W) float in [0, 1], targets (n, 6))`` and which
            provides ``collate(items)`` and ``set_epoch(epoch)`` (:class:`~amc.data.loaders.TrainSet`).
        hyp: optimizer hyper-parameters (``lr0``, ``lrf``, ``momentum``, ``weight_decay``, ``warmup_epochs``,
            ``warmup_momentum``, ``warmup_bias_lr``), as in ``conf/hyp/``.
        criterion: the loss, ``criterion(preds, targets, images) -> (loss, items[box, obj, cls, total])``.
        config: loop settings.
        device: where to train.
        evaluate: optional ``evaluate(model) -> {'map50_95': ..., 'map50': ...}`` run on the EMA model.
        extra: optional trainable modules the criterion uses besides the model (distillation adapters): moved
            to ``device``, optimized in the same parameter groups, saved in and restored from the resume state.
        dist: this process's place in a data-parallel run (joined with :func:`amc.train.distributed.start`);
            every process builds its Trainer alike. Default: one process.
    """

    def __init__(self, model: YOLOv7, train_set: Any, hyp: dict[str, Any], criterion: Criterion,
                 config: TrainConfig, device: torch.device, evaluate: Evaluate | None = None,
                 extra: nn.Module | None = None, dist: Distributed = SINGLE) -> None:
        self.model, self.hyp, self.criterion = model.to(device), dict(hyp), criterion
        self.config, self.device, self.evaluate, self.dist = config, device, evaluate, dist
        self.extra = extra.to(device) if extra is not None else None
        self.loss_names = tuple(getattr(criterion, "loss_names", LOSS_NAMES))
        self.train_set = train_set
        self.save_dir = Path(config.save_dir)
        bs = config.batch_size  # the global batch: accumulation and weight decay as for one process
        per_rank_batch(bs, dist.world_size)  # refuses a batch the processes cannot share evenly
        self.accumulate = max(round(config.nominal_batch_size / bs), 1)
        weight_decay = float(hyp["weight_decay"]) * bs * self.accumulate / config.nominal_batch_size
        no_decay, decay, biases = parameter_groups(model)
        if self.extra is not None:
            groups = parameter_groups(self.extra)
            no_decay, decay, biases = no_decay + groups[0], decay + groups[1], biases + groups[2]
        extra_parameters = list(self.extra.parameters()) if self.extra is not None else []
        self.trained_parameters = list(model.parameters()) + extra_parameters  # gradient clipping
        self.optimizer = torch.optim.SGD(no_decay, lr=hyp["lr0"], momentum=hyp["momentum"], nesterov=True)
        self.optimizer.add_param_group({"params": decay, "weight_decay": weight_decay})
        self.optimizer.add_param_group({"params": biases})
        self.lr_factor = cosine_lr_factor(config.epochs, float(hyp["lrf"]))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lr_factor)
        self.use_amp = bool(config.amp) and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.ema = ModelEMA(model, config.ema_decay, config.ema_tau)
        self.start_epoch, self.best_fitness, self.best_metrics = 0, -1.0, {}
        self.history: list[dict[str, Any]] = []
        if config.resume and (self.save_dir / STATE_FILE).is_file():
            self._load_state(self.save_dir / STATE_FILE)
        self.net: nn.Module = self.model  # what the forward pass runs: the model, or its data-parallel replica
        if dist.enabled:
            if config.sync_bn:  # after the optimizer and the EMA: their BatchNorm grouping and plain copy stay
                sync_batch_norm(self.model, device)
            self.net = data_parallel(self.model, self.extra, device)

    # -- the loop ---------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train from ``start_epoch`` to ``config.epochs``; returns the metrics and where the models are."""
        cfg = self.config
        if self.dist.enabled:  # each process: its share of the one-process batches (same shuffle on every rank)
            shards = ShardedBatchSampler(RandomSampler(self.train_set), cfg.batch_size, self.dist.world_size,
                                         self.dist.rank)
            loader = DataLoader(self.train_set, batch_sampler=shards, num_workers=cfg.workers,
                                collate_fn=self.train_set.collate, persistent_workers=False,
                                pin_memory=self.device.type == "cuda")
        else:
            loader = DataLoader(self.train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                                collate_fn=self.train_set.collate, drop_last=False,
                                persistent_workers=False, pin_memory=self.device.type == "cuda")
        nb = len(loader)
        warmup_iters = max(round(float(self.hyp.get("warmup_epochs", 3.0)) * nb), cfg.warmup_min_iters)
        writer = self._tensorboard()
        last_metrics: dict[str, float] = {}
        # Plain per-epoch lines for logs (nohup, Slurm .out, the job log); a terminal gets the rich bar instead.
        epoch_log = ProgressLog("epoch", cfg.epochs, start=self.start_epoch,
                                echo=cfg.progress and self.dist.main and not is_terminal())
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                seed_everything(cfg.seed + epoch)  # per-epoch seeds: resuming replays the same epochs
                loader.generator = torch.Generator().manual_seed(cfg.seed + epoch)
                self.train_set.set_epoch(epoch)  # augmentations depend on (seed, epoch, index) only
                mean_items = self._train_epoch(loader, epoch, nb, warmup_iters, writer)
                self.scheduler.step()
                record: dict[str, Any] = {"epoch": epoch + 1, **dict(zip(self.loss_names, mean_items))}
                final = epoch + 1 == cfg.epochs
                if not self.dist.main:  # rank 0 evaluates, saves and logs for the run
                    self.history.append(record)
                    continue
                if self.evaluate is not None and ((epoch + 1) % max(cfg.eval_interval, 1) == 0 or final):
                    last_metrics = self.evaluate(self.ema.ema)
                    record.update(last_metrics)
                    if writer is not None:
                        for k, v in last_metrics.items():
                            writer.add_scalar(f"metrics/{k}", v, epoch + 1)
                    score = fitness(last_metrics)
                    if score > self.best_fitness:
                        self.best_fitness, self.best_metrics = score, dict(last_metrics)
                        save_model(self.ema.ema, self.save_dir / "best", extra={
                            **cfg.export_extra, "metrics": last_metrics, "epoch": epoch + 1})
                self.history.append(record)
                epoch_log.update(epoch + 1, _epoch_summary(record, self.loss_names))
                save_model(self.ema.ema, self.save_dir / "last", extra={**cfg.export_extra, "epoch": epoch + 1})
                self._save_state(epoch + 1)
        finally:
            if writer is not None:
                writer.close()
        best = self.save_dir / "best"
        return TrainResult(epochs_done=cfg.epochs, best_fitness=self.best_fitness, best_metrics=self.best_metrics,
                           last_metrics=last_metrics, history=self.history, last_dir=self.save_dir / "last",
                           best_dir=best if best.exists() else None)

    def _train_epoch(self, loader: DataLoader, epoch: int, nb: int, warmup_iters: int, writer: Any) -> list[float]:
        self.model.train()
        if self.extra is not None:
            self.extra.train()
        names = self.loss_names
        sums = torch.zeros(len(names))
        self.optimizer.zero_grad()
        columns = [TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[losses]}"), TimeRemainingColumn()]
        # Within a long epoch a log still hears from the loop every heartbeat_s seconds (0: only per epoch).
        heartbeat = progress_settings.heartbeat_s
        progress = self.config.progress and self.dist.main
        batch_log = ProgressLog(f"epoch {epoch + 1}/{self.config.epochs} batch", nb, interval_s=heartbeat,
                                echo=progress and not is_terminal())
        batch_log.last_line = batch_log.started  # the first heartbeat comes after heartbeat_s, not at batch 1
        bar_on = progress and is_terminal()
        with Progress(*columns, disable=not bar_on, transient=False) as bar:
            task = bar.add_task("train", total=nb, epoch=f"{epoch + 1}/{self.config.epochs}", losses="")
            for i, (images, targets) in enumerate(loader):
                ni = i + nb * epoch  # iterations since the start of training
                if ni <= warmup_iters:
                    self._warmup(ni, warmup_iters, epoch)
                images = images.to(self.device, non_blocking=True).float()
                targets = targets.to(self.device)
                step = (ni + 1) % self.accumulate == 0 or i + 1 == nb
                # several processes: gradients are averaged over them at the backward pass of a step only
                with self.net.no_sync() if self.dist.enabled and not step else nullcontext():
                    with torch.autocast(device_type=self.device.type, enabled=self.use_amp):
                        preds = self.net(images)
                        loss, items = self.criterion(preds, targets, images)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, batch {i}: "
                                                 "lower hyp.lr0 or check the labels")
                    # x world_size: the averaged gradient is then that of the global batch's loss (YOLOv7's rule)
                    self.scaler.scale(loss * self.dist.world_size).backward()
                if step:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.trained_parameters, max_norm=10.0)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad()
                    if self.dist.main:
                        self.ema.update(self.model)
                items = items.detach().float().cpu()
                sums += items
                mean = sums / (i + 1)
                losses = " ".join(f"{n} {v:.3f}" for n, v in zip(names, mean))
                bar.update(task, advance=1, losses=losses)
                if heartbeat > 0 and i + 1 < nb:
                    batch_log.update(i + 1, losses)
                if writer is not None:
                    for n, v in zip(names, items.tolist()):
                        writer.add_scalar(f"train/{n}", v, ni)
                    writer.add_scalar("train/lr", self.optimizer.param_groups[1]["lr"], ni)
        return (mean_over_ranks(sums, self.dist, self.device) / max(nb, 1)).tolist()

    def _warmup(self, ni: int, warmup_iters: int, epoch: int) -> None:
        """Linear warm-up of every group's lr (biases from a high lr down) and of the momentum."""
        xi = [0, warmup_iters]
        for j, group in enumerate(self.optimizer.param_groups):
            start = float(self.hyp.get("warmup_bias_lr", 0.1)) if j == 2 else 0.0
            group["lr"] = float(np.interp(ni, xi, [start, group["initial_lr"] * self.lr_factor(epoch)]))
            group["momentum"] = float(np.interp(ni, xi, [float(self.hyp.get("warmup_momentum", 0.8)),
                                                         float(self.hyp["momentum"])]))

    # -- persistence ------------------------------------------------------------------------------------
    def _tensorboard(self) -> Any:
        if not self.config.tensorboard or not self.dist.main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.save_dir / "tensorboard"))

    def _save_state(self, epochs_done: int) -> None:
        """Everything needed to resume, written atomically (temp file + rename)."""
        state = {"epoch": epochs_done, "model": self.model.state_dict(), "ema": self.ema.ema.state_dict(),
                 "ema_updates": self.ema.updates, "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "best_fitness": self.best_fitness, "best_metrics": self.best_metrics, "history": self.history}
        if self.extra is not None:
            state["extra"] = self.extra.state_dict()
        with atomic_file(self.save_dir / STATE_FILE) as tmp:
            torch.save(state, tmp)

    def _load_state(self, path: Path) -> None:
        """Resume: only tensors and plain values are read (``weights_only=True``: no code runs)."""
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])
            self.ema.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            if self.extra is not None:
                self.extra.load_state_dict(state["extra"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot resume from this state ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0]}); delete it or set resume=false") from None
        self.ema.updates = int(state["ema_updates"])
        self.start_epoch = int(state["epoch"])
        self.best_fitness = float(state["best_fitness"])
        self.best_metrics = dict(state["best_metrics"])
        self.history = list(state["history"])
