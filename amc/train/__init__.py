"""Training: the YOLOv7 loss (official ComputeLoss / ComputeLossOTA / ComputeLossAuxOTA) and its hyper-parameters."""

from amc.train.loss import SimOTAAssigner, YOLOv7Loss, bbox_iou, scale_hyp, smooth_bce

__all__ = ["SimOTAAssigner", "YOLOv7Loss", "bbox_iou", "scale_hyp", "smooth_bce"]
