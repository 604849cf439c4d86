"""Detection datasets in memory: COCO json or YOLO txt labels, read into one format.

A :class:`DetectionDataset` is a list of :class:`ImageRecord` (path, size and boxes in pixels of the original
image) plus the class names and the COCO category id of each class. Everything downstream (the evaluation
and training sets, mAP through pycocotools) reads only this, whatever the files were.

Loading reads no pixels: COCO sizes come from the json, YOLO sizes from the image headers. Images are decoded
by :meth:`DetectionDataset.read_image`, with Pillow, without EXIF rotation (COCO's sizes and boxes are those
of the stored pixels).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from amc.data.synthetic import SPLITS, generate_demo_dataset
from amc.errors import ConfigError

IMAGE_SUFFIXES = (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")
# YOLO labels may overshoot [0, 1] by rounding (6-decimal labels of boxes touching the border): up to this much
# is clipped silently (under a pixel at 1000 px); beyond it a label is out of bounds and skipped.
YOLO_TOLERANCE = 1e-3


@dataclass
class ImageRecord:
    """One image: where it is, its size, and its boxes in pixels of the original image."""

    id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (n, 4) float32 xyxy pixels
    classes: np.ndarray  # (n,) int64 contiguous class index in [0, nc)
    iscrowd: np.ndarray  # (n,) bool
    areas: np.ndarray  # (n,) float32: COCO 'area' when given, else box w * h


def _empty_labels() -> dict[str, np.ndarray]:
    return {"boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int64),
            "iscrowd": np.zeros(0, bool), "areas": np.zeros(0, np.float32)}


@dataclass
class DetectionDataset:
    """A split of a detection dataset: images with boxes, class names and COCO category ids."""

    source: str  # what it was read from (identifies it in caches and reports)
    names: list[str]
    category_ids: list[int]  # COCO category id of each contiguous class
    images: list[ImageRecord]
    skipped_labels: int = 0  # labels dropped while loading (degenerate or out of bounds)
    _by_id: dict[int, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def nc(self) -> int:
        """Number of classes."""
        return len(self.names)

    def __len__(self) -> int:
        return len(self.images)

    def index_of(self, image_id: int) -> int:
        """Position of the image with id ``image_id`` in :attr:`images`."""
        if len(self._by_id) != len(self.images):
            self._by_id = {r.id: i for i, r in enumerate(self.images)}
        return self._by_id[image_id]

    def subset(self, n: int | None, seed: int = 0) -> DetectionDataset:
        """``n`` images drawn without replacement, in dataset order; the same ``n`` and ``seed`` give the same ones.

        ``n`` None or at least the dataset's size returns all images.
        """
        if n is None or n >= len(self.images):
            return replace(self, images=list(self.images))
        if n < 0:
            raise ConfigError(f"{self.source}: subset size must be >= 0 (got {n})")
        picked = np.sort(np.random.default_rng(seed).choice(len(self.images), size=n, replace=False))
        return replace(self, images=[self.images[int(i)] for i in picked])

    def read_image(self, i: int) -> np.ndarray:
        """Image ``i`` (a position in :attr:`images`) as an (H, W, 3) uint8 RGB array."""
        rec = self.images[i]
        try:
            with Image.open(rec.path) as im:
                arr = np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise ConfigError(f"{rec.path}: image file not found (listed by {self.source})") from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ConfigError(f"{rec.path}: cannot decode the image ({e})") from None
        if arr.shape[:2] != (rec.height, rec.width):
            raise ConfigError(f"{rec.path}: image is {arr.shape[1]}x{arr.shape[0]} but {self.source} says "
                              f"{rec.width}x{rec.height}; the boxes would not fit it")
        return arr

    def coco_dicts(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """Ground truth in COCO format for pycocotools: ``(images, annotations, categories)``.

        Boxes are ``[x, y, w, h]`` pixels of the original images; annotation ids count from 1.
        """
        images, annotations = [], []
        for rec in self.images:
            images.append({"id": rec.id, "file_name": rec.path.name, "width": rec.width, "height": rec.height})
            for box, cls, crowd, area in zip(rec.boxes.tolist(), rec.classes.tolist(), rec.iscrowd.tolist(),
                                             rec.areas.tolist()):
                x0, y0, x1, y1 = box
                annotations.append({"id": len(annotations) + 1, "image_id": rec.id,
                                    "category_id": self.category_ids[cls], "bbox": [x0, y0, x1 - x0, y1 - y0],
                                    "area": area, "iscrowd": int(crowd)})
        categories = [{"id": cid, "name": name} for cid, name in zip(self.category_ids, self.names)]
        return images, annotations, categories


# --------------------------------------------------------------------------------------------------- COCO


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def load_coco(annotations_json: str | os.PathLike[str], images_dir: str | os.PathLike[str]) -> DetectionDataset:
    """Read a COCO ``instances`` json and the folder holding its images.

    Classes are the json's categories sorted by id (80 COCO categories give the usual 80 -> 91 mapping).
    Annotations of images the json does not list are ignored; boxes with zero width or height are skipped and
    counted in ``skipped_labels``.

    Raises:
        ConfigError: unreadable json, missing keys, unknown category ids, images missing on disk, no images.
    """
    path, images_dir = Path(annotations_json), Path(images_dir)
    coco = _read_json(path)
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise ConfigError(f"{path}: not a COCO instances file (no 'images' list)")
    try:
        cats = sorted(coco.get("categories", []), key=lambda c: int(c["id"]))
        category_ids = [int(c["id"]) for c in cats]
        names = [str(c.get("name", c["id"])) for c in cats]
        records: dict[int, dict[str, Any]] = {}
        for im in sorted(coco["images"], key=lambda im: int(im["id"])):
            records[int(im["id"])] = {"id": int(im["id"]), "path": images_dir / str(im["file_name"]),
                                      "width": int(im["width"]), "height": int(im["height"]), "labels": []}
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: malformed image or category entry ({type(e).__name__}: {e})") from None
    if not records:
        raise ConfigError(f"{path}: empty split (no images listed)")
    if not category_ids:
        raise ConfigError(f"{path}: no categories listed")
    class_of = {cid: k for k, cid in enumerate(category_ids)}

    missing = [r["path"] for r in records.values() if not r["path"].is_file()]
    if missing:
        raise ConfigError(f"{missing[0]}: image file not found ({len(missing)} of {len(records)} images listed "
                          f"by {path} are missing from {images_dir})")

    skipped = 0
    for ann in coco.get("annotations", []):
        try:
            rec = records.get(int(ann["image_id"]))
            if rec is None:
                continue  # an image outside this split
            x, y, w, h = (float(v) for v in ann["bbox"])
            cid = int(ann["category_id"])
            if cid not in class_of:
                raise ConfigError(f"{path}: annotation {ann.get('id')} has category_id {cid}, "
                                  f"which is not among the categories {category_ids}")
            if w <= 0 or h <= 0:
                skipped += 1
                continue
            area = float(ann["area"]) if ann.get("area") is not None else w * h
            rec["labels"].append((x, y, x + w, y + h, class_of[cid], bool(ann.get("iscrowd", 0)), area))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{path}: malformed annotation {ann.get('id') if isinstance(ann, dict) else ann!r} "
                              f"({type(e).__name__}: {e})") from None

    images = []
    for r in records.values():
        lab = r.pop("labels")
        if lab:
            a = np.array([row[:4] for row in lab], np.float32)
            extra = {"boxes": a, "classes": np.array([row[4] for row in lab], np.int64),
                     "iscrowd": np.array([row[5] for row in lab], bool),
                     "areas": np.array([row[6] for row in lab], np.float32)}
        else:
            extra = _empty_labels()
        images.append(ImageRecord(**r, **extra))
    return DetectionDataset(f"coco:{path.resolve()}", names, category_ids, images, skipped)


# --------------------------------------------------------------------------------------------------- YOLO


def label_path(image_path: Path) -> Path:
    """The YOLO label file of an image: the last ``images`` folder becomes ``labels``, the suffix ``.txt``."""
    parts = list(image_path.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _resolve(entry: str, bases: list[Path]) -> Path:
    p = Path(entry).expanduser()
    if p.is_absolute():
        return p
    for base in bases:
        if (base / p).exists():
            return base / p
    return bases[0] / p


def _image_files(entry: Any, bases: list[Path], yaml_path: Path, split: str) -> list[Path]:
    """Image paths named by a split entry: a folder, a .txt list of paths, an image, or a list of those."""
    if isinstance(entry, (list, tuple)):
        return [f for e in entry for f in _image_files(e, bases, yaml_path, split)]
    if not isinstance(entry, (str, os.PathLike)):
        raise ConfigError(f"{yaml_path}: '{split}' must be a folder, a .txt list or a list of them (got {entry!r})")
    p = _resolve(str(entry), bases)
    if p.is_dir():
        return [f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if p.is_file() and p.suffix.lower() == ".txt":
        files = []
        for line in p.read_text().splitlines():
            line = line.strip()
            if line:  # relative entries are relative to the list's folder ('./images/x.jpg' in the official lists)
                files.append(_resolve(line, [p.parent]))
        return [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
        return [p]
    raise ConfigError(f"{yaml_path}: '{split}' entry {entry!r} not found (looked for {p})")


def _names(data: dict[str, Any], yaml_path: Path) -> list[str]:
    names, nc = data.get("names"), data.get("nc")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise ConfigError(f"{yaml_path}: 'names' keys must be class indices 0..nc-1") from None
        if keys != list(range(len(keys))):
            raise ConfigError(f"{yaml_path}: 'names' keys must be 0..{len(keys) - 1} without gaps (got {keys})")
        names = [str(names[k] if k in names else names[str(k)]) for k in keys]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    elif names is None and isinstance(nc, int):
        names = [f"class{k}" for k in range(nc)]
    else:
        raise ConfigError(f"{yaml_path}: 'names' must be a list or a {{index: name}} mapping")
    if nc is not None and (not isinstance(nc, int) or nc != len(names)):
        raise ConfigError(f"{yaml_path}: nc is {nc} but 'names' lists {len(names)} classes")
    if not names:
        raise ConfigError(f"{yaml_path}: no classes ('names' is empty)")
    return names


def _read_yolo_labels(path: Path, width: int, height: int, nc: int,
                      skipped: list[str]) -> dict[str, np.ndarray]:
    """Rows ``cls cx cy w h`` (normalized) of one label file, as pixel xyxy; out-of-bound rows go to ``skipped``."""
    if not path.is_file():
        return _empty_labels()  # an image without objects
    boxes, classes = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 5:
                raise ValueError
            values = [float(v) for v in fields]
        except ValueError:
            raise ConfigError(f"{path}:{n}: malformed label row {line.strip()!r} (expected 5 numbers "
                              f"'class cx cy w h'; polygon labels are not supported)") from None
        c, cx, cy, w, h = values
        if c != int(c):
            raise ConfigError(f"{path}:{n}: class id {fields[0]} is not an integer")
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        if not 0 <= c < nc:
            skipped.append(f"{path}:{n}: class id {int(c)} not in [0, {nc})")
            continue
        if min(x0, y0) < -YOLO_TOLERANCE or max(x1, y1) > 1 + YOLO_TOLERANCE or w <= 0 or h <= 0:
            skipped.append(f"{path}:{n}: box outside [0, 1] or empty")
            continue
        boxes.append([min(max(v, 0.0), 1.0) * s for v, s in zip((x0, y0, x1, y1), (width, height, width, height))])
        classes.append(int(c))
    if not boxes:
        return _empty_labels()
    b = np.array(boxes, np.float32)
    return {"boxes": b, "classes": np.array(classes, np.int64), "iscrowd": np.zeros(len(b), bool),
            "areas": ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).astype(np.float32)}


def load_yolo(data_yaml: str | os.PathLike[str], split: str = "val") -> DetectionDataset:
    """Read a split of a YOLO dataset from its data yaml.

    The yaml has ``train``/``val``/``test`` (a folder of images, a .txt list of image paths, or a list of
    those), ``names`` (list or ``{index: name}``), optionally ``nc`` and ``path`` (the root that relative
    entries are under; default: the yaml's folder, then the current directory as in the official repo).
    Labels are at the standard place (:func:`label_path`); an image without a label file has no objects.
    Labels with a class id >= nc or a box outside [0, 1] are skipped, counted and warned about once.

    Raises:
        ConfigError: unreadable yaml, unknown split, missing images, malformed label rows (file:line), no images.
    """
    yaml_path = Path(data_yaml)
    try:
        data = yaml.safe_load(yaml_path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{yaml_path}: dataset yaml not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{yaml_path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{yaml_path}: expected a mapping with train/val/names")
    if data.get(split) is None:
        raise ConfigError(f"{yaml_path}: no '{split}' split (has: "
                          f"{', '.join(k for k in ('train', 'val', 'test') if data.get(k)) or 'none'})")
    names = _names(data, yaml_path)
    root = yaml_path.parent
    if data.get("path"):
        root = _resolve(str(data["path"]), [yaml_path.parent, Path.cwd()])
    bases = [root] if data.get("path") else [root, Path.cwd()]
    # abspath, not resolve(): a symlinked image keeps its own path, so its label is found beside it.
    files = sorted({Path(os.path.abspath(f)) for f in _image_files(data[split], bases, yaml_path, split)})
    if not files:
        raise ConfigError(f"{yaml_path}: empty split '{split}' (no images found)")

    skipped: list[str] = []
    images = []
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:  # reads the header only
                width, height = im.size
        except FileNotFoundError:
            raise ConfigError(f"{f}: image file not found (listed by {yaml_path} '{split}')") from None
        except (UnidentifiedImageError, OSError) as e:
            raise ConfigError(f"{f}: cannot read the image ({e})") from None
        labels = _read_yolo_labels(label_path(f), width, height, len(names), skipped)
        images.append(ImageRecord(id=i, path=f, width=width, height=height, **labels))
    if skipped:
        warnings.warn(f"{yaml_path} '{split}': skipped {len(skipped)} label(s) with a class id >= nc or a box "
                      f"outside [0, 1]; first: {skipped[0]}", stacklevel=2)
    return DetectionDataset(f"yolo:{yaml_path.resolve()}:{split}", names, list(range(len(names))), images,
                            len(skipped))


# --------------------------------------------------------------------------------------------------- any kind


#: The demo dataset's generator settings; the version names the cache folder and changes with the generator.
DEMO_VERSION = 1
DEMO_SETTINGS = {"n_train": 2000, "n_val": 300, "n_search": 300, "img_size": 256, "seed": 0}


def cache_dir() -> Path:
    """amc's cache folder: ``$AMC_CACHE_DIR``, else ``~/.cache/amc``."""
    return Path(os.environ.get("AMC_CACHE_DIR") or Path.home() / ".cache" / "amc").expanduser()


def demo_root() -> Path:
    """Folder of the embedded demo dataset (COCO format, made by :mod:`amc.data.synthetic` on first use)."""
    return cache_dir() / f"demo-v{DEMO_VERSION}"


def ensure_demo_split(root: Path, split: str) -> None:
    """Generate one split of the demo dataset into ``root`` unless it is already there (deterministic)."""
    if split not in SPLITS:
        raise ConfigError(f"the demo dataset has splits {', '.join(SPLITS)}, not {split!r}")
    if (root / f"{split}.json").is_file():
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        try:
            import fcntl  # another process generating the same split: wait for it, then reuse its files

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # not on POSIX: no lock, generation is deterministic anyway
            pass
        if not (root / f"{split}.json").is_file():
            print(f"generating the demo dataset ({split} split) into {root} ...", file=sys.stderr)
            generate_demo_dataset(root, **DEMO_SETTINGS, splits=(split,))


DATASET_KINDS = ("coco", "yolo", "demo")


def load_dataset(kind: str, path: str | os.PathLike[str] | None = None, split: str = "val",
                 images_dir: str | os.PathLike[str] | None = None) -> DetectionDataset:
    """Load a split of a dataset of any kind.

    Args:
        kind: ``'coco'`` (``path`` is the instances json, ``images_dir`` the folder of its images),
            ``'yolo'`` (``path`` is the data yaml) or ``'demo'`` (the embedded dataset; ``path`` may name
            another folder in its layout: ``{split}.json`` and ``images/{split}/``).
        split: ``'train'``, ``'val'`` ... (for COCO only used to pick the demo's files).
    """
    if kind == "coco":
        if path is None or images_dir is None:
            raise ConfigError("dataset kind 'coco' needs both the annotation json (path) and images_dir")
        return load_coco(path, images_dir)
    if kind == "yolo":
        if path is None:
            raise ConfigError("dataset kind 'yolo' needs the dataset yaml (path)")
        return load_yolo(path, split)
    if kind == "demo":
        root = Path(path) if path is not None else demo_root()
        if path is None:
            ensure_demo_split(root, split)
        elif not (root / f"{split}.json").is_file():
            raise ConfigError(f"{root / f'{split}.json'}: demo dataset not found; generate it with "
                              f"`python -m amc.data.synthetic {root}`")
        return load_coco(root / f"{split}.json", root / "images" / split)
    raise ConfigError(f"unknown dataset kind {kind!r} (expected one of: {', '.join(DATASET_KINDS)})")
