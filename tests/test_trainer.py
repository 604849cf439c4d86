"""The training loop: it trains, saves, logs, and a killed run resumes to the same weights."""

from __future__ import annotations

import pytest
import torch
import yaml

from amc.data.loaders import EvalSet
from amc.eval.evaluator import DetectionEvaluator
from amc.models import load_model
from amc.train.loss import YOLOv7Loss, scale_hyp
from amc.train.trainer import STATE_FILE, Trainer, TrainConfig, fitness, parameter_groups
from conftest import Interrupt, mini_model, stop_at_epoch_set

HYP = {"lr0": 0.01, "lrf": 0.1, "momentum": 0.937, "weight_decay": 0.0005, "warmup_epochs": 1.0,
       "warmup_momentum": 0.8, "warmup_bias_lr": 0.1, "box": 0.05, "cls": 0.5, "cls_pw": 1.0, "obj": 1.0,
       "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0, "fliplr": 0.5, "mosaic": 0.5, "scale": 0.2,
       "translate": 0.1, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}


StopAtEpoch = stop_at_epoch_set()


def _trainer(train, val, save_dir, epochs=2, resume=False, stop_at=None):
    model = mini_model(nc=3, seed=1)
    model.names = list(train.names)  # the dataset's class names, not the fresh model's '0', '1', '2'
    train_set = StopAtEpoch(train, img_size=96, augment=True, hyp=HYP, seed=0)
    train_set.stop_at = stop_at
    criterion = YOLOv7Loss(model, scale_hyp(HYP, 3, 3, 96), ota=True)
    evaluator = DetectionEvaluator(val, EvalSet(val, 96, 4, 32, progress=False))
    config = TrainConfig(epochs=epochs, batch_size=4, nominal_batch_size=8, warmup_min_iters=2, workers=0,
                         seed=0, save_dir=save_dir, resume=resume, progress=False)
    return Trainer(model, train_set, HYP, criterion, config, torch.device("cpu"),
                   evaluate=lambda m: evaluator(m).to_dict())


def test_fit_saves_models_state_and_logs(tiny_demo, tmp_path) -> None:
    _, train, val = tiny_demo
    trainer = _trainer(train, val, tmp_path)
    result = trainer.fit()
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert {"box", "obj", "cls", "total", "map50_95", "map50"} <= set(result.history[-1])
    assert (tmp_path / STATE_FILE).is_file() and list((tmp_path / "tensorboard").glob("events.*"))
    # last/ is the final EMA model, exactly, with the model's class names
    last, names = load_model(result.last_dir)
    assert names == list(train.names) == ["disc", "box", "triangle"]
    ema = trainer.ema.ema.state_dict()
    assert last.state_dict().keys() == ema.keys()
    for k, v in last.state_dict().items():
        assert torch.equal(v, ema[k]), k
    # best/ is the EMA model of the epoch with the best fitness, with that epoch's metrics
    best_epoch = max(result.history, key=fitness)["epoch"]
    assert result.best_dir is not None and result.best_metrics == {k: v for k, v in result.history[best_epoch - 1]
                                                                   .items() if k in result.best_metrics}
    best, best_names = load_model(result.best_dir)
    meta = yaml.safe_load((result.best_dir / "architecture.yaml").read_text())
    assert best.nc == 3 and best_names == names and meta["epoch"] == best_epoch
    assert meta["metrics"] == pytest.approx(result.best_metrics)


def test_killed_run_resumes_to_the_same_weights(tiny_demo, tmp_path) -> None:
    _, train, val = tiny_demo
    straight = _trainer(train, val, tmp_path / "a", epochs=3)
    straight.fit()
    interrupted = _trainer(train, val, tmp_path / "b", epochs=3, stop_at=2)
    with pytest.raises(Interrupt):
        interrupted.fit()
    assert load_model(tmp_path / "b" / "last")[0] is not None  # what was exported survives the kill
    resumed = _trainer(train, val, tmp_path / "b", epochs=3, resume=True)
    assert resumed.start_epoch == 2
    resumed.fit()
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(straight.ema.ema.state_dict().values(), resumed.ema.ema.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]


def test_parameter_groups_cover_every_parameter_once() -> None:
    model = mini_model()
    no_decay, decay, biases = parameter_groups(model)
    ids = [id(p) for p in no_decay + decay + biases]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert all(p.dim() == 1 or p.shape[0] == 1 for p in no_decay)  # BatchNorm weights and implicit layers
