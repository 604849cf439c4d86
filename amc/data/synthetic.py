"""The embedded demo dataset: synthetic shapes on cluttered backgrounds, in COCO format.

Three classes (``disc``, ``box``, ``triangle``) of filled shapes, 12-120 px long at 256 px, of any colour,
aspect 0.5-2 and rotation, sometimes two-toned, 1-8 per image, partly overlapping and partly cut by the
border. Backgrounds are smooth colour fields with unlabelled clutter chosen to look like the objects without
being them: thin hollow outlines of the three shapes (two-toned objects have a thick ring instead, so they
stay distinguishable), filled crosses, lines and dots smaller than any object. Object colours keep a minimum
RGB distance from what they cover. The aim: hard enough that a small detector does not saturate (and pruning
visibly costs mAP), learnable by a small model on a CPU within an hour.

Labels are exact: every shape is rasterised as a mask first, the image pixels are painted through that
mask, and a box is the tight box of the shape's *visible* pixels (after later shapes cover parts of it and
after the image border cuts it). A placement that would leave any shape less than half visible (in the
image and not covered) is rejected and redrawn, so the images never hold an unlabelled, mostly hidden
object. Thin clutter lines drawn over shapes do not change their boxes.

Each image has its own random stream (seed, split, index), so the output is byte-identical for a seed and
image whatever else was generated (given the same Pillow and libjpeg: rasterisation and JPEG encoding are
theirs). Optimized JPEG at quality 80 (about 7 KB per 256 px image, ~16 MB for the 2000 + 300 demo images)
keeps the repository small; there is no pixel noise, as noise is what JPEG pays most for.

``python -m amc.data.synthetic OUT_DIR [--n-train N] [--n-val N] [--n-search N] [--img-size S] [--seed S]``
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from amc.atomic import atomic_write_text
from amc.errors import ConfigError

CLASS_NAMES = ["disc", "box", "triangle"]
#: The demo's splits. ``search`` is what a search scores its policies on, so that the results reported on ``val``
#: come from images no search looked at (issue 20). Appended last: each image's random stream is seeded by its
#: split's position here, so the train and val images stay byte-identical to those made before it existed.
SPLITS = ("train", "val", "search")
JPEG_QUALITY = 80
MIN_VISIBLE = 0.5  # fraction of a shape's full area that must stay visible (in the image, not covered)
MIN_SIDE = 4  # px: visible boxes narrower than this are not placed


@dataclass
class _Shape:
    """One labelled shape: its polygon (image pixels), class, mask and analytic area."""

    cls: int
    polygon: list[tuple[float, float]]
    mask: np.ndarray  # (H, W) bool, the in-image pixels the shape paints
    area: float  # analytic area of the whole polygon, inside the image or not
    region: tuple[slice, slice] = (slice(0), slice(0))  # the image window the polygon can touch


def _polygon_area(poly: Sequence[tuple[float, float]]) -> float:
    xy = np.asarray(poly, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _shape_polygon(rng: np.random.Generator, cls: int, cx: float, cy: float,
                   long_side: float) -> list[tuple[float, float]]:
    """A class's outline as a polygon around (cx, cy): ellipse, rectangle or triangle, aspect 0.5-2, rotated."""
    short = long_side * rng.uniform(0.5, 1.0)
    w, h = (long_side, short) if rng.random() < 0.5 else (short, long_side)
    if cls == 0:  # disc: an ellipse, enough vertices to look round at 120 px
        n = int(np.clip(long_side / 2, 16, 64))
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        pts = np.stack([0.5 * w * np.cos(t), 0.5 * h * np.sin(t)], 1)
        angle = rng.uniform(0, np.pi)
    elif cls == 1:  # box: mostly axis-aligned rectangles, some tilted
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]], dtype=np.float64) / 2
        angle = rng.uniform(-0.5, 0.5) if rng.random() < 0.4 else 0.0
    else:  # triangle: a jittered equilateral triangle stretched to w x h, at any rotation
        t = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.35, 0.35, 3)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
        pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0)) - 0.5
        pts *= [w, h]
        angle = rng.uniform(0, 2 * np.pi)
    c, s = math.cos(angle), math.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]]) + [cx, cy]
    return [(float(x), float(y)) for x, y in pts]


def _mask(poly: list[tuple[float, float]], size: int) -> np.ndarray:
    m = Image.new("1", (size, size), 0)
    ImageDraw.Draw(m).polygon(poly, fill=1)
    return np.asarray(m, dtype=bool)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float64)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour field: a two-colour linear gradient plus low-frequency colour variation (float RGB)."""
    c0, c1 = _random_colour(rng), _random_colour(rng)
    if rng.random() < 0.5:  # low-contrast gradients are the common, harder case
        c1 = np.clip(c0 + rng.normal(0, 40, 3), 0, 255)
    a = rng.uniform(0, 2 * np.pi)
    u = np.linspace(0, 1, size, dtype=np.float32)
    t = u[None, :] * math.cos(a) + u[:, None] * math.sin(a)
    t = ((t - t.min()) / (t.max() - t.min() + 1e-9))[..., None]
    img = c0.astype(np.float32) * (1 - t) + c1.astype(np.float32) * t
    # Low-frequency variation: a coarse random grid upsampled smoothly (cheap, and JPEG-friendly).
    g = int(rng.integers(3, 9))
    coarse = rng.normal(0, rng.uniform(8, 30), (g, g, 3))
    smooth = np.stack([np.asarray(Image.fromarray(coarse[..., k].astype(np.float32), "F")
                                  .resize((size, size), Image.BICUBIC)) for k in range(3)], -1)
    return np.clip(img + smooth, 0, 255)


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, scale: float) -> None:
    """Unlabelled distractors: hollow outlines of the classes, filled crosses, lines and small dots."""
    def colour() -> tuple[int, int, int]:
        return tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[return-value]

    for _ in range(int(rng.integers(0, 4))):  # hollow outlines look like the classes but are not objects
        cls = int(rng.integers(0, 3))
        long_side = math.exp(rng.uniform(math.log(16), math.log(90))) * scale
        poly = _shape_polygon(rng, cls, *rng.uniform(0, size, 2), long_side)
        draw.polygon(poly, outline=colour(), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 3))):  # crosses: filled, object-sized, a fourth (unlabelled) shape
        cx, cy = rng.uniform(0, size, 2)
        r = math.exp(rng.uniform(math.log(8), math.log(40))) * scale
        t = r * rng.uniform(0.15, 0.35)
        c = colour()
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=c)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=c)
    for _ in range(int(rng.integers(1, 7))):  # lines
        x0, y0, x1, y1 = rng.uniform(-0.1 * size, 1.1 * size, 4)
        draw.line([x0, y0, x1, y1], fill=colour(), width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, 20))):  # dots, smaller than the smallest object
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(1, 3) * scale
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour())


def _visible_box(owner: np.ndarray, k: int, region: tuple[slice, slice]) -> tuple[int, int, int, int] | None:
    """Tight box (x0, y0, x1, y1), exclusive ends, of the pixels shape ``k`` shows inside ``region``."""
    m = owner[region] == k
    cols, rows = np.flatnonzero(m.any(0)), np.flatnonzero(m.any(1))
    if not len(cols):
        return None
    oy, ox = region[0].start, region[1].start
    return ox + int(cols[0]), oy + int(rows[0]), ox + int(cols[-1]) + 1, oy + int(rows[-1]) + 1


def _region(poly: list[tuple[float, float]], size: int) -> tuple[slice, slice]:
    """The image rows and columns a polygon can touch (its bounds, one pixel wider, clipped)."""
    xy = np.asarray(poly)
    x0, y0 = np.clip(np.floor(xy.min(0)).astype(int) - 1, 0, size)
    x1, y1 = np.clip(np.ceil(xy.max(0)).astype(int) + 2, 0, size)
    return slice(int(y0), int(y1)), slice(int(x0), int(x1))


def _place_shapes(rng: np.random.Generator, size: int, scale: float) -> tuple[list[_Shape], np.ndarray]:
    """1-8 shapes, each placement accepted only if every shape stays at least half visible.

    Returns the shapes and the owner map: which shape each pixel finally shows (-1: none).
    """
    wanted = int(rng.integers(1, 9))
    shapes: list[_Shape] = []
    regions: list[tuple[slice, slice]] = []
    visible: list[int] = []  # pixels each shape still shows
    owner = np.full((size, size), -1, dtype=np.int16)
    for _ in range(wanted * 6):
        if len(shapes) == wanted:
            break
        cls = int(rng.integers(0, 3))
        long_side = math.exp(rng.uniform(math.log(12), math.log(120))) * scale
        poly = _shape_polygon(rng, cls, *rng.uniform(0, size, 2), long_side)
        mask = _mask(poly, size)
        area = _polygon_area(poly)
        n_in = int(mask.sum())
        if n_in < MIN_VISIBLE * area:
            continue  # mostly outside the image
        covered = owner[mask]
        lost = np.bincount(covered[covered >= 0], minlength=len(shapes))
        hit = np.flatnonzero(lost)  # earlier shapes the new one covers in part
        if any(visible[k] - lost[k] < MIN_VISIBLE * shapes[k].area for k in hit):
            continue  # it would hide too much of an earlier shape
        trial = owner.copy()
        trial[mask] = len(shapes)
        region = _region(poly, size)
        boxes = [_visible_box(trial, int(k), regions[k]) for k in hit] + [_visible_box(trial, len(shapes), region)]
        if any(b is None or b[2] - b[0] < MIN_SIDE or b[3] - b[1] < MIN_SIDE for b in boxes):
            continue  # a sliver: too thin to label sensibly
        owner = trial
        for k in hit:
            visible[k] -= int(lost[k])
        shapes.append(_Shape(cls, poly, mask, area))
        regions.append(region)
        visible.append(n_in)
    for s, r in zip(shapes, regions):
        s.region = r
    return shapes, owner


def _paint_colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A random colour that stands out from ``under`` (the mean colour it covers): RGB distance >= 70."""
    best, best_d = None, -1.0
    for _ in range(12):
        c = _random_colour(rng)
        d = float(np.linalg.norm(c - under))
        if d >= 70:
            return tuple(int(v) for v in c)  # type: ignore[return-value]
        if d > best_d:
            best, best_d = c, d
    return tuple(int(v) for v in best)  # type: ignore[arg-type,return-value]


def render_image(rng: np.random.Generator, size: int = 256) -> tuple[Image.Image, list[tuple[int, list[int], int]]]:
    """One image and its labels: ``(class, [x, y, w, h] tight visible box in pixels, visible pixel count)``."""
    scale = size / 256  # every size below is quoted for a 256 px image
    canvas = Image.fromarray(_background(rng, size).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    _clutter(rng, draw, size, scale)
    shapes, owner = _place_shapes(rng, size, scale)
    # Paint in placement order through each shape's full mask; later shapes cover earlier ones exactly as
    # the visibility masks assumed.
    pixels = np.asarray(canvas).copy()
    for s in shapes:
        full = s.mask
        colour = np.array(_paint_colour(rng, pixels[full].mean(0)), dtype=np.uint8)
        pixels[full] = colour
        if rng.random() < 0.3:  # two-toned: an inner copy in a second colour (same silhouette, same box)
            cx, cy = np.mean(s.polygon, 0)
            k = rng.uniform(0.25, 0.55)  # a thick ring: thin rings would look like the outline clutter
            inner = [(cx + k * (x - cx), cy + k * (y - cy)) for x, y in s.polygon]
            inner_mask = _mask(inner, size) & full
            pixels[inner_mask] = np.array(_paint_colour(rng, colour.astype(np.float64)), dtype=np.uint8)
    canvas = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 3))):  # thin lines over everything: they cross objects, not resize them
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        draw.line([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=1)
    # No pixel noise: it is what JPEG pays most for, and JPEG's own artefacts already roughen flat regions.
    labels = []
    for k, s in enumerate(shapes):
        box = _visible_box(owner, k, s.region)
        assert box is not None  # placement guarantees it
        x0, y0, x1, y1 = box
        labels.append((s.cls, [x0, y0, x1 - x0, y1 - y0], int((owner[s.region] == k).sum())))
    return canvas, labels


def _generate_split(out_dir: Path, split: str, n: int, img_size: int, seed: int) -> dict:
    img_dir = out_dir / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    for stale in img_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].jpg"):  # a previous, larger run's images
        if int(stale.stem) >= n:
            stale.unlink()
    images, annotations = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, SPLITS.index(split), i])
        img, labels = render_image(rng, img_size)
        name = f"{i:06d}.jpg"
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
        data = buf.getvalue()
        path = img_dir / name
        if not path.is_file() or path.read_bytes() != data:  # leave identical files untouched
            path.write_bytes(data)
        images.append({"id": i + 1, "file_name": name, "width": img_size, "height": img_size})
        for cls, box, area in labels:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                                "bbox": box, "area": area, "iscrowd": 0})
    return {
        "info": {"description": f"amc synthetic demo dataset ({split})", "seed": seed, "img_size": img_size},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(CLASS_NAMES)],
    }


def _coco_text(coco: dict) -> str:
    """COCO json with one image or annotation per line: compact, yet readable in a diff."""
    def rows(items: list[dict]) -> str:
        return ",\n".join(json.dumps(x, separators=(",", ":")) for x in items)

    return (f'{{"info":{json.dumps(coco["info"])},\n"categories":{json.dumps(coco["categories"])},\n'
            f'"images":[\n{rows(coco["images"])}],\n"annotations":[\n{rows(coco["annotations"])}]}}\n')


def generate_demo_dataset(out_dir: Path, n_train: int = 2000, n_val: int = 300, img_size: int = 256,
                          seed: int = 0, splits: Sequence[str] = SPLITS, n_search: int = 0) -> None:
    """Write the demo dataset in COCO format: ``out_dir/images/{train,val,search}/*.jpg`` and
    ``out_dir/{train,val,search}.json``. The three splits are disjoint (every image has its own random stream).

    Deterministic: the same arguments give the same bytes. Images whose bytes are unchanged are not rewritten.
    ``splits`` limits the work to some splits (each image has its own random stream, so a split generated
    alone equals the same split generated with the other).
    """
    if n_train < 0 or n_val < 0 or n_search < 0:
        raise ConfigError(f"{out_dir}: image counts must be >= 0 (got n_train={n_train}, n_val={n_val}, "
                          f"n_search={n_search})")
    if img_size < 32:
        raise ConfigError(f"{out_dir}: img_size must be >= 32 (got {img_size})")
    out_dir = Path(out_dir)
    for split, n in zip(SPLITS, (n_train, n_val, n_search)):
        if split not in splits or (split == "search" and n == 0):  # a dataset made without a search split
            continue
        coco = _generate_split(out_dir, split, n, img_size, seed)
        atomic_write_text(out_dir / f"{split}.json", _coco_text(coco))


def summarize(out_dir: Path) -> str:
    """A short text summary of a generated dataset: images, boxes per class, box sizes, bytes on disk."""
    rows = []
    for split in SPLITS:
        path = Path(out_dir) / f"{split}.json"
        if not path.is_file():
            continue
        coco = json.loads(path.read_text())
        anns = coco["annotations"]
        per_class = np.bincount([a["category_id"] - 1 for a in anns], minlength=len(CLASS_NAMES))
        sides = np.array([max(a["bbox"][2:]) for a in anns] or [0])
        nbytes = sum(p.stat().st_size for p in (Path(out_dir) / "images" / split).glob("*.jpg"))
        rows.append(f"{split}: {len(coco['images'])} images, {len(anns)} boxes "
                    f"({', '.join(f'{n} {c}' for c, n in zip(CLASS_NAMES, per_class))}), "
                    f"long side {sides.min()}-{sides.max()} px (median {np.median(sides):.0f}), "
                    f"{len(anns) / max(1, len(coco['images'])):.1f} boxes/image, {nbytes / 1e6:.1f} MB of images")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: generate the demo dataset and print a summary."""
    p = argparse.ArgumentParser(prog="python -m amc.data.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("out_dir", type=Path, help="output folder (images/{train,val,search}/ and {train,val,search}.json)")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=300)
    p.add_argument("--n-search", type=int, default=300, help="images of the split searches score policies on")
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        generate_demo_dataset(args.out_dir, args.n_train, args.n_val, args.img_size, args.seed,
                              n_search=args.n_search)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summarize(args.out_dir))
    print(f"written to {args.out_dir} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
