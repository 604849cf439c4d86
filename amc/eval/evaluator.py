"""Scoring a detector on a dataset: cached letterboxed batches -> model -> NMS -> COCOeval mAP.

The same :class:`DetectionEvaluator` serves ``amc-eval``, evaluation during training and the proxy mAP of the
pruning search, which evaluates one cached subset hundreds of times: images are decoded once
(:class:`~amc.data.loaders.EvalSet`), and the ground truth is indexed once. The mAP comes from pycocotools'
COCOeval (``map_backend="cocoeval"``, the official protocol) or from its exact vectorized re-implementation
(``"fast"``, :class:`~amc.eval.fastmap.FastCocoMap`: the same numbers, ~40x faster), which the proxy uses.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from amc.data.datasets import DetectionDataset
from amc.data.loaders import EvalSet
from amc.errors import ConfigError
from amc.eval.fastmap import FastCocoMap
from amc.eval.metrics import coco_ground_truth, evaluate_map
from amc.eval.nms import non_max_suppression, scale_boxes


MAP_BACKENDS = ("cocoeval", "fast")
"""How :class:`DetectionEvaluator` computes mAP: pycocotools' COCOeval, or :class:`~amc.eval.fastmap.FastCocoMap`
(COCOeval's ``stats[0]`` and ``stats[1]`` exactly, vectorized)."""


@dataclass
class EvalSettings:
    """NMS settings of the official test protocol (``test.py``), all configurable."""

    conf_thres: float = 0.001
    iou_thres: float = 0.65
    max_det: int = 300
    multi_label: bool = True
    half: bool = False  # fp16 inference on CUDA
    # Where NMS runs when the model is on a GPU: "cpu" moves each image's candidates (the rows above conf_thres)
    # to the CPU first; "model" keeps NMS on the GPU, where greedy NMS is a chain of small synchronized steps
    # per image (0.21 s of a 0.34 s proxy episode on an H200, docs/results/h200/speed.json).
    nms_device: str = "cpu"

    def __post_init__(self) -> None:
        if self.nms_device not in ("cpu", "model"):
            raise ConfigError(f"nms_device must be cpu or model, got {self.nms_device!r}")


@dataclass
class EvalResult:
    """mAP and speed of one evaluation."""

    map50_95: float
    map50: float
    images: int
    inference_s: float  # model + NMS wall time, without decoding (cached) or COCOeval
    images_per_s: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def check_classes(model: nn.Module, dataset: DetectionDataset) -> None:
    """A model must predict as many classes as the dataset has (else its mAP would be silently wrong)."""
    nc = getattr(model, "nc", None)
    if nc is not None and nc != dataset.nc:
        raise ConfigError(f"the model predicts {nc} classes but the dataset {dataset.source} has {dataset.nc}: "
                          "evaluate it on data with the same classes")


class DetectionEvaluator:
    """Evaluates models on the images of ``eval_set`` against ``dataset``'s ground truth.

    Args:
        dataset: the (sub)set whose images ``eval_set`` holds.
        eval_set: its letterboxed, decoded batches.
        settings: NMS settings.
        device: where models run.
        progress: show a progress bar over the batches (off for the search's many quick evaluations).
        map_backend: ``cocoeval`` (pycocotools, the official protocol) or ``fast``
            (:class:`~amc.eval.fastmap.FastCocoMap`: the same mAPs, vectorized; it checks the ground truth
            here, where ``cocoeval`` checks it at each call).

    Raises:
        ConfigError: an unknown ``map_backend``.
    """

    def __init__(self, dataset: DetectionDataset, eval_set: EvalSet, settings: EvalSettings | None = None,
                 device: torch.device | str = "cpu", progress: bool = False, map_backend: str = "cocoeval") -> None:
        if map_backend not in MAP_BACKENDS:
            raise ConfigError(f"map_backend must be one of {', '.join(MAP_BACKENDS)}, got {map_backend!r}")
        self.dataset, self.eval_set, self.progress = dataset, eval_set, progress
        self.settings = settings or EvalSettings()
        self.device = torch.device(device)
        self.map_backend = map_backend
        self.ground_truth = coco_ground_truth(*dataset.coco_dicts())
        self.image_ids = [record.id for record in dataset.images]
        self.fast_map = (FastCocoMap(self.ground_truth, dataset.category_ids, self.image_ids)
                         if map_backend == "fast" else None)

    @torch.inference_mode()
    def predict(self, model: nn.Module) -> tuple[dict[int, torch.Tensor], float]:
        """Detections per image id (x1, y1, x2, y2, score, class in original pixels) and the seconds spent."""
        s = self.settings
        half = s.half and self.device.type == "cuda"
        was_training = model.training
        model.eval()
        detections: dict[int, torch.Tensor] = {}
        seconds = 0.0
        bar = Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       disable=not self.progress, transient=True)
        try:
            bar.start()
            task = bar.add_task("evaluating", total=self.eval_set.num_images)
            for batch in self.eval_set:
                start = time.perf_counter()
                images = batch.images.to(self.device, non_blocking=True)
                images = (images.half() if half else images.float()) / 255.0
                pred = model(images)[0].float()
                if s.nms_device == "cpu" and pred.device.type != "cpu":
                    # the official first filter (objectness > conf_thres) on the GPU, the rest on the CPU
                    candidates = pred[..., 4] > s.conf_thres
                    out = [non_max_suppression(p[k].cpu()[None], conf_thres=s.conf_thres, iou_thres=s.iou_thres,
                                               multi_label=s.multi_label, max_det=s.max_det)[0]
                           for p, k in zip(pred, candidates)]
                else:
                    out = non_max_suppression(pred, conf_thres=s.conf_thres, iou_thres=s.iou_thres,
                                              multi_label=s.multi_label, max_det=s.max_det)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                seconds += time.perf_counter() - start
                for det, image_id, shape, ratio_pad in zip(out, batch.image_ids, batch.original_shapes,
                                                           batch.ratio_pads):
                    det = det.cpu()
                    det[:, :4] = scale_boxes(det[:, :4], ratio_pad, shape)
                    detections[image_id] = det
                bar.update(task, advance=len(batch.image_ids))
        finally:
            bar.stop()
            model.train(was_training)
        return detections, seconds

    def __call__(self, model: nn.Module) -> EvalResult:
        check_classes(model, self.dataset)
        detections, seconds = self.predict(model)
        if self.fast_map is not None:
            result = self.fast_map(detections)
        else:
            result = evaluate_map(self.ground_truth, detections, self.dataset.category_ids, image_ids=self.image_ids)
        n = len(detections)
        return EvalResult(map50_95=result.map50_95, map50=result.map50, images=n, inference_s=seconds,
                          images_per_s=n / seconds if seconds > 0 else float("inf"))
