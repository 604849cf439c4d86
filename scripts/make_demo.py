"""Regenerate the embedded demo: the synthetic dataset and the demo checkpoint trained on it.

Usage (the one command that reproduces ``amc/assets/demo-model``)::

    python scripts/make_demo.py                # settings in conf/make_demo.yaml; Hydra overrides work

It generates the demo dataset (deterministic) if needed, trains ``amc/cfg/demo.yaml`` from scratch with the
official yolov7-tiny hyper-parameters, keeps the best EMA weights by validation fitness, evaluates them, and
writes the model (amc format) to ``out`` plus ``metrics.json`` in the run directory.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from amc.atomic import atomic_write_json
from amc.cli.app import amc_app
from amc.config import run_dir
from amc.console import console, print_table
from amc.data.datasets import load_dataset
from amc.data.loaders import EvalSet, TrainSet
from amc.device import select_device
from amc.eval.evaluator import DetectionEvaluator
from amc.models import load_model, save_model
from amc.train.loss import YOLOv7Loss, scale_hyp
from amc.train.trainer import Trainer, TrainConfig


@amc_app("make_demo")
def main(cfg: DictConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = select_device(str(cfg.device.name))
    torch.manual_seed(cfg.seed)
    model, _ = load_model(cfg.model_cfg)
    train_data, val_data = load_dataset("demo", split="train"), load_dataset("demo", split="val")
    model.names = list(train_data.names)
    hyp = OmegaConf.to_container(cfg.hyp, resolve=True)
    stride = int(max(model.stride.tolist()))
    train_set = TrainSet(train_data, img_size=cfg.img_size, augment=True, hyp=hyp, seed=cfg.seed, progress=True)
    evaluator = DetectionEvaluator(val_data, EvalSet(val_data, cfg.img_size, 32, stride), device=device)
    criterion = YOLOv7Loss(model, scale_hyp(hyp, model.head.nl, model.nc, cfg.img_size), ota=cfg.ota)
    config = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, nominal_batch_size=cfg.nominal_batch_size,
                         warmup_min_iters=cfg.warmup_min_iters,
                         workers=cfg.workers, seed=cfg.seed, eval_interval=cfg.eval_interval,
                         save_dir=run_dir() / "train", resume=False)
    trainer = Trainer(model, train_set, hyp, criterion, config, device,
                      evaluate=lambda m: evaluator(m).to_dict())
    result = trainer.fit()
    best, _ = load_model(result.best_dir or result.last_dir)
    final = evaluator(copy.deepcopy(best).to(device).fuse())  # shipped unfused: pruning needs BatchNorm
    out = save_model(best, Path(cfg.out), extra={
        "description": "amc demo model: yolov7-tiny at width 0.25 trained on the synthetic demo dataset",
        "reproduce": "python scripts/make_demo.py", "val_metrics": final.to_dict()})
    metrics = {"map50_95": final.map50_95, "map50": final.map50, "images_per_s": final.images_per_s,
               "epochs": result.epochs_done, "history": result.history, "model": str(out)}
    atomic_write_json(run_dir() / "metrics.json", metrics)
    print_table("demo model (val split)", ["mAP@0.5:0.95", "mAP@0.5", "images/s"],
                [[f"{final.map50_95:.3f}", f"{final.map50:.3f}", f"{final.images_per_s:.1f}"]], numeric_from=0)
    console.print(f"model written to {out}")
    return metrics


if __name__ == "__main__":
    main()
