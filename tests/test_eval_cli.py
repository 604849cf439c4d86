"""amc-eval end to end: metrics.json with the documented keys, class checks and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from amc.models import load_model, save_model
from conftest import FIXTURES, mini_model


def amc_eval(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AMC_CACHE_DIR": str(cwd / "cache")}  # keep the test's caches out of ~/.cache
    return subprocess.run([sys.executable, "-m", "amc.cli.eval", *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def mini_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(mini_model(nc=3), tmp_path_factory.mktemp("models") / "mini")


def test_eval_writes_the_documented_metrics(tiny_demo, mini_folder: Path, tmp_path: Path) -> None:
    root, _, val = tiny_demo
    run = amc_eval(f"model.path={mini_folder}", "data=demo", f"data.path={root}", "img_size=96", "device=cpu",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)  # device= is a config group (conf/device/)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"map50_95", "map50", "params", "gflops", "images_per_s"} <= set(metrics)
    assert metrics["images"] == len(val) and 0.0 <= metrics["map50_95"] <= metrics["map50"] <= 1.0
    assert metrics["fused"] is True and metrics["params"] > 0 and metrics["images_per_s"] > 0
    assert metrics["device"] == "cpu"
    assert "mAP@0.5:0.95" in run.stdout
    assert list((tmp_path / "cache" / "evalsets").glob("*.safetensors"))  # decoded once, reused next time


def test_subset_is_deterministic(tiny_demo, mini_folder: Path, tmp_path: Path) -> None:
    root, _, _ = tiny_demo
    results = []
    for i in range(2):
        run = amc_eval(f"model.path={mini_folder}", f"data.path={root}", "img_size=96", "subset=3", "fuse=false",
                       f"hydra.run.dir={tmp_path / str(i)}", cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        results.append(json.loads((tmp_path / str(i) / "metrics.json").read_text()))
    assert results[0]["images"] == 3 and results[0]["map50_95"] == results[1]["map50_95"]


@pytest.mark.parametrize("overrides, message", [
    (["model.path={fixtures}/yolov7.pt", "data.path={root}"], "the model predicts 20 classes but the dataset"),
    (["model.path={model}", "data=coco"], "data=coco needs data.path="),
    (["model.path={model}", "data=coco", "data.path=nowhere"], "instances_val2017.json"),
    (["model.path={model}", "data=yolo", "data.path=missing.yaml"], "missing.yaml"),
    (["model.path={model}", "data.path={root}", "device.name=cuda:7"], "cuda:7"),
    (["model.path={model}", "data.path={root}", "device=tpu"], "device=tpu"),
])
def test_user_errors_end_in_one_line(tiny_demo, mini_folder: Path, tmp_path: Path, overrides, message) -> None:
    root, _, _ = tiny_demo
    args = [o.format(fixtures=FIXTURES, root=root, model=mini_folder) for o in overrides]
    run = amc_eval(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert message in lines[0]
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_official_checkpoint_on_coco_format_data_uses_the_91_ids(tiny_demo, tmp_path: Path) -> None:
    """An 80-class official checkpoint on a COCO json with the standard 80 categories (ids 1..90)."""
    from amc.data.datasets import load_coco
    from amc.eval.metrics import COCO80_TO_COCO91

    root, _, _ = tiny_demo
    coco = json.loads((root / "val.json").read_text())
    names = json.loads((FIXTURES / "yolov7-tiny.json").read_text())["names"]
    coco["categories"] = [{"id": cid, "name": n} for cid, n in zip(COCO80_TO_COCO91, names)]
    for ann in coco["annotations"]:  # demo classes 1..3 become person, bicycle, car (ids 1, 2, 3) ... and
        ann["category_id"] = COCO80_TO_COCO91[[0, 1, 79][ann["category_id"] - 1]]  # toothbrush (id 90)
    (tmp_path / "instances_val.json").write_text(json.dumps(coco))
    assert load_coco(tmp_path / "instances_val.json", root / "images" / "val").category_ids == COCO80_TO_COCO91
    run = amc_eval(f"model.path={FIXTURES / 'yolov7-tiny.pt'}", "data=coco", f"data.path={tmp_path}",
                   f"data.annotations={tmp_path / 'instances_val.json'}", f"data.images={root / 'images' / 'val'}",
                   "img_size=128", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    fused = load_model(FIXTURES / "yolov7-tiny.pt")[0].fuse()
    assert metrics["params"] == sum(p.numel() for p in fused.parameters()) and metrics["images"] == 6
