"""INT8 post-training static quantization of exported graphs with ``onnxruntime.quantization``.

:func:`quantize_int8` turns a ``predictions`` graph (:func:`amc.export.onnx.export_detector`) into a QDQ graph:
``QuantizeLinear``/``DequantizeLinear`` pairs around every quantized tensor, which ONNX Runtime (and TensorRT,
OpenVINO) fuse into integer kernels. Weights are quantized per output channel (symmetric int8); activations
per tensor, their ranges calibrated on real images with one of :data:`CALIBRATION_METHODS`:

* ``MinMax``: the smallest and largest value seen;
* ``Entropy``: the range minimizing the KL divergence between the float and the quantized histograms (TensorRT's
  method), over :data:`DEFAULT_BINS` histogram bins unless told;
* ``Percentile``: the range holding 99.999% of the values seen.

The box decoding at the end of the graph (reshapes, sigmoid, grid and anchor arithmetic, the final concat) stays
in float: it is cheap, and its output mixes pixel coordinates (0 to the image size) with scores (0 to 1), which one
int8 scale cannot hold both of. :func:`decode_nodes` finds it by structure: every node from which no convolution
can be reached. By default the head's convolutions (the last ones) stay in float as well: their outputs hold box
and class logits in one tensor, and quantizing them costs the demo model 0.035 mAP@0.5:0.95 (0.002 when kept; they
are 2% of its FLOPs).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from amc.errors import ConfigError

if TYPE_CHECKING:
    import onnx

#: Calibration methods :func:`quantize_int8` accepts (``onnxruntime.quantization.CalibrationMethod`` names).
CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")
#: Activation types: unsigned (ONNX Runtime's recommended U8S8 on x86) or signed int8.
ACTIVATION_TYPES = ("QUInt8", "QInt8")


class ImageBatches:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over float image batches ``(B, 3, H, W)`` in [0, 1].

    Defined on first use as a subclass of the reader class, so that importing this module needs no onnxruntime.
    """

    def __new__(cls, input_name: str, batches: Sequence[np.ndarray]) -> Any:
        from onnxruntime.quantization import CalibrationDataReader

        class _Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = [np.ascontiguousarray(b, dtype=np.float32) for b in batches]
                self._it: Iterator[np.ndarray] = iter(self.batches)

            def get_next(self) -> dict[str, np.ndarray] | None:
                batch = next(self._it, None)
                return None if batch is None else {input_name: batch}

            def rewind(self) -> None:
                self._it = iter(self.batches)

            def __len__(self) -> int:
                return len(self.batches)

        return _Reader()


def decode_nodes(model: onnx.ModelProto, keep_head: bool = False) -> list[str]:
    """Names of the nodes that come after the last convolutions (the box decoding): kept in float.

    A node belongs there when no ``Conv`` can be reached from its outputs and it is no ``Conv`` itself. With
    ``keep_head`` the detection head's convolutions (the last ones) are listed too, so they also stay in float.
    """
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(model.graph.node):
        for name in n.input:
            consumers.setdefault(name, []).append(i)
    reaches_conv: dict[int, bool] = {}

    def reaches(i: int) -> bool:  # iterative DFS: graphs of big models are deep
        stack = [(i, False)]
        while stack:
            j, expanded = stack.pop()
            if j in reaches_conv:
                continue
            nxt = [k for out in model.graph.node[j].output for k in consumers.get(out, [])]
            if expanded:
                reaches_conv[j] = any(model.graph.node[k].op_type == "Conv" or reaches_conv[k] for k in nxt)
                continue
            stack.append((j, True))
            stack.extend((k, False) for k in nxt if k not in reaches_conv)
        return reaches_conv[i]

    names = []
    for i, n in enumerate(model.graph.node):
        if not reaches(i) and (n.op_type != "Conv" or keep_head):
            names.append(n.name)
    return names


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (exclusion lists refer to nodes by name)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in taken:
                name += "_"
            n.name = name
            taken.add(name)


#: Histogram bins of the histogram methods when not given. ONNX Runtime's own Entropy default (128 bins into 128
#: quantized bins) leaves a single candidate range, the full one, which makes it MinMax under another name.
DEFAULT_BINS = {"Entropy": 512, "Percentile": 2048}


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Root logger at ERROR for the duration (onnxruntime.quantization logs its advice there), then restored."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _calibrate(source: Path, reader: Any, method: str, bins: int | None, percentile: float, work: Path) -> Any:
    """Activation ranges (``onnxruntime.quantization.calibrate.TensorsData``) of a float graph on the reader's data."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    options: dict[str, Any] = {"symmetric": False}  # activations are asymmetric (mostly positive after LeakyReLU)
    if method != "MinMax":
        options["num_bins"] = int(bins or DEFAULT_BINS[method])
    if method == "Entropy":
        options["num_quantized_bins"] = 128
    if method == "Percentile":
        options["percentile"] = float(percentile)
    calibrator = create_calibrator(source, None, augmented_model_path=str(work / "augmented.onnx"),
                                   calibrate_method=getattr(CalibrationMethod, method), extra_options=options)
    calibrator.collect_data(reader)
    return calibrator.compute_data()


def quantize_int8(model: onnx.ModelProto, calibration: Sequence[np.ndarray], method: str = "MinMax",
                  per_channel: bool = True, activation_type: str = "QUInt8", keep_head: bool = True,
                  reduce_range: bool = False, bins: int | None = None, percentile: float = 99.999) -> onnx.ModelProto:
    """The INT8 QDQ version of a float graph, calibrated on ``calibration`` image batches.

    Args:
        model: a float ONNX graph with one image input (e.g. from :func:`~amc.export.onnx.export_detector`).
        calibration: float32 batches ``(B, 3, H, W)`` in [0, 1], e.g. training images letterboxed as for inference.
        method: one of :data:`CALIBRATION_METHODS`.
        per_channel: per-output-channel weight scales (else one per tensor).
        activation_type: ``QUInt8`` or ``QInt8`` activations (weights are always signed int8).
        keep_head: keep the detection head's convolutions in float too. Their outputs hold box and class logits
            in one tensor; one int8 scale for both costs the demo model 0.035 mAP@0.5:0.95 (0.002 when kept).
        reduce_range: 7-bit weights, for CPUs without VNNI where u8 x s8 products can saturate.
        bins: histogram bins of Entropy and Percentile (None: :data:`DEFAULT_BINS`).
        percentile: the percentile of ``method=Percentile``.

    The histogram bins are applied through ONNX Runtime's calibration cache (``calibration_cache_path`` of
    ``quantize_static``); an onnxruntime without it calibrates with its own defaults (and ``bins`` is ignored).

    Raises:
        ConfigError: no calibration batch, an unknown method or type.
    """
    import inspect

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise ConfigError("INT8 calibration needs images, got an empty calibration set")
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    if activation_type not in ACTIVATION_TYPES:
        raise ConfigError(f"activation type must be one of {', '.join(ACTIVATION_TYPES)}, got {activation_type!r}")
    model = copy.deepcopy(model)
    _name_nodes(model)
    reader = ImageBatches(model.graph.input[0].name, calibration)
    settings = dict(quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                    activation_type=getattr(QuantType, activation_type), weight_type=QuantType.QInt8,
                    nodes_to_exclude=decode_nodes(model, keep_head),
                    calibrate_method=getattr(CalibrationMethod, method))
    # onnxruntime.quantization prints its progress and warns through the root logger: keep the console clean
    with tempfile.TemporaryDirectory(prefix="amc-int8-") as tmp, contextlib.redirect_stdout(io.StringIO()), \
            _quiet_root_logger():
        work = Path(tmp)
        source, target = work / "fp32.onnx", work / "int8.onnx"
        onnx.save_model(model, str(source))
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            from onnxruntime.quantization.calibrate import save_tensors_data

            save_tensors_data(_calibrate(source, reader, method, bins, percentile, work), work / "ranges.json")
            quantize_static(str(source), str(target), None, calibration_cache_path=str(work / "ranges.json"),
                            **settings)
        else:  # an older onnxruntime: its own calibration settings
            extra = {"CalibPercentile": float(percentile)} if method == "Percentile" else {}
            quantize_static(str(source), str(target), reader, extra_options=extra, **settings)
        quantized = onnx.load_model(str(target))
    kept = {p.key: p.value for p in model.metadata_props}
    kept.update({"amc.int8": method, "amc.int8.per_channel": str(bool(per_channel)).lower()})
    del quantized.metadata_props[:]
    for key, value in kept.items():
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, value
    return quantized
