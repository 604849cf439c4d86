"""Training: the YOLOv7 loss (official ComputeLoss / ComputeLossOTA / ComputeLossAuxOTA), EMA and the loop."""

from amc.train.ema import ModelEMA
from amc.train.loss import SimOTAAssigner, YOLOv7Loss, bbox_iou, scale_hyp, smooth_bce
from amc.train.trainer import Trainer, TrainConfig, TrainResult

__all__ = ["ModelEMA", "SimOTAAssigner", "TrainConfig", "TrainResult", "Trainer", "YOLOv7Loss", "bbox_iou",
           "scale_hyp", "smooth_bce"]
