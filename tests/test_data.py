"""Datasets (COCO, YOLO, demo), the official test geometry, EvalSet and TrainSet, and bad input."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from amc.data import (EvalSet, TrainSet, collate, label_path, letterbox, load_coco, load_dataset, load_yolo,
                      rect_batch_shapes, resize_long_side)
from amc.data.synthetic import CLASS_NAMES, generate_demo_dataset
from amc.errors import ConfigError

SIZE = 96  # the tiny demo datasets' image size


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(root, n_train=4, n_val=7, img_size=SIZE, seed=3)
    return root


def write_yolo(demo: Path, out: Path, split: str = "val") -> Path:
    """The demo split rewritten as a YOLO dataset (same images, labels from the COCO json); returns the yaml."""
    coco = json.loads((demo / f"{split}.json").read_text())
    (out / "images" / split).mkdir(parents=True)
    (out / "labels" / split).mkdir(parents=True)
    for im in coco["images"]:
        shutil.copy(demo / "images" / split / im["file_name"], out / "images" / split / im["file_name"])
        rows = [f"{a['category_id'] - 1} {(a['bbox'][0] + a['bbox'][2] / 2) / im['width']:.6f} "
                f"{(a['bbox'][1] + a['bbox'][3] / 2) / im['height']:.6f} {a['bbox'][2] / im['width']:.6f} "
                f"{a['bbox'][3] / im['height']:.6f}"
                for a in coco["annotations"] if a["image_id"] == im["id"]]
        (out / "labels" / split / im["file_name"]).with_suffix(".txt").write_text("\n".join(rows) + "\n")
    data = out / "data.yaml"
    data.write_text(yaml.safe_dump({split: f"images/{split}", "nc": 3, "names": CLASS_NAMES}))
    return data


def write_coco(root: Path, images: list[tuple[str, np.ndarray]], annotations: list[dict],
               categories: list[dict] | None = None) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for k, (name, arr) in enumerate(images, 1):
        Image.fromarray(arr).save(root / "images" / name)
        entries.append({"id": k, "file_name": name, "width": arr.shape[1], "height": arr.shape[0]})
    path = root / "ann.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations,
                                "categories": categories or [{"id": 1, "name": "thing"}]}))
    return path


def red_box_image(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    arr = np.full((h, w, 3), 60, np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = (255, 0, 0)
    return arr


def red_bbox(image: torch.Tensor) -> np.ndarray:
    """xyxy (pixel edges) of the red pixels of a (3, H, W) float image."""
    a = image.numpy()
    red = (a[0] > 0.7) & (a[1] < 0.3) & (a[2] < 0.3)
    ys, xs = np.nonzero(red)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def target_xyxy(t: torch.Tensor, size: int) -> np.ndarray:
    _, _, cx, cy, w, h = t.tolist()
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) * size


# --------------------------------------------------------------------------------------------------- loading


def test_coco_and_yolo_give_the_same_boxes(demo: Path, tmp_path: Path) -> None:
    coco = load_dataset("demo", demo, "val")
    yolo = load_yolo(write_yolo(demo, tmp_path))
    assert coco.names == yolo.names == CLASS_NAMES
    assert coco.category_ids == [1, 2, 3] and yolo.category_ids == [0, 1, 2]
    assert len(coco) == len(yolo) == 7 and coco.skipped_labels == yolo.skipped_labels == 0
    assert [r.id for r in yolo.images] == list(range(7))
    for a, b in zip(coco.images, yolo.images):
        assert a.path.name == b.path.name and (a.width, a.height) == (b.width, b.height) == (SIZE, SIZE)
        assert a.boxes.dtype == np.float32 and a.classes.dtype == np.int64 and a.iscrowd.dtype == bool
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
        np.testing.assert_array_equal(a.classes, b.classes)
        np.testing.assert_allclose(b.areas, (b.boxes[:, 2] - b.boxes[:, 0]) * (b.boxes[:, 3] - b.boxes[:, 1]))


def test_coco_dicts_round_trip(demo: Path) -> None:
    ds = load_dataset("demo", demo, "val")
    images, annotations, categories = ds.coco_dicts()
    src = json.loads((demo / "val.json").read_text())
    assert categories == src["categories"]
    assert [(i["id"], i["width"], i["height"]) for i in images] == [(i["id"], i["width"], i["height"])
                                                                    for i in src["images"]]
    for a, b in zip(annotations, src["annotations"]):
        assert (a["image_id"], a["category_id"], a["area"], a["iscrowd"]) == \
            (b["image_id"], b["category_id"], b["area"], b["iscrowd"])
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-4)
    assert len(annotations) == len(src["annotations"])


def test_classes_follow_sorted_category_ids(tmp_path: Path) -> None:
    """COCO-style sparse, unsorted category ids map to contiguous classes in id order."""
    path = write_coco(tmp_path, [("a.png", red_box_image(20, 30, (2, 2, 10, 10)))],
                      [{"id": 1, "image_id": 1, "category_id": 90, "bbox": [2, 2, 8, 8], "area": 64, "iscrowd": 1},
                       {"id": 2, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 4]},
                       {"id": 3, "image_id": 99, "category_id": 7, "bbox": [1, 1, 5, 4]}],  # not listed: ignored
                      [{"id": 90, "name": "toothbrush"}, {"id": 7, "name": "train"}])
    ds = load_coco(path, tmp_path / "images")
    assert ds.names == ["train", "toothbrush"] and ds.category_ids == [7, 90] and ds.nc == 2
    rec = ds.images[0]
    np.testing.assert_array_equal(rec.classes, [1, 0])
    np.testing.assert_array_equal(rec.iscrowd, [True, False])
    np.testing.assert_allclose(rec.boxes, [[2, 2, 10, 10], [1, 1, 6, 5]])
    np.testing.assert_allclose(rec.areas, [64, 20])  # the area given, else w * h
    assert [a["category_id"] for a in ds.coco_dicts()[1]] == [90, 7]
    assert ds.read_image(0).shape == (20, 30, 3)


def test_subset_is_deterministic(demo: Path) -> None:
    ds = load_dataset("demo", demo, "val")
    ids = [r.id for r in ds.subset(4, seed=1).images]
    assert ids == [r.id for r in ds.subset(4, seed=1).images] and len(ids) == 4
    assert ids == sorted(ids)  # dataset order
    assert any([r.id for r in ds.subset(4, seed=s).images] != ids for s in range(2, 6))
    assert len(ds.subset(None, 0)) == len(ds.subset(100, 0)) == len(ds) == 7
    sub = ds.subset(3, seed=0)
    assert sub.names == ds.names and sub.source == ds.source and len(ds) == 7
    assert sub.index_of(sub.images[2].id) == 2


def test_yolo_yaml_variants(demo: Path, tmp_path: Path) -> None:
    """'path' root, a .txt list with './' entries, a list of entries, names as a mapping."""
    data = write_yolo(demo, tmp_path / "ds")
    files = sorted(p.name for p in (tmp_path / "ds" / "images" / "val").iterdir())
    (tmp_path / "ds" / "val.txt").write_text("".join(f"./images/val/{f}\n" for f in files[:3]))
    alt = tmp_path / "alt.yaml"
    alt.write_text(yaml.safe_dump({"path": "ds", "val": "val.txt", "test": ["images/val", "val.txt"],
                                   "names": {0: "disc", 1: "box", 2: "triangle"}}))
    assert len(load_yolo(alt, "val")) == 3
    both = load_yolo(alt, "test")  # duplicates listed twice count once
    assert len(both) == 7 and both.names == CLASS_NAMES
    np.testing.assert_allclose(both.images[0].boxes, load_yolo(data).images[0].boxes)
    assert label_path(Path("/d/images/x/images/a.jpg")) == Path("/d/images/x/labels/a.txt")


def test_missing_label_file_means_no_objects(demo: Path, tmp_path: Path) -> None:
    data = write_yolo(demo, tmp_path)
    first = sorted((tmp_path / "labels" / "val").iterdir())[0]
    first.unlink()
    ds = load_yolo(data)
    assert ds.images[0].boxes.shape == (0, 4) and ds.images[0].classes.shape == (0,)


# --------------------------------------------------------------------------------------------------- bad input


def test_missing_image_named(tmp_path: Path) -> None:
    arr = red_box_image(16, 16, (1, 1, 5, 5))
    path = write_coco(tmp_path, [("a.png", arr), ("b.png", arr), ("c.png", arr)], [])
    (tmp_path / "images" / "b.png").unlink()
    (tmp_path / "images" / "c.png").unlink()
    with pytest.raises(ConfigError, match=r"b\.png: image file not found \(2 of 3 images"):
        load_coco(path, tmp_path / "images")


def test_empty_split(tmp_path: Path) -> None:
    path = write_coco(tmp_path, [], [])
    with pytest.raises(ConfigError, match="empty split"):
        load_coco(path, tmp_path / "images")
    (tmp_path / "yolo" / "images").mkdir(parents=True)
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"val": "yolo/images", "names": ["a"]}))
    with pytest.raises(ConfigError, match="empty split 'val'"):
        load_yolo(data)


def test_degenerate_coco_boxes_skipped_and_counted(tmp_path: Path) -> None:
    path = write_coco(tmp_path, [("a.png", red_box_image(16, 16, (1, 1, 5, 5)))],
                      [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 4]},
                       {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}])
    ds = load_coco(path, tmp_path / "images")
    assert ds.skipped_labels == 1 and len(ds.images[0].boxes) == 1


def test_yolo_out_of_bounds_and_class_skipped_with_warning(demo: Path, tmp_path: Path) -> None:
    data = write_yolo(demo, tmp_path)
    first = sorted((tmp_path / "labels" / "val").iterdir())[0]
    good = first.read_text()
    first.write_text(good + "3 0.5 0.5 0.1 0.1\n0 0.95 0.5 0.2 0.1\n1 0.9999 0.5 0.0002001 0.1\n")
    with pytest.warns(UserWarning, match=rf"skipped 2 label.*{first.name}:{len(good.splitlines()) + 1}"):
        ds = load_yolo(data)
    assert ds.skipped_labels == 2
    assert ds.images[0].boxes[:, 2].max() <= SIZE  # the tiny overshoot (1e-7) was kept, clipped
    assert len(ds.images[0].boxes) == len(good.splitlines()) + 1


def test_malformed_yolo_row_names_file_and_line(demo: Path, tmp_path: Path) -> None:
    data = write_yolo(demo, tmp_path)
    first = sorted((tmp_path / "labels" / "val").iterdir())[0]
    first.write_text("0 0.5 0.5 0.1 0.1\n\n0 0.5 0.5 0.1\n")
    with pytest.raises(ConfigError, match=rf"{first.name}:3: malformed label row"):
        load_yolo(data)
    first.write_text("0 0.5 0.5 0.1 abc\n")
    with pytest.raises(ConfigError, match=rf"{first.name}:1:"):
        load_yolo(data)


def test_other_bad_input(demo: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dataset kind 'voc'"):
        load_dataset("voc", tmp_path)
    with pytest.raises(ConfigError, match="python -m amc.data.synthetic"):
        load_dataset("demo", tmp_path / "nowhere", "val")
    with pytest.raises(ConfigError, match="annotation file not found"):
        load_coco(tmp_path / "none.json", tmp_path)
    data = write_yolo(demo, tmp_path / "y")
    with pytest.raises(ConfigError, match="no 'train' split"):
        load_yolo(data, "train")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"val": "y/images/val", "nc": 2, "names": CLASS_NAMES}))
    with pytest.raises(ConfigError, match="nc is 2 but 'names' lists 3"):
        load_yolo(bad)
    # An image whose size disagrees with its json entry cannot carry the json's boxes.
    path = write_coco(tmp_path / "c", [("a.png", red_box_image(16, 16, (1, 1, 5, 5)))], [])
    Image.fromarray(red_box_image(16, 20, (1, 1, 5, 5))).save(tmp_path / "c" / "images" / "a.png")
    with pytest.raises(ConfigError, match=r"a\.png: image is 20x16 but .* says 16x16"):
        load_coco(path, tmp_path / "c" / "images").read_image(0)


# --------------------------------------------------------------------------------------------------- geometry


def test_letterbox_official_cases() -> None:
    img = np.zeros((300, 500, 3), np.uint8)
    # r = min(320/300, 512/500) = 1.024: 512 x round(307.2) = 307; dh = 13 -> 6.5: top round(6.4)=6, bottom 7.
    out, r, pad = letterbox(img, (320, 512))
    assert out.shape == (320, 512, 3) and r == pytest.approx(1.024) and pad == (0.0, 6.5)
    assert (out[:6] == 114).all() and (out[313:] == 114).all() and (out[6:313] == 0).all()
    # scaleup=False keeps a small image at its size, centred.
    out, r, pad = letterbox(np.zeros((50, 100, 3), np.uint8), 200, scaleup=False)
    assert out.shape == (200, 200, 3) and r == 1.0 and pad == (50.0, 75.0)
    assert (out[75:125, 50:150] == 0).all() and (out[:75] == 114).all() and (out[:, :50] == 114).all()
    # auto: pad only to the next multiple of the stride. 333x500 -> r=1.28, 640 x round(426.24)=426, 214 % 32 = 22.
    out, r, pad = letterbox(np.zeros((333, 500, 3), np.uint8), 640, auto=True, color=(1, 2, 3))
    assert out.shape == (448, 640, 3) and pad == (0.0, 11.0)
    assert tuple(out[0, 0]) == (1, 2, 3)
    # Exact fit: no resize, no padding, same pixels.
    src = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    out, r, pad = letterbox(src, (64, 96))
    assert r == 1.0 and pad == (0.0, 0.0) and np.array_equal(out, src)


def test_resize_long_side_truncates_like_the_official_code() -> None:
    assert resize_long_side(np.zeros((333, 500, 3), np.uint8), 640).shape == (426, 640, 3)  # int(426.24)
    assert resize_long_side(np.zeros((1000, 600, 3), np.uint8), 640).shape == (640, 384, 3)
    src = np.full((10, 20, 3), 7, np.uint8)
    assert resize_long_side(src, 20) is src
    assert (resize_long_side(src, 10) == 7).all()  # BOX shrink of a flat image stays flat


def test_rect_batch_shapes_official_formula() -> None:
    shapes = np.array([(480, 640), (640, 480), (500, 500), (300, 600)])  # h, w -> h/w .75, 1.33, 1, .5
    order, bs = rect_batch_shapes(shapes, batch_size=2, img_size=640, stride=32, pad=0.5)
    assert order.tolist() == [3, 0, 2, 1]
    # batch 0: all wide, tallest h/w = .75 -> h = ceil(.75 * 20 + .5) * 32 = 512, w = ceil(20.5) * 32 = 672
    # batch 1: ratios 1 and 1.33 (not all > 1) -> square 672
    assert bs.tolist() == [[512, 672], [672, 672]]
    _, bs = rect_batch_shapes(np.array([(640, 480), (600, 300)]), 4, 640, 32, 0.5)
    assert bs.tolist() == [[672, 512]]  # all tall: widest w/h = .75
    _, bs = rect_batch_shapes(np.array([(256, 256)] * 3), 2, 256, 32, 0.5)
    assert bs.tolist() == [[288, 288], [288, 288]]
    _, bs = rect_batch_shapes(np.array([(480, 640)]), 1, 640, 32, 0.0)
    assert bs.tolist() == [[480, 640]]


# --------------------------------------------------------------------------------------------------- EvalSet


def test_evalset_protocol_and_cache(demo: Path, tmp_path: Path) -> None:
    ds = load_dataset("demo", demo, "val")
    a = EvalSet(ds, img_size=SIZE, batch_size=3, progress=False)
    assert len(a) == 3 and a.num_images == 7 and [len(b) for b in a] == [3, 3, 1]
    assert sorted(i for b in a for i in b.image_ids) == [r.id for r in ds.images]
    b0 = a[0]
    assert b0.images.dtype == torch.uint8 and b0.images.shape == (3, 3, 128, 128)  # ceil(96/32 + .5) * 32
    assert b0.original_shapes[0] == (SIZE, SIZE) and b0.ratio_pads[0] == ((1.0, 1.0), (16.0, 16.0))
    # No resize at img_size = image size: the letterboxed interior is the decoded image itself.
    pixels = ds.read_image(ds.index_of(b0.image_ids[0]))
    assert np.array_equal(b0.images[0, :, 16:112, 16:112].permute(1, 2, 0).numpy(), pixels)
    assert (b0.images[0, :, :16] == 114).all()

    b = EvalSet(ds, img_size=SIZE, batch_size=3, progress=False)
    cache = tmp_path / "eval.safetensors"
    c = EvalSet(ds, img_size=SIZE, batch_size=3, progress=False, cache_path=cache)
    assert cache.is_file() and not list(tmp_path.glob(".eval*"))  # no temporary left behind
    d = EvalSet(ds, img_size=SIZE, batch_size=3, progress=False, cache_path=cache)
    for x in (b, c, d):
        assert [(y.image_ids, y.original_shapes, y.ratio_pads) for y in x] == \
            [(y.image_ids, y.original_shapes, y.ratio_pads) for y in a]
        assert all(torch.equal(y.images, z.images) for y, z in zip(x, a))


def test_evalset_cache_is_keyed_and_survives_corruption(demo: Path, tmp_path: Path) -> None:
    ds = load_dataset("demo", demo, "val")
    cache = tmp_path / "eval.safetensors"
    EvalSet(ds, img_size=SIZE, progress=False, cache_path=cache)
    other = EvalSet(ds.subset(3, seed=0), img_size=64, progress=False, cache_path=cache)  # other key: decoded
    assert other.num_images == 3 and other[0].images.shape[-1] == 96  # ceil(64/32 + .5) * 32
    again = EvalSet(ds.subset(3, seed=0), img_size=64, progress=False, cache_path=cache)
    assert torch.equal(again[0].images, other[0].images)
    cache.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable evaluation cache"):
        e = EvalSet(ds, img_size=SIZE, progress=False, cache_path=cache)
    assert e.num_images == 7
    folder = EvalSet(ds, img_size=SIZE, progress=False, cache_path=tmp_path / "caches")
    assert folder.cache_file is not None and folder.cache_file.parent == tmp_path / "caches"
    assert folder.cache_file.name.startswith("evalset-") and folder.cache_file.is_file()


# --------------------------------------------------------------------------------------------------- TrainSet


def test_trainset_without_augment_is_the_letterboxed_truth(demo: Path) -> None:
    ds = load_dataset("demo", demo, "train")
    ts = TrainSet(ds, img_size=128, augment=False)
    for i in range(len(ds)):
        img, t = ts[i]
        assert img.shape == (3, 128, 128) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
        rec = ds.images[i]
        b = rec.boxes / SIZE  # a square image fills the square: normalized coordinates are unchanged
        np.testing.assert_allclose(t[:, 1].numpy(), rec.classes)
        np.testing.assert_allclose(t[:, 2].numpy(), (b[:, 0] + b[:, 2]) / 2, atol=1e-6)
        np.testing.assert_allclose(t[:, 3].numpy(), (b[:, 1] + b[:, 3]) / 2, atol=1e-6)
        np.testing.assert_allclose(t[:, 4].numpy(), b[:, 2] - b[:, 0], atol=1e-6)
        np.testing.assert_allclose(t[:, 5].numpy(), b[:, 3] - b[:, 1], atol=1e-6)
        assert (t[:, 0] == 0).all()


def _red_dataset(tmp_path: Path) -> tuple[TrainSet, np.ndarray]:
    """A non-square image (80 x 120) with one red box, and a crowd box that training must leave out."""
    path = write_coco(tmp_path, [("a.png", red_box_image(80, 120, (30, 20, 70, 50)))],
                      [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 20, 40, 30]},
                       {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 1}])
    return path, np.array([30, 20, 70, 50])


def test_trainset_boxes_follow_the_pixels(tmp_path: Path) -> None:
    path, _ = _red_dataset(tmp_path)
    ds = load_coco(path, tmp_path / "images")
    plain = TrainSet(ds, img_size=64, augment=False)
    img, t = plain[0]
    assert len(t) == 1  # the crowd box is not a target
    np.testing.assert_allclose(target_xyxy(t[0], 64), red_bbox(img), atol=1.0)
    # Scale, translate, flips (no colour change, so red stays red): the target follows the red pixels.
    hyp = {"mosaic": 0.0, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0, "flipud": 0.5, "fliplr": 0.5}
    ts = TrainSet(ds, img_size=64, augment=True, hyp=hyp, seed=1)
    checked = 0
    for epoch in range(12):
        ts.set_epoch(epoch)
        img, t = ts[0]
        if len(t):
            np.testing.assert_allclose(target_xyxy(t[0], 64), red_bbox(img), atol=1.5)
            checked += 1
    assert checked >= 6


def test_trainset_mosaic_targets_cover_their_objects(tmp_path: Path) -> None:
    path, _ = _red_dataset(tmp_path)
    ds = load_coco(path, tmp_path / "images")
    ts = TrainSet(ds, img_size=128, augment=True, hyp={"hsv_h": 0, "hsv_s": 0, "hsv_v": 0, "mosaic": 1.0})
    n = 0
    for epoch in range(8):
        ts.set_epoch(epoch)
        img, t = ts[0]
        a = img.numpy()
        red = (a[0] > 0.5) & (a[1] < 0.5) & (a[2] < 0.5)
        for row in t:
            # The box less its edge pixels (blended by resampling) is all red; one pixel wider it is not.
            x0, y0, x1, y1 = np.round(target_xyxy(row, 128)).astype(int)
            assert red[y0 + 1:y1 - 1, x0 + 1:x1 - 1].all()
            n += 1
        assert red.sum() <= sum(((r[4] + 2 / 128) * (r[5] + 2 / 128)).item() * 128**2 for r in t)
    assert n >= 8


def test_trainset_augmented_targets_stay_inside_and_are_reproducible(demo: Path) -> None:
    ds = load_dataset("demo", demo, "train")
    ts = TrainSet(ds, img_size=SIZE, augment=True, seed=0)
    for epoch in range(3):
        ts.set_epoch(epoch)
        for i in range(len(ds)):
            img, t = ts[i]
            assert img.shape == (3, SIZE, SIZE)
            xyxy = torch.cat([t[:, 2:4] - t[:, 4:6] / 2, t[:, 2:4] + t[:, 4:6] / 2], 1)
            assert ((xyxy >= -1e-6) & (xyxy <= 1 + 1e-6)).all() and (t[:, 4:] > 0).all()
    ts.set_epoch(1)
    x, y = ts[2], TrainSet(ds, img_size=SIZE, augment=True, seed=0, cache=False)
    y.set_epoch(1)
    assert torch.equal(x[0], y[2][0]) and torch.equal(x[1], y[2][1])
    ts.set_epoch(2)
    assert not torch.equal(ts[2][0], x[0])  # another epoch, another augmentation


def test_collate_and_dataloader(demo: Path) -> None:
    ds = load_dataset("demo", demo, "train")
    ts = TrainSet(ds, img_size=SIZE, augment=False)
    images, targets = collate([ts[0], ts[1], ts[2]])
    assert images.shape == (3, 3, SIZE, SIZE)
    n = [len(ts[i][1]) for i in range(3)]
    assert targets.shape == (sum(n), 6)
    assert targets[:, 0].tolist() == [0.0] * n[0] + [1.0] * n[1] + [2.0] * n[2]
    loader = torch.utils.data.DataLoader(ts, batch_size=2, collate_fn=TrainSet.collate)
    assert sum(len(b[0]) for b in loader) == len(ds)


def test_unsupported_hyp_warns(demo: Path) -> None:
    ds = load_dataset("demo", demo, "train")
    with pytest.warns(UserWarning, match="mixup=0.05"):
        TrainSet(ds, img_size=SIZE, hyp={"mixup": 0.05, "degrees": 0.0, "lr0": 0.01}, cache=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainSet(ds, img_size=SIZE, hyp={"degrees": 0.0, "lr0": 0.01}, cache=False)


def test_coco_dicts_score_perfectly_against_themselves(demo: Path) -> None:
    """The ground truth as pycocotools reads it: the boxes themselves as detections give AP 1."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, categories = load_dataset("demo", demo, "val").coco_dicts()
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes([{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                          "score": 1.0} for a in annotations])
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
