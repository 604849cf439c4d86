"""Wall-clock latency of models on the CPU (median of timed runs after a warm-up).

On a shared or virtualized CPU the speed of the machine drifts during a benchmark. Comparing models timed one
after the other then mixes the drift into the ratio, so :func:`compare_cpu_latency` interleaves them: every
round times each model in turn, and each model's figure is the median over all its runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Latency:
    """Median and spread of ``runs`` timed forward passes, in milliseconds."""

    median_ms: float
    min_ms: float
    max_ms: float
    runs: int
    threads: int

    @classmethod
    def of(cls, times: list[float], threads: int) -> "Latency":
        return cls(statistics.median(times), min(times), max(times), len(times), threads)


@contextmanager
def _cpu_threads(threads: int | None):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _timed(model: nn.Module, x: torch.Tensor, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


@torch.inference_mode()
def compare_cpu_latency(models: Mapping[str, nn.Module], img_size: tuple[int, int], batch_size: int = 1,
                        threads: int | None = None, warmup: int = 3, runs: int = 20,
                        rounds: int = 5) -> dict[str, Latency]:
    """Latency of several models (put in eval mode) on a zero image batch, interleaved round by round.

    Args:
        models: name -> model (e.g. the fused unpruned and pruned models).
        img_size: (height, width) of the input.
        batch_size: images per forward pass.
        threads: CPU threads during the measurement (restored afterwards); None keeps torch's setting.
        warmup: untimed passes per model before timing.
        runs: timed passes per model in total, spread over ``rounds``.
        rounds: how many times the models take turns.
    """
    per_round = max(1, -(-runs // max(1, rounds)))  # ceil
    modes = {name: m.training for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    with _cpu_threads(threads) as used:
        try:
            inputs = {}
            for name, m in models.items():
                m.eval()
                inputs[name] = torch.zeros(batch_size, 3, *img_size, device=next(m.parameters()).device)
                for _ in range(warmup):
                    m(inputs[name])
            for _ in range(max(1, rounds)):
                for name, m in models.items():
                    times[name] += _timed(m, inputs[name], per_round)
        finally:
            for name, m in models.items():
                m.train(modes[name])
    return {name: Latency.of(t, used) for name, t in times.items()}


def measure_cpu_latency(model: nn.Module, img_size: tuple[int, int], batch_size: int = 1, threads: int | None = None,
                        warmup: int = 3, runs: int = 20) -> Latency:
    """Latency of one model: :func:`compare_cpu_latency` with a single entry."""
    return compare_cpu_latency({"model": model}, img_size, batch_size, threads, warmup, runs, rounds=1)["model"]
