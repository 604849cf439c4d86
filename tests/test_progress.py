"""Progress when the output is not a terminal: plain lines to stdout and to the job log, whole tables (issue 22,
item 4); latency figures with their spread (item 5); a search that ends below uniform pruning says so (item 6)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from amc.console import ProgressLog, configure_progress, log, print_table, progress_settings
from amc.data.loaders import TrainSet
from amc.eval.latency import Latency, speedup, spread_text
from amc.train.loss import YOLOv7Loss, scale_hyp
from amc.train.trainer import Trainer, TrainConfig
from conftest import mini_model

HYP = {"lr0": 0.01, "lrf": 0.1, "momentum": 0.937, "weight_decay": 0.0005, "warmup_epochs": 1.0,
       "warmup_momentum": 0.8, "warmup_bias_lr": 0.1, "box": 0.05, "cls": 0.5, "cls_pw": 1.0, "obj": 1.0,
       "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0, "fliplr": 0.5, "mosaic": 0.0, "scale": 0.2,
       "translate": 0.1, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}


@pytest.fixture
def job_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """What reaches the ``amc.console`` logger (Hydra's job log in a command)."""
    caplog.set_level(logging.INFO, logger=log.name)
    return caplog


@pytest.fixture
def every_step():
    """Progress lines at every step, whatever an earlier test configured."""
    saved = (progress_settings.interval_s, progress_settings.heartbeat_s)
    configure_progress(0, 0)
    yield
    configure_progress(*saved)


def test_progress_log_writes_rate_eta_and_respects_the_interval(capsys, job_log) -> None:
    progress = ProgressLog("search episode", 4, interval_s=3600, echo=True)
    assert progress.update(1, "reward -0.5") is True  # the first step always has its line
    assert progress.update(2, "reward -0.4") is False  # within the interval
    assert progress.update(4, "reward -0.3") is True  # the last step always has its line
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("search episode 1/4 | reward -0.5 | ") and "ETA" in out[0]
    assert out[1].startswith("search episode 4/4 | reward -0.3") and "ETA" not in out[1]
    assert [r.getMessage() for r in job_log.records] == out


def test_fine_tune_epochs_write_plain_lines_when_output_is_not_a_terminal(tiny_demo, tmp_path, capsys, job_log,
                                                                          every_step) -> None:
    _, train, _ = tiny_demo
    model = mini_model(nc=3, seed=1)
    train_set = TrainSet(train, img_size=64, augment=False, hyp=HYP, seed=0)
    criterion = YOLOv7Loss(model, scale_hyp(HYP, 3, 3, 64), ota=False)
    config = TrainConfig(epochs=2, batch_size=6, nominal_batch_size=6, warmup_min_iters=1, seed=0,
                         save_dir=tmp_path, tensorboard=False, progress=True)
    Trainer(model, train_set, HYP, criterion, config, torch.device("cpu")).fit()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split(" | ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("box " in line and "total " in line for line in lines)  # the epoch's mean losses
    assert "ETA" in lines[0] and "\x1b[" not in "".join(lines)  # an ETA, and no terminal escape codes
    assert [r.getMessage() for r in job_log.records if r.getMessage().startswith("epoch ")] == lines


def test_piped_search_prints_episode_lines_fills_the_job_log_and_flags_worse_than_uniform(tmp_path) -> None:
    """A search whose output is a pipe (as under nohup or Slurm): one line per episode on stdout and in Hydra's
    job log (0 bytes before), the result table in the log too; two random policies on the stub score below
    uniform pruning, which the end says in a warning line and records in metrics.json."""
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "amc.cli.search", f"hydra.run.dir={out}", "evaluator=stub",
                          "agent=random", "episodes=2", "final.latency_runs=0", "final.export_model=false"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "AMC_CACHE_DIR": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("episode ")]
    assert [line.split(" | ")[0] for line in lines] == ["episode 1/2", "episode 2/2"]
    records = [json.loads(r) for r in (out / "episodes.jsonl").read_text().splitlines()]
    for line, record in zip(lines, records):  # the figures of the episode, as episodes.jsonl has them
        assert f"reward {record['reward']:.4f}" in line and f"FLOPs kept {record['flops_ratio']:.1%}" in line
        assert f"best {record['best_reward']:.4f}" in line
    assert "ETA" in lines[0]
    job_log = (out / "search.log").read_text()
    assert all(line in job_log for line in lines) and "mAP proxy" in job_log  # progress and the table
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_reward"] < metrics["uniform_reward"] and metrics["worse_than_uniform"] is True
    assert metrics["latency_noisy"] is None  # nothing was timed
    warning = [line for line in run.stdout.splitlines() if line.startswith("warning: the best policy scores below")]
    assert len(warning) == 1 and warning[0] in job_log


def test_a_table_printed_into_a_file_keeps_every_figure_whole(capsys) -> None:
    """rich cuts a table to 80 columns when the output is not a terminal (``epi…``, ``flo…``): not amc's tables."""
    columns = ["episode", "flops_ratio", "overhead_ratio"] + [f"measured latency {i} (ms)" for i in range(6)]
    row = ["1", "0.4985365992", "1.2345678901"] + [f"{12345.678901 + i:.6f}" for i in range(6)]
    print_table("a wide table", columns, [row])
    out = capsys.readouterr().out
    assert "…" not in out
    assert all(c in out for c in columns) and all(v in out for v in row)
    assert max(len(line) for line in out.splitlines()) > 150  # wider than any terminal default


def test_latency_carries_its_spread_and_says_when_it_is_too_noisy() -> None:
    quiet = Latency.of([10.0, 10.1, 9.9, 10.2, 10.0, 9.8, 10.1, 10.0], threads=1)
    busy = Latency.of([10.0, 55.0, 12.0, 80.0, 9.0, 40.0, 11.0, 60.0], threads=1)
    assert quiet.q1_ms is not None and quiet.iqr_ms == pytest.approx(quiet.q3_ms - quiet.q1_ms)
    assert quiet.spread < 0.05 and not quiet.noisy(0.2)
    assert busy.spread > 1.0 and busy.noisy(0.2)
    assert Latency.of([10.0, 10.0, 10.0], threads=1).noisy(0.2)  # too few passes for quartiles to mean anything
    assert speedup(quiet, Latency.of([5.0, 5.05, 4.95, 5.0, 5.1, 4.9], threads=1)) == pytest.approx(2.0, rel=0.02)
    assert speedup(quiet, busy) is None and speedup(busy, quiet) is None  # no ratio from noise
    assert quiet.to_dict()["spread"] == quiet.spread and spread_text(quiet) == f"{quiet.spread:.0%}"
