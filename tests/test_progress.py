"""Progress when the output is not a terminal: plain lines to stdout and to the job log (issue 22, item 4)."""

from __future__ import annotations

import logging

import pytest
import torch

from amc.console import ProgressLog, configure_progress, log, progress_settings
from amc.data.loaders import TrainSet
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
