"""The workflow behind ``amc-eval``: a model's mAP@0.5:0.95, mAP@0.5, params, GFLOPs and images/s on a dataset
(:func:`score`), or, with ``report.*`` entries, the deployment report of several versions of it side by side
(:func:`report`, measured by :mod:`amc.deploy.report`). :func:`evaluate` picks one; examples: the command's help,
:mod:`amc.cli.eval`.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from amc.atomic import atomic_write_json, atomic_write_text
from amc.config import config_number
from amc.console import console, print_table
from amc.data.datasets import DetectionDataset, cache_dir
from amc.data.loaders import EvalSet
from amc.deploy.report import (LatencySettings, ReportModel, deployment_report, load_report_model, markdown_table,
                               report_dict, report_table)
from amc.device import select_device
from amc.errors import ConfigError
from amc.eval.evaluator import DetectionEvaluator, EvalSettings, check_classes
from amc.eval.latency import BACKENDS
from amc.factory import load_data_from_config, load_model_from_config
from amc.models import YOLOv7


def report_entries(cfg: DictConfig) -> list[tuple[str, str | None]]:
    """(label, path) of the report's models in config order, the original first; [] when no entry is set."""
    entries = [(str(k), str(v)) for k, v in (cfg.get("report") or {}).items() if v is not None]
    if not entries:
        return []
    if not any(label == "original" for label, _ in entries):
        entries.insert(0, ("original", None))  # model= (loaded with its group's nc / multiples)
    entries.sort(key=lambda e: e[0] != "original")  # the reference row (ratios are relative to it) comes first
    return entries


def evaluator_for(cfg: DictConfig, model: YOLOv7, device: torch.device) -> tuple[DetectionDataset, DetectionEvaluator]:
    """The dataset (subset) and evaluator of ``cfg``, checked against ``model``'s classes before any decoding."""
    if int(cfg.img_size) <= 0 or int(cfg.batch_size) <= 0:
        raise ConfigError(f"img_size and batch_size must be positive, got {cfg.img_size} and {cfg.batch_size}")
    dataset = load_data_from_config(cfg.data)
    if cfg.subset is not None:
        dataset = dataset.subset(int(cfg.subset), int(cfg.seed))
    check_classes(model, dataset)  # before decoding any image
    if dataset.skipped_labels:
        console.print(f"[yellow]warning: {dataset.skipped_labels} invalid labels were skipped[/yellow]")
    stride = max(32, int(model.stride.max()))
    eval_set = EvalSet(dataset, int(cfg.img_size), int(cfg.batch_size), stride, pad=0.5,
                       cache_path=cache_dir() / "evalsets" if cfg.cache else None)
    settings = EvalSettings(conf_thres=cfg.conf_thres, iou_thres=cfg.iou_thres, max_det=cfg.max_det,
                            multi_label=cfg.multi_label, half=cfg.half, nms_device=str(cfg.nms_device))
    return dataset, DetectionEvaluator(dataset, eval_set, settings, device, progress=True)


def evaluate(cfg: DictConfig, out: str | Path) -> dict[str, Any]:
    """``amc-eval`` on ``cfg`` (the composed ``conf/eval.yaml``), writing to ``out``: :func:`report` when a
    ``report.*`` entry is set, else :func:`score`. Returns what ``metrics.json`` holds."""
    entries = report_entries(cfg)
    if entries:
        return report(cfg, entries, out)
    return score(cfg, out)


def score(cfg: DictConfig, out: str | Path) -> dict[str, Any]:
    """mAP@0.5:0.95, mAP@0.5, params, GFLOPs and images/s of ``model=`` on ``data=``: a table and
    ``out/metrics.json`` (whose content it returns)."""
    device = select_device(str(cfg.device.name))
    model, _, source = load_model_from_config(cfg.model)
    dataset, evaluator = evaluator_for(cfg, model, device)
    if cfg.fuse:
        model.fuse()
    settings = evaluator.settings
    model = model.to(device)
    if settings.half and device.type == "cuda":
        model = model.half()
    result = evaluator(model)
    cost = model.cost(int(cfg.img_size))
    metrics = {"map50_95": result.map50_95, "map50": result.map50, "params": cost.params, "gflops": cost.gflops,
               "images_per_s": result.images_per_s, "images": result.images, "img_size": int(cfg.img_size),
               "fused": model.fused, "device": str(device), "model": source, "data": dataset.source}
    written = atomic_write_json(Path(out) / "metrics.json", metrics)
    print_table(f"{source} on {dataset.source} ({result.images} images)",
                ["mAP@0.5:0.95", "mAP@0.5", "params", f"GFLOPs@{cfg.img_size}", "images/s"],
                [[f"{result.map50_95:.4f}", f"{result.map50:.4f}", f"{cost.params:,}", f"{cost.gflops:.2f}",
                  f"{result.images_per_s:.1f}"]], numeric_from=0)
    console.print(f"metrics written to {written}")
    return metrics


def _latency_settings(cfg: DictConfig) -> LatencySettings:
    """``latency.*`` of the report, checked (an unknown backend is a one-line error)."""
    lat = cfg.latency
    backends = tuple(str(b) for b in lat.backends)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ConfigError(f"latency.backends: {', '.join(unknown)} unknown; choose from {', '.join(BACKENDS)}")
    threads = config_number(lat, "threads", int, 1, optional=True, prefix="latency.")
    return LatencySettings(backends, threads, config_number(lat, "batch_size", int, 1, prefix="latency."),
                           config_number(lat, "warmup", int, 0, optional=True, prefix="latency."),
                           config_number(lat, "runs", int, 1, prefix="latency."),
                           config_number(lat, "rounds", int, 1, prefix="latency."),
                           config_number(lat, "max_spread", float, 0.0, prefix="latency."))


def report(cfg: DictConfig, entries: list[tuple[str, str | None]], out: str | Path) -> dict[str, Any]:
    """The deployment report (:mod:`amc.deploy.report`) of ``entries`` (:func:`report_entries`): a table and
    ``report.json``, ``report.md`` and ``metrics.json`` in ``out``; returns ``report.json``'s content."""
    device = select_device(str(cfg.device.name))
    settings = _latency_settings(cfg)
    backends, threads = settings.backends, settings.threads
    models = []
    for label, path in entries:
        if path is None:
            model, _, source = load_model_from_config(cfg.model)
            models.append(ReportModel(label, source, model=model.eval()))
        else:
            models.append(load_report_model(label, path))
    reference = next((m for m in models if m.model is not None), None)
    if reference is None:
        raise ConfigError("the report needs at least one PyTorch model (report.original, or model=)")
    first_torch = reference.model
    for m in models:
        if m.model is not None and int(m.model.nc) != int(first_torch.nc):
            raise ConfigError(f"report.{m.label} has {m.model.nc} classes where report.{reference.label} has "
                              f"{first_torch.nc}: the report compares versions of one detector")
    dataset, evaluator = evaluator_for(cfg, first_torch, device)
    img_size = int(cfg.img_size)
    stride = max(32, int(first_torch.stride.max()))
    timed_size = -(-img_size // stride) * stride  # latency input: img_size up to a multiple of the stride
    rows = deployment_report(models, evaluator, timed_size, settings, device, fuse=bool(cfg.fuse),
                             onnx_threads=threads)
    columns, cells = report_table(rows)
    title = (f"deployment report: {dataset.source}, {evaluator.eval_set.num_images} images at {img_size} px; "
             f"latency at batch {settings.batch_size}x3x{timed_size}x{timed_size}")
    print_table(title, columns, cells, numeric_from=1)
    cuda = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    context = {"data": dataset.source, "images": evaluator.eval_set.num_images, "img_size": img_size,
               "latency": {"input": [settings.batch_size, 3, timed_size, timed_size], "threads": torch.get_num_threads()
                           if threads is None else threads, "runs": settings.runs, "rounds": settings.rounds,
                           "statistic": "median", "interleaved": True,
                           "cuda": cuda or "not available: torch-cuda not timed"},
               "eval": {"conf_thres": cfg.conf_thres, "iou_thres": cfg.iou_thres, "max_det": cfg.max_det,
                        "multi_label": cfg.multi_label},
               "fused": bool(cfg.fuse), "machine": {"cpu": platform.processor() or platform.machine(),
                                                     "torch": torch.__version__}}
    result = report_dict(rows, context)
    out = Path(out)
    atomic_write_json(out / "report.json", result)
    notes = (f"\n{title}. mAP50-95 / mAP50: mAP@0.5:0.95 / mAP@0.5, amc-eval's protocol (conf {cfg.conf_thres}, "
             f"IoU {cfg.iou_thres}). GFLOPs of the fused model. Latency: median of {settings.runs} interleaved "
             f"passes per model (torch CPU: PyTorch; ORT CPU: ONNX Runtime; CUDA: PyTorch on "
             f"{cuda or 'no GPU here'}). In parentheses, the ratio to the first row (params and GFLOPs: fraction "
             f"kept; latency: speed-up).\n")
    atomic_write_text(out / "report.md", markdown_table(columns, cells) + notes)
    atomic_write_json(out / "metrics.json", result)
    if cuda is None and "torch-cuda" in backends:
        console.print("torch-cuda: CUDA is not available here, the column is left out")
    console.print(f"report.json, report.md and metrics.json written to {out}")
    return result
