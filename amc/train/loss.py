"""The YOLOv7 training loss: CIoU box regression, objectness and classification, with YOLOv7's target assignment.

Three assignment rules are implemented, each giving the same numbers as its counterpart in the official
repository (``utils/loss.py``):

* plain (``ota=False``, the official ``ComputeLoss``): every target is matched to the anchors whose shape is
  within ``anchor_t`` of its own, in the cell holding its centre and in the two nearest neighbouring cells;
* SimOTA (``ota=True``, ``ComputeLossOTA``): those same cells are only *candidates*; per image, each target
  keeps its ``k`` cheapest candidates, ``k`` being the integer part of the sum of its 10 best IoUs with the
  candidates' predicted boxes, and the cost being the classification cost plus 3 x ``-log(IoU)``; a
  candidate claimed by several targets goes to the cheapest one;
* SimOTA with auxiliary heads (IAuxDetect in training mode, ``ComputeLossAuxOTA``): the lead maps are
  assigned as above (with the 20 best IoUs), the auxiliary maps with a wider candidate search (all four
  neighbouring cells), both from the lead predictions; the auxiliary terms weigh 0.25.

Every rule ends in the same per-level sums: ``1 - CIoU`` over the matched predictions, a BCE of the
objectness against the (detached, clamped) CIoU at matched cells and 0 elsewhere, weighted per level, and a
BCE of the class scores (skipped for single-class models). The three sums are multiplied by the ``box``,
``obj`` and ``cls`` gains of the hyper-parameters (see :func:`scale_hyp`).

The assignment is vectorized over the whole batch (images are padded to a common number of targets and
candidates), so a batch costs a handful of kernel launches instead of a Python loop per image and target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from amc.boxes import xywh_to_xyxy
from amc.models.heads import IAuxDetect

__all__ = ["LevelTargets", "Candidates", "SimOTAAssigner", "YOLOv7Loss", "bbox_iou", "bce_with_logits",
           "find_candidates", "pairwise_box_iou", "scale_hyp", "smooth_bce", "xywh_to_xyxy"]

DEFAULT_BALANCE = (4.0, 1.0, 0.25, 0.06, 0.02)
"""Objectness weight of each level, finest first, for models that do not have exactly three levels."""
THREE_LEVEL_BALANCE = (4.0, 1.0, 0.4)
"""Objectness weight of each level of a three-level (P3-P5) model."""
AUX_WEIGHT = 0.25
"""Weight of every auxiliary-head term relative to the lead head's."""

IoUKind = Literal["iou", "giou", "diou", "ciou"]


# --------------------------------------------------------------------------------------------------------
# Hyper-parameters
# --------------------------------------------------------------------------------------------------------
def scale_hyp(hyp: Mapping[str, Any], nl: int, nc: int, img_size: int) -> dict[str, Any]:
    """Adapt the loss gains of a hyper-parameter file to a model and an input size (a new dict is returned).

    The official hyper-parameter files are tuned for three detection levels, 80 classes and 640-pixel
    images; the official ``train.py`` rescales three gains before building the loss, and so does this:

    * ``box *= 3 / nl``: the box loss is a sum over levels, so more levels would weigh it up;
    * ``cls *= nc / 80 * 3 / nl``: the class loss is a mean over classes, so it is scaled with their number;
    * ``obj *= (img_size / 640) ** 2 * 3 / nl``: the objectness loss is a mean over all cells, whose number
      grows with the image area.

    Args:
        hyp: the hyper-parameters as in the official files (``conf/hyp/*.yaml``); not modified.
        nl: number of detection levels of the model (``model.head.nl``).
        nc: number of classes.
        img_size: training image size in pixels (square side).

    Returns:
        A copy of ``hyp`` with ``box``, ``cls`` and ``obj`` scaled, and ``label_smoothing`` set to 0.0 if absent.
    """
    out = dict(hyp)
    out["box"] = float(hyp["box"]) * 3.0 / nl
    out["cls"] = float(hyp["cls"]) * nc / 80.0 * 3.0 / nl
    out["obj"] = float(hyp["obj"]) * (img_size / 640) ** 2 * 3.0 / nl
    out.setdefault("label_smoothing", 0.0)
    return out


def smooth_bce(eps: float = 0.0) -> tuple[float, float]:
    """Targets of the positive and negative classes under label smoothing ``eps``: ``(1 - eps/2, eps/2)``."""
    return 1.0 - 0.5 * eps, 0.5 * eps


# --------------------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------------------
def bbox_iou(box1: torch.Tensor, box2: torch.Tensor, xywh: bool = True, kind: IoUKind = "ciou",
             eps: float = 1e-7) -> torch.Tensor:
    """IoU (or GIoU, DIoU, CIoU) of paired boxes, element by element.

    Args:
        box1, box2: boxes ``(..., 4)`` of broadcastable shapes, [cx, cy, w, h] if ``xywh`` else [x1, y1, x2, y2].
        xywh: the box format.
        kind: ``"iou"``; ``"giou"`` (minus the empty fraction of the enclosing box); ``"diou"`` (minus the
            squared centre distance over the squared enclosing diagonal); ``"ciou"`` (DIoU minus an
            aspect-ratio consistency term whose weight is not differentiated, as in the CIoU paper).
        eps: keeps the divisions finite (heights and areas get ``eps`` added, as in the official loss).

    Returns:
        The broadcast shape without the last dimension.
    """
    if xywh:
        box1, box2 = xywh_to_xyxy(box1), xywh_to_xyxy(box2)
    ax1, ay1, ax2, ay2 = box1.unbind(-1)
    bx1, by1, bx2, by2 = box2.unbind(-1)
    overlap_w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(0)
    overlap_h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(0)
    inter = overlap_w * overlap_h
    w1, h1 = ax2 - ax1, ay2 - ay1 + eps
    w2, h2 = bx2 - bx1, by2 - by1 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou
    enclose_w = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)
    enclose_h = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    if kind == "giou":
        enclose_area = enclose_w * enclose_h + eps
        return iou - (enclose_area - union) / enclose_area
    diagonal2 = enclose_w**2 + enclose_h**2 + eps
    centre_dist2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4
    if kind == "diou":
        return iou - centre_dist2 / diagonal2
    if kind != "ciou":
        raise ValueError(f"unknown IoU kind {kind!r}: iou, giou, diou or ciou")
    aspect = (4 / math.pi**2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():
        aspect_weight = aspect / (aspect - iou + (1 + eps))
    return iou - (centre_dist2 / diagonal2 + aspect * aspect_weight)


def pairwise_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every box of ``boxes1`` ``(..., N, 4)`` with every box of ``boxes2`` ``(..., M, 4)`` (corners).

    Leading dimensions broadcast (a batch of images); returns ``(..., N, M)``. No epsilon: degenerate pairs
    give NaN, exactly like the official ``box_iou`` used by SimOTA.
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    top_left = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    bottom_right = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    inter = (bottom_right - top_left).clamp(0).prod(-1)
    return inter / (area1[..., :, None] + area2[..., None, :] - inter)


# --------------------------------------------------------------------------------------------------------
# Binary cross-entropy (optionally focal)
# --------------------------------------------------------------------------------------------------------
def bce_with_logits(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor,
                    focal_gamma: float = 0.0, focal_alpha: float = 0.25) -> torch.Tensor:
    """Mean binary cross-entropy of ``logits`` against ``targets`` in [0, 1], positives weighted by ``pos_weight``.

    With ``focal_gamma > 0`` every element is multiplied by the focal factor ``a_t (1 - p_t) ** gamma``
    (``p_t`` the probability given to the target, ``a_t = alpha`` for positives and ``1 - alpha`` for
    negatives), as the official ``FocalLoss`` wrapper does.
    """
    if focal_gamma <= 0:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)
    loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    prob = logits.sigmoid()
    p_target = targets * prob + (1 - targets) * (1 - prob)
    alpha = targets * focal_alpha + (1 - targets) * (1 - focal_alpha)
    return (loss * alpha * (1.0 - p_target) ** focal_gamma).mean()


# --------------------------------------------------------------------------------------------------------
# Target assignment
# --------------------------------------------------------------------------------------------------------
@dataclass
class LevelTargets:
    """What one detection level is trained on: ``n`` matched (image, anchor, cell) slots and their targets.

    Attributes:
        image, anchor, grid_y, grid_x: ``(n,)`` int64 indices into the level's ``(bs, na, ny, nx, no)`` map.
        box: ``(n, 4)`` target boxes in grid units, the centre relative to the cell's corner ``(grid_x, grid_y)``.
        cls: ``(n,)`` int64 target classes.
        anchor_wh: ``(n, 2)`` the slot's anchor size in grid units.
        target: ``(n,)`` int64 row of each slot's target in the ``targets`` tensor.
    """

    image: torch.Tensor
    anchor: torch.Tensor
    grid_y: torch.Tensor
    grid_x: torch.Tensor
    box: torch.Tensor
    cls: torch.Tensor
    anchor_wh: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return self.image.shape[0]


@dataclass
class Candidates:
    """Slots of one level proposed for the targets (by :func:`find_candidates`), one row per (target, slot).

    Attributes:
        image, anchor, grid_y, grid_x: ``(m,)`` int64 slot indices (grid indices clamped to the map).
        target: ``(m,)`` int64 row of the target (in the ``targets`` tensor) that proposed the slot.
        anchor_wh: ``(m, 2)`` anchor sizes in grid units.
    """

    image: torch.Tensor
    anchor: torch.Tensor
    grid_y: torch.Tensor
    grid_x: torch.Tensor
    target: torch.Tensor
    anchor_wh: torch.Tensor

    def __len__(self) -> int:
        return self.image.shape[0]

    def level_targets(self, targets: torch.Tensor, grid_size: tuple[int, int]) -> LevelTargets:
        """Each candidate trained on the target that proposed it (the plain assignment)."""
        return make_level_targets(self, self.target, targets, grid_size)


def make_level_targets(slots: Candidates, target_rows: torch.Tensor, targets: torch.Tensor,
                       grid_size: tuple[int, int]) -> LevelTargets:
    """Targets for ``slots`` of a level with ``grid_size = (ny, nx)``: slot ``k`` learns ``targets[target_rows[k]]``."""
    ny, nx = grid_size
    gain = torch.tensor([nx, ny, nx, ny], device=targets.device, dtype=targets.dtype)
    rows = targets[target_rows]
    box = rows[:, 2:6] * gain
    box[:, :2] -= torch.stack((slots.grid_x, slots.grid_y), 1)
    return LevelTargets(slots.image, slots.anchor, slots.grid_y, slots.grid_x, box, rows[:, 1].long(),
                        slots.anchor_wh, target_rows)


def find_candidates(targets: torch.Tensor, anchors: torch.Tensor, grid_sizes: Sequence[tuple[int, int]],
                    anchor_t: float, cell_reach: float = 0.5) -> list[Candidates]:
    """The anchor-ratio candidate search of YOLOv5/YOLOv7, per level.

    A target is proposed to every anchor of a level whose width and height are both within a factor
    ``anchor_t`` of its own. Each such pair is proposed at the cell holding the target's centre and at each
    neighbouring cell (left, up, right, down) whose border is closer than ``cell_reach`` cells to the centre
    (``0.5``: the two nearest neighbours, three cells in all, as ``ComputeLoss``/``ComputeLossOTA``; ``1.0``:
    all four neighbours, as the auxiliary assignment), never on the outermost cells' outer side.

    Args:
        targets: ``(n, 6)`` [image, class, cx, cy, w, h], coordinates normalized to [0, 1].
        anchors: ``(nl, na, 2)`` anchor sizes in grid units of their level.
        grid_sizes: ``(ny, nx)`` of each level.
        anchor_t: maximum width or height ratio between a target and an anchor.
        cell_reach: how far from a cell border a centre may be for the neighbour across it to be proposed.

    Returns:
        One :class:`Candidates` per level, ordered by neighbour (centre cell first), then anchor, then target.
    """
    device, dtype = targets.device, targets.dtype
    # Centre cell, then the neighbour on the left, above, on the right, below: the shift of the centre.
    shifts = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=device, dtype=dtype) * cell_reach
    out = []
    for level, (ny, nx) in enumerate(grid_sizes):
        gain = torch.tensor([nx, ny, nx, ny], device=device, dtype=dtype)
        xywh = targets[:, 2:6] * gain
        level_anchors = anchors[level].to(device=device, dtype=dtype)
        ratio = xywh[None, :, 2:4] / level_anchors[:, None]  # (na, n, 2)
        fits = torch.max(ratio, 1.0 / ratio).max(2).values < anchor_t
        anchor_idx, target_idx = fits.nonzero(as_tuple=True)  # anchor-major, as the official code orders them
        centre = xywh[target_idx, :2]
        from_far_side = gain[:2] - centre
        near_low = (centre % 1.0 < cell_reach) & (centre > 1.0)  # close to the left / top border
        near_high = (from_far_side % 1.0 < cell_reach) & (from_far_side > 1.0)  # right / bottom border
        use = torch.stack((torch.ones_like(near_low[:, 0]), near_low[:, 0], near_low[:, 1],
                           near_high[:, 0], near_high[:, 1]))  # (5, m)
        shift_idx, pair_idx = use.nonzero(as_tuple=True)
        cell = (centre[pair_idx] - shifts[shift_idx]).long()
        grid_x, grid_y = cell[:, 0].clamp(0, nx - 1), cell[:, 1].clamp(0, ny - 1)
        rows, anchor = target_idx[pair_idx], anchor_idx[pair_idx]
        out.append(Candidates(image=targets[rows, 0].long(), anchor=anchor, grid_y=grid_y, grid_x=grid_x,
                              target=rows, anchor_wh=level_anchors[anchor]))
    return out


def _pad_by_image(image: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Padded per-image layout of items belonging to images ``image`` ``(n,)``.

    Returns ``(slot, order, width)``: items sorted stably by image (``order``), the flat index
    ``image * width + rank within the image`` of each sorted item (``slot``), and ``width``, the largest
    number of items in one image.
    """
    order = torch.argsort(image, stable=True)
    sorted_image = image[order]
    counts = torch.bincount(image, minlength=batch_size)
    width = int(counts.max()) if image.numel() else 0
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(image.numel(), device=image.device) - starts[sorted_image]
    return sorted_image * width + rank, order, width


class SimOTAAssigner:
    """YOLOv7's SimOTA assignment, per image and vectorized over the batch.

    Candidates come from :func:`find_candidates`. For each image, every target ``g`` and candidate ``c`` of
    that image get the cost ``BCE(sqrt(p_cls * p_obj), one_hot(class_g)) + iou_weight * -log(IoU(g, c))``
    (probabilities and boxes from the detached predictions, boxes in pixels). Target ``g`` takes its ``k_g``
    cheapest candidates, ``k_g = max(1, int(sum of its top_k best IoUs))``; a candidate taken by several
    targets is given to the one of least cost. Each taken candidate is trained on its target.

    This gives the official assignment exactly, with one deliberate difference: when the same slot is
    proposed by two targets, its two candidates have equal costs, and if they tie at a target's ``k``-th place
    the earlier one is taken here, where the official code takes whichever ``torch.topk`` returns first (an
    unspecified order that differs between devices and sizes). This can only change which copy of the slot a
    target gets, hence its objectness target; nothing else.

    Args:
        nc: number of classes.
        strides: pixel stride of each level.
        top_k: how many best IoUs set ``k_g`` (10 in ``ComputeLossOTA``, 20 in ``ComputeLossAuxOTA``).
        iou_weight: weight of the IoU cost.
    """

    def __init__(self, nc: int, strides: Sequence[float], top_k: int = 10, iou_weight: float = 3.0) -> None:
        self.nc = nc
        self.strides = [float(s) for s in strides]
        self.top_k = top_k
        self.iou_weight = iou_weight

    @torch.no_grad()
    def __call__(self, preds: Sequence[torch.Tensor], targets: torch.Tensor, candidates: Sequence[Candidates],
                 image_scale: float) -> list[LevelTargets]:
        """Assign targets to predictions.

        Args:
            preds: the raw maps ``(bs, na, ny, nx, no)`` the cost is computed from.
            targets: ``(n, 6)`` [image, class, cx, cy, w, h] normalized.
            candidates: per level, from :func:`find_candidates`.
            image_scale: pixels per normalized unit, for both axes (the official code uses the image height).

        Returns:
            Per level, the matched slots in image order (candidate order within an image).
        """
        grid_sizes = [(p.shape[2], p.shape[3]) for p in preds]
        device, bs = targets.device, preds[0].shape[0]
        level = torch.cat([torch.full((len(c),), i, device=device, dtype=torch.long)
                           for i, c in enumerate(candidates)])
        if level.numel() == 0 or targets.shape[0] == 0:
            return [make_level_targets(c, c.target, targets, g) for c, g in zip(candidates, grid_sizes)]
        slots = Candidates(*(torch.cat([getattr(c, f) for c in candidates])
                             for f in ("image", "anchor", "grid_y", "grid_x", "target", "anchor_wh")))

        # Predicted boxes (pixels, corners) and class-times-objectness logits of every candidate.
        boxes, scores = [], []
        for i, (c, p) in enumerate(zip(candidates, preds)):
            out = p.detach()[c.image, c.anchor, c.grid_y, c.grid_x].float()
            cell = torch.stack((c.grid_x, c.grid_y), 1)
            xy = (out[:, :2].sigmoid() * 2.0 - 0.5 + cell) * self.strides[i]
            wh = (out[:, 2:4].sigmoid() * 2) ** 2 * c.anchor_wh * self.strides[i]
            boxes.append(xywh_to_xyxy(torch.cat((xy, wh), 1)))
            joint = (out[:, 5:].sigmoid() * out[:, 4:5].sigmoid()).sqrt()  # geometric mean of the two
            scores.append(torch.log(joint / (1 - joint)))
        pred_boxes, pred_logits = torch.cat(boxes), torch.cat(scores)

        # Pad per image: (bs, G, 4) targets against (bs, P, 4) candidates.
        gt_slot, gt_order, n_gt = _pad_by_image(targets[:, 0].long(), bs)
        cand_slot, cand_order, n_cand = _pad_by_image(slots.image, bs)
        gt_rows = torch.full((bs * n_gt,), -1, device=device, dtype=torch.long)
        gt_rows[gt_slot] = gt_order
        cand_rows = torch.full((bs * n_cand,), -1, device=device, dtype=torch.long)
        cand_rows[cand_slot] = cand_order
        gt_rows, cand_rows = gt_rows.view(bs, n_gt), cand_rows.view(bs, n_cand)
        gt_valid, cand_valid = gt_rows >= 0, cand_rows >= 0
        valid = gt_valid[:, :, None] & cand_valid[:, None, :]

        gt_boxes = xywh_to_xyxy(targets[:, 2:6] * image_scale)[gt_rows.clamp(min=0)]  # (bs, G, 4)
        iou = pairwise_box_iou(gt_boxes, pred_boxes[cand_rows.clamp(min=0)])  # (bs, G, P)
        iou = torch.where(valid, iou, torch.zeros_like(iou))
        top = iou.topk(min(self.top_k, n_cand), dim=2).values
        dynamic_k = top.sum(2).int().clamp(min=1)  # (bs, G)

        # Class cost, the BCE summed over classes against the target's one-hot vector, computed without a
        # (G, P, nc) tensor: the BCE of every class as a negative, corrected at the target's class.
        logits = pred_logits[cand_rows.clamp(min=0)]  # (bs, P, nc)
        negative = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
        positive = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
        gt_cls = targets[:, 1].long()[gt_rows.clamp(min=0)]  # (bs, G)
        correction = (positive - negative).transpose(1, 2).gather(1, gt_cls[:, :, None].expand(-1, -1, n_cand))
        cls_cost = negative.sum(2)[:, None, :] + correction
        cost = cls_cost + self.iou_weight * -torch.log(iou + 1e-8)
        cost = torch.where(valid, cost, torch.full_like(cost, math.inf))

        # Each target takes its dynamic_k cheapest candidates; among equal costs (the same slot proposed by
        # two targets), the earliest candidate first, so the choice does not depend on torch.topk's device.
        cheapest_costs = cost.topk(min(self.top_k, n_cand), dim=2, largest=False).values  # ascending
        kth_cost = cheapest_costs.gather(2, dynamic_k[:, :, None].long() - 1)
        below = cost < kth_cost
        tied = cost == kth_cost
        room = dynamic_k[:, :, None] - below.sum(2, keepdim=True)
        matched = (below | (tied & (tied.cumsum(2) <= room))) & valid  # (bs, G, P)
        # A candidate taken by several targets goes to the cheapest target.
        claims = matched.sum(1)
        cheapest = cost.argmin(1)
        owner = torch.where(claims > 1, cheapest, matched.int().argmax(1))  # (bs, P)
        foreground = claims > 0

        cand_fg = cand_rows[foreground]  # image-major, candidate order within an image
        gt_fg = gt_rows.gather(1, owner)[foreground]
        level_fg = level[cand_fg]
        out = []
        for i, g in enumerate(grid_sizes):
            keep = level_fg == i
            rows = cand_fg[keep]
            chosen = Candidates(slots.image[rows], slots.anchor[rows], slots.grid_y[rows], slots.grid_x[rows],
                                gt_fg[keep], slots.anchor_wh[rows])
            out.append(make_level_targets(chosen, chosen.target, targets, g))
        return out


# --------------------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------------------
def last_of_repeats(*index: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Mask of the entries of a multi-index (one tensor per dimension of ``shape``) that are the last occurrence
    of their position: writing only those gives every device the CPU's "last write wins" result."""
    flat = torch.zeros_like(index[0])
    for idx, size in zip(index, shape):
        flat = flat * int(size) + idx
    order = torch.arange(len(flat), device=flat.device)
    # sized by the shape, not flat.max(): reading a maximum back would stall the GPU once per level and step
    last = torch.full((math.prod(int(n) for n in shape),), -1, dtype=order.dtype, device=flat.device)
    last.scatter_reduce_(0, flat, order, reduce="amax")
    return last[flat] == order


class YOLOv7Loss:
    """The official YOLOv7 training loss for an amc :class:`~amc.models.yolo.YOLOv7` model.

    Args:
        model: the detector; its head gives the number of levels, anchors, classes and strides. They are
            copied at construction (the loss keeps no other state and follows the predictions' device).
        hyp: hyper-parameters already scaled with :func:`scale_hyp`: ``box``, ``obj``, ``cls`` gains,
            ``cls_pw``/``obj_pw`` positive weights, ``anchor_t``, ``fl_gamma`` and optionally
            ``label_smoothing``.
        ota: SimOTA assignment (``ComputeLossOTA``; ``ComputeLossAuxOTA`` for auxiliary-head outputs)
            instead of the plain anchor-ratio assignment (``ComputeLoss``).
        iou_ratio: objectness target at matched slots is ``(1 - iou_ratio) + iou_ratio * CIoU`` (official 1.0).

    Calling it with the training-mode outputs returns ``(loss * batch size, [box, obj, cls, total] detached)``.
    """

    def __init__(self, model: nn.Module, hyp: Mapping[str, Any], ota: bool = True, iou_ratio: float = 1.0) -> None:
        head = getattr(model, "module", model).head  # also through a DistributedDataParallel wrapper
        self.nl, self.na, self.nc, self.no = int(head.nl), int(head.na), int(head.nc), int(head.no)
        self.anchors = head.anchors.detach().float().cpu().clone()  # (nl, na, 2), grid units
        self.strides = [float(s) for s in head.stride]
        self.has_aux = isinstance(head, IAuxDetect)
        self.ota = bool(ota)
        self.iou_ratio = float(iou_ratio)
        self.box_gain, self.obj_gain, self.cls_gain = float(hyp["box"]), float(hyp["obj"]), float(hyp["cls"])
        self.cls_pos_weight, self.obj_pos_weight = float(hyp["cls_pw"]), float(hyp["obj_pw"])
        self.anchor_t = float(hyp["anchor_t"])
        self.focal_gamma = float(hyp.get("fl_gamma", 0.0))
        self.cls_positive, self.cls_negative = smooth_bce(float(hyp.get("label_smoothing", 0.0)))
        self.balance = THREE_LEVEL_BALANCE if self.nl == 3 else DEFAULT_BALANCE[: self.nl]
        if len(self.balance) < self.nl:
            raise ValueError(f"no objectness balance for {self.nl} detection levels (at most 5)")
        self.assigner = SimOTAAssigner(self.nc, self.strides, top_k=10)  # ComputeLossOTA
        self.aux_assigner = SimOTAAssigner(self.nc, self.strides, top_k=20)  # ComputeLossAuxOTA, both maps

    def __call__(self, preds: Sequence[torch.Tensor], targets: torch.Tensor,
                 images: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of one batch.

        Args:
            preds: training-mode raw outputs, ``(bs, na, ny, nx, no)`` per level (IAuxDetect: lead levels,
                then auxiliary levels); the lead maps alone (e.g. eval-mode raw outputs) are accepted too.
            targets: ``(n, 6)`` [image index, class, cx, cy, w, h], coordinates normalized to [0, 1].
            images: the input batch ``(bs, 3, H, W)``; only ``H`` is read, by SimOTA, which (as the official
                code) scales normalized targets to pixels by the image height on both axes, exact for the
                square images of official training. Without it, ``H`` is taken as the finest map's height
                times its stride.

        Returns:
            ``(loss, items)``: the scalar ``(box + obj + cls) * batch size`` to back-propagate, and the
            detached ``(4,)`` tensor ``[box, obj, cls, box + obj + cls]``.
        """
        preds = [p.float() for p in preds]
        if len(preds) not in (self.nl, 2 * self.nl) or (len(preds) == 2 * self.nl and not self.has_aux):
            raise ValueError(f"expected {self.nl} prediction maps" + (f" (or {2 * self.nl} with the auxiliary"
                             " heads)" if self.has_aux else "") + f", got {len(preds)}")
        for p in preds:
            if p.dim() != 5 or p.shape[1] != self.na or p.shape[4] != self.no:
                raise ValueError(f"prediction maps must be (batch, {self.na}, ny, nx, {self.no}), got {tuple(p.shape)}")
        auxiliary = len(preds) == 2 * self.nl
        if auxiliary and not self.ota:
            raise NotImplementedError("the auxiliary heads (IAuxDetect training outputs) are only trained with "
                                      "SimOTA, as in the official ComputeLossAuxOTA: use ota=True, or pass "
                                      "the lead maps alone")
        device = preds[0].device
        targets = targets.to(device=device, dtype=torch.float32).reshape(-1, 6)
        lead = preds[: self.nl]
        grid_sizes = [(p.shape[2], p.shape[3]) for p in lead]
        anchors = self.anchors.to(device)

        if not self.ota:
            assigned = [c.level_targets(targets, g) for c, g in
                        zip(find_candidates(targets, anchors, grid_sizes, self.anchor_t, 0.5), grid_sizes)]
            aux_assigned = None
        else:
            image_scale = float(images.shape[2] if images is not None else lead[0].shape[2] * self.strides[0])
            near = find_candidates(targets, anchors, grid_sizes, self.anchor_t, 0.5)
            assigner = self.aux_assigner if auxiliary else self.assigner
            assigned = assigner(lead, targets, near, image_scale)
            aux_assigned = None
            if auxiliary:
                wide = find_candidates(targets, anchors, grid_sizes, self.anchor_t, 1.0)
                aux_assigned = self.aux_assigner(lead, targets, wide, image_scale)

        zero = torch.zeros((), device=device)
        box_loss, obj_loss, cls_loss = zero, zero, zero
        cls_pw = torch.tensor([self.cls_pos_weight], device=device)
        obj_pw = torch.tensor([self.obj_pos_weight], device=device)
        for i in range(self.nl):
            box_i, obj_i, cls_i = self._level_loss(preds[i], assigned[i], cls_pw, obj_pw)
            box_loss, cls_loss = box_loss + box_i, cls_loss + cls_i
            if aux_assigned is not None:
                box_a, obj_a, cls_a = self._level_loss(preds[self.nl + i], aux_assigned[i], cls_pw, obj_pw)
                box_loss, cls_loss = box_loss + AUX_WEIGHT * box_a, cls_loss + AUX_WEIGHT * cls_a
                obj_loss = obj_loss + (obj_i * self.balance[i] + AUX_WEIGHT * obj_a * self.balance[i])
            else:
                obj_loss = obj_loss + obj_i * self.balance[i]
        box_loss, obj_loss, cls_loss = box_loss * self.box_gain, obj_loss * self.obj_gain, cls_loss * self.cls_gain
        total = box_loss + obj_loss + cls_loss
        items = torch.stack((box_loss, obj_loss, cls_loss, total)).detach()
        return total * preds[0].shape[0], items

    def _level_loss(self, pred: torch.Tensor, tg: LevelTargets, cls_pw: torch.Tensor,
                    obj_pw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(1 - CIoU mean, objectness BCE, class BCE)`` of one level (box and class terms 0 without matches).

        A slot matched twice gets the objectness target of its last match, as the official code does on the CPU
        (where an indexed write with repeated indices keeps the last value). On CUDA that write keeps an
        arbitrary one, so the repeats are dropped first: the loss is the same on both devices.
        """
        zero = pred.new_zeros(())
        obj_target = torch.zeros_like(pred[..., 4])
        box_term, cls_term = zero, zero
        if len(tg):
            matched = pred[tg.image, tg.anchor, tg.grid_y, tg.grid_x]
            xy = matched[:, :2].sigmoid() * 2.0 - 0.5
            wh = (matched[:, 2:4].sigmoid() * 2) ** 2 * tg.anchor_wh
            ciou = bbox_iou(torch.cat((xy, wh), 1), tg.box, kind="ciou")
            box_term = (1.0 - ciou).mean()
            last = last_of_repeats(tg.image, tg.anchor, tg.grid_y, tg.grid_x, shape=obj_target.shape)
            obj_target[tg.image[last], tg.anchor[last], tg.grid_y[last], tg.grid_x[last]] = (
                (1.0 - self.iou_ratio) + self.iou_ratio * ciou.detach()[last].clamp(0).to(obj_target.dtype))
            if self.nc > 1:
                cls_target = torch.full_like(matched[:, 5:], self.cls_negative)
                cls_target[torch.arange(len(tg), device=pred.device), tg.cls] = self.cls_positive
                cls_term = bce_with_logits(matched[:, 5:], cls_target, cls_pw, self.focal_gamma)
        obj_term = bce_with_logits(pred[..., 4], obj_target, obj_pw, self.focal_gamma)
        return box_term, obj_term, cls_term


def detection_loss(model: nn.Module, hyp: Mapping[str, Any], ota: bool, img_size: int) -> YOLOv7Loss:
    """The detection loss of ``model`` for the loss gains ``hyp`` (rescaled with :func:`scale_hyp` to the model's
    levels and classes and to ``img_size``), plain (``ota=False``) or SimOTA assignment.

    This is the loss callable the Taylor channel criterion takes (:data:`amc.pruning.criteria.LossFactory`).
    """
    head = model.head
    return YOLOv7Loss(model, scale_hyp(hyp, int(head.nl), int(head.nc), int(img_size)), ota=ota)
