"""NMS and box utilities: the official non_max_suppression output, and greedy NMS against a plain reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import amc.eval.nms as nms_module
from amc.eval.nms import box_iou, nms, non_max_suppression, scale_boxes, xywh_to_xyxy
from conftest import FIXTURES

NMS_META = json.loads((FIXTURES / "nms.json").read_text())
# The official function's own defaults, for the arguments a fixture setting leaves out.
OFFICIAL_DEFAULTS = {"conf_thres": 0.25, "iou_thres": 0.45, "multi_label": False, "agnostic": False}


@pytest.fixture(scope="module")
def nms_io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "nms.io.safetensors"))


@pytest.mark.parametrize("setting", sorted(NMS_META["settings"]))
def test_non_max_suppression_matches_official(nms_io: dict[str, torch.Tensor], setting: str) -> None:
    kwargs = {**OFFICIAL_DEFAULTS, **NMS_META["settings"][setting]}
    pred = nms_io["pred"].clone()
    out = non_max_suppression(pred, max_det=NMS_META["max_det"], **kwargs)
    assert torch.equal(pred, nms_io["pred"])  # the input is not modified
    assert len(out) == pred.shape[0]
    for i, det in enumerate(out):
        ref = nms_io[f"{setting}_{i}"]
        assert det.shape == ref.shape, (setting, i)
        assert torch.equal(det[:, 5], ref[:, 5]), (setting, i)  # same classes, same rows in the same order
        assert (det - ref).abs().max().item() <= 1e-5, (setting, i)


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float) -> list[int]:
    """torchvision's CPU kernel written plainly: visit boxes by descending score (ties in input order),
    keep one unless a kept box overlaps it with an IoU (in the boxes' dtype) that, as a double, exceeds the
    threshold."""
    b = boxes.numpy()
    order = sorted(range(len(b)), key=lambda i: -scores[i].item())
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = np.zeros(len(b), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        w = np.maximum(b.dtype.type(0), np.minimum(b[i, 2], b[:, 2]) - np.maximum(b[i, 0], b[:, 0]))
        h = np.maximum(b.dtype.type(0), np.minimum(b[i, 3], b[:, 3]) - np.maximum(b[i, 1], b[:, 1]))
        inter = w * h
        with np.errstate(invalid="ignore"):  # 0/0 for degenerate boxes: NaN, never above a threshold
            iou = inter / (area[i] + area - inter)
        suppressed |= iou.astype(np.float64) > iou_thres
    return keep


def random_boxes(n: int, seed: int, tied_scores: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Clusters of overlapping boxes, some of zero width, with scores optionally from a few values (ties)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(max(1, n // 20), 2, generator=g) * 200
    xy = centres[torch.randint(0, len(centres), (n,), generator=g)] + torch.randn(n, 2, generator=g) * 4
    wh = torch.rand(n, 2, generator=g) * 30 + 5
    wh[torch.rand(n, generator=g) < 0.03, 0] = 0  # degenerate boxes
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1)
    scores = (torch.randint(0, 5, (n,), generator=g) / 5 if tied_scores else torch.rand(n, generator=g))
    return boxes, scores


def thresholds_at_data(boxes: torch.Tensor, scores: torch.Tensor) -> list[float]:
    """Thresholds equal to IoUs of the top-scoring box (always kept, so its decisions count) with others, where
    the strict > matters, and just below them, where rounding the threshold to float32 would round it up
    onto the IoU and flip the decision."""
    iou = box_iou(boxes, boxes)[scores.argmax()]
    picks = iou[(iou > 0.2) & (iou < 0.9)][:2].tolist()
    return [0.45, 0.65] + picks + [v - 1e-12 for v in picks]


@pytest.mark.parametrize("block", [None, 7, 64])  # None: the module's block size; small: many block edges
@pytest.mark.parametrize("tied_scores", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_nms_equals_reference(monkeypatch: pytest.MonkeyPatch, block: int | None, tied_scores: bool,
                              seed: int) -> None:
    if block is not None:
        monkeypatch.setattr(nms_module, "_MAX_BLOCK", block)
        monkeypatch.setattr(nms_module, "_MIN_BLOCK", block)
    boxes, scores = random_boxes(300, seed, tied_scores)
    for t in thresholds_at_data(boxes, scores):
        expected = reference_nms(boxes, scores, t)
        assert nms(boxes, scores, t).tolist() == expected, t
        assert nms(boxes, scores, t, max_keep=10).tolist() == expected[:10], t
        assert nms(boxes.double(), scores, t).tolist() == reference_nms(boxes.double(), scores, t), t


def test_nms_strictly_greater_and_edge_cases() -> None:
    # IoU exactly 0.5: inter 2, union 4.
    boxes = torch.tensor([[0.0, 0.0, 3.0, 1.0], [1.0, 0.0, 4.0, 1.0]])
    scores = torch.tensor([0.8, 0.9])
    assert box_iou(boxes, boxes)[0, 1].item() == 0.5
    assert nms(boxes, scores, 0.5).tolist() == [1, 0]
    assert nms(boxes, scores, 0.49).tolist() == [1]
    assert nms(boxes, scores, 0.5 - 1e-12).tolist() == [1]  # a threshold below 0.5 that rounds to it in float32
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.long and empty.shape == (0,)
    assert nms(boxes, scores, 0.49, max_keep=0).tolist() == []  # as the torch path's [:0]
    assert nms(boxes.requires_grad_(), scores, 0.49).tolist() == [1]


def test_box_iou_and_xywh_to_xyxy() -> None:
    xyxy = xywh_to_xyxy(torch.tensor([[10.0, 20.0, 4.0, 6.0], [0.0, 0.0, 2.0, 2.0]]))
    assert xyxy.tolist() == [[8.0, 17.0, 12.0, 23.0], [-1.0, -1.0, 1.0, 1.0]]
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    assert box_iou(a, b).tolist() == [[1.0, pytest.approx(1 / 3), 0.0]]


def test_non_max_suppression_options(nms_io: dict[str, torch.Tensor]) -> None:
    pred = nms_io["pred"][:1]
    everything = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45, max_det=10_000)[0]
    only = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45, classes=[3, 7], max_det=10_000)[0]
    assert len(only) and set(only[:, 5].tolist()) <= {3.0, 7.0}
    # Classes never interact in class-aware NMS: filtering before equals filtering after.
    assert torch.equal(only, everything[(everything[:, 5] == 3) | (everything[:, 5] == 7)])
    assert non_max_suppression(pred, conf_thres=1.0)[0].shape == (0, 6)
    top = non_max_suppression(pred, max_det=5)[0]
    assert torch.equal(top, non_max_suppression(pred)[0][:5])


def test_single_class_confidence_is_objectness() -> None:
    # A single-class model's class score is ignored (officially, its classification loss is zero).
    pred = torch.tensor([[[50.0, 50.0, 20.0, 20.0, 0.9, 0.1], [200.0, 50.0, 20.0, 20.0, 0.6, 0.9]]])
    det = non_max_suppression(pred, conf_thres=0.25)[0]
    assert det.tolist() == [[40.0, 40.0, 60.0, 60.0, pytest.approx(0.9), 0.0],
                            [190.0, 40.0, 210.0, 60.0, pytest.approx(0.6), 0.0]]


def letterbox_boxes(boxes: torch.Tensor, gain: float, pad_w: float, pad_h: float) -> torch.Tensor:
    """Where a letterbox (resize by the gain, then pad) moves original-image boxes."""
    return boxes * gain + torch.tensor([pad_w, pad_h, pad_w, pad_h])


def test_scale_boxes_inverts_letterbox() -> None:
    original = torch.tensor([[10.0, 20.0, 110.0, 220.0], [0.0, 0.0, 500.0, 375.0], [250.5, 100.25, 260.0, 101.0]])
    boxed = letterbox_boxes(original, 0.8, pad_w=16, pad_h=40)
    restored = scale_boxes(boxed, ((0.8, 0.8), (16, 40)), (375, 500))
    assert torch.allclose(restored, original, atol=1e-4)
    assert torch.equal(scale_boxes(boxed, (0.8, (16, 40)), (375, 500)), restored)  # a single gain


def test_scale_boxes_uses_the_height_gain_as_officially() -> None:
    # The official scale_coords divides both axes by ratio_pad[0][0]; the two gains of a real letterbox
    # differ by the rounding of the resized size only.
    boxed = torch.tensor([[116.0, 140.0, 216.0, 240.0]])
    assert torch.equal(scale_boxes(boxed, ((0.5, 0.4), (16, 40)), (375, 500)),
                       scale_boxes(boxed, (0.5, (16, 40)), (375, 500)))


def test_scale_boxes_clips_to_the_original_image() -> None:
    # Boxes reaching into the padding, or past it, end at the image border; the input is left unchanged.
    boxed = torch.tensor([[0.0, 0.0, 700.0, 700.0], [20.0, 45.0, 30.0, 50.0]])
    before = boxed.clone()
    restored = scale_boxes(boxed, (0.5, (16, 40)), (375, 500))
    assert restored.tolist() == [[0.0, 0.0, 500.0, 375.0], [8.0, 10.0, 28.0, 20.0]]
    assert torch.equal(boxed, before)


@pytest.mark.parametrize("k", [1, 7, 50, 99])
def test_top_rows_are_a_stable_sorts_first_rows(k: int) -> None:
    scores = torch.randint(0, 10, (100,), generator=torch.Generator().manual_seed(k)).float()  # many ties
    expected = torch.sort(scores, descending=True, stable=True).indices[:k].sort().values
    assert torch.equal(nms_module._top_rows(scores, k), expected)


def test_max_nms_keeps_the_best_candidates(nms_io: dict[str, torch.Tensor]) -> None:
    pred = nms_io["pred"][:1]
    x = pred[0][pred[0, :, 4] > 0.001]
    conf = x[:, 5:] * x[:, 4:5]
    cut = conf[conf > 0.001].topk(200).values[-1]  # the 200th best candidate of the multi-label expansion
    full = non_max_suppression(pred, max_det=10_000)[0]
    capped = non_max_suppression(pred, max_det=10_000, max_nms=200)[0]
    # A box's fate depends only on better boxes, so NMS over the 200 best candidates decides them as the
    # full run does, and keeps nothing else.
    assert 0 < len(capped) < len(full)
    assert torch.equal(capped, full[full[:, 4] >= cut])


@pytest.mark.parametrize("setting", sorted(NMS_META["settings"]))
def test_numpy_cpu_path_equals_the_torch_path(nms_io: dict[str, torch.Tensor], setting: str) -> None:
    # On the CPU non_max_suppression runs in numpy; the torch path (other devices) must give the same rows bit for
    # bit. The fixture's predictions and a sharper copy (more candidates, more overlaps) at the proxy's settings.
    kwargs = {**OFFICIAL_DEFAULTS, **NMS_META["settings"][setting]}
    for pred in (nms_io["pred"], nms_io["pred"] * torch.tensor([1.0, 1.0, 1.3, 1.3, 2.0] + [1.0] * 80)):
        for options in ({}, {"classes": [3, 7]}, {"max_nms": 150}, {"conf_thres": 0.01, "max_det": 100}):
            merged = {**kwargs, **options}
            fast = non_max_suppression(pred, max_det=merged.pop("max_det", NMS_META["max_det"]), **merged)
            for x, det in zip(pred, fast):
                wanted = (torch.tensor(merged["classes"], dtype=x.dtype) if "classes" in merged else None)
                multi_label = merged["multi_label"] and x.shape[1] > 6
                ref = nms_module._image_detections(
                    x[x[:, 4] > merged["conf_thres"]], merged["conf_thres"], merged["iou_thres"], wanted,
                    merged["agnostic"], multi_label, options.get("max_det", NMS_META["max_det"]), 4096,
                    merged.get("max_nms", 30000))
                assert torch.equal(det, ref), (setting, options)


def test_scale_boxes_numpy_cpu_path_equals_torch() -> None:
    # CPU boxes are scaled in numpy; the torch steps (other devices) give the same values bit for bit.
    boxes32 = torch.rand(50, 4, generator=torch.Generator().manual_seed(0)) * 700 - 50
    for boxes in (boxes32, boxes32.double()):
        for ratio_pad, shape in ((((0.8, 0.8), (16, 40)), (375, 500)), ((0.3333, (0.5, 21.5)), (640, 427))):
            gain = ratio_pad[0] if isinstance(ratio_pad[0], float) else ratio_pad[0][0]
            (pad_w, pad_h), (h0, w0) = ratio_pad[1], shape
            x = ((boxes[:, 0::2] - pad_w) / gain).clamp(0, w0)
            y = ((boxes[:, 1::2] - pad_h) / gain).clamp(0, h0)
            expected = torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), 1)
            assert torch.equal(scale_boxes(boxes, ratio_pad, shape), expected)
