"""The synthetic demo dataset generator: determinism, label validity, COCO format, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from amc.data.synthetic import CLASS_NAMES, MIN_SIDE, generate_demo_dataset, main, render_image


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate_demo_dataset(tmp_path / name, n_train=3, n_val=2, img_size=128, seed=seed)
    a, b, c = (_digest(tmp_path / n) for n in "abc")
    assert a == b
    assert sorted(a) == sorted(c) and a != c
    assert sorted(a) == ["images/train/000000.jpg", "images/train/000001.jpg", "images/train/000002.jpg",
                         "images/val/000000.jpg", "images/val/000001.jpg", "train.json", "val.json"]


def test_an_image_depends_only_on_its_own_stream(tmp_path: Path) -> None:
    """Image i is the same whatever the split sizes (each image has its own random stream)."""
    generate_demo_dataset(tmp_path / "small", n_train=2, n_val=1, img_size=96, seed=5)
    generate_demo_dataset(tmp_path / "large", n_train=4, n_val=1, img_size=96, seed=5)
    for f in ("images/train/000000.jpg", "images/train/000001.jpg", "images/val/000000.jpg"):
        assert (tmp_path / "small" / f).read_bytes() == (tmp_path / "large" / f).read_bytes()


def test_regenerating_fewer_images_removes_the_extra_ones(tmp_path: Path) -> None:
    generate_demo_dataset(tmp_path, n_train=3, n_val=1, img_size=64)
    generate_demo_dataset(tmp_path, n_train=1, n_val=1, img_size=64)
    assert [p.name for p in (tmp_path / "images" / "train").iterdir()] == ["000000.jpg"]


def test_coco_json_is_valid_for_pycocotools(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    generate_demo_dataset(tmp_path, n_train=1, n_val=5, img_size=128)
    coco = COCO(str(tmp_path / "val.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CLASS_NAMES
    assert len(coco.getImgIds()) == 5
    for ann in coco.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
        assert min(w, h) >= MIN_SIDE
        assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0


def test_labels_are_tight_boxes_of_the_painted_shapes() -> None:
    """On many images: 1-8 objects, every box is within the image and holds enough of its shape."""
    counts, sides = [], []
    for i in range(40):
        img, labels = render_image(np.random.default_rng([7, i]), 256)
        assert img.size == (256, 256) and img.mode == "RGB"
        assert 1 <= len(labels) <= 8
        counts.append(len(labels))
        for cls, (x, y, w, h), area in labels:
            assert cls in (0, 1, 2)
            assert x >= 0 and y >= 0 and x + w <= 256 and y + h <= 256
            # The visible part fills a reasonable part of its box (a triangle fills ~half).
            assert area >= 0.2 * w * h
            sides.append(max(w, h))
    assert np.mean(counts) > 2.5
    assert min(sides) < 20 and max(sides) > 80  # small and large objects both occur


def test_jpeg_size_stays_small(tmp_path: Path) -> None:
    generate_demo_dataset(tmp_path, n_train=0, n_val=12, img_size=256)
    sizes = [p.stat().st_size for p in (tmp_path / "images" / "val").glob("*.jpg")]
    assert np.mean(sizes) < 10_000  # 2300 demo images stay under ~20 MB


def test_cli_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--n-train", "2", "--n-val", "1", "--img-size", "64", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "train: 2 images" in out and "val: 1 images" in out
    assert json.loads((tmp_path / "val.json").read_text())["info"]["seed"] == 3
    assert main([str(tmp_path), "--img-size", "8"]) == 2
    assert "error:" in capsys.readouterr().err
