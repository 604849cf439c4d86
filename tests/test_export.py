"""ONNX export and INT8 quantization: ONNX Runtime equals PyTorch on real images, NMS in the graph equals amc's,
the INT8 graph keeps the mAP, files are written atomically, bad inputs end in one line, and amc-export end to end."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from amc.data.datasets import load_dataset
from amc.data.loaders import EvalSet, sample_batches
from amc.data.synthetic import generate_demo_dataset
from amc.errors import ConfigError
from amc.eval.evaluator import DetectionEvaluator
from amc.eval.nms import non_max_suppression
from amc.export.onnx import (ExportError, GraphNms, OnnxDetector, add_nms, check_predictions, compare_detections,
                             compare_predictions, export_detector, graph_detections, ort_session, save_onnx)
from amc.export.quantize import decode_nodes, quantize_int8
from amc.models import load_model
from amc.pruning.apply import apply_policy
from amc.pruning.baselines import uniform_policy
from amc.pruning.space import PruningSpace
from conftest import mini_model, randomize_

REPO = Path(__file__).resolve().parents[1]
SIZE = 256  # the demo's image size


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory):
    """The first 100 val and 32 train images of the embedded demo dataset (same seed and size: the same images)."""
    root = tmp_path_factory.mktemp("demo-data")
    generate_demo_dataset(root, n_train=32, n_val=100, img_size=SIZE, seed=0)
    return root, load_dataset("demo", root, "train"), load_dataset("demo", root, "val")


@pytest.fixture(scope="module")
def demo():
    return load_model("demo-model")[0]


@pytest.fixture(scope="module")
def pruned(demo):
    space = PruningSpace.from_model(demo, SIZE)
    model, _ = apply_policy(demo, space, uniform_policy(space, 0.5).ratios, "l1")
    return model


def images(dataset, n: int, batch: int) -> list[torch.Tensor]:
    """Float batches of ``n`` real images, letterboxed as amc-eval does."""
    return [b.images.float() / 255 for b in EvalSet(dataset.subset(n, 0), SIZE, batch, 32, progress=False)]


def fused(model):
    return copy.deepcopy(model).eval().fuse()


@pytest.mark.parametrize("which", ["demo", "pruned"])
def test_onnx_equals_pytorch_with_a_dynamic_batch(which, demo, pruned, demo_data):
    model = demo if which == "demo" else pruned
    state = {k: v.clone() for k, v in model.state_dict().items()}
    proto = export_detector(model, SIZE)
    # the user's model is left as it was (the export works on a fused copy)
    assert not model.fused and not model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert proto.opset_import[0].version >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    assert proto.graph.output[0].type.tensor_type.shape.dim[2].dim_value == 5 + model.nc
    detector = OnnxDetector(proto)
    assert detector.nc == model.nc and detector.stride.tolist() == model.stride.tolist()
    _, _, val = demo_data
    one, three = images(val, 1, 1), images(val, 3, 3)
    assert one[0].shape[0] == 1 and three[0].shape[0] == 3
    rect = [torch.nn.functional.interpolate(three[0], size=(192, 320))]  # another height and width
    diff = compare_predictions(fused(model).double(), detector, one + three + rect)  # vs the exact predictions
    assert diff <= 1e-3, diff
    assert compare_predictions(fused(model), detector, one + three + rect) <= 2e-3  # vs PyTorch float32
    check = check_predictions(fused(model), detector, one + three + rect)  # amc-export's one-pass check
    assert check.max_abs_diff == pytest.approx(diff, rel=1e-9, abs=1e-12)
    assert check.max_abs_diff_vs_fp32 <= check.max_abs_diff + check.pytorch_fp32_error + 1e-9  # triangle inequality
    assert 0.0 < check.pytorch_fp32_error < 1e-2


def test_onnx_detector_is_scored_like_the_pytorch_model(demo, demo_data):
    _, _, val = demo_data
    subset = val.subset(8, 0)
    evaluator = DetectionEvaluator(subset, EvalSet(subset, SIZE, 8, 32, progress=False), map_backend="fast")
    assert evaluator(OnnxDetector(export_detector(demo, SIZE))).map50_95 == pytest.approx(
        evaluator(fused(demo)).map50_95, abs=2e-3)


@pytest.mark.parametrize("settings", [GraphNms(), GraphNms(0.001, 0.65, 300, True), GraphNms(0.05, 0.5, 7, True)],
                         ids=["detect", "test-protocol", "top-k"])
def test_nms_in_the_graph_equals_amc_nms(settings, demo, demo_data):
    _, _, val = demo_data
    proto = export_detector(demo, SIZE)
    graph, plain = ort_session(add_nms(proto, settings)), OnnxDetector(proto)
    assert [o.name for o in graph.get_outputs()] == ["detections", "num_detections"]
    found, expected = [], []
    for x in images(val, 9, 3) + [torch.zeros(2, 3, 64, 96)]:  # real images, and blank ones of another size
        found += graph_detections(graph, x)
        expected += non_max_suppression(plain(x)[0], settings.conf_thres, settings.iou_thres,
                                        multi_label=settings.multi_label, max_det=settings.max_det)
    check = compare_detections(found, expected, tolerance=1e-4)
    assert check["expected"] > 9 and check["matched"] == check["expected"] == check["found"], check
    assert check["max_abs_diff"] == 0.0  # same boxes, scores and classes, in the same order
    for got, ref in zip(found, expected):
        assert torch.equal(got, ref)
    assert all(len(d) <= settings.max_det for d in found)


def test_nms_in_the_graph_for_one_class():
    model = randomize_(mini_model(nc=1, seed=0), seed=1).eval()  # spread objectness, unlike fresh priors
    proto = export_detector(model, 64)
    settings = GraphNms(0.3, 0.5, 50, True)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    found = graph_detections(ort_session(add_nms(proto, settings)), x)
    expected = non_max_suppression(OnnxDetector(proto)(x)[0], 0.3, 0.5, multi_label=True, max_det=50)
    check = compare_detections(found, expected, tolerance=1e-4)
    assert check["expected"] > 0 and check["matched"] == check["expected"] == check["found"], check
    # nothing above the threshold: no rows, a zero count
    assert [len(d) for d in graph_detections(ort_session(add_nms(proto, GraphNms(0.999))), x)] == [0, 0]


def test_int8_runs_and_keeps_the_map(demo, demo_data):
    _, train, val = demo_data
    proto = export_detector(demo, SIZE)
    calibration = [x.numpy() for x, _ in sample_batches(train, 4, 8, SIZE)]
    int8 = quantize_int8(proto, calibration, "MinMax")
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    scales = {i.name: np.asarray(onnx.numpy_helper.to_array(i)) for i in int8.graph.initializer}
    per_channel = [n for n in int8.graph.node if n.op_type == "DequantizeLinear" and scales.get(n.input[1]) is not None
                   and scales[n.input[1]].size > 1]
    assert per_channel  # per-channel weight scales
    # the decoding (sigmoid, grid, anchors) stays float: nothing quantized after the last convolution
    decode = set(decode_nodes(proto, keep_head=True))
    assert decode and not any(n.op_type == "QuantizeLinear" and n.name in decode for n in int8.graph.node)
    evaluator = DetectionEvaluator(val, EvalSet(val, SIZE, 32, 32, progress=False), map_backend="fast")
    fp32_map = evaluator(OnnxDetector(proto)).map50_95
    int8_map = evaluator(OnnxDetector(int8)).map50_95
    print(f"demo, first {len(val)} val images: fp32 mAP@0.5:0.95 {fp32_map:.4f}, int8 {int8_map:.4f}")
    assert fp32_map > 0.5  # the demo model really detects
    assert abs(fp32_map - int8_map) <= 0.03, (fp32_map, int8_map)


def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    proto = export_detector(mini_model(), 64)
    target = tmp_path / "model.onnx"

    def broken(model, path, *args, **kwargs):
        Path(path).write_bytes(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", broken)
    with pytest.raises(OSError):
        save_onnx(proto, target)
    assert list(tmp_path.iterdir()) == []  # no file under the final name, no temporary left
    target.write_bytes(b"the previous model")
    with pytest.raises(OSError):
        save_onnx(proto, target)
    assert target.read_bytes() == b"the previous model" and list(tmp_path.iterdir()) == [target]
    monkeypatch.undo()
    save_onnx(proto, target)
    assert onnx.load(str(target)).graph.output[0].name == "predictions"


def test_bad_inputs_are_one_line_errors(demo):
    with pytest.raises(ConfigError, match="empty calibration set"):
        quantize_int8(export_detector(mini_model(), 64), [])
    with pytest.raises(ConfigError, match="calibration method"):
        quantize_int8(export_detector(mini_model(), 64), [np.zeros((1, 3, 64, 64), np.float32)], "KL")

    class Bessel(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.bessel_j0(x)

    model = copy.deepcopy(demo)
    model.model[0].act = Bessel()
    with pytest.raises(ExportError, match="operator aten::special_bessel_j0 is not supported") as e:
        export_detector(model, 64)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="conf_thres"):
        GraphNms(conf_thres=1.5)


def amc_export(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AMC_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "amc.cli.export", *overrides], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env)


def test_cli_end_to_end(tmp_path, demo_data):
    root, _, _ = demo_data
    out = tmp_path / "run"
    run = amc_export(f"hydra.run.dir={out}", f"data.path={root}", "nms=true", "int8=true", "subset=24",
                     "calibration.images=16", "latency.runs=4", "latency.rounds=2", "verify.images=6", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "model.int8.onnx" in run.stdout and "mAP@0.5:0.95" in run.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["max_abs_diff"] <= 1e-3 and metrics["opset"] >= 17
    assert metrics["nms"]["check"]["matched"] == metrics["nms"]["check"]["expected"]
    for key in ("fp32_map50_95", "int8_map50_95", "fp32_ms", "int8_ms"):
        assert metrics[key] > 0, key
    assert metrics["map_images"] == 24 and metrics["calibration"]["images"] == 16
    lat = metrics["latency"]  # a speed-up only from timings that are not noise
    assert lat["noisy"] is (max(lat["fp32_spread"], lat["int8_spread"]) > lat["max_spread"]) and "IQR" in run.stdout
    assert (lat["int8_speedup"] is None) is lat["noisy"]
    for name in ("model.onnx", "model.int8.onnx"):
        session = ort_session(out / name)
        assert [o.name for o in session.get_outputs()] == ["detections", "num_detections"]
        assert len(graph_detections(session, torch.rand(2, 3, 128, 160))) == 2  # dynamic batch and size
    # no temporary file left behind (.lock is the run directory's lock, amc/runlock.py)
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name not in (".hydra", ".lock")]


@pytest.mark.parametrize("overrides, message", [
    (["int8=true", "calibration.images=0"], "calibration.images must be >= 1"),
    (["opset=11"], "opset must be in [17,"),
    (["int8=true", "calibration.method=KL"], "calibration.method must be one of MinMax, Entropy, Percentile"),
    (["nms=maybe"], "nms must be true or false"),
    (["verify.tolerance=1e-9", "verify.images=2", "img_size=128"], "differ by up to"),  # nothing written
])
def test_cli_errors_end_in_one_line(overrides, message, tmp_path, demo_data):
    run = amc_export(f"hydra.run.dir={tmp_path / 'run'}", f"data.path={demo_data[0]}", *overrides, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().startswith("error: ") and "\n" not in run.stderr.strip() and message in run.stderr
    assert not (tmp_path / "run" / "model.onnx").exists()


def test_cli_empty_calibration_split_is_one_line(tmp_path):
    generate_demo_dataset(tmp_path / "data", n_train=0, n_val=3, img_size=96, seed=0)
    run = amc_export(f"hydra.run.dir={tmp_path / 'run'}", f"data.path={tmp_path / 'data'}", "int8=true",
                     "img_size=96", cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "train.json: empty split" in run.stderr, run.stderr
    assert not (tmp_path / "run" / "model.onnx").exists()
