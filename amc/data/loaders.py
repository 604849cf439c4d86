"""Model inputs: the evaluation set (official test protocol, decoded once) and the training set (augmented).

:class:`EvalSet` follows the official ``test.py``: each image's long side is resized to ``img_size``, images
are grouped into rectangular batches by aspect ratio (``rect=True, pad=0.5``) and letterboxed, without
enlarging, to their batch's shape. Every image is decoded once, at construction, and kept as uint8 tensors:
the pruning search evaluates the same subset hundreds of times, and decoding would otherwise dominate. With
``cache_path`` the decoded batches are also kept on disk (safetensors) for the next run.

:class:`TrainSet` serves letterboxed square images and normalized targets, with the official augmentations
of the yolov7-tiny recipe (``hyp.scratch.tiny``): mosaic, scale and translate jitter, HSV jitter and
horizontal flips. Rotation, shear, perspective, mixup and paste-in are not implemented (the tiny recipe leaves
the first three at 0).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import Progress
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from amc.atomic import atomic_file
from amc.data.datasets import DetectionDataset
from amc.data.letterbox import letterbox, rect_batch_shapes, resize_long_side

CACHE_FORMAT = "amc-evalset-1"  # bump when the decoded pixels would change (resize method, layout)
PAD_VALUE = 114


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _map_with_progress(fn: Callable[[int], Any], items: Sequence[int], description: str,
                       progress: bool) -> Iterator[Any]:
    """``fn`` over ``items`` on a thread pool (Pillow decodes without the GIL), in order, with a progress bar."""
    with ThreadPoolExecutor(_threads()) as pool:
        results = pool.map(fn, items)
        if not progress:
            yield from results
            return
        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(description, total=len(items))
            for r in results:
                bar.advance(task)
                yield r


# --------------------------------------------------------------------------------------------------- evaluation


@dataclass
class EvalBatch:
    """One rectangular batch of the evaluation set.

    ``ratio_pads[i]`` is the official ``((gain_h, gain_w), (pad_w, pad_h))`` that maps boxes on the model input
    back to the original image (``scale_coords``).
    """

    images: torch.Tensor  # (B, 3, H, W) uint8 RGB
    image_ids: list[int]
    original_shapes: list[tuple[int, int]]  # (h0, w0)
    ratio_pads: list[tuple[tuple[float, float], tuple[float, float]]]

    def __len__(self) -> int:
        return len(self.image_ids)


class EvalSet:
    """The official rectangular test protocol over a dataset, decoded once and held as uint8 tensors.

    Iterating yields :class:`EvalBatch` objects; the tensors are shared, not copied, so do not modify them in
    place (convert with ``batch.images.float() / 255``). :meth:`to` moves every batch to a device once.

    Args:
        dataset: the images to evaluate (a :meth:`DetectionDataset.subset` for a proxy evaluation).
        img_size: long side of the resized images.
        batch_size, stride, pad: the rect batching (official test: 32, the model's max stride, 0.5).
        progress: show a progress bar while decoding.
        cache_path: a ``.safetensors`` file, or a folder to hold one named by the settings' hash. A file whose
            settings (dataset, image ids and files, sizes, batching) match is loaded instead of decoding;
            otherwise the decoded batches are written there.
    """

    def __init__(self, dataset: DetectionDataset, img_size: int = 640, batch_size: int = 32, stride: int = 32,
                 pad: float = 0.5, progress: bool = True, cache_path: str | os.PathLike[str] | None = None) -> None:
        self.dataset = dataset
        self.img_size, self.batch_size, self.stride, self.pad = img_size, batch_size, stride, pad
        self.batches: list[EvalBatch] = []
        key = self._key()
        self.cache_file = self._cache_file(cache_path, key) if cache_path is not None else None
        if self.cache_file is not None and self._load(self.cache_file, key):
            return
        self._decode(progress)
        if self.cache_file is not None:
            self._save(self.cache_file, key)

    @property
    def num_images(self) -> int:
        """Number of images over all batches."""
        return sum(len(b) for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[EvalBatch]:
        return iter(self.batches)

    def __getitem__(self, i: int) -> EvalBatch:
        return self.batches[i]

    def to(self, device: torch.device | str) -> EvalSet:
        """Move every batch to ``device`` (in place), so repeated evaluations skip the host-to-device copy."""
        for b in self.batches:
            b.images = b.images.to(device)
        return self

    # -- decoding

    def _decode(self, progress: bool) -> None:
        ds = self.dataset
        shapes = np.array([(r.height, r.width) for r in ds.images]).reshape(-1, 2)
        order, batch_shapes = rect_batch_shapes(shapes, self.batch_size, self.img_size, self.stride, self.pad)
        target = {int(i): tuple(int(v) for v in batch_shapes[k // self.batch_size]) for k, i in enumerate(order)}

        def load(i: int) -> tuple[np.ndarray, tuple[int, int], Any]:
            img = ds.read_image(i)
            h0, w0 = img.shape[:2]
            img = resize_long_side(img, self.img_size)
            h, w = img.shape[:2]
            img, _, pad = letterbox(img, target[i], color=PAD_VALUE, auto=False, scaleup=False)
            return img, (h0, w0), ((h / h0, w / w0), pad)

        results = _map_with_progress(load, [int(i) for i in order], f"decoding {len(order)} images", progress)
        for b in range(len(batch_shapes)):
            idx = [int(i) for i in order[b * self.batch_size:(b + 1) * self.batch_size]]
            h, w = (int(v) for v in batch_shapes[b])
            # Assembled in numpy: torch's parallel copy kernels can be slower than the decode on a busy CPU.
            images = np.empty((len(idx), 3, h, w), dtype=np.uint8)
            shapes0, ratio_pads = [], []
            for j in range(len(idx)):
                img, hw0, rp = next(results)
                images[j] = img.transpose(2, 0, 1)
                shapes0.append(hw0)
                ratio_pads.append(rp)
            self.batches.append(EvalBatch(torch.from_numpy(images), [ds.images[i].id for i in idx], shapes0,
                                          ratio_pads))

    # -- disk cache

    def _key(self) -> dict[str, Any]:
        """What the decoded pixels depend on; a cache file is used only if its key is equal."""
        files = hashlib.sha256()
        for r in self.dataset.images:
            try:  # a regenerated dataset at the same path must not reuse stale pixels
                st = r.path.stat()
                files.update(f"{r.path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                files.update(f"{r.path}|missing\n".encode())
        return {"format": CACHE_FORMAT, "source": self.dataset.source,
                "image_ids": [r.id for r in self.dataset.images], "files": files.hexdigest(),
                "img_size": self.img_size, "stride": self.stride, "pad": self.pad, "batch_size": self.batch_size}

    @staticmethod
    def _cache_file(cache_path: str | os.PathLike[str], key: dict[str, Any]) -> Path:
        p = Path(cache_path)
        if p.suffix == ".safetensors":
            return p
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return p / f"evalset-{digest}.safetensors"

    def _load(self, path: Path, key: dict[str, Any]) -> bool:
        if not path.is_file():
            return False
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if json.loads(meta.get("key", "null")) != key:
                    return False
                info = json.loads(meta["batches"])
                self.batches = [EvalBatch(f.get_tensor(f"batch{b}"), list(d["image_ids"]),
                                          [tuple(s) for s in d["original_shapes"]],
                                          [(tuple(g), tuple(p)) for g, p in d["ratio_pads"]])
                                for b, d in enumerate(info)]
            return True
        except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
            warnings.warn(f"{path}: unreadable evaluation cache ({e}); decoding again", stacklevel=3)
            self.batches = []
            return False

    def _save(self, path: Path, key: dict[str, Any]) -> None:
        tensors = {f"batch{b}": batch.images.contiguous() for b, batch in enumerate(self.batches)}
        info = [{"image_ids": b.image_ids, "original_shapes": b.original_shapes, "ratio_pads": b.ratio_pads}
                for b in self.batches]
        with atomic_file(path) as tmp:  # a killed run never leaves a truncated cache
            save_file(tensors, str(tmp), metadata={"key": json.dumps(key), "batches": json.dumps(info)})


# --------------------------------------------------------------------------------------------------- training

# The augmentation settings of the official yolov7-tiny recipe (data/hyp.scratch.tiny.yaml) that amc implements.
DEFAULT_HYP: dict[str, float] = {"hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "translate": 0.1, "scale": 0.5,
                                 "fliplr": 0.5, "flipud": 0.0, "mosaic": 1.0}
_UNSUPPORTED_HYP = ("degrees", "shear", "perspective", "mixup", "copy_paste", "paste_in")


def augment_hsv(image: np.ndarray, hgain: float, sgain: float, vgain: float,
                rng: np.random.Generator) -> np.ndarray:
    """The official HSV jitter (random gains applied through lookup tables), in Pillow's HSV (hue 0-255)."""
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    x = np.arange(256)
    lut = np.concatenate([(x * r[0]) % 256, np.clip(x * r[1], 0, 255), np.clip(x * r[2], 0, 255)])
    hsv = Image.fromarray(image).convert("HSV").point(lut.astype(np.uint8).tolist())
    return np.asarray(hsv.convert("RGB"))


def box_candidates(before: np.ndarray, after: np.ndarray, wh_thr: float = 2, ar_thr: float = 20,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Boxes worth keeping after augmentation (official rule): wider and taller than ``wh_thr`` px, at least
    ``area_thr`` of their area before (scaled), and an aspect ratio under ``ar_thr``. Both (n, 4) xyxy."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def scale_translate(image: np.ndarray, boxes: np.ndarray, out_size: int, scale: float, translate: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The official random affine restricted to scale and translation (no rotation or shear).

    The image is scaled by ``s ~ U(1 - scale, 1.1 + scale)`` (the official range) about its centre, which lands
    at ``U(0.5 - translate, 0.5 + translate) * out_size``, and cropped or padded to ``out_size`` square. Boxes
    (n, 4 xyxy pixels) follow, are clipped, and those that no longer qualify (:func:`box_candidates`) dropped.

    Returns:
        The image, the kept boxes and the indices of the kept boxes.
    """
    h, w = image.shape[:2]
    s = rng.uniform(1 - scale, 1.1 + scale)
    tx, ty = rng.uniform(0.5 - translate, 0.5 + translate, 2) * out_size
    ox, oy = tx - s * w / 2, ty - s * h / 2  # output = s * input + (ox, oy)
    # Pillow's AFFINE maps output to input pixels, and like the boxes treats pixel edges as integers.
    out = Image.fromarray(image).transform((out_size, out_size), Image.AFFINE, (1 / s, 0, -ox / s, 0, 1 / s, -oy / s),
                                           resample=Image.BILINEAR, fillcolor=(PAD_VALUE,) * 3)
    new = boxes * s + np.array([ox, oy, ox, oy])
    new = new.clip(0, out_size)
    keep = np.flatnonzero(box_candidates(boxes * s, new))
    return np.asarray(out), new[keep], keep


class TrainSet(Dataset):
    """Training samples: ``(image (3, S, S) float in [0, 1], targets (n, 6) [0, class, cx, cy, w, h])``.

    Targets are normalized to the square ``S = img_size`` image; crowd boxes are left out. Without ``augment``
    an image is only resized (long side) and letterboxed. With it, as the official training: a mosaic of four
    images (probability ``hyp['mosaic']``) or a single letterboxed image, then scale/translate jitter, HSV
    jitter and flips.

    Randomness depends only on ``(seed, epoch, index)``, so samples are reproducible whatever the number of
    workers; call :meth:`set_epoch` before each epoch (before creating the epoch's iterator, and without
    ``persistent_workers``, which would keep a stale copy) or every epoch repeats the same augmentations.

    Args:
        dataset: the images and boxes.
        img_size: side of the square samples.
        augment: apply the augmentations above.
        hyp: augmentation settings; missing keys take :data:`DEFAULT_HYP` (an official hyp file can be passed
            as is: other keys are ignored, unsupported augmentations set non-zero are warned about).
        seed: base of the random streams.
        cache: decode and resize every image once, at construction, and keep it in memory (a 256 px demo image
            holds 196 KB; 2000 of them 0.4 GB); otherwise decode on every access.
        progress: show a progress bar while caching.
    """

    def __init__(self, dataset: DetectionDataset, img_size: int = 640, augment: bool = True,
                 hyp: dict[str, Any] | None = None, seed: int = 0, cache: bool = True,
                 progress: bool = False) -> None:
        self.dataset, self.img_size, self.augment, self.seed = dataset, img_size, augment, seed
        self.hyp = {**DEFAULT_HYP, **{k: float(v) for k, v in (hyp or {}).items() if k in DEFAULT_HYP}}
        unsupported = [k for k in _UNSUPPORTED_HYP if hyp and float(hyp.get(k) or 0) != 0]
        if augment and unsupported:
            warnings.warn(f"hyp {', '.join(f'{k}={hyp[k]}' for k in unsupported)}: not implemented by amc's "
                          f"TrainSet, ignored", stacklevel=2)
        self.epoch = 0
        # Boxes without crowd regions, as pixels of the original image; scaled on use.
        self._boxes = [r.boxes[~r.iscrowd].astype(np.float64) for r in dataset.images]
        self._classes = [r.classes[~r.iscrowd] for r in dataset.images]
        self._images: list[np.ndarray] | None = None
        if cache:
            self._images = list(_map_with_progress(self._resized, list(range(len(dataset))),
                                                   f"caching {len(dataset)} training images", progress))

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of an epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def _resized(self, i: int) -> np.ndarray:
        return resize_long_side(self.dataset.read_image(i), self.img_size)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``i`` resized to long side ``img_size``, its boxes (xyxy pixels of that image) and classes."""
        img = self._images[i] if self._images is not None else self._resized(i)
        rec = self.dataset.images[i]
        gain = np.array([img.shape[1] / rec.width, img.shape[0] / rec.height] * 2)
        return img, self._boxes[i] * gain, self._classes[i]

    def _single(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        img, boxes, classes = self.load(i)
        img, r, (dw, dh) = letterbox(img, self.img_size, color=PAD_VALUE, auto=False, scaleup=self.augment)
        # letterbox pads by round(d - 0.1) on the left/top: use the same integer offsets for the boxes.
        left, top = int(round(dw - 0.1)), int(round(dh - 0.1))
        return img, boxes * r + np.array([left, top, left, top]), classes

    def _mosaic(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Four images around a random centre of a (2S, 2S) canvas (the official ``load_mosaic`` layout)."""
        s = self.img_size
        xc, yc = (int(v) for v in rng.uniform(s / 2, 3 * s / 2, 2))
        ids = [i] + [int(j) for j in rng.integers(0, len(self), 3)]
        canvas = np.full((2 * s, 2 * s, 3), PAD_VALUE, np.uint8)
        all_boxes, all_classes = [], []
        for k, j in enumerate(ids):
            img, boxes, classes = self.load(j)
            h, w = img.shape[:2]
            if k == 0:  # top left
                x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
                x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
            elif k == 1:  # top right
                x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
                x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
            elif k == 2:  # bottom left
                x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
                x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
            else:  # bottom right
                x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
                x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
            canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
            dx, dy = x1a - x1b, y1a - y1b
            all_boxes.append(boxes + np.array([dx, dy, dx, dy]))
            all_classes.append(classes)
        boxes = np.concatenate(all_boxes).clip(0, 2 * s)
        return canvas, boxes, np.concatenate(all_classes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        hyp, s = self.hyp, self.img_size
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.augment and rng.random() < hyp["mosaic"]:
            img, boxes, classes = self._mosaic(index, rng)
            img, boxes, keep = scale_translate(img, boxes, s, hyp["scale"], hyp["translate"], rng)
            classes = classes[keep]
        else:
            img, boxes, classes = self._single(index)
            if self.augment and (hyp["scale"] or hyp["translate"]):
                img, boxes, keep = scale_translate(img, boxes, s, hyp["scale"], hyp["translate"], rng)
                classes = classes[keep]
        if self.augment:
            if hyp["hsv_h"] or hyp["hsv_s"] or hyp["hsv_v"]:
                img = augment_hsv(img, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"], rng)
            if rng.random() < hyp["flipud"]:
                img = img[::-1]
                boxes = np.stack([boxes[:, 0], s - boxes[:, 3], boxes[:, 2], s - boxes[:, 1]], 1)
            if rng.random() < hyp["fliplr"]:
                img = img[:, ::-1]
                boxes = np.stack([s - boxes[:, 2], boxes[:, 1], s - boxes[:, 0], boxes[:, 3]], 1)
        # Converted in numpy, not torch: in DataLoader workers torch's thread pool only adds contention.
        targets = np.zeros((len(boxes), 6), np.float32)
        if len(boxes):
            targets[:, 1] = classes
            targets[:, 2:4] = (boxes[:, :2] + boxes[:, 2:]) / 2 / s
            targets[:, 4:6] = (boxes[:, 2:] - boxes[:, :2]) / s
        image = img.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
        return torch.from_numpy(image), torch.from_numpy(targets)

    @staticmethod
    def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack images; concatenate targets with each one's image index in column 0."""
        return collate(batch)


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack images ``(B, 3, H, W)``; concatenate targets ``(N, 6)`` with each one's image index in column 0."""
    images, targets = zip(*batch)
    out = []
    for k, t in enumerate(targets):
        t = t.clone()
        t[:, 0] = k
        out.append(t)
    return torch.stack(images, 0), torch.cat(out, 0)


def sample_batches(dataset: DetectionDataset, n_batches: int, batch_size: int, img_size: int,
                   seed: int = 0, augment: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A few fixed training batches (images in [0, 1], targets as :func:`collate`), e.g. to calibrate a criterion.

    The images are a deterministic subset (``seed``) of ``dataset``, letterboxed to ``img_size`` (no augmentation
    unless asked), so the same seed gives the same batches on every run.
    """
    n = min(len(dataset), n_batches * batch_size)
    if n == 0:
        return []
    train = TrainSet(dataset.subset(n, seed), img_size=img_size, augment=augment, seed=seed, cache=False)
    items = [train[i] for i in range(n)]
    return [collate(items[i:i + batch_size]) for i in range(0, n, batch_size)]
