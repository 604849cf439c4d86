"""Box utilities and non-maximum suppression, numerically identical to the official YOLOv7 evaluation.

The official code calls ``torchvision.ops.nms``; amc does not depend on torchvision, so :func:`nms` is
its own exact greedy NMS: same IoU arithmetic (in the boxes' dtype), same strict ``IoU > threshold`` test,
candidates visited in descending score order. :func:`non_max_suppression` wraps it with the official
per-image post-processing of decoded YOLO outputs (objectness filter, ``obj x cls`` confidences,
multi-label expansion, class-aware NMS by offsetting boxes per class), and reproduces the official
output row for row (``tests/test_nms.py``), without the official wall-clock time limit so that results
never depend on the machine's speed.

On the CPU both run in numpy rather than torch: an image holds a few hundred candidates, where each torch call's
fixed cost (~5-10 us) outweighs its arithmetic, and the proxy evaluator runs NMS on 200 images per episode
(numpy: about 2x faster on the demo's episodes, the same rows bit for bit, since every step is the same IEEE
float32 operation in the same order). Other devices, half precision and large candidate sets keep the torch path.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import numpy as np
import torch
from torch import Tensor

from amc.boxes import xywh_to_xyxy

# Entries of one IoU matrix computed at a time while suppressing: bounds the transient memory of nms()
# (a few float tensors of this size, 16 MiB each) whatever the number of boxes.
_IOU_BLOCK_ELEMENTS = 1 << 22
# Boxes resolved together in one greedy step of nms(): larger blocks mean fewer Python-level steps, but a
# quadratic IoU matrix per block.
_MAX_BLOCK = 1024
_MIN_BLOCK = 64


def box_area(boxes: Tensor) -> Tensor:
    """Areas of corner boxes ``(n, 4)``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU ``(n, m)`` of corner boxes ``a (n, 4)`` and ``b (m, 4)``.

    Computed as torchvision's NMS kernel does (``inter / (area_a + area_b - inter)`` in the boxes' dtype),
    so thresholding it reproduces torchvision's decisions exactly. Boxes of zero area give 0/0 = NaN,
    which compares false with any threshold (a degenerate box never suppresses nor is suppressed).
    """
    # In-place steps on fresh intermediates: nms() calls this on large blocks, where allocations dominate.
    inter = torch.min(a[:, None, 2], b[None, :, 2]).sub_(torch.max(a[:, None, 0], b[None, :, 0])).clamp_(min=0)
    h = torch.min(a[:, None, 3], b[None, :, 3]).sub_(torch.max(a[:, None, 1], b[None, :, 1])).clamp_(min=0)
    inter.mul_(h)
    union = (box_area(a)[:, None] + box_area(b)[None, :]).sub_(inter)
    return inter.div_(union)


def _threshold_in(dtype: torch.dtype, iou_thres: float) -> float:
    """The threshold ``t`` in ``dtype`` such that ``iou > t`` in ``dtype`` equals ``iou > iou_thres`` in float64.

    torchvision compares its float32 IoU with the threshold as a double; torch would round a Python
    threshold to float32 (0.6 rounds up, for one), which flips decisions for IoUs equal to that rounded
    value. Rounding the threshold down to the dtype instead keeps the double comparison's answer.
    """
    if dtype == torch.float64:
        return iou_thres
    t = np.float32(iou_thres)
    if float(t) > iou_thres:
        t = np.nextafter(t, np.float32(-np.inf))
    return float(t)


def _greedy_within(overlaps: np.ndarray, limit: int | None = None) -> np.ndarray:
    """Greedy NMS over a score-sorted block given its ``(m, m)`` matrix of ``IoU > threshold``: kept mask.

    At most ``limit`` boxes are kept: greedy NMS decides boxes in score order, so the first ``limit`` kept are
    final and the rest need not be visited.
    """
    kept = np.zeros(len(overlaps), dtype=bool)
    suppressed = np.zeros(len(overlaps), dtype=bool)
    left = len(overlaps) if limit is None else max(0, limit)
    for i in range(len(overlaps)):
        if not left:
            break
        if suppressed[i]:
            continue
        kept[i] = True
        left -= 1
        suppressed |= overlaps[i]  # marks earlier boxes too: they are decided already
    return kept


def _iou_above_numpy(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """``(m, m)`` matrix of ``IoU > threshold`` of corner boxes, the arithmetic of :func:`box_iou` in numpy."""
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1) * (y2 - y1)
    inter = np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :])
    np.maximum(inter, 0, out=inter)
    h = np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :])
    np.maximum(h, 0, out=h)
    inter *= h
    union = (area[:, None] + area[None, :]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 of degenerate boxes: NaN, never above
        inter /= union
    # ``threshold`` is representable in the boxes' dtype (_threshold_in), so numpy's weak-scalar comparison
    # in that dtype is exact.
    return inter > threshold


def _nms_numpy(boxes: np.ndarray, scores: np.ndarray, threshold: float, max_keep: int | None) -> np.ndarray:
    """:func:`nms` of a small CPU candidate set in numpy, all boxes in one IoU matrix: kept indices."""
    order = np.argsort(-scores, kind="stable")  # descending, equal scores in input order (as torch's stable sort)
    return order[np.flatnonzero(_greedy_within(_iou_above_numpy(boxes[order], threshold), max_keep))]


def nms(boxes: Tensor, scores: Tensor, iou_thres: float, max_keep: int | None = None) -> Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, in descending score order.

    Equal to ``torchvision.ops.nms``: a box is dropped when its IoU with a higher-scoring kept box is
    strictly greater than ``iou_thres``; equal scores keep their input order (a stable sort).

    Instead of visiting boxes one by one, the score-sorted boxes are taken in blocks: the boxes of a block
    still alive are resolved among themselves by the greedy rule, then the block's kept boxes suppress
    every later alive box in one IoU matrix. Work is the same as the one-by-one loop (kept x remaining
    IoUs) but in a few tensor operations per block. As greedy NMS decides boxes in score order, the first
    ``max_keep`` kept boxes are final before the rest is processed: stopping there is what makes the mAP
    protocol (300 detections out of up to 30k candidates) cheap.

    Args:
        boxes: ``(n, 4)`` corner boxes ``x1, y1, x2, y2``.
        scores: ``(n,)`` scores.
        iou_thres: IoU above which the lower-scoring box is suppressed.
        max_keep: return only the first (highest-scoring) ``max_keep`` kept boxes; all when None.

    Returns:
        ``(k,)`` int64 indices into ``boxes``, on the boxes' device.
    """
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()  # torchvision's CPU kernel has no half precision either
    n = boxes.shape[0]
    threshold = _threshold_in(boxes.dtype, iou_thres)
    if boxes.device.type == "cpu" and n <= _MAX_BLOCK:  # one block: the same greedy steps, in numpy
        return torch.from_numpy(_nms_numpy(boxes.detach().numpy(), scores.detach().numpy(), threshold, max_keep))
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    alive = torch.ones(n, dtype=torch.bool, device=boxes.device)
    block = int(min(_MAX_BLOCK, max(_MIN_BLOCK, _IOU_BLOCK_ELEMENTS // max(n, 1))))
    kept: list[Tensor] = []
    n_kept = 0
    for start in range(0, n, block):
        end = min(start + block, n)
        candidates = start + alive[start:end].nonzero().flatten()
        if not len(candidates):
            continue
        c = sorted_boxes[candidates]
        limit = None if max_keep is None else max_keep - n_kept
        keep_mask = _greedy_within((box_iou(c, c) > threshold).cpu().numpy(), limit)
        survivors = candidates[torch.from_numpy(keep_mask).to(boxes.device)]
        kept.append(survivors)
        n_kept += len(survivors)
        if max_keep is not None and n_kept >= max_keep:
            break
        later = end + alive[end:].nonzero().flatten()
        if len(later):
            hit = (box_iou(sorted_boxes[survivors], sorted_boxes[later]) > threshold).any(0)
            alive[later[hit]] = False
    if not kept:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    return order[torch.cat(kept)[:max_keep]]


def non_max_suppression(prediction: Tensor, conf_thres: float = 0.001, iou_thres: float = 0.65,
                        classes: Sequence[int] | None = None, agnostic: bool = False, multi_label: bool = True,
                        max_det: int = 300, max_wh: int = 4096, max_nms: int = 30000) -> list[Tensor]:
    """Per-image detections from decoded YOLO predictions, as the official ``non_max_suppression``.

    The defaults are the official mAP protocol (``test.py``: conf 0.001, IoU 0.65, multi-label); the
    official ``detect.py`` uses conf 0.25, IoU 0.45, ``multi_label=False``.

    Args:
        prediction: ``(batch, anchors, 5 + nc)`` rows ``cx, cy, w, h, objectness, class scores...`` (the
            model's eval-mode output ``[0]``).
        conf_thres: minimum objectness, then minimum ``objectness x class score`` of a detection.
        iou_thres: NMS IoU threshold (strictly greater suppresses).
        classes: keep only these class indices (all when None).
        agnostic: one NMS over all classes instead of one per class.
        multi_label: a box yields one detection per class above ``conf_thres`` (else its best class
            only); ignored for single-class models, as officially.
        max_det: at most this many detections per image, the highest-scoring.
        max_wh: per-class box offset making class-aware NMS one NMS: classes never overlap while box
            coordinates stay within ``[0, max_wh)``. 4096 is the official value, and part of the
            arithmetic: offset coordinates are rounded to float32, which moves IoUs slightly, so another
            value can flip a borderline decision.
        max_nms: at most this many candidates per image enter NMS, the highest-scoring.

    Returns:
        One ``(n, 6)`` tensor per image: ``x1, y1, x2, y2, confidence, class index``, by descending
        confidence.
    """
    nc = prediction.shape[2] - 5
    multi_label = multi_label and nc > 1
    if prediction.device.type == "cpu" and prediction.dtype in (torch.float32, torch.float64):
        pred = prediction.detach().numpy()
        wanted_np = None if classes is None else np.asarray(classes, dtype=pred.dtype)
        return [torch.from_numpy(_image_detections_numpy(x[x[:, 4] > conf_thres], conf_thres, iou_thres, wanted_np,
                                                         agnostic, multi_label, max_det, max_wh, max_nms))
                for x in pred]
    wanted = None if classes is None else torch.tensor(classes, device=prediction.device, dtype=prediction.dtype)
    return [_image_detections(x[x[:, 4] > conf_thres], conf_thres, iou_thres, wanted, agnostic, multi_label,
                              max_det, max_wh, max_nms) for x in prediction]


def _image_detections_numpy(x: np.ndarray, conf_thres: float, iou_thres: float, classes: np.ndarray | None,
                            agnostic: bool, multi_label: bool, max_det: int, max_wh: int, max_nms: int) -> np.ndarray:
    """:func:`_image_detections` in numpy, step for step (the CPU path): one image's ``(n, 6)`` detections."""
    dtype = x.dtype.type
    if not len(x):
        return np.zeros((0, 6), dtype=x.dtype)
    cls_conf = np.broadcast_to(x[:, 4:5], (len(x), x.shape[1] - 5)) if x.shape[1] == 6 else x[:, 5:] * x[:, 4:5]
    xy, half = x[:, 0:2], x[:, 2:4] / dtype(2)  # xywh_to_xyxy's arithmetic
    box = np.concatenate((xy - half, xy + half), 1)
    if multi_label:
        i, j = (cls_conf > conf_thres).nonzero()
        det = np.concatenate((box[i], cls_conf[i, j, None], j[:, None].astype(x.dtype)), 1)
    else:
        j = cls_conf.argmax(1)[:, None]
        conf = np.take_along_axis(cls_conf, j, 1)
        det = np.concatenate((box, conf, j.astype(x.dtype)), 1)[conf[:, 0] > conf_thres]
    if classes is not None:
        det = det[(det[:, 5:6] == classes).any(1)]
    if len(det) > max_nms:
        det = det[_top_rows(torch.from_numpy(det[:, 4]), max_nms).numpy()]
    offset = det[:, 5:6] * dtype(0 if agnostic else max_wh)
    keep = nms(torch.from_numpy(det[:, :4] + offset), torch.from_numpy(det[:, 4]), iou_thres, max_keep=max_det)
    return det[keep.numpy()]


def _image_detections(x: Tensor, conf_thres: float, iou_thres: float, classes: Tensor | None, agnostic: bool,
                      multi_label: bool, max_det: int, max_wh: int, max_nms: int) -> Tensor:
    """One image's detections from its candidates ``x`` that passed the objectness threshold."""
    if not len(x):
        return x.new_zeros((0, 6))
    # A single-class model's class score carries no information (its classification loss is zero), so
    # its confidence is the objectness alone, as officially.
    cls_conf = x[:, 4:5].expand(-1, x.shape[1] - 5) if x.shape[1] == 6 else x[:, 5:] * x[:, 4:5]
    box = xywh_to_xyxy(x[:, :4])
    if multi_label:
        i, j = (cls_conf > conf_thres).nonzero().T
        det = torch.cat((box[i], cls_conf[i, j, None], j[:, None].to(x.dtype)), 1)
    else:
        conf, j = cls_conf.max(1, keepdim=True)
        det = torch.cat((box, conf, j.to(x.dtype)), 1)[conf.view(-1) > conf_thres]
    if classes is not None:
        det = det[(det[:, 5:6] == classes).any(1)]
    if len(det) > max_nms:
        det = det[_top_rows(det[:, 4], max_nms)]
    offset = det[:, 5:6] * (0 if agnostic else max_wh)
    keep = nms(det[:, :4] + offset, det[:, 4], iou_thres, max_keep=max_det)
    return det[keep]


def _top_rows(scores: Tensor, k: int) -> Tensor:
    """Indices (ascending) of the ``k`` highest scores, ties at the cut going to the earliest rows.

    The same rows as a stable descending sort's first ``k`` (the official code's unstable sort leaves ties
    to chance), found with ``topk`` in linear time: a poorly trained or freshly pruned model can put a
    million candidates above the confidence threshold, and sorting them all would dominate NMS.
    """
    kth = scores.topk(k).values[-1]
    above = (scores > kth).nonzero().flatten()
    at_cut = (scores == kth).nonzero().flatten()[: k - len(above)]
    return torch.cat((above, at_cut)).sort().values


def scale_boxes(boxes: Tensor, ratio_pad: tuple[Sequence[float] | float, Sequence[float]],
                original_shape: tuple[int, int]) -> Tensor:
    """Corner boxes in letterboxed-image pixels back to original-image pixels, clipped to the image.

    Undoes a letterbox (resize by a gain, then pad): subtract the padding, divide by the gain, as the
    official ``scale_coords`` given ``ratio_pad``. Like it, both axes are divided by the height gain: a
    letterbox's two gains differ only by the rounding of the resized size (well under a pixel), and the
    official mAP figures were measured this way.

    Args:
        boxes: ``(n, 4)`` ``x1, y1, x2, y2`` in the letterboxed image.
        ratio_pad: ``((gain_h, gain_w), (pad_w, pad_h))``, or ``(gain, (pad_w, pad_h))``; gain = new / old.
        original_shape: ``(h0, w0)`` of the original image.

    Returns:
        A new ``(n, 4)`` tensor; the input is left unchanged.
    """
    gain, (pad_w, pad_h) = ratio_pad
    if not isinstance(gain, Real):
        gain = gain[0]
    h0, w0 = original_shape
    if boxes.device.type == "cpu" and boxes.dtype in (torch.float32, torch.float64):
        # The same steps in numpy (called once per image, where torch's per-call cost dominates). Python
        # scalars keep the boxes' dtype in both libraries, so the results are bit-identical.
        b = boxes.detach().numpy()
        x = np.clip((b[:, 0::2] - float(pad_w)) / float(gain), 0, float(w0))
        y = np.clip((b[:, 1::2] - float(pad_h)) / float(gain), 0, float(h0))
        return torch.from_numpy(np.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), 1))
    x = ((boxes[:, 0::2] - pad_w) / gain).clamp(0, w0)
    y = ((boxes[:, 1::2] - pad_h) / gain).clamp(0, h0)
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), 1)
