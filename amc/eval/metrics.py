"""COCO mAP of detections with pycocotools, in memory: the official YOLOv7 mAP protocol.

The official ``test.py --save-json`` writes its detections as COCO results and scores them with
``COCOeval``; amc does the same without files: :func:`coco_ground_truth` builds the ground truth once
from COCO-format dicts, :func:`evaluate_map` scores one model's detections against it. Detections are
not rounded (the official script rounds boxes to 3 and scores to 5 decimals before writing its json),
which changes mAP by far less than its last printed digit.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from amc.errors import AmcError

COCO80_TO_COCO91: list[int] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
    34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
    62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]
"""COCO category id of each of the 80 contiguous class indices of COCO-trained models.

The COCO paper defines 91 category ids (1-90 used, with gaps: 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 have no
annotations); models, like the official checkpoints, predict 80 contiguous classes. Pass this list as
``category_ids`` to :func:`evaluate_map` when an official COCO-trained checkpoint is evaluated on a COCO
annotation json (``instances_val2017.json``) whose categories are the standard 80. A dataset of your own
maps its class indices to its own category ids instead.
"""

_REQUIRED_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")


@dataclass
class MapResult:
    """COCO box mAP of one set of detections.

    Attributes:
        map50_95: AP averaged over IoU 0.50:0.95 (COCOeval ``stats[0]``), in [0, 1].
        map50: AP at IoU 0.50 (``stats[1]``).
        per_class: AP@0.5:0.95 per category id, for the categories with ground truth in the evaluated
            images; None unless asked for.
    """

    map50_95: float
    map50: float
    per_class: dict[int, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (per-class keys become strings, as JSON requires)."""
        d = asdict(self)
        if self.per_class is not None:
            d["per_class"] = {str(k): v for k, v in self.per_class.items()}
        return d


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Swallow pycocotools' progress prints unless ``verbose``."""
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def coco_ground_truth(images: list[dict], annotations: list[dict], categories: list[dict],
                      verbose: bool = False) -> COCO:
    """An in-memory pycocotools ground truth from COCO-format dicts (no file is written).

    Args:
        images: ``{"id", ...}`` per image (``file_name``, ``width``, ``height`` are kept but unused).
        annotations: ``{"id", "image_id", "category_id", "bbox": [x, y, w, h] in pixels, "area",
            "iscrowd"}`` per box. Ids must be unique and positive: COCOeval records a match by the
            annotation id, and takes an id of 0 for "unmatched".
        categories: ``{"id", "name"}`` per category.
        verbose: let pycocotools print its progress.

    Raises:
        AmcError: an annotation lacks a key, or its id is not a unique positive integer.
    """
    _check_annotations(annotations)
    coco = COCO()
    # COCOeval writes an "ignore" flag into the ground-truth dicts: copies keep the caller's dicts intact.
    coco.dataset = {"images": [dict(i) for i in images], "annotations": [dict(a) for a in annotations],
                    "categories": [dict(c) for c in categories]}
    with _quiet(verbose):
        coco.createIndex()
    return coco


def _check_annotations(annotations: list[dict]) -> None:
    """Refuse annotations COCOeval would silently mis-score (a missing key fails late, an id of 0 or a
    duplicate id makes a ground-truth box matchable twice)."""
    seen: set[int] = set()
    for a in annotations:
        missing = [k for k in _REQUIRED_ANNOTATION_KEYS if k not in a]
        if missing:
            raise AmcError(f"ground-truth annotation {a} lacks {', '.join(missing)}: COCO annotations need "
                           f"{', '.join(_REQUIRED_ANNOTATION_KEYS)}")
        if not isinstance(a["id"], (int, np.integer)) or a["id"] <= 0 or a["id"] in seen:
            raise AmcError(f"ground-truth annotation id {a['id']!r} (image {a['image_id']}) is not a unique "
                           f"positive integer: number the annotations 1, 2, 3, ...")
        seen.add(int(a["id"]))


def detections_to_coco_results(detections: Mapping[int, torch.Tensor | np.ndarray],
                               category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO result dicts (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``) from detections.

    Args:
        detections: image id -> ``(n, 6)`` rows ``x1, y1, x2, y2, score, class index`` in original pixels.
        category_ids: the category id of each class index.

    Raises:
        AmcError: a class index has no category id.
    """
    results = []
    for image_id, det in detections.items():
        rows = _as_numpy(det)
        classes = rows[:, 5].astype(np.int64)
        if len(classes) and (classes.min() < 0 or classes.max() >= len(category_ids)):
            raise AmcError(f"image {image_id} has a detection of class {int(classes.max())} but category_ids "
                           f"maps only {len(category_ids)} classes: give one category id per model class")
        for (x1, y1, x2, y2, score), cls in zip(rows[:, :5].tolist(), classes.tolist()):
            results.append({"image_id": int(image_id), "category_id": int(category_ids[cls]),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return results


def _as_numpy(det: torch.Tensor | np.ndarray) -> np.ndarray:
    """Detections as a float64 ``(n, 6)`` array, from a tensor on any device or an array."""
    if isinstance(det, torch.Tensor):
        det = det.detach().cpu().double().numpy()
    return np.asarray(det, dtype=np.float64).reshape(-1, 6)


def evaluate_map(gt: COCO, detections: Mapping[int, torch.Tensor | np.ndarray], category_ids: Sequence[int],
                 image_ids: Sequence[int] | None = None, per_class: bool = False,
                 verbose: bool = False) -> MapResult:
    """COCO box mAP@0.5:0.95 and mAP@0.5 of ``detections`` against ``gt``, scored by COCOeval.

    Args:
        gt: the ground truth (:func:`coco_ground_truth`, or ``COCO(annotation_file)``).
        detections: image id -> ``(n, 6)`` rows ``x1, y1, x2, y2, score, class index`` in original-image
            pixels. An image may be missing or have no rows: it then only contributes missed boxes.
        category_ids: the category id of each contiguous class index (:data:`COCO80_TO_COCO91` for
            official COCO checkpoints on COCO's json); each must be a category of ``gt``.
        image_ids: the images evaluated (COCOeval ``params.imgIds``), default all images of ``gt``. Images
            without detections must be listed to count, which is why the keys of ``detections`` are not
            the default; detections of images outside this list are ignored.
        per_class: also return AP@0.5:0.95 per category id.
        verbose: let pycocotools print its progress and summary table.

    Returns:
        The mAPs. With no detections at all, both are 0.0 (every ground-truth box is missed).

    Raises:
        AmcError: no image is evaluated, an image id is not in ``gt``, a category id is not one of
            ``gt``'s categories, or the evaluated images hold no (non-crowd) ground-truth box, where mAP is
            undefined. The last is an error even without detections: a set without boxes to find cannot
            score a model, whatever it predicts.
    """
    image_ids = sorted(gt.getImgIds()) if image_ids is None else sorted({int(i) for i in image_ids})
    _check_evaluable(gt, image_ids, category_ids)
    evaluated = set(image_ids)
    results = detections_to_coco_results({i: d for i, d in detections.items() if int(i) in evaluated},
                                         category_ids)
    with _quiet(verbose):
        ev = COCOeval(gt, _results_coco(gt, results), "bbox")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return MapResult(map50_95=float(ev.stats[0]), map50=float(ev.stats[1]),
                     per_class=_per_class_ap(ev) if per_class else None)


def _check_evaluable(gt: COCO, image_ids: list[int], category_ids: Sequence[int]) -> None:
    """Refuse evaluations COCOeval would run silently but wrongly (see :func:`evaluate_map`)."""
    if not image_ids:
        raise AmcError("no images to evaluate: image_ids is empty")
    unknown = sorted(set(image_ids) - set(gt.getImgIds()))
    if unknown:
        raise AmcError(f"image ids {unknown[:5]} are not in the ground truth: evaluate images of its dataset")
    foreign = sorted(set(category_ids) - set(gt.getCatIds()))
    if foreign:
        raise AmcError(f"category ids {foreign[:5]} are not categories of the ground truth (its ids: "
                       f"{sorted(gt.getCatIds())[:10]}...): check the class -> category id mapping "
                       f"(COCO80_TO_COCO91 is only for a ground truth with the 91-id COCO categories)")
    # An empty image list makes getAnnIds return every annotation, hence the check above comes first.
    if not gt.getAnnIds(imgIds=image_ids, catIds=gt.getCatIds(), iscrowd=False):
        raise AmcError(f"the {len(image_ids)} evaluated images hold no ground-truth boxes (crowd boxes "
                       f"aside): mAP is undefined; evaluate images with labels")


def _results_coco(gt: COCO, results: list[dict[str, Any]]) -> COCO:
    """The results as a COCO object, as ``gt.loadRes(results)`` makes them but also for no results at all
    (``loadRes`` fails on an empty list; COCOeval then scores every ground-truth box as missed)."""
    res = COCO()
    annotations = [dict(r, id=k + 1, area=r["bbox"][2] * r["bbox"][3], iscrowd=0) for k, r in enumerate(results)]
    res.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                   "annotations": annotations}
    res.createIndex()
    return res


def _per_class_ap(ev: COCOeval) -> dict[int, float]:
    """AP@0.5:0.95 (all areas, 100 detections) per category id with ground truth; others (-1) are left out."""
    precision = ev.eval["precision"][:, :, :, ev.params.areaRngLbl.index("all"), -1]  # [iou, recall, class]
    ap = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        if (p > -1).any():
            ap[int(cat)] = float(p[p > -1].mean())
    return ap
