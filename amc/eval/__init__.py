"""Evaluation: NMS and box utilities equal to the official YOLOv7 ones, and COCO mAP with pycocotools."""

from amc.eval.metrics import (
    COCO80_TO_COCO91,
    MapResult,
    coco_ground_truth,
    detections_to_coco_results,
    evaluate_map,
)
# ``nms`` (the function) is not re-exported: it would shadow the ``amc.eval.nms`` module.
from amc.eval.nms import box_iou, non_max_suppression, scale_boxes, xywh_to_xyxy

__all__ = [
    "COCO80_TO_COCO91",
    "MapResult",
    "box_iou",
    "coco_ground_truth",
    "detections_to_coco_results",
    "evaluate_map",
    "non_max_suppression",
    "scale_boxes",
    "xywh_to_xyxy",
]
