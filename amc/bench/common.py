"""What the benches share: a rank correlation, the demo splits and a seeded model, the device, and the short
fine-tune that is the reference of fidelity and compare.

Every benchmark lives in its own module of :mod:`amc.bench` (``amc-bench bench=<name>`` runs
``amc.bench.<name>``); what two or more of them need is here.
"""

from __future__ import annotations

import copy
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from amc.config import config_number, plain
from amc.data.datasets import DetectionDataset, load_dataset
from amc.device import select_device
from amc.errors import ConfigError
from amc.eval.latency import DEFAULT_MAX_SPREAD
from amc.models import load_cfg
from amc.models.io import load_model, packaged
from amc.models.yolo import YOLOv7
from amc.train.loss import YOLOv7Loss, scale_hyp
from amc.train.trainer import TrainConfig, Trainer


# ---------------------------------------------------------------------------------------------- rank correlation
def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``values``; tied values share the mean of the ranks they span (``[1, 2, 2] -> [1, 2.5, 2.5]``)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation with average ranks for ties (Pearson's r of the ranks).

    NaN when fewer than two pairs, or when either side is constant (no ranking to compare). NaN inputs
    are not allowed.
    """
    a, b = np.asarray(x, dtype=np.float64).reshape(-1), np.asarray(y, dtype=np.float64).reshape(-1)
    if len(a) != len(b):
        raise ValueError(f"spearman: {len(a)} values against {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("spearman: values must be finite")
    if len(a) < 2:
        return float("nan")
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    if denom == 0.0:
        return float("nan")
    return float(np.clip((ra * rb).sum() / denom, -1.0, 1.0))


def safe_spearman(x: Sequence[float] | None, y: Sequence[float] | None) -> float | None:
    """:func:`spearman`, None when either side is missing or the correlation is undefined."""
    if x is None or y is None:
        return None
    rho = spearman(x, y)
    return None if np.isnan(rho) else rho


# ---------------------------------------------------------------------------------------------- set-up
def container(node: Any) -> dict[str, Any]:
    """A config node (or mapping, or None) as a plain dict."""
    return dict(plain(node) or {})


def bench_device(b: DictConfig) -> torch.device:
    """The device of a bench (``bench.device``, default cpu), with ``bench.threads`` torch threads when set."""
    threads = int(b.get("threads") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    return select_device(str(b.get("device") or "cpu"))


def demo_splits(b: DictConfig) -> tuple[DetectionDataset, DetectionDataset, DetectionDataset]:
    """The demo-layout dataset's ``(val, train, search)`` splits (``bench.data_path``; None: the embedded demo):
    the proxy scores on ``search`` (held out), every reference (full val, fine-tuned) is measured on ``val``."""
    path = b.get("data_path")
    return load_dataset("demo", path, "val"), load_dataset("demo", path, "train"), load_dataset("demo", path, "search")


def seeded_model(source: str, nc: int | None, seed: int) -> YOLOv7:
    """The model at ``source`` in eval mode (a cfg gives fresh weights: seeded with ``seed``)."""
    torch.manual_seed(seed)
    model, _ = load_model(source, nc=nc)
    return model.eval()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine() -> dict[str, Any]:
    """What a bench ran on (``metrics.json``'s ``machine``): the CPU, torch's version and its threads."""
    return {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def packaged_model(name: str, seed: int) -> YOLOv7:
    """The packaged official cfg ``training/<name>.yaml`` with fresh weights seeded by ``seed``, in eval mode."""
    path = packaged(f"training/{name}.yaml")
    if path is None:
        raise ConfigError(f"{name} is not a packaged official cfg (see conf/model/)")
    torch.manual_seed(seed)
    return YOLOv7(load_cfg(path)).eval()


def max_latency_spread(cfg: DictConfig) -> float:
    """``max_latency_spread`` of conf/bench.yaml: the relative spread past which a latency is too noisy to trust
    (:data:`~amc.eval.latency.DEFAULT_MAX_SPREAD` when absent); a one-line error when not a number >= 0."""
    value = config_number(cfg, "max_latency_spread", float, 0.0, optional=True)
    return DEFAULT_MAX_SPREAD if value is None else float(value)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``fn`` (at least one), in ms."""
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------- the reference
def finetune_pruned(pruned, train_set, hyp: dict[str, Any], f: DictConfig, seed: int, device: torch.device):  # noqa: ANN001, ANN201
    """A copy of ``pruned`` after ``f.epochs`` of training (the EMA weights if ``f.ema``); ``pruned`` is untouched.

    The short fine-tune of the benches (``bench=fidelity``, ``bench=compare``): ``f`` holds ``epochs``,
    ``batch_size``, ``nominal_batch_size``, ``warmup_min_iters``, ``workers``, ``ota`` and ``ema``.
    """
    model = copy.deepcopy(pruned)
    loss = YOLOv7Loss(model, scale_hyp(hyp, model.head.nl, model.nc, int(train_set.img_size)), ota=bool(f.ota))
    with tempfile.TemporaryDirectory(prefix="amc-fidelity-") as tmp:
        config = TrainConfig(epochs=int(f.epochs), batch_size=int(f.batch_size),
                             nominal_batch_size=int(f.nominal_batch_size), warmup_min_iters=int(f.warmup_min_iters),
                             workers=int(f.workers), seed=seed, save_dir=Path(tmp), resume=False, tensorboard=False,
                             progress=False)
        trainer = Trainer(model, train_set, hyp, loss, config, device)
        trainer.fit()
        trained = trainer.ema.ema if bool(f.ema) else trainer.model
    return trained.eval()
