"""Datasets (COCO, YOLO, the embedded synthetic demo), the official test-time geometry and the model inputs.

``load_dataset`` reads any kind into a :class:`DetectionDataset`; :class:`EvalSet` turns one into the official
rectangular test batches, decoded once; :class:`TrainSet` serves augmented training samples.
"""

from amc.data.datasets import (DATASET_KINDS, DetectionDataset, ImageRecord, demo_root, label_path, load_coco,
                               load_dataset, load_yolo)
from amc.data.letterbox import letterbox, rect_batch_shapes, resize_long_side
from amc.data.loaders import DEFAULT_HYP, EvalBatch, EvalSet, TrainSet, collate

__all__ = [
    "DATASET_KINDS", "DEFAULT_HYP", "DetectionDataset", "EvalBatch", "EvalSet", "ImageRecord", "TrainSet",
    "collate", "demo_root", "label_path", "letterbox", "load_coco", "load_dataset", "load_yolo",
    "rect_batch_shapes", "resize_long_side",
]
