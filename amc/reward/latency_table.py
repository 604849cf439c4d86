"""A per-unit latency lookup table: measured once per device and input size, then any policy's latency in microseconds.

Measuring a physically pruned model at every step of the search costs a model build and tens of forward passes.
The table measures instead, once per (architecture, backend, device, input size, batch, threads), every
convolution block of the pruning space *standalone* (as deployed: the convolution with its folded bias and
activation, a RepConv as its one re-parameterized 3x3 convolution, the head's 1x1 output convolutions) on an
input of its real size, for a small grid of kept (input, output) channel counts. A policy's latency is then

    estimate(widths) = offset + scale * sum over blocks of bilinear_interpolation(block grid, kept in, kept out)

where a block's kept input channels are the sum of the kept widths of its input segments (a concat reads
several units). ``offset`` and ``scale`` account for what the standalone blocks do not explain: pooling,
concatenation, upsampling, the head's decoding, framework overhead, and the difference between a block run
alone and inside the graph (ONNX Runtime, for one, fuses and re-lays out a whole graph). After the blocks, the
full fused model and a *calibration* model (every unit at ``calibration_keep`` of its width) are timed
interleaved, and :class:`RestTerm` turns that into ``offset`` and ``scale``:

* ``proportional`` (default): ``offset = 0``, ``scale = full model / its blocks`` (the blocks' share stays);
* ``calibrated``: the line through both measured models;
* ``constant``: ``scale = 1``, ``offset = full model - its blocks`` (a fixed "rest" of the model).

In all three the estimate at full width equals the measured full model by construction; errors elsewhere are
what this model of the latency misses. :func:`validate_table` measures them on physically pruned models: for
yolov7-tiny at 320 and 640 px on a 2-core CPU (torch and ONNX Runtime, 1 and 2 threads, 8 policies at 30-70%
FLOPs each) the mean absolute error was 4-10% with ``proportional`` (max 21%), 6-24% with ``constant`` (max
67%), a good part of it the machine's own drift between building and validating.

Each block's grid is made monotone (the mean of its running-max and running-min envelopes), so measurement
noise never makes a narrower policy look slower; the estimate never grows when widths shrink.

Grid points are multiples of ``space.rounding.multiple`` from the narrowest reachable count (every unit at
``max_ratio``) to the full count, subsampled to at most ``grid`` points per dimension (both ends included).

Example::

    table = LatencyTable.load_or_build("tiny-640-cpu2.json", model, space, backend="torch-cpu", threads=2)
    ms = table.estimate(space.kept_channels(ratios))           # ~50 us for yolov7-tiny
    report = validate_table(table, model, space, [ratios_a, ratios_b])
    print(report.mean_abs_rel_error, report.max_abs_rel_error)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amc.atomic import atomic_write_json
from amc.console import ProgressLog, is_terminal, progress_settings
from amc.errors import ConfigError
from amc.eval.latency import (DEFAULT_MAX_SPREAD, DEFAULT_WARMUP, ONNX_OPSET, check_backend, compare_latency,
                              device_name, latency_session, run_interleaved)
from amc.models.yolo import YOLOv7
from amc.pruning.criteria import make_criterion
from amc.pruning.physical import prune_model

FORMAT = "amc-latency-table/1"

#: How the measured blocks become a model latency (see :class:`RestTerm`).
REST_KINDS = ("proportional", "calibrated", "constant")


# ------------------------------------------------------------------------------------------------ key
@dataclass(frozen=True)
class TableKey:
    """What a table's measurements are valid for; a table is refused where any field differs."""

    fingerprint: str
    backend: str
    img_size: tuple[int, int]
    batch_size: int
    threads: int
    device: str
    torch: str
    onnxruntime: str | None = None

    @classmethod
    def current(cls, space, backend: str = "torch-cpu", threads: int | None = None, batch_size: int = 1,
                device: str | torch.device | None = None) -> "TableKey":
        """The key a table for ``space`` measured here and now would have (``threads`` None: torch's setting)."""
        check_backend(backend)
        ort_version = None
        if backend == "onnxruntime-cpu":
            import onnxruntime

            ort_version = onnxruntime.__version__
        return cls(space.fingerprint, backend, (int(space.img_size[0]), int(space.img_size[1])), int(batch_size),
                   int(threads or torch.get_num_threads()), device_name(backend, device), torch.__version__,
                   ort_version)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["img_size"] = list(self.img_size)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TableKey":
        d = dict(d)
        d["img_size"] = tuple(int(x) for x in d["img_size"])
        return cls(**d)

    def differences(self, other: "TableKey") -> list[str]:
        """``field=mine (other: theirs)`` for every field that differs."""
        return [f"{k}={v} (needed: {getattr(other, k)})" for k, v in asdict(self).items()
                if (tuple(v) if isinstance(v, list) else v) != getattr(other, k)]


# ------------------------------------------------------------------------------------------------ blocks
@dataclass
class BlockEntry:
    """One timed block: where its channels come from, its geometry, and its measured grid.

    ``in_units`` maps unit index -> how many times its channels appear in the block's input (a concat of one
    unit's channels with pooled copies of them reads it several times); ``out_unit`` is -1 for fixed outputs.
    """

    path: str
    kind: str
    in_const: int
    in_units: dict[int, int]
    out_const: int
    out_unit: int
    input_hw: tuple[int, int]
    in_grid: list[int]
    out_grid: list[int]
    raw_ms: list[list[float]] = field(default_factory=list)  # measured medians [in point][out point]
    ms: list[list[float]] = field(default_factory=list)  # monotone version used by the estimate

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["in_units"] = [[u, c] for u, c in self.in_units.items()]
        d["input_hw"] = list(self.input_hw)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BlockEntry":
        d = dict(d)
        d["in_units"] = {int(u): int(c) for u, c in d["in_units"]}
        d["input_hw"] = tuple(int(x) for x in d["input_hw"])
        return cls(**d)


def monotone_grid(values: np.ndarray) -> np.ndarray:
    """The mean of the running-max envelope (from the smallest point up) and the running-min one (from the
    largest down) of a 2-D grid: non-decreasing along both axes, and equal to ``values`` where they already are."""
    v = np.asarray(values, dtype=np.float64)
    up = np.maximum.accumulate(np.maximum.accumulate(v, axis=0), axis=1)
    down = np.minimum.accumulate(np.minimum.accumulate(v[::-1, ::-1], axis=0), axis=1)[::-1, ::-1]
    return 0.5 * (up + down)


def grid_points(lo: int, hi: int, multiple: int, max_points: int) -> list[int]:
    """``lo``, ``lo + multiple``, ... up to ``hi`` (``hi`` included), subsampled evenly to ``max_points``."""
    lo, hi = int(lo), int(hi)
    if hi <= lo:
        return [hi]
    points = list(range(lo, hi, max(1, int(multiple)))) + [hi]
    if len(points) > max_points:
        idx = np.unique(np.round(np.linspace(0, len(points) - 1, max(2, int(max_points)))).astype(int))
        points = [points[i] for i in idx]
    return points


def _activation_nodes(act: nn.Module, x: str, y: str):
    """ONNX nodes computing ``act`` from tensor ``x`` into ``y`` (None if amc does not map this activation)."""
    from onnx import helper

    if isinstance(act, nn.Identity):
        return [helper.make_node("Identity", [x], [y])]
    if isinstance(act, nn.LeakyReLU):
        return [helper.make_node("LeakyRelu", [x], [y], alpha=float(act.negative_slope))]
    if isinstance(act, nn.ReLU):
        return [helper.make_node("Relu", [x], [y])]
    if isinstance(act, nn.SiLU):
        return [helper.make_node("Sigmoid", [x], [f"{x}_sig"]), helper.make_node("Mul", [x, f"{x}_sig"], [y])]
    if isinstance(act, nn.Sigmoid):
        return [helper.make_node("Sigmoid", [x], [y])]
    if isinstance(act, nn.Tanh):
        return [helper.make_node("Tanh", [x], [y])]
    if isinstance(act, nn.Hardswish):
        return [helper.make_node("HardSwish", [x], [y])]
    return None


def conv_block_onnx(conv: nn.Conv2d, act: nn.Module | None, input_shape: Sequence[int]) -> bytes | None:
    """A serialized ONNX model of ``act(conv(x))`` with ``conv``'s weights, for ``x`` of ``input_shape``.

    Built directly with ``onnx.helper`` (a few ms, where ``torch.onnx.export`` takes ~60 ms per block); None for an
    activation it does not map, which the caller then exports with torch.
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes = _activation_nodes(act if act is not None else nn.Identity(), "conv_out", "y")
    if nodes is None:
        return None
    weight = conv.weight.detach().float().cpu().numpy()
    bias = (conv.bias.detach().float().cpu().numpy() if conv.bias is not None
            else np.zeros(conv.out_channels, dtype=np.float32))
    pad_h, pad_w = conv.padding if isinstance(conv.padding, tuple) else (conv.padding, conv.padding)
    conv_node = helper.make_node("Conv", ["x", "W", "B"], ["conv_out"], kernel_shape=list(conv.kernel_size),
                                 strides=list(conv.stride), pads=[pad_h, pad_w, pad_h, pad_w],
                                 dilations=list(conv.dilation), group=int(conv.groups))
    graph = helper.make_graph(
        [conv_node, *nodes], "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [int(s) for s in input_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = 8  # readable by every onnxruntime amc supports
    return model.SerializeToString()


def _deployed_conv(module: nn.Module) -> tuple[nn.Conv2d, nn.Module | None]:
    """The convolution and activation a fused block runs."""
    if isinstance(module, nn.Conv2d):  # a head output convolution
        return module, None
    conv = getattr(module, "rbr_reparam", None) or getattr(module, "conv", None)
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"{type(module).__name__} is no fused Conv/RepConv block")
    return conv, module.act


def _block(conv: nn.Conv2d, act: nn.Module | None, c_in: int, c_out: int) -> nn.Module:
    """A fresh block with ``conv``'s geometry at ``c_in`` -> ``c_out`` channels (random weights, with bias)."""
    new = nn.Conv2d(c_in, c_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups=1, bias=True)
    return nn.Sequential(new, copy.deepcopy(act)) if act is not None and not isinstance(act, nn.Identity) else new


@dataclass
class RestTerm:
    """How the measured blocks become a model latency: ``estimate(w) = offset + scale * sum of blocks(w)``.

    Attributes:
        kind: ``proportional``: ``offset = 0``, ``scale = full_ms / blocks at full width`` (the blocks' share
            of the model stays the same); ``calibrated``: ``offset`` and ``scale`` through both the full model and
            the calibration model; ``constant``: ``scale = 1``, ``offset = full_ms - blocks at full width``.
            In all three the estimate at full width is the measured full model.
        calibration_widths, calibration_ms: the calibration model (unit widths) and its measured latency.
    """

    kind: str = "proportional"
    calibration_widths: list[int] | None = None
    calibration_ms: float | None = None


# ------------------------------------------------------------------------------------------------ table
class LatencyTable:
    """Measured latency of every conv block over a grid of kept channels, and a fast per-policy estimate.

    Build with :meth:`build` (or :meth:`load_or_build`), save with :meth:`save`, estimate with :meth:`estimate`.
    """

    def __init__(self, key: TableKey, n_units: int, entries: list[BlockEntry], full_ms: float,
                 rest: RestTerm | None = None, settings: Mapping[str, Any] | None = None,
                 build_s: float = 0.0) -> None:
        self.key, self.n_units, self.entries = key, int(n_units), entries
        self.full_ms = float(full_ms)
        self.rest = rest or RestTerm()
        if self.rest.kind not in REST_KINDS:
            raise ConfigError(f"latency table rest term {self.rest.kind!r} is unknown; choose one of "
                              f"{', '.join(REST_KINDS)}")
        self.settings = dict(settings or {})
        self.build_s = float(build_s)
        self._compile()

    def with_rest(self, kind: str) -> "LatencyTable":
        """The same measurements with another rest term (one of :data:`REST_KINDS`)."""
        return LatencyTable(self.key, self.n_units, self.entries, self.full_ms,
                            dataclasses.replace(self.rest, kind=kind), self.settings, self.build_s)

    # ------------------------------------------------------------------ estimate
    def _compile(self) -> None:
        """Padded numpy arrays for a vectorized estimate, and the rest term."""
        s, n = len(self.entries), self.n_units
        g = max(2, max((max(len(e.in_grid), len(e.out_grid)) for e in self.entries), default=2))
        self._in_const = np.array([e.in_const for e in self.entries], dtype=np.float64)
        self._out_const = np.array([e.out_const for e in self.entries], dtype=np.float64)
        self._in_mat = np.zeros((s, n))
        self._out_mat = np.zeros((s, n))
        self._in_grid = np.zeros((s, g))
        self._out_grid = np.zeros((s, g))
        self._ms = np.zeros((s, g, g))
        for r, e in enumerate(self.entries):
            for u, c in e.in_units.items():
                self._in_mat[r, u] += c
            if e.out_unit >= 0:
                self._out_mat[r, e.out_unit] = 1.0
            # Beyond the last real point the grid goes on by 1 channel a step with a constant value, so every row
            # has g strictly increasing points and interpolation needs no per-row lengths.
            self._in_grid[r] = _pad_grid(e.in_grid, g)
            self._out_grid[r] = _pad_grid(e.out_grid, g)
            ms = np.asarray(e.ms, dtype=np.float64)
            self._ms[r] = np.pad(ms, ((0, g - ms.shape[0]), (0, g - ms.shape[1])), mode="edge")
        self._rows = np.arange(s)
        full = self.full_widths
        self.blocks_full_ms = float(self.block_ms(full).sum()) if s else 0.0
        self.rest_ms = self.full_ms - self.blocks_full_ms  # the rest term at full width
        rest, bf = self.rest, self.blocks_full_ms
        self.scale, self.offset_ms = 1.0, self.rest_ms  # constant
        if rest.kind == "calibrated":
            if rest.calibration_widths is None or rest.calibration_ms is None:
                raise ConfigError("a calibrated rest term needs the calibration model measured with the table")
            bc = float(self.block_ms(np.asarray(rest.calibration_widths, dtype=np.float64)).sum())
            if bf > bc and self.full_ms > rest.calibration_ms:
                self.scale = (self.full_ms - rest.calibration_ms) / (bf - bc)
            elif bf > 0:  # the two models do not order: fall back to the proportional fit
                self.scale = self.full_ms / bf
            self.offset_ms = self.full_ms - self.scale * bf
        elif rest.kind == "proportional" and bf > 0:
            self.scale, self.offset_ms = self.full_ms / bf, 0.0

    @property
    def full_widths(self) -> np.ndarray:
        """Unit widths of the unpruned model (as recorded in the table)."""
        w = np.zeros(self.n_units, dtype=np.int64)
        for e in self.entries:
            if e.out_unit >= 0:
                w[e.out_unit] = e.out_grid[-1]
        return w

    def block_ms(self, widths: np.ndarray | Sequence[int]) -> np.ndarray:
        """Interpolated latency of every block (``widths``: one policy ``(units,)`` or a batch ``(B, units)``)."""
        w = np.asarray(widths, dtype=np.float64)
        if w.shape[-1] != self.n_units:
            raise ValueError(f"the latency table is for {self.n_units} units, got widths of shape {w.shape}")
        x = w @ self._in_mat.T + self._in_const  # (..., S) kept input channels per block
        y = w @ self._out_mat.T + self._out_const
        i, fx = _locate(self._in_grid, x)
        j, fy = _locate(self._out_grid, y)
        r = self._rows
        ms = self._ms
        return ((1 - fx) * (1 - fy) * ms[r, i, j] + fx * (1 - fy) * ms[r, i + 1, j]
                + (1 - fx) * fy * ms[r, i, j + 1] + fx * fy * ms[r, i + 1, j + 1])

    def estimate(self, widths: np.ndarray | Sequence[int]) -> float:
        """Estimated latency in ms of the model whose units keep ``widths`` channels (``space.kept_channels``)."""
        return self.offset_ms + self.scale * float(self.block_ms(widths).sum())

    def estimate_batch(self, widths: np.ndarray) -> np.ndarray:
        """:meth:`estimate` of each row of a ``(B, units)`` array of widths."""
        return self.offset_ms + self.scale * self.block_ms(np.atleast_2d(widths)).sum(axis=-1)

    def breakdown(self, widths: np.ndarray | Sequence[int]) -> dict[str, float]:
        """Estimated ms per block path (measured, times :attr:`scale`), plus the ``offset``; they sum to the estimate."""
        return {**{e.path: self.scale * float(v) for e, v in zip(self.entries, self.block_ms(widths))},
                "offset": self.offset_ms}

    # ------------------------------------------------------------------ key checks
    def check(self, expected: TableKey) -> None:
        """Raise :class:`ConfigError` unless this table's key equals ``expected``."""
        diff = self.key.differences(expected)
        if diff:
            raise ConfigError(f"latency table does not fit this run: it was measured with {', '.join(diff)}; "
                              f"rebuild it (delete the file) for this model, device and settings")

    def check_space(self, space) -> None:
        """Raise :class:`ConfigError` unless the table was built for ``space``'s architecture and image size."""
        if self.key.fingerprint != space.fingerprint or tuple(self.key.img_size) != tuple(space.img_size):
            raise ConfigError(f"latency table was built for model {self.key.fingerprint} at "
                              f"{self.key.img_size[0]}x{self.key.img_size[1]}, not for {space.fingerprint} at "
                              f"{space.img_size[0]}x{space.img_size[1]}: rebuild it for this model and size")
        if self.n_units != space.n_units:
            raise ConfigError(f"latency table has {self.n_units} units, the pruning space {space.n_units}")

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": self.key.to_dict(), "n_units": self.n_units, "full_ms": self.full_ms,
                "rest_ms": self.rest_ms, "rest": asdict(self.rest), "build_s": self.build_s, "settings": self.settings,
                "blocks": [e.to_dict() for e in self.entries]}

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON, atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, expected: TableKey | None = None) -> "LatencyTable":
        """Read a table; with ``expected``, refuse (:class:`ConfigError`) one measured for anything else."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            table = cls(TableKey.from_dict(data["key"]), data["n_units"],
                        [BlockEntry.from_dict(b) for b in data["blocks"]], data["full_ms"],
                        RestTerm(**data["rest"]), data.get("settings"), data.get("build_s", 0.0))
        except FileNotFoundError:
            raise ConfigError(f"latency table {path} does not exist") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"latency table {path} is unreadable ({type(e).__name__}: {e}); rebuild it") from None
        if expected is not None:
            try:
                table.check(expected)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
        return table

    @classmethod
    def load_or_build(cls, path: str | Path, model: nn.Module, space, backend: str = "torch-cpu",
                      threads: int | None = None, batch_size: int = 1, device: str | torch.device | None = None,
                      **build_options: Any) -> "LatencyTable":
        """The table at ``path`` if it exists (and fits, else :class:`ConfigError`), else build it and save it."""
        path = Path(path)
        if path.exists():
            return cls.load(path, TableKey.current(space, backend, threads, batch_size, device))
        table = cls.build(model, space, backend, threads, batch_size, device, **build_options)
        table.save(path)
        return table

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, model: nn.Module, space, backend: str = "torch-cpu", threads: int | None = None,
              batch_size: int = 1, device: str | torch.device | None = None, grid: int = 4,
              warmup: int | None = None, runs: int = 8, rounds: int | None = None, full_runs: int = 20,
              full_rounds: int = 5, rest: str = "proportional", calibration_keep: float = 0.5,
              progress: bool = True) -> "LatencyTable":
        """Measure the table for ``model`` (unfused or fused) and its pruning ``space``, at ``space.img_size``.

        Args:
            model: the model ``space`` was built from (a fused copy is measured; ``model`` is not changed).
            space: its :class:`~amc.pruning.space.PruningSpace`.
            backend, threads, batch_size, device: where and how to measure (see :mod:`amc.eval.latency`).
            grid: at most this many kept-channel points per dimension and block (>= 2).
            warmup, runs, rounds: per grid point: untimed passes (None: the backend's default), timed passes
                (the median is kept) and rounds in which the block's grid points take turns (None: ``runs``,
                one pass per point and round, so a stall of the machine hits few passes of any one point).
            full_runs, full_rounds: timed passes of the full fused model and of the calibration model, taken
                interleaved after the blocks (as :func:`~amc.eval.latency.compare_latency` does).
            rest: how blocks become a model latency (:class:`RestTerm`): ``proportional`` (default),
                ``calibrated`` or ``constant``; :meth:`with_rest` switches later (all are measured anyway).
            calibration_keep: the calibration model keeps this fraction of every unit (rounded as the space says).
            progress: show a progress bar.

        Raises:
            ConfigError: bad backend / device, ``model`` not matching ``space``, ``grid`` < 2.
        """
        if rest not in REST_KINDS:
            raise ConfigError(f"latency table rest term {rest!r} is unknown; choose one of {', '.join(REST_KINDS)}")
        if int(grid) < 2:
            raise ConfigError(f"latency table grid must have at least 2 points per dimension, got {grid}")
        if int(runs) < 1 or int(full_runs) < 1:
            raise ConfigError(f"latency table needs runs >= 1 and full_runs >= 1, got {runs} and {full_runs}")
        if model.arch.to_dict() != space.arch.to_dict():
            raise ConfigError("the latency table's model is not the one the pruning space was built from")
        key = TableKey.current(space, backend, threads, batch_size, device)
        warmup = DEFAULT_WARMUP[backend] if warmup is None else int(warmup)
        rounds = int(runs) if rounds is None else int(rounds)
        started = time.perf_counter()
        fused = copy.deepcopy(model).float().cpu().eval()
        fused.fuse()
        shape = (int(batch_size), 3, *space.img_size)
        plans = _block_plans(fused, space, shape)
        full_widths, min_widths = space.full_widths, space.min_widths
        for plan in plans:
            e = plan["entry"]
            lo = e.in_const + sum(c * int(min_widths[u]) for u, c in e.in_units.items())
            e.in_grid = grid_points(lo, e.in_const + sum(c * int(full_widths[u]) for u, c in e.in_units.items()),
                                    space.rounding.multiple, grid)
            e.out_grid = ([e.out_const] if e.out_unit < 0 else
                          grid_points(int(min_widths[e.out_unit]), int(full_widths[e.out_unit]),
                                      space.rounding.multiple, grid))
        calib_widths = space.round_widths(full_widths * float(calibration_keep))
        calib = YOLOv7(space.pruned_architecture(calib_widths), model.names).eval().fuse()
        with latency_session(backend, threads, device) as session:
            with _progress(progress, len(plans), f"latency table ({backend}, {shape[2]}x{shape[3]})") as advance:
                for plan in plans:
                    _measure_block(session, plan, warmup, runs, rounds)
                    advance()
            timers = {"full": session.timer(fused, shape), "calibration": session.timer(calib, shape)}
            times = run_interleaved(timers, warmup, full_runs, full_rounds)
        rest_term = RestTerm(rest, [int(w) for w in calib_widths], float(np.median(times["calibration"])))
        settings = {"grid": int(grid), "warmup": warmup, "runs": int(runs), "rounds": int(rounds),
                    "full_runs": int(full_runs), "full_rounds": int(full_rounds),
                    "calibration_keep": float(calibration_keep), "multiple": space.rounding.multiple,
                    "min_channels": space.rounding.min_channels, "max_ratio": space.rounding.max_ratio}
        table = cls(key, space.n_units, [p["entry"] for p in plans], float(np.median(times["full"])), rest_term,
                    settings, time.perf_counter() - started)
        if table.blocks_full_ms > 2 * table.full_ms:  # standalone blocks may cost somewhat more than in a graph
            warnings.warn(f"latency table: the blocks alone take {table.blocks_full_ms:.1f} ms, the whole model "
                          f"{table.full_ms:.1f} ms; the machine was probably busy while blocks were timed (a "
                          f"table's figures are only as good as a quiet machine): consider rebuilding it",
                          RuntimeWarning, stacklevel=2)
        return table


def _pad_grid(points: Sequence[int], g: int) -> np.ndarray:
    p = [float(x) for x in points]
    while len(p) < g:
        p.append(p[-1] + 1.0)
    return np.asarray(p)


def _locate(grid: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``grid`` (strictly increasing), the cell index of ``x`` and the fraction within it (clamped)."""
    g = grid.shape[1]
    i = np.clip((grid <= x[..., None]).sum(axis=-1) - 1, 0, g - 2)
    rows = np.arange(grid.shape[0])
    lo, hi = grid[rows, i], grid[rows, i + 1]
    return i, np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def _block_plans(fused: nn.Module, space, shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """For every block the fused model runs in eval mode: its entry (without grids), conv, activation, input size."""
    wanted: list[tuple[str, str, Any, Any]] = [(s.path, s.kind, s.inputs, s.slot) for s in space.sites]
    wanted += [(h.conv_path, "head", h.inputs, None) for h in space.head_inputs]
    seen: dict[str, tuple[int, ...]] = {}

    def recorder(path: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            seen.setdefault(path, tuple(args[0].shape))
        return hook

    hooks = []
    modules = {}
    for path, *_ in wanted:
        conv, act = _deployed_conv(fused.get_submodule(path))
        modules[path] = (conv, act)
        hooks.append(conv.register_forward_pre_hook(recorder(path)))
    try:
        with torch.inference_mode():
            fused(torch.zeros(shape))
    finally:
        for h in hooks:
            h.remove()
    plans = []
    for path, kind, inputs, slot in wanted:
        if path not in seen:  # e.g. auxiliary heads, which eval mode skips: they cost nothing deployed
            continue
        conv, act = modules[path]
        in_const, in_units = 0, {}
        for seg_slot, channels in inputs:
            u = space.slot_unit.get(seg_slot, -1)
            if u < 0:
                in_const += int(channels)
            else:
                in_units[u] = in_units.get(u, 0) + 1
        u_out = -1 if slot is None else space.slot_unit.get(slot, -1)
        out_const = conv.out_channels if u_out < 0 else 0
        if conv.groups != 1:
            raise ConfigError(f"{path}: grouped convolutions are fixed slots and cannot be conv sites")
        entry = BlockEntry(path, kind, in_const, in_units, out_const, u_out, tuple(seen[path][2:]), [], [])
        plans.append({"entry": entry, "conv": conv, "act": act, "batch": seen[path][0]})
    return plans


def _measure_block(session, plan: dict[str, Any], warmup: int, runs: int, rounds: int) -> None:
    """Time the block at every grid point, interleaved; fill the entry's raw and monotone grids."""
    e, conv, act = plan["entry"], plan["conv"], plan["act"]
    timers = {}
    try:
        for a, c_in in enumerate(e.in_grid):
            for b, c_out in enumerate(e.out_grid):
                shape = (plan["batch"], c_in, *e.input_hw)
                block = _block(conv, act, c_in, c_out)
                payload = None
                if session.backend == "onnxruntime-cpu":
                    first = block[0] if isinstance(block, nn.Sequential) else block
                    payload = conv_block_onnx(first, block[1] if isinstance(block, nn.Sequential) else None, shape)
                if payload is not None:
                    timers[(a, b)] = session.onnx_timer(payload, shape)
                else:
                    timers[(a, b)] = session.timer(block.to(session.device), shape)
        times = run_interleaved(timers, warmup, runs, rounds)
    finally:
        for t in timers.values():
            t.close()
    raw = np.zeros((len(e.in_grid), len(e.out_grid)))
    for (a, b), t in times.items():
        raw[a, b] = float(np.median(t))
    e.raw_ms = raw.tolist()
    e.ms = monotone_grid(raw).tolist()


class _progress:
    """A rich progress bar on a terminal, plain lines into a file or pipe (every ``progress_heartbeat_s``: a table
    times hundreds of blocks), or nothing; as a context manager yielding ``advance()``."""

    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self.enabled, self.total, self.description = enabled, total, description
        self._bar = None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        if not is_terminal():
            lines = ProgressLog(f"{self.description}: block", self.total, interval_s=progress_settings.heartbeat_s)
            done = iter(range(1, self.total + 1))
            return lambda: lines.update(next(done, self.total))
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), transient=True)
        self._bar.__enter__()
        task = self._bar.add_task(self.description, total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


# ------------------------------------------------------------------------------------------------ validation
@dataclass(frozen=True)
class ValidationRow:
    """One physically pruned model: the table's estimate against its measured latency."""

    name: str
    flops_ratio: float  # fused MACs kept
    estimated_ms: float
    measured_ms: float
    measured_spread: float | None = None  # interquartile range / median of the timed passes (None: unknown)

    def noisy(self, max_spread: float = DEFAULT_MAX_SPREAD) -> bool:
        """Whether the measurement spread past ``max_spread``: its error then says more about the machine than
        about the table."""
        return self.measured_spread is None or self.measured_spread > max_spread

    @property
    def rel_error(self) -> float:
        """(estimated - measured) / measured."""
        return (self.estimated_ms - self.measured_ms) / self.measured_ms


@dataclass(frozen=True)
class TableValidation:
    """How far a table's estimates are from measured latencies of physically pruned models.

    ``reference`` is the unpruned model timed along with them: its error is the machine's drift since the table
    was built (the estimate equals the build-time measurement there). The ``scaled`` errors remove that drift by
    scaling every estimate with ``reference.measured_ms / reference.estimated_ms``; they measure how well the
    table predicts latency *ratios* (what a search compares).
    """

    rows: list[ValidationRow]
    reference: ValidationRow

    @property
    def errors(self) -> np.ndarray:
        return np.array([r.rel_error for r in self.rows])

    @property
    def scaled_errors(self) -> np.ndarray:
        drift = self.reference.measured_ms / self.reference.estimated_ms
        return np.array([(r.estimated_ms * drift - r.measured_ms) / r.measured_ms for r in self.rows])

    @property
    def mean_abs_rel_error(self) -> float:
        return float(np.abs(self.errors).mean()) if self.rows else float("nan")

    @property
    def max_abs_rel_error(self) -> float:
        return float(np.abs(self.errors).max()) if self.rows else float("nan")

    @property
    def mean_abs_scaled_error(self) -> float:
        return float(np.abs(self.scaled_errors).mean()) if self.rows else float("nan")

    @property
    def max_abs_scaled_error(self) -> float:
        return float(np.abs(self.scaled_errors).max()) if self.rows else float("nan")

    def noisy(self, max_spread: float = DEFAULT_MAX_SPREAD) -> list[str]:
        """The models (reference included) whose measurement spread past ``max_spread``."""
        return [r.name for r in (*self.rows, self.reference) if r.noisy(max_spread)]

    def to_dict(self) -> dict[str, Any]:
        def row(r: ValidationRow) -> dict[str, Any]:
            return {**asdict(r), "rel_error": r.rel_error}

        return {"reference": row(self.reference), "rows": [row(r) for r in self.rows],
                "mean_abs_rel_error": self.mean_abs_rel_error, "max_abs_rel_error": self.max_abs_rel_error,
                "mean_abs_scaled_error": self.mean_abs_scaled_error,
                "max_abs_scaled_error": self.max_abs_scaled_error}


def validate_table(table: LatencyTable, model: nn.Module, space, policies: Sequence[Sequence[float]] |
                   Mapping[str, Sequence[float]], criterion: Any = "l1", warmup: int | None = None, runs: int = 20,
                   rounds: int = 5, device: str | torch.device | None = None) -> TableValidation:
    """Physically prune ``model`` by each policy, fuse, measure (interleaved, with the table's backend, threads and
    batch) and compare with the table's estimates.

    Args:
        table: a table built for ``space``.
        model: the unfused model ``space`` was built from (not modified).
        space: its pruning space.
        policies: sparsity ratios per unit (a list, named ``policy0`` ..., or a ``{name: ratios}`` mapping).
        criterion: which channels stay: a criterion name (one that needs no data, e.g. ``l1``) or a prepared
            :class:`~amc.pruning.criteria.Criterion`. Latency does not depend on the choice.
        warmup, runs, rounds, device: as in :func:`~amc.eval.latency.compare_latency`.
    """
    table.check_space(space)
    named = dict(policies) if isinstance(policies, Mapping) else {f"policy{i}": p for i, p in enumerate(policies)}
    if "unpruned" in named:
        raise ConfigError("policy name 'unpruned' is reserved for the reference model")
    if isinstance(criterion, str):
        criterion_obj = make_criterion(criterion, seed=0)
        criterion_obj.prepare(model, space, None)
    else:
        criterion_obj = criterion
    full_macs = space.cost(space.full_widths, fused=True).macs
    models = {"unpruned": copy.deepcopy(model).eval().fuse()}
    widths, ratios = {}, {}
    for name, policy in named.items():
        widths[name] = space.kept_channels(policy)
        ratios[name] = space.cost(widths[name], fused=True).macs / full_macs
        models[name] = prune_model(model, space, criterion_obj.select(widths[name])).eval().fuse()
    key = table.key
    measured = compare_latency(models, key.img_size, key.backend, key.batch_size, key.threads, warmup, runs, rounds,
                               device)
    reference = ValidationRow("unpruned", 1.0, table.estimate(space.full_widths), measured["unpruned"].median_ms,
                              measured["unpruned"].spread)
    rows = [ValidationRow(name, ratios[name], table.estimate(widths[name]), measured[name].median_ms,
                          measured[name].spread) for name in named]
    return TableValidation(rows, reference)
