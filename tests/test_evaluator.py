"""The evaluation pipeline end to end: letterbox -> model -> NMS -> boxes back in original pixels -> mAP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amc.data.loaders import EvalSet
from amc.errors import ConfigError
from amc.eval.evaluator import DetectionEvaluator, check_classes
from conftest import mini_model


class OracleModel(nn.Module):
    """Predicts the ground truth of each batch of an EvalSet, in letterboxed pixels, as a YOLO head would.

    It walks the batches in the order the evaluator will feed them, so the test exercises every coordinate
    transform of the pipeline: a correct pipeline scores mAP 1.0 exactly, a shifted oracle scores less.
    """

    def __init__(self, dataset, eval_set: EvalSet, shift: float = 0.0) -> None:
        super().__init__()
        self.nc = dataset.nc
        self.queue = []
        for batch in eval_set:
            rows = []
            for image_id, ((gain, _), (pad_w, pad_h)) in zip(batch.image_ids, batch.ratio_pads):
                record = dataset.images[dataset.index_of(image_id)]
                pred = torch.zeros(64, 5 + self.nc)
                for j, (box, cls) in enumerate(zip(record.boxes, record.classes)):
                    x1, y1, x2, y2 = (float(v) for v in box)
                    w, h = (x2 - x1) * gain, (y2 - y1) * gain
                    cx, cy = (x1 + x2) / 2 * gain + pad_w + shift * w, (y1 + y2) / 2 * gain + pad_h
                    pred[j, :5] = torch.tensor([cx, cy, w, h, 1.0])
                    pred[j, 5 + int(cls)] = 0.9
                rows.append(pred)
            self.queue.append(torch.stack(rows))

    def forward(self, images: torch.Tensor):
        pred = self.queue.pop(0)
        assert pred.shape[0] == images.shape[0]
        return pred, None


@pytest.mark.parametrize("img_size", [96, 128, 160])
def test_oracle_predictions_score_a_perfect_map(tiny_demo, img_size: int) -> None:
    _, _, val = tiny_demo
    eval_set = EvalSet(val, img_size=img_size, batch_size=4, stride=32, progress=False)
    result = DetectionEvaluator(val, eval_set)(OracleModel(val, eval_set))
    assert result.map50_95 == pytest.approx(1.0) and result.map50 == pytest.approx(1.0)
    assert result.images == len(val)


def test_shifted_predictions_lose_map(tiny_demo) -> None:
    _, _, val = tiny_demo
    eval_set = EvalSet(val, img_size=128, batch_size=4, stride=32, progress=False)
    result = DetectionEvaluator(val, eval_set)(OracleModel(val, eval_set, shift=0.3))
    assert 0.0 < result.map50_95 < 0.7


def test_class_count_mismatch_is_refused(tiny_demo) -> None:
    _, _, val = tiny_demo
    with pytest.raises(ConfigError, match="predicts 5 classes but the dataset .* has 3"):
        check_classes(mini_model(nc=5), val)


def test_real_model_runs_and_restores_training_mode(tiny_demo) -> None:
    _, _, val = tiny_demo
    model = mini_model(nc=3).train()
    eval_set = EvalSet(val, img_size=96, batch_size=4, stride=32, progress=False)
    result = DetectionEvaluator(val, eval_set)(model)
    assert model.training
    assert 0.0 <= result.map50_95 <= result.map50 <= 1.0 and result.images_per_s > 0


def test_the_shipped_demo_model_reaches_its_target(tmp_path, monkeypatch) -> None:
    """The packaged demo checkpoint on the regenerated demo val split: mAP@0.5:0.95 >= 0.5 (issue target)."""
    from amc.data.datasets import load_dataset
    from amc.models import load_model

    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path))  # regenerate the split from scratch, as a fresh clone does
    val = load_dataset("demo", split="val")
    model, names = load_model("demo-model")
    assert names == val.names and len(val) == 300
    result = DetectionEvaluator(val, EvalSet(val, img_size=256, batch_size=32, stride=32, progress=False))(
        model.fuse())
    assert result.map50_95 >= 0.5
    assert result.map50_95 == pytest.approx(0.641, abs=0.01)  # the figure in the README and the model file


def test_nms_device_is_checked() -> None:
    from amc.eval.evaluator import EvalSettings

    assert EvalSettings().nms_device == "cpu" and EvalSettings(nms_device="model").nms_device == "model"
    with pytest.raises(ConfigError, match="nms_device must be cpu or model"):
        EvalSettings(nms_device="gpu")
