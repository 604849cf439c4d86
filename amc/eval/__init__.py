"""Evaluation: NMS and box utilities equal to the official YOLOv7 ones, and COCO mAP with pycocotools."""

from amc.eval.metrics import (
    COCO80_TO_COCO91,
    MapResult,
    coco_ground_truth,
    detections_to_coco_results,
    evaluate_map,
)
from amc.eval.nms import box_iou, nms, non_max_suppression, scale_boxes, xywh_to_xyxy

__all__ = [
    "COCO80_TO_COCO91",
    "MapResult",
    "box_iou",
    "coco_ground_truth",
    "detections_to_coco_results",
    "evaluate_map",
    "nms",
    "non_max_suppression",
    "scale_boxes",
    "xywh_to_xyxy",
]
