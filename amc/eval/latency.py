"""Wall-clock latency of models where they will run: PyTorch on the CPU or a CUDA GPU, and ONNX Runtime on the CPU.

Every figure is the median of timed forward passes after untimed warm-up passes, on a zero input batch:

==================  ======================================================================================
backend             how one pass is timed
==================  ======================================================================================
``torch-cpu``       ``time.perf_counter`` around ``model(x)`` (inference mode, ``torch.set_num_threads``)
``torch-cuda``      a pair of ``torch.cuda.Event(enable_timing=True)`` recorded around ``model(x)`` on the
                    current stream, then ``end.synchronize()``: GPU time of the pass, not the Python overhead
                    of waiting for it
``onnxruntime-cpu`` ``time.perf_counter`` around ``InferenceSession.run`` of the model exported with
                    ``torch.onnx.export`` (opset 17, TorchScript exporter), CPUExecutionProvider,
                    ``intra_op_num_threads=threads``, all graph optimizations
==================  ======================================================================================

On a shared or virtualized CPU the speed of the machine drifts during a benchmark. Comparing models timed one
after the other then mixes the drift into the ratio, so :func:`compare_latency` interleaves them: every round
times each model in turn, and each model's figure is the median over all its runs.

Models are timed as given: pass fused models (``model.fuse()``) to time what is deployed. Every model is put in
eval mode while timed and its mode is restored afterwards, as is torch's CPU thread count. A model is never
moved: when it is not on the backend's device a copy is timed.

Lower-level use (the per-unit latency table times thousands of small blocks this way)::

    with latency_session("torch-cpu", threads=2) as session:
        timers = {name: session.timer(m, (1, 3, 640, 640)) for name, m in models.items()}
        times = run_interleaved(timers, warmup=3, runs=20, rounds=5)   # name -> list of ms
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from amc.errors import ConfigError
from amc.export.onnx import ONNX_OPSET, torch_to_onnx

#: Backends :func:`measure_latency` and :func:`compare_latency` know.
BACKENDS = ("torch-cpu", "torch-cuda", "onnxruntime-cpu")

#: Untimed passes per model when ``warmup`` is not given (CUDA needs more: cuDNN picks its kernels, clocks rise).
DEFAULT_WARMUP = {"torch-cpu": 3, "torch-cuda": 10, "onnxruntime-cpu": 3}


#: Relative spread (IQR / median) above which a latency is too noisy to trust when nobody says otherwise; the
#: commands read theirs from conf (``final.max_latency_spread`` of conf/search.yaml, ``max_latency_spread`` of
#: conf/bench.yaml). On an idle CPU repeated passes of one model spread by a few percent; a busy machine spreads
#: them by tens of percent, and then a ratio of two medians is noise (0.15x for a model with 70% of the FLOPs).
DEFAULT_MAX_SPREAD = 0.2


@dataclass(frozen=True)
class Latency:
    """Median and spread of ``runs`` timed forward passes, in milliseconds.

    ``threads`` is the CPU thread count during the measurement (torch's for the torch backends, ONNX Runtime's
    intra-op threads for ``onnxruntime-cpu``). ``q1_ms`` and ``q3_ms`` are the first and third quartiles of the
    passes (None when built without them): their distance, the interquartile range, is the spread a reader needs
    before trusting a ratio of two medians (:attr:`spread`, :meth:`noisy`).
    """

    median_ms: float
    min_ms: float
    max_ms: float
    runs: int
    threads: int
    backend: str = "torch-cpu"
    q1_ms: float | None = None
    q3_ms: float | None = None

    @classmethod
    def of(cls, times: Sequence[float], threads: int, backend: str = "torch-cpu") -> "Latency":
        """The figures of the pass times ``times`` (ms)."""
        q1, q3 = quartiles(times)
        return cls(statistics.median(times), min(times), max(times), len(times), threads, backend, q1, q3)

    @property
    def iqr_ms(self) -> float | None:
        """The interquartile range of the passes, ms (None when unknown)."""
        return None if self.q1_ms is None or self.q3_ms is None else self.q3_ms - self.q1_ms

    @property
    def spread(self) -> float | None:
        """The interquartile range relative to the median (0.05: the middle half of the passes within 5% of the
        median's size); None when unknown."""
        iqr = self.iqr_ms
        return None if iqr is None or self.median_ms <= 0 else iqr / self.median_ms

    def noisy(self, max_spread: float = DEFAULT_MAX_SPREAD) -> bool:
        """Whether the passes spread more than ``max_spread`` (relative IQR): the median is then not to be trusted,
        nor any speed-up computed from it. Fewer than 4 passes have no quartiles worth the name: noisy."""
        spread = self.spread
        return self.runs < 4 or spread is None or spread > max_spread

    def to_dict(self) -> dict[str, float | int | str | None]:
        """Plain figures for ``metrics.json``: median, quartiles, IQR, relative spread, min, max, runs."""
        return {"median_ms": self.median_ms, "q1_ms": self.q1_ms, "q3_ms": self.q3_ms, "iqr_ms": self.iqr_ms,
                "spread": self.spread, "min_ms": self.min_ms, "max_ms": self.max_ms, "runs": self.runs,
                "threads": self.threads, "backend": self.backend}


def quartiles(times: Sequence[float]) -> tuple[float, float]:
    """First and third quartiles of ``times`` (inclusive method: within the range of the data; one value gives
    itself twice)."""
    values = [float(t) for t in times]
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def spread_text(latency: Latency | None) -> str:
    """A table cell for a latency's spread: the interquartile range as a fraction of the median (``4%``, the figure
    the noise threshold applies to), ``-`` when unknown."""
    spread = None if latency is None else latency.spread
    return "-" if spread is None else f"{spread:.0%}"


def speedup(reference: Latency, other: Latency, max_spread: float = DEFAULT_MAX_SPREAD) -> float | None:
    """How many times faster ``other`` is than ``reference`` (ratio of medians), or None when either measurement
    is too noisy (:meth:`Latency.noisy`) for the ratio to mean anything."""
    if reference.noisy(max_spread) or other.noisy(max_spread) or other.median_ms <= 0:
        return None
    return reference.median_ms / other.median_ms


def check_backend(backend: str) -> str:
    """``backend`` if amc knows it, else a :class:`ConfigError` listing the valid ones."""
    if backend not in BACKENDS:
        raise ConfigError(f"latency backend {backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
    return backend


def resolve_device(backend: str, device: str | torch.device | None = None) -> torch.device:
    """The torch device a backend runs on; :class:`ConfigError` when it is unavailable or does not fit."""
    check_backend(backend)
    if backend != "torch-cuda":
        if device is not None and torch.device(device).type != "cpu":
            raise ConfigError(f"latency backend {backend} runs on the CPU, got device={device}")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("latency backend torch-cuda needs a CUDA GPU, but torch.cuda.is_available() is False "
                          "here: use backend torch-cpu or onnxruntime-cpu")
    try:
        dev = torch.device("cuda" if device is None else device)
    except RuntimeError:
        raise ConfigError(f"device={device!r} is not a torch device: use cuda or cuda:N") from None
    if dev.type != "cuda":
        raise ConfigError(f"latency backend torch-cuda runs on a CUDA device, got device={device}")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if not 0 <= index < torch.cuda.device_count():
        raise ConfigError(f"device={device}: there are only {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", index)


def device_name(backend: str, device: str | torch.device | None = None) -> str:
    """A readable name of the processor a backend runs on (GPU name, or the CPU model)."""
    dev = resolve_device(backend, device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return _cpu_name()


def _cpu_name() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


class Timer:
    """One prepared model on one backend; calling it runs one pass and returns its time in milliseconds."""

    def __init__(self, run: Callable[[], float], close: Callable[[], None] = lambda: None) -> None:
        self._run, self._close = run, close

    def __call__(self) -> float:
        return self._run()

    def close(self) -> None:
        """Release the backend's resources (an ONNX Runtime session, a device copy) and restore the model mode."""
        close, self._close = self._close, lambda: None
        close()


class LatencySession:
    """The state of one backend during a series of measurements (see :func:`latency_session`)."""

    def __init__(self, backend: str, threads: int, device: torch.device) -> None:
        self.backend, self.threads, self.device = backend, threads, device
        self._timers: list[Timer] = []
        self._tmp: tempfile.TemporaryDirectory | None = None

    # ------------------------------------------------------------------ timers
    def timer(self, model: nn.Module, input_shape: Sequence[int]) -> Timer:
        """A timer of ``model`` (put in eval mode until the timer closes) on a zero input of ``input_shape``."""
        shape = tuple(int(s) for s in input_shape)
        modes = [(m, m.training) for m in model.modules()]  # per module: a mixed state comes back as it was
        model.eval()

        def restore() -> None:
            for m, training in modes:
                m.training = training

        try:
            if self.backend == "onnxruntime-cpu":
                timer = self._onnx_timer(self._export(model, shape), shape, restore)
            else:
                timer = self._torch_timer(model, shape, restore)
        except BaseException:
            restore()
            raise
        self._timers.append(timer)
        return timer

    def onnx_timer(self, model: bytes | str | Path, input_shape: Sequence[int]) -> Timer:
        """A timer of an ONNX model (serialized bytes or a file) with one float input (``onnxruntime-cpu`` only)."""
        if self.backend != "onnxruntime-cpu":
            raise ConfigError(f"an ONNX model can only be timed with backend onnxruntime-cpu, not {self.backend}")
        timer = self._onnx_timer(model if isinstance(model, bytes) else str(model), tuple(input_shape), None)
        self._timers.append(timer)
        return timer

    def _torch_timer(self, model: nn.Module, shape: tuple[int, ...], restore: Callable[[], None]) -> Timer:
        dev = self.device
        m = model if _model_device(model) == dev else copy.deepcopy(model).to(dev).eval()
        x = torch.zeros(shape, device=dev)
        if dev.type == "cpu":
            def run() -> float:
                t0 = time.perf_counter()
                m(x)
                return (time.perf_counter() - t0) * 1e3
        else:
            stream = torch.cuda.current_stream(dev)

            def run() -> float:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record(stream)
                m(x)
                end.record(stream)
                end.synchronize()
                return start.elapsed_time(end)

        def close() -> None:
            nonlocal m, x
            m = x = None  # type: ignore[assignment]
            restore()

        return Timer(run, close)

    def _export(self, model: nn.Module, shape: tuple[int, ...]) -> str:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="amc-latency-")
        path = Path(self._tmp.name) / f"model{len(self._timers)}.onnx"
        cpu_model = model if _model_device(model).type == "cpu" else copy.deepcopy(model).cpu()
        torch_to_onnx(cpu_model, shape, path, ONNX_OPSET)  # amc's one export path (amc.export.onnx)
        return str(path)

    def _onnx_timer(self, model: bytes | str, shape: tuple[int, ...], restore: Callable[[], None] | None) -> Timer:
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle worker threads of one session must not spin while another session (interleaved) is timed.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        if isinstance(model, str) and self._tmp is not None and model.startswith(self._tmp.name):
            Path(model).unlink(missing_ok=True)  # the session holds the graph now
        feeds = {session.get_inputs()[0].name: np.zeros(shape, dtype=np.float32)}

        def run() -> float:
            t0 = time.perf_counter()
            session.run(None, feeds)
            return (time.perf_counter() - t0) * 1e3

        def close() -> None:
            nonlocal session
            session = None  # type: ignore[assignment]
            if restore is not None:
                restore()

        return Timer(run, close)

    def close(self) -> None:
        for timer in self._timers:
            timer.close()
        self._timers.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


@contextmanager
def latency_session(backend: str = "torch-cpu", threads: int | None = None,
                    device: str | torch.device | None = None) -> Iterator[LatencySession]:
    """Set a backend up for measurements: checks it, sets torch's CPU threads; restores everything on exit.

    Args:
        backend: one of :data:`BACKENDS`.
        threads: CPU threads (torch's, and ONNX Runtime's intra-op threads); None keeps torch's current setting.
        device: the CUDA device for ``torch-cuda`` (default: the current one); must be None or cpu otherwise.

    Raises:
        ConfigError: unknown backend, CUDA unavailable, a device that does not fit the backend.
    """
    check_backend(backend)
    if threads is not None and int(threads) < 1:
        raise ConfigError(f"latency threads must be >= 1, got {threads}")
    dev = resolve_device(backend, device)
    if backend == "onnxruntime-cpu":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError("latency backend onnxruntime-cpu needs the onnxruntime package "
                              "(pip install onnxruntime)") from None
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads or previous))
    session = LatencySession(backend, torch.get_num_threads(), dev)
    try:
        if dev.type == "cuda":
            with torch.cuda.device(dev):
                yield session
        else:
            yield session
    finally:
        session.close()
        torch.set_num_threads(previous)


def run_interleaved(timers: Mapping[str, Callable[[], float]], warmup: int, runs: int,
                    rounds: int = 1) -> dict[str, list[float]]:
    """Warm every timer up, then time them in turn, ``rounds`` times; returns each timer's times in ms.

    ``runs`` is the number of timed passes per timer in total (spread over the rounds, at least one per round;
    ``runs <= 0`` only warms up). CUDA work is synchronized before timing starts.
    """
    per_round = max(1, -(-int(runs) // max(1, int(rounds))))  # ceil
    times: dict[str, list[float]] = {name: [] for name in timers}
    with torch.inference_mode():
        for timer in timers.values():
            for _ in range(max(0, int(warmup))):
                timer()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        for _ in range(max(1, int(rounds)) if int(runs) > 0 else 0):
            for name, timer in timers.items():
                times[name] += [timer() for _ in range(per_round)]
    return times


def compare_latency(models: Mapping[str, nn.Module], img_size: tuple[int, int] | int, backend: str = "torch-cpu",
                    batch_size: int = 1, threads: int | None = None, warmup: int | None = None, runs: int = 20,
                    rounds: int = 5, device: str | torch.device | None = None) -> dict[str, Latency]:
    """Latency of several models on a zero image batch, interleaved round by round.

    Args:
        models: name -> model (e.g. the fused unpruned and pruned models); timed in eval mode, mode restored.
        img_size: (height, width) of the input, or one int for a square.
        backend: ``torch-cpu``, ``torch-cuda`` or ``onnxruntime-cpu`` (see the module docstring).
        batch_size: images per forward pass.
        threads: CPU threads during the measurement (restored afterwards); None keeps torch's setting.
        warmup: untimed passes per model before timing (None: :data:`DEFAULT_WARMUP` of the backend).
        runs: timed passes per model in total, spread over ``rounds``.
        rounds: how many times the models take turns.
        device: CUDA device for ``torch-cuda`` (default: the current one).

    Raises:
        ConfigError: unknown backend, or ``torch-cuda`` without a CUDA GPU.
    """
    hw = (int(img_size), int(img_size)) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
    shape = (int(batch_size), 3, *hw)
    with latency_session(backend, threads, device) as session:
        timers = {name: session.timer(m, shape) for name, m in models.items()}
        times = run_interleaved(timers, DEFAULT_WARMUP[backend] if warmup is None else warmup, runs, rounds)
        return {name: Latency.of(t, session.threads, backend) for name, t in times.items()}


def measure_latency(model: nn.Module, img_size: tuple[int, int] | int, backend: str = "torch-cpu",
                    batch_size: int = 1, threads: int | None = None, warmup: int | None = None, runs: int = 20,
                    device: str | torch.device | None = None) -> Latency:
    """Latency of one model: :func:`compare_latency` with a single entry."""
    return compare_latency({"model": model}, img_size, backend, batch_size, threads, warmup, runs, rounds=1,
                           device=device)["model"]


def compare_cpu_latency(models: Mapping[str, nn.Module], img_size: tuple[int, int], batch_size: int = 1,
                        threads: int | None = None, warmup: int = 3, runs: int = 20,
                        rounds: int = 5) -> dict[str, Latency]:
    """:func:`compare_latency` with PyTorch on the CPU (the signature amc-prune and amc-bench use)."""
    return compare_latency(models, img_size, "torch-cpu", batch_size, threads, warmup, runs, rounds)


def measure_cpu_latency(model: nn.Module, img_size: tuple[int, int], batch_size: int = 1, threads: int | None = None,
                        warmup: int = 3, runs: int = 20) -> Latency:
    """Latency of one model with PyTorch on the CPU: :func:`compare_cpu_latency` with a single entry."""
    return compare_cpu_latency({"model": model}, img_size, batch_size, threads, warmup, runs, rounds=1)["model"]
