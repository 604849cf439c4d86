"""The INT8 ONNX graph of a quantization-aware model, from the scales it learned (no calibration).

:func:`export_qat` exports a QAT model (:func:`amc.quant.qat.prepare_qat`) with the TorchScript exporter, which
writes every ``torch.ao`` fake quantization as a ``QuantizeLinear`` -> ``DequantizeLinear`` pair holding the
learned scale and zero point. The graph is then put in the form ONNX Runtime's static quantizer writes (what
``amc-export int8=true`` deploys after calibration, :mod:`amc.export.quantize`), so that ONNX Runtime fuses it
into the same integer kernels (QLinearConv, QLinearLeakyRelu, QLinearConcat, int8 max pooling):

* weights stored as int8 initializers (quantized once with the learned per-channel scales, rounded as torch's
  fake quantization rounds them: ``x * (1 / scale)``, half to even), read through ``DequantizeLinear``;
* convolution biases stored as int32 with the scale ``input scale x weight scale`` (ONNX Runtime's rule);
* everything else (the quantized activations, the head and the box decoding in float) as exported.

The quantizers' placement mirrors ONNX Runtime's, so the QAT graph has the same quantize/dequantize pairs as the
calibrated one of the same model (``tests/test_qat.py`` checks it), only with the learned scales.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import torch

from amc.export.onnx import ONNX_OPSET, check_graph, export_detector, set_metadata
from amc.quant.qat import deploy_form, fake_quantizers, scheme_of, sync_qparams

if TYPE_CHECKING:
    import onnx

#: Largest int32 bias magnitude allowed (ONNX Runtime keeps quantized biases within 2^30 as well).
_BIAS_LIMIT = 2.0 ** 30


def export_qat(model: torch.nn.Module, img_size: int | tuple[int, int] = 640,
               opset: int = ONNX_OPSET) -> onnx.ModelProto:
    """The QDQ INT8 graph of a QAT model with its learned scales: input ``images``, output ``predictions`` (as
    :func:`amc.export.onnx.export_detector`; batch, height and width dynamic). ``model`` is left as it is.

    Raises:
        ConfigError: ``model`` is not a QAT model.
        ExportError: an unsupported operator; a graph the ONNX checker rejects.
    """
    scheme = scheme_of(model)
    m = deploy_form(model).cpu().eval()  # BatchNorms folded: the fused model the graph holds
    sync_qparams(m)
    for fq in fake_quantizers(m).values():
        fq.disable_observer()
        if fq.dtype == torch.qint8 and fq.qscheme in (torch.per_channel_symmetric, torch.per_tensor_symmetric):
            # Symmetric weights lie in [-127, 127] (or [-64, 64]) by their scale, max |w| / limit: the exporter
            # only writes int8 as [-128, 127], which rounds them identically.
            fq.activation_post_process.quant_min, fq.activation_post_process.quant_max = -128, 127
            fq.quant_min, fq.quant_max = -128, 127
    proto = export_detector(m, img_size, opset, fuse=False)
    _inline_identities(proto)
    _scalar_qparams(proto)
    _store_int8_weights(proto)
    _prune(proto)
    set_metadata(proto, {"amc.int8": "qat", "amc.int8.per_channel": str(scheme.per_channel).lower(),
                         "amc.qat": json.dumps(scheme.to_dict())})
    check_graph(proto)
    return proto


def _constants(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def _inline_identities(proto: onnx.ModelProto) -> None:
    """Replace ``Identity`` nodes of initializers (the exporter's copies of shared constants) by the initializer."""
    inits = {i.name for i in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    alias = {}
    for n in list(proto.graph.node):
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs:
            alias[n.output[0]] = n.input[0]
            proto.graph.node.remove(n)
    for n in proto.graph.node:
        for k, name in enumerate(n.input):
            if name in alias:
                n.input[k] = alias[name]


def _scalar_qparams(proto: onnx.ModelProto) -> None:
    """Per-tensor scales and zero points as scalars, as ONNX Runtime's quantizer writes them (the exporter writes
    one-element vectors, which ONNX Runtime's QLinearAdd and QLinearMul fusions do not take)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    made: dict[str, str] = {}
    for n in proto.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k in (1, 2):
            name = n.input[k] if len(n.input) > k else ""
            if name not in inits or list(inits[name].dims) != [1]:
                continue
            if name not in made:
                made[name] = f"{name}_scalar"
                proto.graph.initializer.append(
                    numpy_helper.from_array(numpy_helper.to_array(inits[name]).reshape(()), made[name]))
            n.input[k] = made[name]


def _store_int8_weights(proto: onnx.ModelProto) -> None:
    """Quantized convolutions: int8 weight initializers and int32 biases, as ONNX Runtime's quantizer writes them."""
    from onnx import helper, numpy_helper

    consts = _constants(proto)
    producer = {o: n for n in proto.graph.node for o in n.output}
    new_inits, new_nodes, dropped = [], [], set()
    for conv in proto.graph.node:
        if conv.op_type != "Conv":
            continue
        dq_x, dq_w = producer.get(conv.input[0]), producer.get(conv.input[1])
        q_w = producer.get(dq_w.input[0]) if dq_w is not None and dq_w.op_type == "DequantizeLinear" else None
        if q_w is None or q_w.op_type != "QuantizeLinear" or q_w.input[0] not in consts:
            continue  # a float convolution (the head kept in float)
        if dq_x is None or dq_x.op_type != "DequantizeLinear":
            continue
        weight = consts[q_w.input[0]].astype(np.float32)
        scale = np.asarray(consts[q_w.input[1]], dtype=np.float32).reshape(-1)
        zero = np.asarray(consts[q_w.input[2]]).reshape(-1)
        per_channel = scale.size > 1
        x_scale = float(np.asarray(consts[dq_x.input[1]]).reshape(-1)[0])
        bias = consts.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        channels = weight.shape[0]
        if bias is not None:
            # A channel whose weights are all (nearly) zero has a tiny scale, and its bias would not fit in int32
            # at x_scale x w_scale: its scale is raised (its int8 weights stay 0, nothing else changes).
            need = np.abs(bias.astype(np.float64)) / (x_scale * _BIAS_LIMIT)
            scale_c = np.broadcast_to(scale, (channels,)).astype(np.float64)
            if bool((need > scale_c).any()):
                scale_c = np.maximum(scale_c, need)
                scale = scale_c.astype(np.float32) if per_channel else np.array([scale_c.max()], np.float32)
        shape = (-1,) + (1,) * (weight.ndim - 1)
        s = scale.reshape(shape) if per_channel else scale.reshape(())
        z = zero.reshape(shape).astype(np.float32) if per_channel else np.float32(zero.reshape(-1)[0])
        inverse = (np.float32(1.0) / s).astype(np.float32)  # as torch's fake quantization: x * (1 / scale)
        q = np.clip(np.rint(weight * inverse) + z, -128, 127).astype(np.int8)
        base = q_w.input[0]
        names = {"q": f"{base}_quantized", "scale": f"{base}_scale", "zero": f"{base}_zero_point"}
        new_inits += [numpy_helper.from_array(q, names["q"]),
                      numpy_helper.from_array(scale if per_channel else scale.reshape(()), names["scale"]),
                      numpy_helper.from_array(zero.astype(np.int8) if per_channel else zero.astype(np.int8).reshape(()),
                                              names["zero"])]
        del dq_w.input[:]
        dq_w.input.extend([names["q"], names["scale"], names["zero"]])
        dropped.add(q_w.output[0])  # outputs are unique names
        if bias is not None:
            b_scale = (np.float32(x_scale) * np.broadcast_to(scale, (channels,))).astype(np.float32)
            b_q = np.rint(bias.astype(np.float64) / b_scale.astype(np.float64)).astype(np.int32)
            bname = conv.input[2]
            new_inits += [numpy_helper.from_array(b_q, f"{bname}_quantized"),
                          numpy_helper.from_array(b_scale, f"{bname}_quantized_scale"),
                          numpy_helper.from_array(np.zeros(channels, np.int32), f"{bname}_quantized_zero_point")]
            out = f"{bname}_dequantized"
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{bname}_quantized", f"{bname}_quantized_scale",
                                                                   f"{bname}_quantized_zero_point"], [out],
                                              name=f"{conv.name}/bias_DequantizeLinear", axis=0))
            conv.input[2] = out
    kept = [n for n in proto.graph.node if not (n.output and n.output[0] in dropped)]
    # the bias DequantizeLinear nodes go first: nodes must stay in topological order, and they read initializers
    del proto.graph.node[:]
    proto.graph.node.extend(new_nodes + kept)
    proto.graph.initializer.extend(new_inits)


def _prune(proto: onnx.ModelProto) -> None:
    """Drop the initializers nothing reads any more (the float weights and biases of quantized convolutions)."""
    used = {name for n in proto.graph.node for name in n.input}
    used |= {o.name for o in proto.graph.output}
    keep = [i for i in proto.graph.initializer if i.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)


def prediction_agreement(reference: torch.Tensor, other: torch.Tensor, conf_thres: float = 0.25) -> dict[str, float]:
    """How close two decoded prediction tensors ``(batch, anchors, 5 + nc)`` are (e.g. the INT8 graph's and the
    fake-quantized PyTorch model's, on the same images).

    Two INT8 implementations never agree bit for bit: the float and the integer convolutions differ in their last
    bits, a value on a rounding boundary goes one way in one and the other way in the other, and the one-step
    difference spreads through the next layers. So the comparison is statistical: ``conf_mean_abs_diff`` and
    ``conf_max_abs_diff`` of the confidence (objectness x best class score) over every anchor, and
    ``box_mean_abs_diff`` (pixels) over the anchors either side finds confident (``conf_thres``; 0.0 when none).
    """
    a, b = reference.detach().double().cpu(), other.detach().double().cpu()
    if a.shape != b.shape:
        raise ValueError(f"predictions of shape {tuple(a.shape)} and {tuple(b.shape)} cannot be compared")

    def confidence(y: torch.Tensor) -> torch.Tensor:
        return y[..., 4] * (y[..., 5:].max(-1).values if y.shape[-1] > 6 else 1.0)

    ca, cb = confidence(a), confidence(b)
    d = (ca - cb).abs()
    confident = torch.maximum(ca, cb) > conf_thres
    boxes = (a[..., :4] - b[..., :4]).abs()[confident]
    return {"conf_mean_abs_diff": float(d.mean()) if d.numel() else 0.0,
            "conf_max_abs_diff": float(d.max()) if d.numel() else 0.0,
            "box_mean_abs_diff": float(boxes.mean()) if boxes.numel() else 0.0,
            "confident_anchors": int(confident.sum())}
