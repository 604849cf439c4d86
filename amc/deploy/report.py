"""The deployment report: several versions of a detector side by side, measured the same way in one run.

A search ends with an original model, a pruned one, a fine-tuned one and an INT8 ONNX graph. What a user ships
depends on all of them at once: accuracy (mAP@0.5:0.95 and mAP@0.5 on the same images, same NMS), size
(parameters, GFLOPs of the deployed, fused form) and speed where it will run (PyTorch on the CPU, ONNX Runtime on
the CPU, PyTorch on a CUDA GPU when there is one). :func:`deployment_report` measures every entry with the same
evaluator and times the entries of each backend interleaved round by round (see :mod:`amc.eval.latency`), so the
speed-ups come from one measurement rather than from runs minutes apart on a drifting machine.

An entry is a :class:`ReportModel`: a PyTorch model (amc's :class:`~amc.models.yolo.YOLOv7`) or an ONNX graph
written by ``amc-export``. Graphs carry their architecture in their metadata (``amc.architecture``), so their
parameters and GFLOPs are counted exactly like a PyTorch model's; an INT8 graph has the parameters and FLOPs of
the float model it quantizes (its weights are 8-bit, not fewer), and its row in ``report.json`` says where its
scales came from (``int8``: ``qat`` for a quantization-aware model's learned scales, else the calibration
method). A backend that cannot run an entry (PyTorch for an ONNX graph) is left empty in the table, never
estimated.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from amc.errors import ConfigError
from amc.eval.latency import DEFAULT_MAX_SPREAD, DEFAULT_WARMUP, Latency, latency_session, run_interleaved
from amc.export.onnx import OnnxDetector
from amc.models import load_model
from amc.models.arch import Architecture
from amc.models.flops import count_architecture

#: The columns of the report's latency part, in order.
REPORT_BACKENDS = ("torch-cpu", "onnxruntime-cpu", "torch-cuda")

#: Column headers of the latency backends (short: the table must fit a terminal).
BACKEND_HEADERS = {"torch-cpu": "torch CPU ms", "onnxruntime-cpu": "ORT CPU ms", "torch-cuda": "CUDA ms"}

#: Files a run directory of an amc command holds, by what the report looks for in it (first match wins).
RUN_DIR_MODELS = {"onnx": ("model.int8.onnx", "model.onnx"), "amc": ("best", "model")}


@dataclass
class ReportModel:
    """One entry of the report: a PyTorch model or an ONNX graph (``onnx`` set, ``model`` None) and its label."""

    label: str
    source: str
    model: nn.Module | None = None
    onnx: bytes | None = None

    @property
    def kind(self) -> str:
        return "onnx" if self.onnx is not None else "torch"


@dataclass
class ReportRow:
    """The measurements of one :class:`ReportModel` (latencies in ms, None where the backend cannot run it)."""

    label: str
    source: str
    kind: str
    map50_95: float
    map50: float
    params: int | None
    gflops: float | None
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    int8: str | None = None  # an INT8 graph's scales: "qat" (learned) or its calibration method; None: float
    latency_spread: dict[str, float | None] = field(default_factory=dict)  # IQR / median of each backend's passes
    max_spread: float = DEFAULT_MAX_SPREAD  # beyond it a timing is noise: no speed-up is computed from it

    def noisy(self, backend: str) -> bool:
        """Whether this row's timing on ``backend`` spreads too much to compare (unknown spread: not noisy)."""
        spread = self.latency_spread.get(backend)
        return spread is not None and spread > self.max_spread

    def speedup(self, reference: "ReportRow", backend: str) -> float | None:
        """How many times faster than ``reference`` on ``backend``; None when unknown or either timing is noise."""
        if self.noisy(backend) or reference.noisy(backend):
            return None
        return _ratio(reference.latency_ms.get(backend), self.latency_ms.get(backend))

    def to_dict(self, reference: "ReportRow | None" = None) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "source": self.source, "kind": self.kind,
                               "map50_95": self.map50_95, "map50": self.map50, "params": self.params,
                               "gflops": self.gflops, "latency_ms": dict(self.latency_ms), "int8": self.int8,
                               "latency_spread": dict(self.latency_spread),
                               "latency_noisy": {b: self.noisy(b) for b in self.latency_ms}}
        if reference is not None:
            out["vs_" + reference.label] = {
                "map50_95_delta": self.map50_95 - reference.map50_95,
                "params_ratio": _ratio(self.params, reference.params),
                "flops_ratio": _ratio(self.gflops, reference.gflops),
                "speedup": {b: self.speedup(reference, b) for b in self.latency_ms},
            }
        return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else float(a) / float(b)


# ----------------------------------------------------------------------------------------------- loading


def resolve_report_path(path: str | Path) -> tuple[str, Path]:
    """What a report entry's path designates: ``("onnx", file)`` or ``("amc", model source)``.

    Accepted: an ``.onnx`` file; an amc model folder, an official checkpoint or cfg (anything
    :func:`~amc.models.load_model` reads); or a run directory of amc-export (its ``model.int8.onnx``, else
    ``model.onnx``), amc-finetune (its ``best/``) or amc-search (its ``model/``).
    """
    p = Path(path).expanduser()
    if p.suffix == ".onnx":
        if not p.is_file():
            raise ConfigError(f"{p}: file not found")
        return "onnx", p
    if p.is_dir() and not (p / "architecture.yaml").is_file():
        for name in RUN_DIR_MODELS["onnx"]:
            if (p / name).is_file():
                return "onnx", p / name
        for name in RUN_DIR_MODELS["amc"]:
            if (p / name / "architecture.yaml").is_file():
                return "amc", p / name
        raise ConfigError(f"{p}: neither an amc model folder nor the run directory of amc-export (model.onnx), "
                          f"amc-finetune (best/) or amc-search (model/)")
    return "amc", p


def load_report_model(label: str, path: str | Path) -> ReportModel:
    """The :class:`ReportModel` of a path (see :func:`resolve_report_path`)."""
    kind, resolved = resolve_report_path(path)
    if kind == "onnx":
        return ReportModel(label, str(resolved), onnx=resolved.read_bytes())
    model, _ = load_model(str(resolved))
    return ReportModel(label, str(resolved), model=model.eval())


def onnx_int8(graph: bytes) -> str | None:
    """Where an INT8 graph written by amc-export took its scales: ``qat`` (a quantization-aware model's learned
    ones) or the calibration method; None for a float graph."""
    meta = {p.key: p.value for p in onnx.load_from_string(graph).metadata_props}
    return meta.get("amc.int8") or None


def onnx_cost(graph: bytes, img_size: int) -> tuple[int | None, float | None]:
    """Parameters and GFLOPs at ``img_size`` of a graph written by amc-export (None, None for other graphs)."""
    meta = {p.key: p.value for p in onnx.load_from_string(graph).metadata_props}
    if "amc.architecture" not in meta:
        return None, None
    arch = Architecture.from_dict(json.loads(meta["amc.architecture"]), source="ONNX metadata")
    cost = count_architecture(arch, img_size, fused=json.loads(meta.get("amc.fused", "true")))
    return cost.params, cost.gflops


# ----------------------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class LatencySettings:
    """How the report times the entries (see :func:`amc.eval.latency.run_interleaved`)."""

    backends: tuple[str, ...] = REPORT_BACKENDS
    threads: int | None = None
    batch_size: int = 1
    warmup: int | None = None
    runs: int = 30
    rounds: int = 5
    max_spread: float = DEFAULT_MAX_SPREAD  # a timing spreading more (IQR / median) is too noisy for a speed-up


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def measure_latencies(entries: Sequence[ReportModel], img_size: int, settings: LatencySettings,
                      cuda_device: str | torch.device | None = None) -> dict[str, dict[str, Latency | None]]:
    """label -> backend -> its :class:`Latency` (median and spread). Every backend times its entries
    interleaved; torch-cuda only with CUDA."""
    shape = (int(settings.batch_size), 3, int(img_size), int(img_size))
    out: dict[str, dict[str, Latency | None]] = {e.label: {} for e in entries}
    for backend in settings.backends:
        if backend == "torch-cuda" and not _cuda_available():
            continue  # "CUDA when present": the column is left out, and the report says so
        runnable = [e for e in entries if e.kind == "torch" or backend == "onnxruntime-cpu"]
        device = cuda_device if backend == "torch-cuda" else None
        with latency_session(backend, settings.threads, device) as session:
            timers = {e.label: session.onnx_timer(e.onnx, shape) if e.kind == "onnx" else session.timer(e.model, shape)
                      for e in runnable}
            warmup = DEFAULT_WARMUP[backend] if settings.warmup is None else int(settings.warmup)
            times = run_interleaved(timers, warmup, settings.runs, settings.rounds)
            threads = session.threads
        for e in entries:
            ms = times.get(e.label)
            out[e.label][backend] = Latency.of(ms, threads, backend) if ms else None
    return out


def deployment_report(entries: Sequence[ReportModel], evaluator: Any, img_size: int,
                      latency: LatencySettings, device: torch.device, fuse: bool = True,
                      onnx_threads: int | None = None) -> list[ReportRow]:
    """Measure every entry: mAP with ``evaluator`` (one :class:`~amc.eval.evaluator.DetectionEvaluator` for all),
    cost at ``img_size`` of the deployed form, and latency on each backend of ``latency``.

    PyTorch models are fused first when ``fuse`` (what is deployed; same outputs). ONNX graphs are scored through
    ONNX Runtime on the CPU, with amc's NMS, exactly like the PyTorch models.
    """
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"report entries need distinct labels, got {', '.join(labels)}")
    rows = []
    for e in entries:
        if e.model is not None:
            if fuse and not getattr(e.model, "fused", True):
                e.model.fuse()
            e.model = e.model.to(device).eval()
            result = evaluator(e.model)
            cost = e.model.cost(img_size)
            params, gflops = cost.params, cost.gflops
        else:
            result = evaluator(OnnxDetector(e.onnx, onnx_threads))
            params, gflops = onnx_cost(e.onnx, img_size)
        rows.append(ReportRow(e.label, e.source, e.kind, result.map50_95, result.map50, params, gflops,
                              int8=onnx_int8(e.onnx) if e.onnx is not None else None))
    # the latency timers copy a model to the backend's device when it is elsewhere
    latencies = measure_latencies(entries, img_size, latency, cuda_device=device if device.type == "cuda" else None)
    for row in rows:
        timed = latencies[row.label]
        row.latency_ms = {b: None if t is None else t.median_ms for b, t in timed.items()}
        row.latency_spread = {b: None if t is None else t.spread for b, t in timed.items()}
        row.max_spread = latency.max_spread
    return rows


# ----------------------------------------------------------------------------------------------- rendering


def report_columns(rows: Sequence[ReportRow]) -> list[str]:
    """The latency backends that at least one row has a figure for, in :data:`REPORT_BACKENDS` order."""
    present = {b for r in rows for b, ms in r.latency_ms.items() if ms is not None}
    return [b for b in REPORT_BACKENDS if b in present]


def report_table(rows: Sequence[ReportRow]) -> tuple[list[str], list[list[str]]]:
    """Column names and formatted cells; speed-ups and FLOPs / params ratios are relative to the first row."""
    backends = report_columns(rows)
    columns = ["model", "mAP50-95", "mAP50", "params M", "GFLOPs", *[BACKEND_HEADERS[b] for b in backends]]
    ref = rows[0] if rows else None
    table = []
    for r in rows:
        def rel(value: float | None, base: float | None, fmt: str, invert: bool = False) -> str:
            if value is None:
                return "-"
            text = format(value, fmt)
            ratio = _ratio(base, value) if invert else _ratio(value, base)
            return text if r is ref or ratio is None else f"{text} ({ratio:.2f}x)"

        table.append([r.label, f"{r.map50_95:.4f}", f"{r.map50:.4f}",
                      rel(None if r.params is None else r.params / 1e6, None if ref.params is None else ref.params / 1e6,
                          ".3f"),
                      rel(r.gflops, ref.gflops, ".2f"),
                      *[_latency_cell(r, ref, b) for b in backends]])
    return columns, table


def _latency_cell(row: ReportRow, ref: ReportRow, backend: str) -> str:
    """``12.34 ±4%`` (median, IQR / median), then ``(1.52x)`` against the first row, or ``(noisy)`` when either
    timing spreads too much for a speed-up."""
    ms = row.latency_ms.get(backend)
    if ms is None:
        return "-"
    spread = row.latency_spread.get(backend)
    text = f"{ms:.2f}" if spread is None else f"{ms:.2f} ±{spread:.0%}"
    if row is ref:
        return text
    ratio = row.speedup(ref, backend)
    if ratio is None:
        return f"{text} (noisy)" if row.noisy(backend) or ref.noisy(backend) else text
    return f"{text} ({ratio:.2f}x)"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table, numbers right-aligned."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    align = ["---"] + ["---:"] * (len(columns) - 1)
    return "\n".join([line(columns), line(align), *[line(r) for r in rows]]) + "\n"


def report_dict(rows: Sequence[ReportRow], context: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form: every row (with ratios to the first), plus ``context`` (data, sizes, settings, machine)."""
    ref = rows[0] if rows else None
    return {**context, "reference": ref.label if ref else None,
            "models": {r.label: r.to_dict(ref if r is not ref else None) for r in rows}}
