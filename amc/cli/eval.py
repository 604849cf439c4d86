"""``amc-eval``: mAP@0.5:0.95, mAP@0.5, params, GFLOPs and images/s of a model on a dataset.

Examples::

    amc-eval                                              # the demo model on the demo val split
    amc-eval model.path=yolov7-tiny.pt data=coco data.path=/data/coco
    amc-eval model.path=best.pt data=yolo data.path=/data/mine/data.yaml subset=200
"""

from __future__ import annotations

from omegaconf import DictConfig

from amc.atomic import atomic_write_json
from amc.cli.app import amc_app, console, load_data_from_config, load_model_from_config, print_table, run_dir
from amc.data.datasets import cache_dir
from amc.data.loaders import EvalSet
from amc.device import select_device
from amc.errors import ConfigError
from amc.eval.evaluator import DetectionEvaluator, EvalSettings, check_classes


@amc_app("eval")
def main(cfg: DictConfig) -> dict:
    device = select_device(cfg.device)
    if int(cfg.img_size) <= 0 or int(cfg.batch_size) <= 0:
        raise ConfigError(f"img_size and batch_size must be positive, got {cfg.img_size} and {cfg.batch_size}")
    model, _, source = load_model_from_config(cfg.model)
    dataset = load_data_from_config(cfg.data)
    if cfg.subset is not None:
        dataset = dataset.subset(int(cfg.subset), int(cfg.seed))
    check_classes(model, dataset)  # before decoding any image
    if dataset.skipped_labels:
        console.print(f"[yellow]warning: {dataset.skipped_labels} invalid labels were skipped[/yellow]")
    stride = max(32, int(model.stride.max()))
    eval_set = EvalSet(dataset, int(cfg.img_size), int(cfg.batch_size), stride, pad=0.5,
                       cache_path=cache_dir() / "evalsets" if cfg.cache else None)
    if cfg.fuse:
        model.fuse()
    settings = EvalSettings(conf_thres=cfg.conf_thres, iou_thres=cfg.iou_thres, max_det=cfg.max_det,
                            multi_label=cfg.multi_label, half=cfg.half)
    evaluator = DetectionEvaluator(dataset, eval_set, settings, device, progress=True)
    model = model.to(device)
    if settings.half and device.type == "cuda":
        model = model.half()
    result = evaluator(model)
    cost = model.cost(int(cfg.img_size))
    metrics = {"map50_95": result.map50_95, "map50": result.map50, "params": cost.params, "gflops": cost.gflops,
               "images_per_s": result.images_per_s, "images": result.images, "img_size": int(cfg.img_size),
               "fused": model.fused, "device": str(device), "model": source, "data": dataset.source}
    out = atomic_write_json(run_dir() / "metrics.json", metrics)
    print_table(f"{source} on {dataset.source} ({result.images} images)",
                ["mAP@0.5:0.95", "mAP@0.5", "params", f"GFLOPs@{cfg.img_size}", "images/s"],
                [[f"{result.map50_95:.4f}", f"{result.map50:.4f}", f"{cost.params:,}", f"{cost.gflops:.2f}",
                  f"{result.images_per_s:.1f}"]], numeric_from=0)
    console.print(f"metrics written to {out}")
    return metrics


if __name__ == "__main__":
    main()
