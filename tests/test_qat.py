"""Quantization-aware training (issue 23, item 3): a QAT fine-tune saves safe checkpoints with its learned scales,
the INT8 ONNX graph is written from those scales (not calibrated), has the quantize/dequantize pairs and the
integer kernels of the calibrated graph, and ONNX Runtime's outputs are close to the fake-quantized PyTorch
model's."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import load_file, save_file
from torch.ao.nn import qat as nnqat

from amc.data.datasets import load_dataset
from amc.data.loaders import EvalSet, TrainSet
from amc.data.synthetic import generate_demo_dataset
from amc.errors import CheckpointError, ConfigError
from amc.eval.evaluator import DetectionEvaluator
from amc.export.onnx import OnnxDetector, export_detector
from amc.export.quantize import quantize_int8
from amc.finetune.qat import QatSettings, quantization_aware_training
from amc.models import YOLOv7, load_model, parse_cfg
from amc.models.io import packaged
from amc.quant import QUANT_FILE, QuantScheme, calibrate, load_qat_model, prepare_qat, save_qat_model
from amc.quant.onnx import export_qat, prediction_agreement
from amc.quant.qat import ActivationFakeQuantize, deploy_form, fake_quantizers
from amc.train.trainer import TrainConfig
from conftest import mini_cfg, randomize_

SIZE = 256  # the demo model's image size
HYP = {"lr0": 0.002, "lrf": 0.01, "momentum": 0.937, "weight_decay": 0.0005, "warmup_epochs": 0.0,
       "warmup_momentum": 0.8, "warmup_bias_lr": 0.002, "box": 0.05, "cls": 0.5, "cls_pw": 1.0, "obj": 1.0,
       "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0, "fliplr": 0.5, "mosaic": 1.0, "scale": 0.5,
       "translate": 0.1, "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """8 training and 8 validation demo images at the demo model's 256 px."""
    root = tmp_path_factory.mktemp("demo-qat")
    generate_demo_dataset(root, n_train=8, n_val=8, img_size=SIZE, seed=0)
    return load_dataset("demo", root, "train"), load_dataset("demo", root, "val")


def _kernels(proto: onnx.ModelProto, tmp_path) -> collections.Counter:
    """Operator counts of the graph ONNX Runtime runs, after its QDQ fusions (the integer kernels)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


def _quantized_producers(proto: onnx.ModelProto) -> collections.Counter:
    """What each QuantizeLinear quantizes, by the operator that produced it (ReLU folded into its convolution)."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    found = collections.Counter()
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear":
            p = producer.get(n.input[0])
            if p is not None and p.op_type == "Relu":  # ONNX Runtime removes a ReLU into its convolution's range
                p = producer.get(p.input[0])
            found[p.op_type if p is not None else "input"] += 1
    return found


def test_qat_fine_tune_exports_its_learned_scales_and_onnx_runtime_runs_them(demo_data, tmp_path,
                                                                            one_torch_thread) -> None:
    """The QAT phase of amc-finetune on 8 demo images (2 steps of 4): its best/ is a safe checkpoint (float weights
    any amc command loads, the quantizers' tensors beside them); the INT8 graph holds exactly its learned scales and
    fake-quantized weights; ONNX Runtime runs it close to the fake-quantized PyTorch model."""
    train, val = demo_data
    evaluator = DetectionEvaluator(val, EvalSet(val, SIZE, 8, 32, progress=False), map_backend="fast")
    settings = QatSettings(enabled=True, epochs=1, lr0=0.002, warmup_epochs=0.0, calibration_images=8,
                           scheme=QuantScheme())
    config = TrainConfig(epochs=5, batch_size=4, nominal_batch_size=4, warmup_min_iters=0, workers=0, seed=0,
                         save_dir=tmp_path, progress=False, tensorboard=False)
    start = packaged("demo-model")
    metrics = quantization_aware_training(settings, start, tmp_path, train,
                                          TrainSet(train, img_size=SIZE, augment=True, hyp=HYP, seed=0), HYP,
                                          lambda m: evaluator(m).to_dict(), torch.device("cpu"), SIZE, config,
                                          resume=False)
    best = tmp_path / "qat" / "best"
    assert metrics["epochs"] == 1 and metrics["calibration_images"] == 8
    assert sorted(p.name for p in best.iterdir()) == ["architecture.yaml", QUANT_FILE, "weights.safetensors"]
    assert metrics["after"]["map50_95"] > 0.3  # the demo model keeps detecting through fake INT8
    plain, _ = load_model(best)  # any amc command reads the float weights
    assert plain.fused
    model, _ = load_qat_model(best)
    trained = model.model[0].conv.weight
    assert not torch.equal(trained, load_model(start)[0].fuse().model[0].conv.weight)  # it trained
    assert torch.equal(trained, plain.model[0].conv.weight)

    proto = export_qat(model, SIZE)
    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    # every activation scale of the graph is one the model learned, bit for bit (no calibration)
    learned = sorted(float(q.scale) for q in fake_quantizers(model).values() if isinstance(q, ActivationFakeQuantize))
    used = {float(consts[n.input[1]]) for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    assert used == set(learned)
    # the int8 weights, dequantized, are the fake-quantized weights of the model
    convs = [m for m in model.modules() if isinstance(m, nnqat.Conv2d)]
    producer = {o: n for n in proto.graph.node for o in n.output}
    graph_weights = []
    for n in proto.graph.node:
        if n.op_type == "Conv" and producer.get(n.input[1]) is not None:
            dq = producer[n.input[1]]
            q, scale = consts[dq.input[0]], consts[dq.input[1]]
            assert q.dtype == np.int8
            graph_weights.append(q.astype(np.float32) * scale.reshape(-1, 1, 1, 1))
    assert len(graph_weights) == len(convs) == 55  # the three head convolutions stay in float
    with torch.no_grad():
        for conv, w in zip(convs, graph_weights):
            np.testing.assert_allclose(w, conv.weight_fake_quant(conv.weight).numpy(), rtol=0, atol=1e-7)

    # ONNX Runtime (its integer kernels) against the fake-quantized PyTorch model and the float one
    images = [b.images.float() / 255 for b in EvalSet(val, SIZE, 8, 32, progress=False)]
    with torch.no_grad():
        fake = torch.cat([model(x)[0] for x in images])
        floating = torch.cat([plain.eval()(x)[0] for x in images])
    predicted = torch.cat([OnnxDetector(proto, threads=1)(x)[0] for x in images])
    close, noise = prediction_agreement(fake, predicted), prediction_agreement(fake, floating)
    # Measured on the demo (an AVX2 CPU without VNNI, whose u8 x s8 kernels saturate a little): confidence mean
    # abs difference about 3e-4 (the float model vs the fake-quantized one: about 5e-4), boxes of confident anchors
    # about 0.3 px apart (0.4 px). Bit-exact agreement is not possible: integer and float convolutions round
    # differently and the one-step differences spread (amc.quant.onnx.prediction_agreement).
    assert close["conf_mean_abs_diff"] < 1e-3, (close, noise)
    assert close["box_mean_abs_diff"] < 1.0, (close, noise)
    assert close["confident_anchors"] > 0


@pytest.mark.parametrize("keep_head", [True, False])
def test_qat_graph_quantizes_what_the_calibrated_graph_quantizes(keep_head, tmp_path, one_torch_thread) -> None:
    """On amc's tiny model with every module (Conv with LeakyReLU, SiLU, ReLU and none, RepConv, DownC, SPPCSPC,
    Shortcut, MP, SP, ReOrg, Upsample, Concat, IDetect): the QAT graph has the calibrated graph's quantized tensors
    (by producing operator) and ONNX Runtime runs both on the same integer kernels."""
    torch.manual_seed(0)
    model = randomize_(YOLOv7(parse_cfg(mini_cfg()))).eval()
    batches = [torch.rand(2, 3, 64, 64)]
    qat = prepare_qat(model, QuantScheme(keep_head=keep_head))
    calibrate(qat, batches)
    proto = export_qat(qat.eval(), 64)
    calibrated = quantize_int8(export_detector(model, 64), [b.numpy() for b in batches], keep_head=keep_head)
    assert _quantized_producers(proto) == _quantized_producers(calibrated)
    kernels, reference = _kernels(proto, tmp_path), _kernels(calibrated, tmp_path)
    integer = [op for op in reference if op.startswith("QLinear") or op == "NhwcMaxPool"]
    assert {op: kernels[op] for op in integer} == {op: reference[op] for op in integer}
    assert reference["QLinearConv"] == (18 if keep_head else 21) and reference["QLinearMul"] == 15
    assert kernels["Conv"] == reference["Conv"]  # float convolutions: the head's when kept


def test_qat_checkpoints_load_safely_and_refuse_what_does_not_fit(tmp_path) -> None:
    """Tensors and plain metadata only; a quantizer file that does not fit the model, a missing one, or a model
    the export could not quantize the same way end in one-line errors."""
    torch.manual_seed(0)
    qat = prepare_qat(randomize_(YOLOv7(parse_cfg(mini_cfg()))).eval())
    calibrate(qat, [torch.rand(1, 3, 64, 64)])
    folder = save_qat_model(qat.eval(), tmp_path / "qat")
    again, _ = load_qat_model(folder)  # saved as it deploys: the BatchNorms folded into the convolutions
    folded = deploy_form(qat).state_dict()
    assert list(folded) == list(again.state_dict())
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in folded.items())
    state = load_file(str(folder / QUANT_FILE))
    key = next(k for k in state if k.endswith("weight_fake_quant.scale"))
    save_file({**state, key: state[key][:-1]}, str(folder / QUANT_FILE))
    with pytest.raises(CheckpointError, match="scale"):
        load_qat_model(folder)
    save_file({k: v for k, v in state.items() if k != key}, str(folder / QUANT_FILE))
    with pytest.raises(CheckpointError, match="missing"):
        load_qat_model(folder)
    (folder / QUANT_FILE).unlink()
    with pytest.raises(CheckpointError):
        load_qat_model(folder)
    with pytest.raises(CheckpointError, match="not a quantization-aware model"):
        load_qat_model(packaged("demo-model"))
    cfg = mini_cfg()
    cfg["backbone"][3][3] = [24, 3, 2, None, 1, "nn.Hardswish()"]
    with pytest.raises(ConfigError, match="Hardswish"):
        prepare_qat(YOLOv7(parse_cfg(cfg)))
    with pytest.raises(ConfigError, match="activation_type"):
        QuantScheme(activation_type="QInt4")

