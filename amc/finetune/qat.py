"""Quantization-aware training after a fine-tune (``amc-finetune qat=true``).

The fine-tune's best model is fused and fake-quantized where ``amc-export int8=true`` quantizes
(:func:`amc.quant.prepare_qat`, the ``qat_options`` scheme), its activation ranges started on
``qat_options.calibration_images`` letterboxed training images (as the INT8 export calibrates), then trained for
``qat_options.epochs`` more epochs with the same loop, data and augmentations (:class:`amc.train.Trainer`; no
distillation, float32 even on CUDA) at ``qat_options.lr0``. Everything goes to ``<run dir>/qat/``: ``best/`` (the
best EMA model by its fake-quantized mAP), ``last/``, ``trainer_state.pt`` (``resume=`` continues it), TensorBoard
curves and ``metrics.json``. ``amc-export model.path=<run dir>/qat/best int8=true`` then writes the INT8 graph
from the learned scales (:func:`amc.quant.onnx.export_qat`) instead of calibrating.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from amc.atomic import atomic_write_json
from amc.config import config_number
from amc.console import console, print_table
from amc.data.datasets import DetectionDataset
from amc.data.loaders import sample_batches
from amc.errors import ConfigError
from amc.export.quantize import ACTIVATION_TYPES
from amc.models import load_model
from amc.models.arch import read_yaml
from amc.models.io import ARCH_FILE
from amc.models.yolo import YOLOv7
from amc.quant.qat import (QAT_FORMAT, QUANT_FILE, QuantScheme, calibrate, float_model, load_qat_model,
                           prepare_qat, save_qat_model)
from amc.train.loss import YOLOv7Loss, scale_hyp
from amc.train.trainer import Trainer, TrainConfig

#: Where the quantization-aware phase writes, inside the fine-tune's run directory.
QAT_DIR = "qat"
#: ``qat_options`` of a run started before QAT existed (conf/finetune.yaml's defaults).
QAT_DEFAULTS = {"epochs": 2, "lr0": 0.0005, "warmup_epochs": 0.0, "calibration_images": 64,
                "averaging_constant": 0.01, "per_channel": True, "activation_type": "QUInt8", "keep_head": True,
                "reduce_range": False}
#: Keys of an amc model's ``architecture.yaml`` that :func:`amc.models.save_model` writes itself.
_MODEL_KEYS = ("amc_model", "names", "fused", "architecture", "quantization")


@dataclass(frozen=True)
class QatSettings:
    """``qat`` and ``qat_options`` of ``conf/finetune.yaml``, checked before any work."""

    enabled: bool
    epochs: int
    lr0: float
    warmup_epochs: float
    calibration_images: int
    scheme: QuantScheme

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "QatSettings":
        """The settings of a composed config (a run started before QAT existed has none: off, the defaults)."""
        enabled = False if cfg.get("qat") is None else cfg.get("qat")
        if not isinstance(enabled, bool):
            raise ConfigError(f"qat must be true or false, got {enabled!r}")
        o = OmegaConf.merge(OmegaConf.create(QAT_DEFAULTS), cfg.get("qat_options") or {})
        p = "qat_options."
        for key in ("per_channel", "keep_head", "reduce_range"):
            if not isinstance(o[key], bool):
                raise ConfigError(f"{p}{key} must be true or false, got {o[key]!r}")
        if str(o.activation_type) not in ACTIVATION_TYPES:
            raise ConfigError(f"{p}activation_type must be one of {', '.join(ACTIVATION_TYPES)}, got "
                              f"{o.activation_type!r}")
        for key in ("lr0", "averaging_constant"):
            if config_number(o, key, float, 0.0, prefix=p) <= 0:
                raise ConfigError(f"{p}{key} must be > 0, got {o[key]}")
        return cls(enabled=enabled, epochs=config_number(o, "epochs", int, 1, prefix=p),
                   lr0=float(o.lr0), warmup_epochs=config_number(o, "warmup_epochs", float, 0.0, prefix=p),
                   calibration_images=config_number(o, "calibration_images", int, 1, prefix=p),
                   scheme=QuantScheme(per_channel=o.per_channel, activation_type=str(o.activation_type),
                                      keep_head=o.keep_head, reduce_range=o.reduce_range,
                                      averaging_constant=config_number(o, "averaging_constant", float, 0.0, 1.0,
                                                                       prefix=p)))


def finish_checkpoint(folder: Path) -> YOLOv7:
    """The QAT model of a folder, rewritten first as a QAT checkpoint (float weights + ``quantization.safetensors``,
    its metadata kept) when the training loop saved it (every tensor in ``weights.safetensors``)."""
    model, _ = load_qat_model(folder)
    if not (folder / QUANT_FILE).is_file():
        meta = read_yaml(folder / ARCH_FILE)
        save_qat_model(model, folder, extra={k: v for k, v in meta.items() if k not in _MODEL_KEYS})
    return model


def quantization_aware_training(q: QatSettings, start: Path, out: Path, train: DetectionDataset, train_set: Any,
                                hyp: dict[str, Any], evaluate: Callable[[torch.nn.Module], dict[str, float]] | None,
                                device: torch.device, img_size: int, config: TrainConfig, resume: bool,
                                main: bool = True, **trainer_options: Any) -> dict[str, Any]:
    """QAT of the model in ``start`` (the fine-tune's ``best/``) into ``out/qat`` (module docstring).

    Args:
        q: the settings.
        start: the fine-tuned float model (amc folder).
        out: the fine-tune's run directory.
        train, train_set: the training images (calibration) and the fine-tune's augmented training set.
        hyp: the fine-tune's hyper-parameters (``lr0`` and ``warmup_epochs`` are replaced by QAT's).
        evaluate: ``evaluate(model) -> {'map50_95': ..., 'map50': ...}`` on the validation images (None on the
            processes of a distributed run that do not evaluate).
        device, img_size: as the fine-tune.
        config: the fine-tune's loop settings (epochs, directory, resume and AMP are QAT's own).
        resume: continue ``out/qat`` from its ``trainer_state.pt`` when there is one.
        main: this process reports and writes (rank 0 of a distributed run); the others only train.
        trainer_options: more arguments of :class:`amc.train.Trainer`, as the fine-tune gives them (its processes).

    Returns:
        What ``out/qat/metrics.json`` holds (``{}`` on the other processes): the scheme, the fake-quantized mAP
        after calibration (what post-training quantization gives, simulated in PyTorch) and after QAT, the QAT
        weights' float mAP, the history.
    """
    save_dir = out / QAT_DIR
    base, _ = load_model(start)
    model = prepare_qat(base.to(device), q.scheme)
    images = sample_batches(train, 1, q.calibration_images, img_size, seed=config.seed)[0][0]
    seen = calibrate(model, images.split(config.batch_size))
    calibrated = evaluate(model.eval()) if evaluate is not None and main else {}
    if main:
        console.print(f"quantization-aware training of {start}: fake INT8 "
                      f"({'per-channel' if q.scheme.per_channel else 'per-tensor'} weights, "
                      f"{q.scheme.activation_type} activations, head "
                      f"{'in float' if q.scheme.keep_head else 'quantized'}), ranges started on {len(images)} "
                      f"training images ({seen} batches) at {img_size} px: mAP@0.5:0.95 "
                      f"{calibrated.get('map50_95', float('nan')):.4f} before training")
    qat_hyp = {**hyp, "lr0": q.lr0, "warmup_epochs": q.warmup_epochs}
    loss = YOLOv7Loss(model, scale_hyp(qat_hyp, model.head.nl, model.nc, img_size),
                      ota=bool(int(qat_hyp.get("loss_ota", 1))))
    # batch_norm: the training loop saves the model as it trains, its Conv BatchNorms inside ConvBn2d modules
    scheme = {"format": QAT_FORMAT, **q.scheme.to_dict(), "batch_norm": not base.fused}
    qat_config = dataclasses.replace(
        config, epochs=q.epochs, save_dir=save_dir, resume=resume, amp=False,  # fake quantization is float32
        export_extra={**config.export_extra, "qat_from": str(start), "quantization": scheme})
    trainer = Trainer(model, train_set, qat_hyp, loss, qat_config, device, evaluate=evaluate, **trainer_options)
    if main and trainer.start_epoch >= q.epochs:
        console.print(f"{save_dir} has finished its {q.epochs} QAT epochs: reporting it")
    elif main and trainer.start_epoch:
        console.print(f"resuming quantization-aware training at epoch {trainer.start_epoch + 1} of {q.epochs}")
    result = trainer.fit()
    if not main:
        return {}
    finished = {folder: finish_checkpoint(folder) for folder in (result.last_dir, result.best_dir) if folder}
    best_dir = result.best_dir or result.last_dir
    as_float = evaluate(float_model(finished[best_dir]).to(device).eval()) if evaluate is not None else {}
    after = {k: result.best_metrics.get(k) for k in ("map50_95", "map50")}
    metrics = {
        "start": str(start), "scheme": q.scheme.to_dict(), "epochs": q.epochs, "lr0": q.lr0,
        "warmup_epochs": q.warmup_epochs, "calibration_images": len(images),
        "calibrated": {k: calibrated.get(k) for k in ("map50_95", "map50")}, "after": after,
        "float_weights": {k: as_float.get(k) for k in ("map50_95", "map50")},
        "best_epoch": next((h["epoch"] for h in result.history if h.get("map50_95") == after["map50_95"]), None),
        "history": result.history, "best_dir": str(best_dir), "last_dir": str(result.last_dir),
    }
    atomic_write_json(save_dir / "metrics.json", metrics)

    def m(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    print_table(f"quantization-aware training ({q.epochs} epoch{'s' if q.epochs != 1 else ''}, lr0 {q.lr0:g}): "
                f"PyTorch fake INT8", ["model", "mAP@0.5:0.95", "mAP@0.5"],
                [["fake INT8, calibrated (as post-training)", m(calibrated.get("map50_95")),
                  m(calibrated.get("map50"))],
                 ["fake INT8 after QAT", m(after["map50_95"]), m(after["map50"])],
                 ["QAT weights in float", m(as_float.get("map50_95")), m(as_float.get("map50"))]])
    console.print(f"QAT model in {best_dir}: amc-export model.path={best_dir} int8=true writes its INT8 graph")
    return metrics
