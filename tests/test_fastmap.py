"""FastCocoMap equals pycocotools' COCOeval (amc.eval.metrics.evaluate_map): random and hand-made edge cases,
and the demo model's real detections."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import COCOeval

from amc.errors import AmcError, ConfigError
from amc.eval.fastmap import FastCocoMap
from amc.eval.metrics import _results_coco, coco_ground_truth, detections_to_coco_results, evaluate_map

TOL = 1e-12
GT_CATEGORIES = [3, 7, 11, 20, 30, 40]  # 30: never predicted (AP 0); 40: predicted, never labelled (no AP)
CLASSES = [11, 3, 20, 7, 40]  # class index -> category id: not the identity, not sorted


def cocoeval_precision(gt, detections, category_ids, image_ids) -> np.ndarray:
    """COCOeval's precision [T, R, K] (area all, 100 detections), run as evaluate_map runs it."""
    image_ids = sorted({int(i) for i in image_ids})
    results = detections_to_coco_results({i: d for i, d in detections.items() if int(i) in image_ids},
                                          category_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, _results_coco(gt, results), "bbox")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][:, :, :, 0, -1]


def assert_same(gt, detections, category_ids, image_ids=None) -> tuple:
    """evaluate_map and FastCocoMap agree on both mAPs, per class, and on COCOeval's whole precision array."""
    ref = evaluate_map(gt, detections, category_ids, image_ids=image_ids, per_class=True)
    fast = FastCocoMap(gt, category_ids, image_ids)
    got = fast(detections, per_class=True)
    assert got.map50_95 == pytest.approx(ref.map50_95, abs=TOL)
    assert got.map50 == pytest.approx(ref.map50, abs=TOL)
    assert got.per_class.keys() == ref.per_class.keys()
    for k, v in ref.per_class.items():
        assert got.per_class[k] == pytest.approx(v, abs=TOL), k
    ids = sorted(gt.getImgIds()) if image_ids is None else image_ids
    np.testing.assert_allclose(fast.precision(detections), cocoeval_precision(gt, detections, category_ids, ids),
                               rtol=0, atol=TOL)
    return ref, got


def random_case(seed: int, n_images: int = 10, grid: float = 8.0):
    """Boxes on a coarse grid (IoU ties, IoUs exactly at thresholds, duplicates, zero-area and inverted boxes),
    scores from a few values (score ties), crowd boxes, boxes ignored by their area field, >100 detections of
    one (image, category), images without detections, tensors of several dtypes and arrays."""
    rng = np.random.default_rng(seed)
    images = [{"id": 100 + 7 * i, "file_name": f"{i}.jpg", "width": 64, "height": 64} for i in range(n_images)]
    rng.shuffle(images)  # ids not in the images' order
    annotations = []
    for im in images:
        for _ in range(rng.integers(0, 8)):
            x, y = rng.integers(0, 6, 2) * grid
            w, h = rng.integers(0, 4, 2) * grid
            area = float(w * h) if rng.random() > 0.05 else float(rng.choice([-1.0, 2e10]))
            annotations.append({"id": len(annotations) + 1, "image_id": im["id"],
                                "category_id": int(rng.choice(GT_CATEGORIES[:5])), "bbox": [x, y, w, h],
                                "area": area, "iscrowd": int(rng.random() < 0.15)})
    categories = [{"id": c, "name": f"c{c}"} for c in GT_CATEGORIES]
    detections = {}
    for k, im in enumerate(images[:-2]):  # the last two images: no detections (missing)
        boxes = [a for a in annotations if a["image_id"] == im["id"]]
        rows = []
        for _ in range(rng.integers(0, 40)):
            if boxes and rng.random() < 0.6:  # near a labelled box
                a = boxes[rng.integers(len(boxes))]
                x, y, w, h = a["bbox"]
                cls = CLASSES.index(a["category_id"]) if a["category_id"] in CLASSES and rng.random() < 0.8 \
                    else rng.integers(len(CLASSES))
                j = rng.integers(-1, 2, 4) * (grid / 4) * (rng.random() < 0.7)
                box = [x + j[0], y + j[1], x + w + j[2], y + h + j[3]]
            else:  # anywhere, possibly zero-area or inverted
                x, y = rng.integers(0, 6, 2) * grid
                w, h = rng.integers(-1, 4, 2) * grid
                box, cls = [x, y, x + w, y + h], rng.integers(len(CLASSES))
            rows.append(box + [rng.integers(1, 10) / 10 * rng.choice([1, 1 / 3]), cls])
            if rng.random() < 0.2:
                rows.append(list(rows[-1]))  # an exact duplicate
        if k == 0:  # 150 detections of one category in one image: COCOeval keeps the best 100
            for _ in range(150):
                x, y = rng.integers(0, 6, 2) * grid
                rows.append([x, y, x + 2 * grid, y + 2 * grid, rng.integers(1, 5) / 10, 1])
        arr = np.array(rows, dtype=np.float64).reshape(-1, 6)
        kind = k % 4
        detections[im["id"]] = (arr if kind == 0 else torch.tensor(arr, dtype=torch.float32) if kind == 1
                                else torch.tensor(arr, dtype=torch.float64) if kind == 2 else arr.astype(np.float32))
    detections[images[-1]["id"]] = torch.zeros(0, 6)  # an image with an empty tensor
    return coco_ground_truth(images, annotations, categories), detections


@pytest.mark.parametrize("seed", range(40))
def test_random_detections_equal_cocoeval(seed: int) -> None:
    gt, detections = random_case(seed)
    ref, _ = assert_same(gt, detections, CLASSES)
    assert 0.0 < ref.map50_95 < 1.0
    assert 40 not in ref.per_class and ref.per_class.get(30) == 0.0


def test_an_image_subset_equals_cocoeval() -> None:
    gt, detections = random_case(7, n_images=12)
    ids = sorted(gt.getImgIds())[::2]
    assert_same(gt, detections, CLASSES, image_ids=ids)  # detections of the other images are ignored
    assert_same(gt, detections, CLASSES, image_ids=ids[:1] + ids[:1])  # duplicates are dropped as COCOeval does


def test_crowd_boxes_match_many_detections_which_are_ignored() -> None:
    images = [{"id": 1}, {"id": 2}]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 1},
        {"id": 2, "image_id": 1, "category_id": 5, "bbox": [200, 200, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 5, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
    ]
    gt = coco_ground_truth(images, annotations, [{"id": 5, "name": "a"}])
    # Small boxes inside the crowd region: IoU = their own area / their own area = 1 with the crowd box, so
    # all of them match it (and are ignored) instead of counting as false positives.
    inside = [[10 * k, 10 * k, 10 * k + 20, 10 * k + 20, 0.9 - 0.01 * k, 0] for k in range(5)]
    detections = {1: torch.tensor(inside + [[200, 200, 220, 220, 0.5, 0]]), 2: torch.tensor([[0, 0, 10, 10, 0.4, 0]])}
    ref, got = assert_same(gt, detections, [5])
    assert got.map50_95 == pytest.approx(1.0)
    # without the crowd flag, the same boxes are false positives ranked first
    annotations[0]["iscrowd"] = 0
    ref_plain, _ = assert_same(coco_ground_truth(images, annotations, [{"id": 5, "name": "a"}]), detections, [5])
    assert ref_plain.map50_95 < ref.map50_95


def test_an_iou_tie_goes_to_the_last_box() -> None:
    """COCOeval's loop keeps the last box of highest IoU: here the first detection ties between boxes A and B
    and takes B, which leaves A to the second detection (two true positives, where taking A would leave the
    second one unmatched)."""
    images = [{"id": 1}]
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
                   {"id": 2, "image_id": 1, "category_id": 1, "bbox": [4, 0, 10, 10], "area": 100, "iscrowd": 0}]
    gt = coco_ground_truth(images, annotations, [{"id": 1, "name": "a"}])
    detections = {1: np.array([[2, 0, 12, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 0]])}
    _, got = assert_same(gt, detections, [1])
    assert got.map50 == pytest.approx(1.0)


def test_more_than_100_tied_detections_keep_the_first_rows() -> None:
    images = [{"id": 1}, {"id": 2}]
    annotations = [{"id": k + 1, "image_id": 1 + k % 2, "category_id": 1, "bbox": [10 * k, 0, 10, 10],
                    "area": 100, "iscrowd": 0} for k in range(20)]
    gt = coco_ground_truth(images, annotations, [{"id": 1, "name": "a"}])
    rows = [[10 * k, 0, 10 * k + 10, 10, 0.5, 0] for k in range(20)] * 6  # 120 rows, all tied
    detections = {1: np.array(rows), 2: np.array(rows[::-1])}
    assert_same(gt, detections, [1])


def test_no_detections_and_empty_images() -> None:
    gt, detections = random_case(3)
    ref, got = assert_same(gt, {}, CLASSES)
    assert got.map50_95 == ref.map50_95 == 0.0 and got.map50 == 0.0
    assert_same(gt, {i: torch.zeros(0, 6) for i in detections}, CLASSES)


def test_two_classes_of_one_category() -> None:
    gt, detections = random_case(11)
    assert_same(gt, detections, [3, 3, 20, 7, 11])


def test_same_errors_as_evaluate_map() -> None:
    gt, detections = random_case(5)
    for args in [(CLASSES, []), (CLASSES, [999]), ([3, 99], None)]:
        with pytest.raises(AmcError) as expected:
            evaluate_map(gt, detections, *args)
        with pytest.raises(AmcError) as actual:
            FastCocoMap(gt, *args)
        assert str(actual.value) == str(expected.value)
    unlabelled = coco_ground_truth([{"id": 1}], [], [{"id": 1, "name": "a"}])
    with pytest.raises(AmcError, match="hold no ground-truth boxes"):
        FastCocoMap(unlabelled, [1])
    bad = dict(detections)
    first = next(iter(bad))
    bad[first] = torch.tensor([[0, 0, 5, 5, 0.5, len(CLASSES)]])
    with pytest.raises(AmcError) as expected:
        evaluate_map(gt, bad, CLASSES)
    with pytest.raises(AmcError) as actual:
        FastCocoMap(gt, CLASSES)(bad)
    assert str(actual.value) == str(expected.value)
    with pytest.raises(AmcError, match="unique positive"):
        FastCocoMap.from_dicts([{"id": 1}], [{"id": 0, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1],
                                              "area": 1, "iscrowd": 0}], [{"id": 1, "name": "a"}], [1])


@pytest.fixture(scope="module")
def demo_predictions():
    """The embedded demo model's detections on 60 demo val images, at the proxy's and the official NMS."""
    from amc.data.datasets import load_dataset
    from amc.data.loaders import EvalSet
    from amc.eval.evaluator import DetectionEvaluator, EvalSettings
    from amc.models.io import load_model

    val = load_dataset("demo", None, "val").subset(60, 0)
    model, _ = load_model("demo-model")
    eval_set = EvalSet(val, 256, 32, stride=32, progress=False)
    out = {}
    for name, settings in [("proxy", EvalSettings(conf_thres=0.01, max_det=100)), ("official", EvalSettings())]:
        evaluator = DetectionEvaluator(val, eval_set, settings, map_backend="fast")
        out[name] = evaluator, evaluator.predict(model)[0]
    return val, out


@pytest.mark.parametrize("nms", ["proxy", "official"])
def test_demo_model_detections_equal_cocoeval(demo_predictions, nms: str) -> None:
    val, out = demo_predictions
    evaluator, detections = out[nms]
    ref, got = assert_same(evaluator.ground_truth, detections, val.category_ids, evaluator.image_ids)
    assert got == evaluator.fast_map(detections, per_class=True)  # built once by the evaluator
    assert ref.map50_95 > 0.5


def test_unknown_backend_is_refused(demo_predictions) -> None:
    from amc.eval.evaluator import DetectionEvaluator

    val, out = demo_predictions
    with pytest.raises(ConfigError, match="map_backend"):
        DetectionEvaluator(val, out["proxy"][0].eval_set, map_backend="magic")
