"""COCO box mAP@0.5:0.95 and mAP@0.5 in vectorized numpy: COCOeval's numbers, ~40x faster.

The proxy evaluator of the pruning search scores one fixed val subset hundreds of times; pycocotools'
COCOeval spends most of its time in Python loops (one per detection and ground-truth box, per IoU
threshold). :class:`FastCocoMap` reproduces exactly what :func:`amc.eval.metrics.evaluate_map` returns
(COCOeval ``stats[0]`` and ``stats[1]``: bbox, area "all", 100 detections per image), with the ground
truth indexed once per (image, category) and every step but one vectorized:

* per (image, category): detections sorted by score (stable, in the order of their rows) and cut to the
  best 100; IoU as pycocotools' ``bbIou`` computes it (crowd boxes divide by the detection's area),
* greedy matching at the 10 IoU thresholds, COCOeval's rules: a detection takes the free ground-truth box
  of highest IoU (the last one on ties), a non-ignored (non-crowd) box before an ignored one; crowd boxes
  stay free; a detection matched to an ignored box is ignored. A detection below IoU 0.5 with every box of
  its group can never match and changes nothing, so the sequential loop runs only over the others, one
  rank at a time for all groups together (tens of numpy steps, not one Python step per detection),
* accumulation per category over the images in id order: precision envelope, 101 recall thresholds.

The floats are computed by the same operations in the same order as pycocotools, so the mAPs are equal,
not merely close (``tests/test_fastmap.py``). Non-finite boxes or scores are outside that guarantee.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import Params

from amc.errors import AmcError
from amc.eval.metrics import MapResult, _as_numpy, _check_evaluable, coco_ground_truth

_PARAMS = Params(iouType="bbox")
IOU_THRESHOLDS: np.ndarray = _PARAMS.iouThrs  # 0.50, 0.55, ..., 0.95
RECALL_THRESHOLDS: np.ndarray = _PARAMS.recThrs  # 0.00, 0.01, ..., 1.00
MAX_DETS: int = _PARAMS.maxDets[-1]  # 100 per image and category
AREA_RANGE: tuple[float, float] = tuple(_PARAMS.areaRng[_PARAMS.areaRngLbl.index("all")])  # (0, 1e10)
# COCOeval compares IoUs against min(t, 1 - 1e-10).
_MATCH_THRESHOLDS = np.array([min(t, 1 - 1e-10) for t in IOU_THRESHOLDS])


def _rows_of(det: torch.Tensor | np.ndarray) -> np.ndarray:
    """One image's ``(n, 6)`` detections as an array of their float dtype (float64 once they are concatenated:
    the same values as :func:`~amc.eval.metrics._as_numpy`, whose ``tensor.double()`` runs on torch's thread
    pool and costs more than the whole mAP for a few thousand boxes)."""
    if isinstance(det, torch.Tensor) and det.dtype in (torch.float16, torch.float32, torch.float64):
        return det.detach().cpu().numpy().reshape(-1, 6)
    return _as_numpy(det)


class FastCocoMap:
    """COCO box mAP of detections on a fixed set of images, equal to :func:`~amc.eval.metrics.evaluate_map`.

    Build it once (it indexes the ground truth), call it once per set of detections.

    Args:
        gt: the ground truth (:func:`~amc.eval.metrics.coco_ground_truth`, or ``COCO(annotation_file)``);
            see :meth:`from_dicts` to build it from COCO-format dicts.
        category_ids: the category id of each contiguous class index of the model.
        image_ids: the images evaluated, default all images of ``gt`` (as for ``evaluate_map``).

    Raises:
        AmcError: the errors of ``evaluate_map`` (no image, unknown image or category ids, no ground-truth
            box), here when the evaluator is built.
    """

    def __init__(self, gt: COCO, category_ids: Sequence[int], image_ids: Sequence[int] | None = None) -> None:
        image_ids = sorted(gt.getImgIds()) if image_ids is None else sorted({int(i) for i in image_ids})
        _check_evaluable(gt, image_ids, category_ids)
        self.image_ids = image_ids
        self.category_ids = [int(c) for c in category_ids]
        self.cat_ids = sorted(int(c) for c in gt.getCatIds())  # COCOeval's params.catIds
        self._image_pos = {image_id: k for k, image_id in enumerate(image_ids)}
        cat_pos = {c: k for k, c in enumerate(self.cat_ids)}
        self._class_to_cat = np.array([cat_pos[c] for c in self.category_ids], dtype=np.int64)
        n_img, n_cat = len(image_ids), len(self.cat_ids)

        # The boxes COCOeval's _prepare loads, in its order (per image, the annotation order).
        anns = gt.loadAnns(gt.getAnnIds(imgIds=image_ids, catIds=self.cat_ids))
        img = np.array([self._image_pos[a["image_id"]] for a in anns], dtype=np.int64)
        cat = np.array([cat_pos[a["category_id"]] for a in anns], dtype=np.int64)
        crowd = np.array([int(a["iscrowd"]) != 0 for a in anns], dtype=bool)
        area = np.array([a["area"] for a in anns], dtype=np.float64)
        # COCOeval: ignore = iscrowd, and (area "all") a box outside the area range.
        ignore = np.array([bool(a["iscrowd"]) for a in anns], dtype=bool) | (area < AREA_RANGE[0]) | (
            area > AREA_RANGE[1])
        box = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        # Per (image, category) group, non-ignored boxes first, stably (COCOeval's mergesort on the flag).
        group = img * n_cat + cat
        order = np.lexsort((np.arange(len(anns)), ignore, group))
        group, ignore, crowd, box = group[order], ignore[order], crowd[order], box[order]
        bounds = np.searchsorted(group, np.arange(n_img * n_cat + 1))
        self._gt_start, self._gt_count = bounds[:-1], np.diff(bounds)
        self._gt_ignore, self._gt_crowd = ignore, crowd
        self._gt_x, self._gt_y = box[:, 0], box[:, 1]
        self._gt_x2, self._gt_y2 = box[:, 2] + box[:, 0], box[:, 3] + box[:, 1]  # bbIou: G[2] + G[0]
        self._gt_area = box[:, 2] * box[:, 3]  # bbIou's area, from the box (not the "area" field)
        # Non-ignored boxes per category: a category without any has no AP (COCOeval's -1).
        self._npig = np.bincount(cat[order][~ignore], minlength=n_cat)

    @classmethod
    def from_dicts(cls, images: list[dict], annotations: list[dict], categories: list[dict],
                   category_ids: Sequence[int], image_ids: Sequence[int] | None = None) -> FastCocoMap:
        """From COCO-format dicts (``dataset.coco_dicts()``), checked as :func:`coco_ground_truth` does."""
        return cls(coco_ground_truth(images, annotations, categories), category_ids, image_ids)

    def __call__(self, detections: Mapping[int, torch.Tensor | np.ndarray], per_class: bool = False) -> MapResult:
        """COCO box mAP@0.5:0.95 and mAP@0.5 of ``detections``, as ``evaluate_map`` computes them.

        Args:
            detections: image id -> ``(n, 6)`` rows ``x1, y1, x2, y2, score, class index`` in original-image
                pixels (tensors or arrays). Missing images only contribute missed boxes; images outside
                ``image_ids`` are ignored.
            per_class: also return AP@0.5:0.95 per category id.

        Raises:
            AmcError: a class index has no category id.
        """
        precision = self.precision(detections)
        valid = precision[precision > -1]
        map50_95 = float(np.mean(valid)) if valid.size else -1.0
        at50 = precision[0][precision[0] > -1]
        map50 = float(np.mean(at50)) if at50.size else -1.0
        ap = None
        if per_class:
            ap = {}
            for k, cat in enumerate(self.cat_ids):
                p = precision[:, :, k]
                if (p > -1).any():
                    ap[cat] = float(p[p > -1].mean())
        return MapResult(map50_95=map50_95, map50=map50, per_class=ap)

    # ------------------------------------------------------------------------------------------ internals

    def _rows(self, detections: Mapping[int, torch.Tensor | np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """All detections of the evaluated images as float64 rows, and each row's image position."""
        picked = [(image_id, pos, det) for image_id, det in detections.items()
                  if (pos := self._image_pos.get(int(image_id))) is not None]
        if not picked:
            return np.zeros((0, 6)), np.zeros(0, dtype=np.int64)
        parts = [_rows_of(det) for _, _, det in picked]
        rows = np.concatenate(parts).astype(np.float64, copy=False)
        sizes = [len(r) for r in parts]
        img = np.repeat(np.array([pos for _, pos, _ in picked], dtype=np.int64), sizes)
        classes = rows[:, 5].astype(np.int64)
        n_classes = len(self.category_ids)
        bad = (classes < 0) | (classes >= n_classes)
        if bad.any():  # the check (and message) of detections_to_coco_results, for the first such image
            k = int(np.searchsorted(np.cumsum(sizes), np.argmax(bad), side="right"))
            image_id, pos, _ = picked[k]
            raise AmcError(f"image {image_id} has a detection of class {int(classes[img == pos].max())} but "
                           f"category_ids maps only {n_classes} classes: give one category id per model class")
        return rows, img

    def precision(self, detections: Mapping[int, torch.Tensor | np.ndarray]) -> np.ndarray:
        """COCOeval's ``eval["precision"][:, :, :, area "all", maxDets 100]``: ``[T=10, R=101, K]``, -1 for
        categories without (non-ignored) ground truth; K runs over the sorted category ids of ``gt``."""
        rows, img = self._rows(detections)
        n_cat, T, R = len(self.cat_ids), len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)

        # -- per (image, category): sort by score (stable in row order), keep the best MAX_DETS
        cat = self._class_to_cat[rows[:, 5].astype(np.int64)]
        group = img * n_cat + cat
        neg_score = -rows[:, 4]
        order = np.lexsort((np.arange(len(rows)), neg_score, group))
        group = group[order]
        n = len(group)
        first = np.ones(n, dtype=bool)
        first[1:] = group[1:] != group[:-1]
        idx = np.arange(n)
        rank = idx - np.maximum.accumulate(np.where(first, idx, 0))  # position in its group
        keep = rank < MAX_DETS
        order, group = order[keep], group[keep]
        rows, img, cat, neg_score = rows[order], img[order], cat[order], neg_score[order]
        x1, y1 = rows[:, 0], rows[:, 1]
        w, h = rows[:, 2] - x1, rows[:, 3] - y1  # the COCO result box [x1, y1, x2 - x1, y2 - y1]
        area = w * h
        nk = len(group)

        # -- IoU of every kept detection with every box of its group, as bbIou computes it
        count = self._gt_count[group]
        det = np.repeat(np.arange(nk), count)
        local = np.arange(len(det)) - np.repeat(np.cumsum(count) - count, count)
        g = self._gt_start[group][det] + local
        dx, dy = x1[det], y1[det]
        iw = np.fmin(w[det] + dx, self._gt_x2[g]) - np.fmax(dx, self._gt_x[g])
        ih = np.fmin(h[det] + dy, self._gt_y2[g]) - np.fmax(dy, self._gt_y[g])
        overlap = ~(iw <= 0) & ~(ih <= 0)
        inter = iw * ih
        da = area[det]
        union = np.where(self._gt_crowd[g], da, da + self._gt_area[g] - inter)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(overlap, inter / union, 0.0)

        # -- greedy matching, only for detections that can match (IoU >= 0.5 with some box)
        matched = np.zeros((nk, T), dtype=bool)
        matched_ignored = np.zeros((nk, T), dtype=bool)
        candidate = np.zeros(nk, dtype=bool)
        candidate[det[iou >= _MATCH_THRESHOLDS[0]]] = True
        cand = np.flatnonzero(candidate)
        if len(cand):
            self._match(cand, group, det, local, iou, matched, matched_ignored)

        # -- accumulate per category, over images in id order (stable sort on score keeps that order)
        outside = ((area < AREA_RANGE[0]) | (area > AREA_RANGE[1]))[:, None]
        ignored = matched_ignored | (~matched & outside)
        tp = (matched & ~ignored).T  # [T, nk]
        fp = (~matched & ~ignored).T
        order = np.lexsort((np.arange(nk), neg_score, cat))
        tp, fp, cat = tp[:, order], fp[:, order], cat[order]
        bounds = np.searchsorted(cat, np.arange(n_cat + 1))
        starts, nd = bounds[:-1], np.diff(bounds)
        zero = np.zeros((T, 1), dtype=np.int64)
        tp_sum = np.concatenate([zero, np.cumsum(tp, axis=1)], axis=1)
        fp_sum = np.concatenate([zero, np.cumsum(fp, axis=1)], axis=1)
        first = starts[cat]
        tp_c = (tp_sum[:, 1:] - tp_sum[:, first]).astype(float)  # cumulative counts restarted per category
        fp_c = (fp_sum[:, 1:] - fp_sum[:, first]).astype(float)
        npig = self._npig[cat]
        with np.errstate(divide="ignore", invalid="ignore"):
            rc = tp_c / npig
        pr = tp_c / (fp_c + tp_c + np.spacing(1))
        # searchsorted(rc, recThrs, "left") per (t, category) = how many rc < each threshold, counted
        j = np.searchsorted(RECALL_THRESHOLDS, rc, side="right")  # thresholds <= rc
        slot = (np.arange(T)[:, None] * n_cat + cat[None, :]) * (R + 1) + j
        below = np.cumsum(np.bincount(slot.ravel(), minlength=T * n_cat * (R + 1)).reshape(T, n_cat, R + 1),
                          axis=2)[:, :, :R]  # [T, K, R]
        envelope = np.zeros_like(pr)
        for k in np.flatnonzero((nd > 0) & (self._npig > 0)):  # precision made non-increasing, per category
            s = slice(starts[k], bounds[k + 1])
            envelope[:, s] = np.maximum.accumulate(pr[:, s][:, ::-1], axis=1)[:, ::-1]
        inside = below < nd[None, :, None]
        at = np.where(inside, starts[None, :, None] + below, 0)
        q = np.where(inside, envelope[np.arange(T)[:, None, None], at] if nk else 0.0, 0.0)  # [T, K, R]
        precision = np.where((self._npig > 0)[None, :, None], q, -1.0)
        return np.ascontiguousarray(precision.transpose(0, 2, 1))  # [T, R, K]

    def _match(self, cand: np.ndarray, group: np.ndarray, det: np.ndarray, local: np.ndarray, iou: np.ndarray,
               matched: np.ndarray, matched_ignored: np.ndarray) -> None:
        """COCOeval's greedy matching of the candidate detections (kept order: group, then score), one rank
        per step for all (image, category) groups at once; fills ``matched`` and ``matched_ignored``."""
        T = len(IOU_THRESHOLDS)
        cgroup = group[cand]
        first = np.ones(len(cand), dtype=bool)
        first[1:] = cgroup[1:] != cgroup[:-1]
        gstart = np.flatnonzero(first)  # first candidate of each group
        gcount = np.diff(np.append(gstart, len(cand)))
        by_count = np.argsort(-gcount, kind="stable")  # most candidates first: the active groups are a prefix
        gstart, gcount = gstart[by_count], gcount[by_count]
        groups = cgroup[gstart]
        n_gt = self._gt_count[groups]
        gmax = int(n_gt.max())
        # Padded to the most boxes of a group (memory: candidates x boxes, groups x T x boxes): the boxes' flags,
        # and IoU -1 for the padding, which never matches.
        slot = np.arange(gmax)
        real = slot[None, :] < n_gt[:, None]
        gidx = np.where(real, self._gt_start[groups][:, None] + slot[None, :], 0)
        ignore, crowd = self._gt_ignore[gidx] & real, self._gt_crowd[gidx] & real
        # Padded IoU rows of the candidates (in their kept order).
        cand_pos = np.full(len(matched), -1, dtype=np.int64)
        cand_pos[cand] = np.arange(len(cand))
        pair = cand_pos[det] >= 0
        ious = np.full((len(cand), gmax), -1.0)
        ious[cand_pos[det[pair]], local[pair]] = iou[pair]

        taken = np.zeros((len(groups), T, gmax), dtype=bool)
        active = np.searchsorted(-gcount, -np.arange(int(gcount[0])), side="left")  # groups with > r candidates
        thr = _MATCH_THRESHOLDS[None, :, None]
        for r, n in enumerate(active.tolist()):
            c = gstart[:n] + r
            row = ious[c][:, None, :]  # [n, 1, G]
            ok = (row >= thr) & (~taken[:n] | crowd[:n, None, :])  # [n, T, G]
            preferred = ok & ~ignore[:n, None, :]
            allowed = np.where(preferred.any(axis=2, keepdims=True), preferred, ok)
            key = np.where(allowed, row, -1.0)
            best = gmax - 1 - np.argmax(key[:, :, ::-1], axis=2)  # the last box of highest IoU, [n, T]
            hit = allowed.any(axis=2)
            gi, ti = np.nonzero(hit)
            taken[gi, ti, best[gi, ti]] = True
            dets = cand[c]
            matched[dets] = hit
            matched_ignored[dets] = hit & np.take_along_axis(ignore[:n], best, axis=1)
