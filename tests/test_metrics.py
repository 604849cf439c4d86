"""COCO mAP: evaluate_map equals COCOeval run the usual way, on files, over hand-made ground truth."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from amc.errors import AmcError
from amc.eval import COCO80_TO_COCO91, MapResult, coco_ground_truth, detections_to_coco_results, evaluate_map

CATEGORY_IDS = [1, 5, 9]  # class index -> category id: non-contiguous, as in COCO
IMAGES = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in (1, 2, 3, 4, 5, 6)]
# (image, category, [x, y, w, h], iscrowd); image 3 has no labels, image 6 only a crowd box.
BOXES = [
    (1, 1, [10, 10, 50, 50], 0), (1, 5, [100, 100, 40, 60], 0),
    (2, 9, [20, 30, 80, 40], 0), (2, 1, [200, 50, 30, 30], 0),
    (4, 5, [50, 50, 100, 100], 0), (4, 1, [0, 0, 300, 300], 1), (4, 1, [400, 400, 50, 50], 0),
    (5, 9, [10, 10, 20, 20], 0), (5, 5, [300, 300, 60, 60], 0),
    (6, 1, [0, 0, 100, 100], 1),
]
ANNOTATIONS = [{"id": k + 1, "image_id": im, "category_id": cat, "bbox": box, "area": box[2] * box[3],
                "iscrowd": crowd} for k, (im, cat, box, crowd) in enumerate(BOXES)]
CATEGORIES = [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS]
# (image, class index, [x, y, w, h], score): perfect, shifted, false positives, a detection inside a crowd
# region (ignored), missed boxes, and class 2 (category 9) never predicted.
PREDICTIONS = [
    (1, 0, [10, 10, 50, 50], 0.9), (1, 1, [110, 105, 40, 60], 0.8),
    (2, 0, [500, 300, 40, 40], 0.6),
    (3, 1, [10, 10, 40, 40], 0.5),
    (4, 1, [50, 50, 100, 100], 0.95), (4, 0, [405, 402, 50, 50], 0.85), (4, 0, [20, 20, 80, 80], 0.4),
    (5, 1, [300, 300, 60, 60], 0.7), (5, 1, [320, 310, 50, 50], 0.2),
]


def detections_of(predictions: list[tuple[int, int, list[float], float]]) -> dict[int, torch.Tensor]:
    """Hand-made predictions as amc detections (x1, y1, x2, y2, score, class), one float32 tensor per image."""
    rows: dict[int, list[list[float]]] = {}
    for image, cls, (x, y, w, h), score in predictions:
        rows.setdefault(image, []).append([x, y, x + w, y + h, score, cls])
    return {image: torch.tensor(r, dtype=torch.float32) for image, r in rows.items()}


def coco_results_of(predictions: list[tuple[int, int, list[float], float]]) -> list[dict]:
    """The same predictions written directly as a COCO results file would hold them."""
    return [{"image_id": image, "category_id": CATEGORY_IDS[cls], "bbox": box,
             "score": float(np.float32(score))} for image, cls, box, score in predictions]


def cocoeval_on_files(tmp_path: Path, results: list[dict], image_ids: list[int] | None = None) -> np.ndarray:
    """COCOeval run the usual way: json files, COCO(file), loadRes(file), evaluate/accumulate/summarize."""
    gt_file, res_file = tmp_path / "gt.json", tmp_path / "results.json"
    gt_file.write_text(json.dumps({"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES}))
    res_file.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(str(res_file)), "bbox")
        if image_ids is not None:
            ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.fixture
def gt() -> COCO:
    return coco_ground_truth(IMAGES, ANNOTATIONS, CATEGORIES)


def test_evaluate_map_equals_cocoeval(gt: COCO, tmp_path: Path) -> None:
    result = evaluate_map(gt, detections_of(PREDICTIONS), CATEGORY_IDS, per_class=True)
    stats = cocoeval_on_files(tmp_path, coco_results_of(PREDICTIONS))
    assert (result.map50_95, result.map50) == (stats[0], stats[1])
    assert 0 < result.map50_95 < result.map50 < 1
    assert result.per_class is not None and result.per_class[9] == 0.0  # category 9 is never predicted
    assert np.mean(list(result.per_class.values())) == pytest.approx(result.map50_95)


def test_results_from_arrays_and_tensors_alike(gt: COCO) -> None:
    detections = detections_of(PREDICTIONS)
    arrays = {image: det.numpy() for image, det in detections.items()}
    assert evaluate_map(gt, arrays, CATEGORY_IDS) == evaluate_map(gt, detections, CATEGORY_IDS)
    results = detections_to_coco_results(detections, CATEGORY_IDS)
    assert sorted(r["bbox"] for r in results) == sorted(r["bbox"] for r in coco_results_of(PREDICTIONS))


def test_perfect_predictions_score_one(gt: COCO) -> None:
    perfect = [(im, CATEGORY_IDS.index(cat), box, 0.9) for im, cat, box, crowd in BOXES if not crowd]
    result = evaluate_map(gt, detections_of(perfect), CATEGORY_IDS, per_class=True)
    assert (result.map50_95, result.map50) == (1.0, 1.0)
    assert result.per_class == {1: 1.0, 5: 1.0, 9: 1.0}


def test_image_subset_equals_cocoeval_on_that_subset(gt: COCO, tmp_path: Path) -> None:
    subset = [1, 3, 4]
    result = evaluate_map(gt, detections_of(PREDICTIONS), CATEGORY_IDS, image_ids=subset)
    stats = cocoeval_on_files(tmp_path, coco_results_of(PREDICTIONS), image_ids=subset)
    assert (result.map50_95, result.map50) == (stats[0], stats[1])
    assert result != evaluate_map(gt, detections_of(PREDICTIONS), CATEGORY_IDS)


def test_images_without_detections_count_by_default(gt: COCO, tmp_path: Path) -> None:
    # Without detections in image 2, its boxes are still missed: the default is every image, not the
    # images that have detections.
    without_2 = [p for p in PREDICTIONS if p[0] != 2]
    detections = detections_of(without_2)
    result = evaluate_map(gt, detections, CATEGORY_IDS)
    stats = cocoeval_on_files(tmp_path, coco_results_of(without_2))
    assert (result.map50_95, result.map50) == (stats[0], stats[1])
    assert evaluate_map(gt, detections, CATEGORY_IDS, image_ids=list(detections)).map50 > result.map50


def test_no_detections_score_zero(gt: COCO) -> None:
    empty = {i: torch.zeros(0, 6) for i in (1, 2)}
    assert evaluate_map(gt, {}, CATEGORY_IDS, per_class=True) == MapResult(0.0, 0.0, {1: 0.0, 5: 0.0, 9: 0.0})
    assert evaluate_map(gt, empty, CATEGORY_IDS) == MapResult(0.0, 0.0)


def test_no_ground_truth_boxes_is_an_error(gt: COCO, tmp_path: Path) -> None:
    # Image 3 has no labels and image 6 only a crowd box: COCOeval itself answers -1 (undefined).
    assert cocoeval_on_files(tmp_path, coco_results_of(PREDICTIONS), image_ids=[3, 6])[0] == -1
    for detections in (detections_of(PREDICTIONS), {}):
        with pytest.raises(AmcError, match="no ground-truth boxes"):
            evaluate_map(gt, detections, CATEGORY_IDS, image_ids=[3, 6])


def test_user_errors_are_clear(gt: COCO) -> None:
    with pytest.raises(AmcError, match="not in the ground truth"):
        evaluate_map(gt, {}, CATEGORY_IDS, image_ids=[1, 99])
    with pytest.raises(AmcError, match="not categories of the ground truth"):
        evaluate_map(gt, {}, COCO80_TO_COCO91)
    with pytest.raises(AmcError, match="class 3"):
        evaluate_map(gt, detections_of([(1, 3, [0, 0, 5, 5], 0.5)]), CATEGORY_IDS)
    with pytest.raises(AmcError, match="no images"):
        evaluate_map(gt, {}, CATEGORY_IDS, image_ids=[])
    with pytest.raises(AmcError, match="unique positive"):
        coco_ground_truth(IMAGES, [dict(ANNOTATIONS[0], id=0)], CATEGORIES)
    with pytest.raises(AmcError, match="lacks area"):
        coco_ground_truth(IMAGES, [{k: v for k, v in ANNOTATIONS[0].items() if k != "area"}], CATEGORIES)


def test_ground_truth_is_quiet_and_leaves_inputs_alone(capsys: pytest.CaptureFixture[str]) -> None:
    annotations = [dict(a) for a in ANNOTATIONS]
    gt = coco_ground_truth(IMAGES, annotations, CATEGORIES)
    evaluate_map(gt, detections_of(PREDICTIONS), CATEGORY_IDS)
    assert capsys.readouterr().out == ""
    assert annotations == ANNOTATIONS  # COCOeval adds an "ignore" key to the ground truth it is given
    evaluate_map(gt, detections_of(PREDICTIONS), CATEGORY_IDS, verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_map_result_to_dict_is_json_ready() -> None:
    d = MapResult(0.25, 0.5, {1: 0.5, 9: 0.0}).to_dict()
    assert json.loads(json.dumps(d)) == {"map50_95": 0.25, "map50": 0.5, "per_class": {"1": 0.5, "9": 0.0}}


def test_coco80_to_coco91_skips_the_unused_ids() -> None:
    unused = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}  # COCO category ids without annotations
    assert COCO80_TO_COCO91 == [i for i in range(1, 91) if i not in unused]
