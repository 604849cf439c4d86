"""ONNX export of amc models, optionally with NMS in the graph, and the checks against PyTorch.

:func:`export_detector` exports a fused copy of a model (the user's model is left as it is) with the TorchScript
exporter (``torch.onnx.export(..., dynamo=False)``) at opset :data:`ONNX_OPSET` or a later one:

* input ``images``: ``(batch, 3, height, width)`` float RGB in [0, 1]; batch, height and width are dynamic axes
  (height and width must be multiples of the model's largest stride, as for the PyTorch model);
* output ``predictions``: ``(batch, anchors, 5 + nc)`` decoded boxes ``cx, cy, w, h`` in input pixels,
  objectness and class scores: the model's eval-mode output ``[0]``, before NMS.

:func:`add_nms` appends post-processing to such a graph, with the ONNX ``NonMaxSuppression`` op:

* output ``detections``: ``(batch, k, 6)`` rows ``x1, y1, x2, y2, confidence, class``, by descending confidence,
  ``k = min(max_det, anchors x nc)``; rows past ``num_detections`` are zeros;
* output ``num_detections``: ``(batch,)`` int64, the valid rows per image.

It computes what :func:`amc.eval.nms.non_max_suppression` computes (confidence ``objectness x class score``, or the
objectness alone for one class; one candidate per box and class above ``conf_thres`` with ``multi_label``, else
the best class only; class-aware greedy NMS, strict ``IoU > iou_thres``; the ``max_det`` best), with these
documented differences, which only move borderline cases:

* amc (as the official code) makes NMS class-aware by offsetting each class's boxes by ``class x 4096`` px and
  running one NMS; ONNX ``NonMaxSuppression`` runs one NMS per class on the boxes themselves. Offset float32
  coordinates are rounded (by up to 2^-12 px at 4096-8192), so an IoU within ~1e-6 of the threshold can be
  decided differently; and boxes beyond 4096 px would overlap across classes in amc but not in the graph;
* amc keeps at most ``max_nms = 30000`` candidates per image before NMS; the graph keeps all of them (this only
  matters when more than 30000 (box, class) pairs pass ``conf_thres``);
* ONNX Runtime computes the IoU in its own order of operations (same formula, float32).

:func:`save_onnx` writes a graph atomically (temporary file beside the target, then a rename): a failed export
never leaves a half-written file under the final name and keeps the previous one.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from amc.atomic import atomic_file
from amc.errors import AmcError, ConfigError

if TYPE_CHECKING:  # onnx and onnxruntime are imported on use: amc.eval.latency imports this module
    import onnx
    import onnxruntime

#: The opset amc exports at by default (and the latency measurements use).
ONNX_OPSET = 17
#: The smallest opset ``amc-export`` accepts (the ops used here all exist from 13 on; 17 is a current baseline).
MIN_EXPORT_OPSET = 17

INPUT_NAME, PREDICTIONS, DETECTIONS, NUM_DETECTIONS = "images", "predictions", "detections", "num_detections"


class ExportError(AmcError):
    """An export that cannot be done or failed its check (unsupported operator, outputs that differ)."""


def max_export_opset() -> int:
    """The highest opset torch's TorchScript exporter supports."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))


def torch_to_onnx(module: nn.Module, input_shape: Sequence[int], f: str | Path | io.BytesIO, opset: int = ONNX_OPSET,
                  input_names: Sequence[str] = (INPUT_NAME,), output_names: Sequence[str] | None = None,
                  dynamic_axes: dict[str, dict[int, str]] | None = None) -> None:
    """``torch.onnx.export`` of ``module`` on a zero input, the way amc exports everything.

    The TorchScript exporter (``dynamo=False``: no extra dependencies, stable node names), constant folding, its
    deprecation and tracer warnings silenced. The module is traced in the mode it is in.

    Raises:
        ExportError: an operator the exporter cannot translate at ``opset``, named in the message.
    """
    x = torch.zeros(tuple(int(s) for s in input_shape))
    try:
        with warnings.catch_warnings(), torch.no_grad(), _native_stdout_silenced():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), f if isinstance(f, io.BytesIO) else str(f), dynamo=False,
                              opset_version=int(opset), input_names=list(input_names),
                              output_names=None if output_names is None else list(output_names),
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
    except torch.onnx.errors.UnsupportedOperatorError as e:
        found = re.search(r"operator '([^']+)'", str(e))
        op = found.group(1) if found else str(e).splitlines()[0]
        raise ExportError(f"cannot export to ONNX: operator {op} is not supported by torch's ONNX exporter at opset "
                          f"{opset} (try a later opset, or replace the module that uses it)") from None


@contextmanager
def _native_stdout_silenced() -> Iterator[None]:
    """Discard what native code writes to file descriptor 1 meanwhile.

    On a failure the TorchScript exporter's C++ side prints the whole Torch IR graph to stdout (whatever
    ``torch._C._jit_set_onnx_log_enabled`` says), which would bury the one-line error of a command.
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (an embedded interpreter): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


class _Predictions(nn.Module):
    """The decoded predictions of a detector (its eval-mode output ``[0]``), the graph's one output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def export_detector(model: nn.Module, img_size: int | tuple[int, int] = 640, opset: int = ONNX_OPSET,
                    fuse: bool = True) -> onnx.ModelProto:
    """The ONNX graph of an amc detector: input ``images``, output ``predictions`` (see the module docstring).

    A float32 CPU copy of ``model`` is exported in eval mode (fused first when ``fuse``), so the model itself is
    not changed. ``img_size`` only shapes the tracing input: batch, height and width are dynamic. Class names,
    strides, the fusing and the architecture (so the graph's parameters and FLOPs can be counted) are kept in
    the graph's metadata (``amc.*`` keys).

    Raises:
        ExportError: an unsupported operator; a graph the ONNX checker rejects.
    """
    import onnx

    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    m = copy.deepcopy(model).cpu().float().eval()
    if fuse and hasattr(m, "fuse"):
        m.fuse()
    head = m.model[-1] if hasattr(m, "model") else None
    if head is not None and hasattr(head, "grid"):
        head.grid = [torch.zeros(1)] * head.nl  # rebuilt while tracing, from the input's (dynamic) size
    buffer = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, PREDICTIONS: {0: "batch", 1: "anchors"}}
    torch_to_onnx(_Predictions(m).eval(), (1, 3, int(h), int(w)), buffer, opset, output_names=[PREDICTIONS],
                  dynamic_axes=axes)
    proto = onnx.load_from_string(buffer.getvalue())
    nc = getattr(m, "nc", None)
    if nc is not None:  # the exporter names the last axis symbolically; it is the model's 5 + nc
        last = proto.graph.output[0].type.tensor_type.shape.dim[2]
        last.ClearField("dim_param")
        last.dim_value = int(nc) + 5
    meta = {"amc.nc": str(getattr(m, "nc", "")), "amc.fused": json.dumps(bool(getattr(m, "fused", False))),
            "amc.names": json.dumps(list(getattr(m, "names", []))),
            "amc.stride": json.dumps([float(s) for s in getattr(m, "stride", torch.tensor([])).tolist()])}
    if hasattr(m, "arch"):  # lets a report count the graph's parameters and FLOPs exactly (amc.deploy.report)
        meta["amc.architecture"] = json.dumps(m.arch.to_dict())
    set_metadata(proto, meta)
    check_graph(proto)
    return proto


def set_metadata(proto: onnx.ModelProto, values: dict[str, str]) -> None:
    """Set (replace) ``metadata_props`` entries of a graph."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def metadata(proto: onnx.ModelProto) -> dict[str, str]:
    """A graph's ``metadata_props`` as a dict."""
    return {p.key: p.value for p in proto.metadata_props}


def check_graph(proto: onnx.ModelProto) -> None:
    """The ONNX checker with full shape inference; :class:`ExportError` with its first line on failure."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported ONNX graph is invalid: {str(e).strip().splitlines()[0]}") from None


def save_onnx(proto: onnx.ModelProto, path: str | Path) -> Path:
    """Write a graph to ``path`` atomically (a temporary file beside it, renamed into place once complete)."""
    import onnx

    with atomic_file(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return Path(path)


# ----------------------------------------------------------------------------------------------- ONNX Runtime


def ort_session(model: onnx.ModelProto | bytes | str | Path,
                threads: int | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session with all graph optimizations (``threads``: intra-op threads, None = ORT's).

    Raises:
        ExportError: the runtime has no kernel for an operator of the graph (named in the message).
    """
    import onnxruntime as ort

    payload = model.SerializeToString() if hasattr(model, "SerializeToString") else \
        model if isinstance(model, bytes) else str(model)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's pybind errors (NotImplemented, Fail, InvalidGraph) have no common base
        found = re.search(r"implementation for (\w+)\((\d+)\)", str(e))
        if found:
            raise ExportError(f"ONNX Runtime {ort.__version__} cannot run operator {found.group(1)} "
                              f"(opset {found.group(2)}) on the CPU: export at another opset") from None
        raise


class OnnxDetector(nn.Module):
    """An ONNX Runtime session of a ``predictions`` graph that behaves like an amc model where evaluation needs it.

    Calling it on a float image batch returns ``(predictions,)`` as a torch tensor, like an amc model in eval
    mode, and it has ``nc`` and ``stride``: :class:`~amc.eval.evaluator.DetectionEvaluator` scores it with amc's
    own NMS and COCOeval, exactly as a PyTorch model. It has no parameters; ``train()``/``eval()`` are no-ops
    for the graph.

    Args:
        model: a graph from :func:`export_detector` (proto, bytes or file), or a ready session.
        threads: ONNX Runtime intra-op threads (None: its default).
        nc, stride: override what the graph's metadata says.
    """

    def __init__(self, model: onnx.ModelProto | bytes | str | Path | onnxruntime.InferenceSession,
                 threads: int | None = None, nc: int | None = None, stride: Sequence[float] | None = None) -> None:
        super().__init__()
        self.session = model if hasattr(model, "run") else ort_session(model, threads)
        names = [o.name for o in self.session.get_outputs()]
        if PREDICTIONS not in names:
            raise ExportError(f"the ONNX graph has no {PREDICTIONS!r} output (it has {', '.join(names)}): a graph with "
                              f"NMS inside cannot be scored with amc's NMS")
        self.input_name = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        if nc is None:
            nc = int(meta["amc.nc"]) if meta.get("amc.nc") else int(self.session.get_outputs()[names.index(
                PREDICTIONS)].shape[2]) - 5
        self.nc = int(nc)
        stride = stride if stride is not None else json.loads(meta.get("amc.stride") or "[32]")
        self.register_buffer("stride", torch.tensor([float(s) for s in stride]), persistent=False)
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        x = images.detach().float().cpu().contiguous().numpy()
        out = self.session.run([PREDICTIONS], {self.input_name: x})[0]
        return (torch.from_numpy(out).to(images.device),)


@torch.inference_mode()
def compare_predictions(model: nn.Module, onnx_model: OnnxDetector, batches: Iterable[torch.Tensor]) -> float:
    """Max abs difference between a PyTorch model's decoded predictions and the ONNX graph's on the same batches.

    The images are given to ``model`` in its own dtype: a float64 copy of the model (``model.double()``) gives
    the exact predictions, so the difference is the graph's own error; a float32 model adds PyTorch's rounding,
    which on large boxes is of the same order (about 1e-3 pixels on the demo's 450-pixel boxes).
    """
    worst = 0.0
    was_training = model.training
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    model.eval()
    try:
        for images in batches:
            ref = model(images.to(dtype))[0].double()
            out = onnx_model(images)[0].double()
            if out.shape != ref.shape:
                raise ExportError(f"the ONNX graph gives predictions of shape {tuple(out.shape)} where PyTorch gives "
                                  f"{tuple(ref.shape)}")
            worst = max(worst, float((out - ref).abs().max()) if out.numel() else 0.0)
    finally:
        model.train(was_training)
    return worst


@dataclass(frozen=True)
class PredictionCheck:
    """How far an ONNX graph's decoded predictions are from PyTorch's, on the same images (max abs differences)."""

    max_abs_diff: float          # ONNX Runtime vs PyTorch float64: the graph's own error
    max_abs_diff_vs_fp32: float  # ONNX Runtime vs PyTorch float32: adds PyTorch's rounding
    pytorch_fp32_error: float    # PyTorch float32 vs float64: PyTorch's rounding alone (is a difference rounding?)


@torch.inference_mode()
def check_predictions(model: nn.Module, onnx_model: OnnxDetector, batches: Iterable[torch.Tensor]) -> PredictionCheck:
    """The three differences of :class:`PredictionCheck` in one pass over ``batches`` (``model``: float32).

    Two float32 implementations (PyTorch, ONNX Runtime) may differ by about twice PyTorch's own rounding error,
    which reaches ~1e-3 pixels on large boxes: the exact (float64) predictions are the reference to gate on.
    """
    m64 = copy.deepcopy(model).double().eval()
    was_training = model.training
    model.eval()
    worst = [0.0, 0.0, 0.0]
    try:
        for images in batches:
            out = onnx_model(images)[0].double()
            ref32 = model(images.float())[0].double()
            ref64 = m64(images.double())[0]
            if out.shape != ref64.shape:
                raise ExportError(f"the ONNX graph gives predictions of shape {tuple(out.shape)} where PyTorch gives "
                                  f"{tuple(ref64.shape)}")
            if out.numel():
                for k, (a, b) in enumerate(((out, ref64), (out, ref32), (ref32, ref64))):
                    worst[k] = max(worst[k], float((a - b).abs().max()))
    finally:
        model.train(was_training)
    return PredictionCheck(*worst)


# ----------------------------------------------------------------------------------------------- NMS in the graph


@dataclass(frozen=True)
class GraphNms:
    """Settings of the NMS appended by :func:`add_nms` (defaults: the official ``detect.py``)."""

    conf_thres: float = 0.25
    iou_thres: float = 0.45
    max_det: int = 300
    multi_label: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf_thres < 1.0:
            raise ConfigError(f"NMS conf_thres must be in [0, 1), got {self.conf_thres}")
        if not 0.0 <= self.iou_thres <= 1.0:
            raise ConfigError(f"NMS iou_thres must be in [0, 1], got {self.iou_thres}")
        if int(self.max_det) < 1:
            raise ConfigError(f"NMS max_det must be >= 1, got {self.max_det}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_nms(proto: onnx.ModelProto, settings: GraphNms) -> onnx.ModelProto:
    """A copy of a ``predictions`` graph (:func:`export_detector`) with NMS appended: outputs ``detections``,
    ``num_detections`` (see the module docstring). Works on float and quantized (QDQ) graphs alike."""
    import onnx
    from onnx import TensorProto, helper

    graph_outputs = [o.name for o in proto.graph.output]
    if PREDICTIONS not in graph_outputs:
        raise ExportError(f"NMS can only be appended to a graph with a {PREDICTIONS!r} output, got {graph_outputs}")
    out = copy.deepcopy(proto)
    pred_info = next(o for o in out.graph.output if o.name == PREDICTIONS)
    dims = pred_info.type.tensor_type.shape.dim
    if len(dims) != 3 or not dims[2].dim_value or dims[2].dim_value < 6:
        raise ExportError("the predictions output must be (batch, anchors, 5 + nc) with a static last axis")
    nc = int(dims[2].dim_value) - 5
    p = "nms/"
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, values: Sequence[float] | Sequence[int], dtype: int = TensorProto.INT64) -> str:
        inits.append(helper.make_tensor(f"{p}const/{name}", dtype, [len(values)], list(values)))
        return f"{p}const/{name}"

    def node(op: str, inputs: Sequence[str], name: str, outputs: int = 1, **attrs: Any) -> list[str]:
        names = [p + name] if outputs == 1 else [f"{p}{name}_{i}" for i in range(outputs)]
        nodes.append(helper.make_node(op, list(inputs), names, name=p + name, **attrs))
        return names

    axis2 = const("axis2", [2])

    def cut(name: str, start: int, end: int) -> str:
        return node("Slice", [PREDICTIONS, const(f"{name}_start", [start]), const(f"{name}_end", [end]), axis2],
                    name)[0]

    xy, wh, obj = cut("xy", 0, 2), cut("wh", 2, 4), cut("obj", 4, 5)
    # corners as amc.boxes.xywh_to_xyxy: cx -/+ w / 2 (bit-identical arithmetic)
    half = node("Div", [wh, const("two", [2.0], TensorProto.FLOAT)], "half")[0]
    boxes = node("Concat", [node("Sub", [xy, half], "lo")[0], node("Add", [xy, half], "hi")[0]], "boxes", axis=2)[0]
    if nc == 1:
        scores = obj  # one class: the confidence is the objectness alone, as amc and the official code
    else:
        scores = node("Mul", [cut("cls", 5, 5 + nc), obj], "conf")[0]  # amc: x[:, 5:] * x[:, 4:5]
        if not settings.multi_label:  # the best class only (the first on ties, as torch.max)
            best = node("ArgMax", [scores], "best", axis=2, keepdims=1, select_last_index=0)[0]
            onehot = node("OneHot", [best, const("depth", [nc]), const("onehot_values", [0.0, 1.0],
                                                                        TensorProto.FLOAT)], "onehot", axis=-1)[0]
            onehot = node("Squeeze", [onehot, axis2], "onehot_squeezed")[0]
            scores = node("Mul", [scores, onehot], "best_conf")[0]
    scores_t = node("Transpose", [scores], "scores_t", perm=[0, 2, 1])[0]  # (B, nc, N), as NonMaxSuppression wants
    selected = node("NonMaxSuppression", [boxes, scores_t, const("max_det", [int(settings.max_det)]),
                                          const("iou", [float(settings.iou_thres)], TensorProto.FLOAT),
                                          const("conf", [float(settings.conf_thres)], TensorProto.FLOAT)],
                    "select", center_point_box=0)[0]  # (K, 3): batch, class, box
    # Every kept (box, class) pair's confidence scattered into a dense (B, N * nc) map at box * nc + class: the
    # order of amc's candidate rows, so TopK (ties: lower index first) orders equal scores as amc's stable sort.
    idx = {k: node("Gather", [selected, const(f"col{k}", [k])], f"sel{k}", axis=1)[0] for k in range(3)}  # (K, 1)
    kept_conf = node("GatherND", [scores_t, selected], "kept_conf")[0]  # (K,)
    n_classes = const("nc", [nc])
    flat = node("Add", [node("Mul", [idx[2], n_classes], "box_x_nc")[0], idx[1]], "flat")[0]
    shape = node("Shape", [PREDICTIONS], "shape")[0]
    batch = node("Gather", [shape, const("dim0", [0])], "batch")[0]
    anchors = node("Gather", [shape, const("dim1", [1])], "anchors")[0]
    width = node("Mul", [anchors, n_classes], "pairs")[0]
    dense = node("ConstantOfShape", [node("Concat", [batch, width], "dense_shape", axis=0)[0]], "zeros",
                 value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))[0]
    dense = node("ScatterND", [dense, node("Concat", [idx[0], flat], "scatter_at", axis=1)[0], kept_conf],
                 "dense")[0]
    k = node("Min", [width, const("max_det_k", [int(settings.max_det)])], "k")[0]
    top_conf, top_at = node("TopK", [dense, k], "top", outputs=2, axis=1, largest=1, sorted=1)
    box_at = node("Div", [top_at, n_classes], "box_at")[0]  # integer division
    cls_at = node("Mod", [top_at, n_classes], "cls_at")[0]
    axis_last = const("axis_last", [-1])
    top_boxes = node("GatherND", [boxes, node("Unsqueeze", [box_at, axis_last], "box_at_1")[0]], "top_boxes",
                     batch_dims=1)[0]  # (B, k, 4)
    valid = node("Greater", [top_conf, const("zero_f", [0.0], TensorProto.FLOAT)], "valid")[0]
    det = node("Concat", [top_boxes, node("Unsqueeze", [top_conf, axis_last], "conf_1")[0],
                          node("Unsqueeze", [node("Cast", [cls_at], "cls_f", to=TensorProto.FLOAT)[0], axis_last],
                               "cls_1")[0]], "det_raw", axis=2)[0]
    valid_f = node("Unsqueeze", [node("Cast", [valid], "valid_f", to=TensorProto.FLOAT)[0], axis_last], "valid_1")[0]
    nodes.append(helper.make_node("Mul", [det, valid_f], [DETECTIONS], name=p + "detections"))
    nodes.append(helper.make_node("ReduceSum", [node("Cast", [valid], "valid_i", to=TensorProto.INT64)[0],
                                                const("axis1", [1])], [NUM_DETECTIONS], name=p + "count",
                                  keepdims=0))
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    del out.graph.output[:]
    out.graph.output.extend([
        helper.make_tensor_value_info(DETECTIONS, TensorProto.FLOAT, ["batch", "detections", 6]),
        helper.make_tensor_value_info(NUM_DETECTIONS, TensorProto.INT64, ["batch"])])
    set_metadata(out, {"amc.nms": json.dumps(settings.to_dict())})
    check_graph(out)
    return out


def graph_detections(session: onnxruntime.InferenceSession, images: torch.Tensor) -> list[torch.Tensor]:
    """Per-image ``(n, 6)`` detections (x1, y1, x2, y2, confidence, class) of a graph with NMS inside."""
    det, num = session.run([DETECTIONS, NUM_DETECTIONS],
                           {session.get_inputs()[0].name: images.detach().float().cpu().contiguous().numpy()})
    return [torch.from_numpy(d[: int(n)].copy()) for d, n in zip(det, num)]


def compare_detections(found: Sequence[torch.Tensor], expected: Sequence[torch.Tensor],
                       tolerance: float = 1e-3) -> dict[str, Any]:
    """How well per-image detections (``(n, 6)`` rows) agree with a reference (amc's NMS).

    Rows are paired in order, then leftovers by class and nearest values (equal-score rows may come in another
    order); a pair matches when classes are equal and every value is within ``tolerance``. Returns the counts
    (``expected``, ``found``, ``matched``) and ``max_abs_diff`` over matched pairs.
    """
    matched = total_found = total_expected = 0
    worst = 0.0
    for got, ref in zip(found, expected):
        got, ref = got.float().cpu(), ref.float().cpu()
        total_found, total_expected = total_found + len(got), total_expected + len(ref)
        free_got, free_ref = set(range(len(got))), set(range(len(ref)))
        for i in range(min(len(got), len(ref))):
            d = float((got[i] - ref[i]).abs().max())
            if got[i, 5] == ref[i, 5] and d <= tolerance:
                free_got.discard(i)
                free_ref.discard(i)
                matched, worst = matched + 1, max(worst, d)
        for j in sorted(free_ref):
            options = [(float((got[i] - ref[j]).abs().max()), i) for i in free_got if got[i, 5] == ref[j, 5]]
            if options and min(options)[0] <= tolerance:
                d, i = min(options)
                free_got.discard(i)
                matched, worst = matched + 1, max(worst, d)
    return {"expected": total_expected, "found": total_found, "matched": matched, "max_abs_diff": worst}
