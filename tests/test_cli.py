"""amc-info end to end: table, metrics.json in the Hydra run directory, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from amc.models import count_architecture, load_model
from conftest import FIXTURES

REPO = Path(__file__).resolve().parents[1]


def amc_info(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amc.cli.info", *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_console_script_is_installed() -> None:
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("amc-info") == "amc.cli.info:main"


def test_default_runs_on_the_demo_and_writes_metrics(tmp_path: Path) -> None:
    run = amc_info(f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    model, names = load_model("demo-model")
    assert names == ["disc", "box", "triangle"] and not model.fused
    cost = model.cost(640)
    assert metrics["params"] == cost.params and metrics["gflops"] == pytest.approx(cost.gflops)
    assert metrics["img_size"] == [640, 640] and metrics["classes"] == 3
    assert metrics["fused_gflops"] == pytest.approx(count_architecture(model.arch, 640, fused=True).gflops)
    assert "SPP" not in run.stdout and "summary" in run.stdout and "Concat" in run.stdout  # per-layer table


def test_official_checkpoint_and_rectangular_size(tmp_path: Path) -> None:
    run = amc_info(f"model.path={FIXTURES / 'yolov7-e6e.pt'}", "img_size=[384,640]", "per_layer=false",
                   f"hydra.run.dir={tmp_path}", cwd=REPO)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["params"] == 751188 and metrics["img_size"] == [384, 640]
    assert metrics["strides"] == [8.0, 16.0, 32.0, 64.0]


def test_model_group_selects_an_official_cfg(tmp_path: Path) -> None:
    run = amc_info("model=yolov7-tiny-deploy", "per_layer=false", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["params"] == 6227101


@pytest.mark.parametrize("overrides, message", [
    (["model.path=missing.pt"], "missing.pt: file not found"),
    (["model.path=pyproject.toml"], "pyproject.toml is not a zip archive"),
    (["img_size=-3"], "img_size must be positive"),
    (["model=yolov7", "model.path=tests/fixtures/yolov7.pt", "model.nc=3"], "only apply to a cfg"),
])
def test_user_errors_end_in_one_line(tmp_path: Path, overrides: list[str], message: str) -> None:
    run = amc_info(*overrides, f"hydra.run.dir={tmp_path}", cwd=REPO)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], run.stderr
    assert "Traceback" not in run.stderr + run.stdout


def test_malformed_cfg_file_ends_in_one_line(tmp_path: Path) -> None:
    cfg = (FIXTURES / "mini.yaml").read_text().replace("MP, []", "Focus, []")
    (tmp_path / "mine.yaml").write_text(cfg)
    run = amc_info("model.path=mine.yaml", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip() == "error: mine.yaml: layer 8 uses unknown module 'Focus' (amc knows Conv, RepConv, " \
        "DownC, SPPCSPC, Detect, IDetect, IAuxDetect, MP, SP, ReOrg, Concat, Shortcut, Upsample)"
    assert not (tmp_path / "run" / "metrics.json").exists()
