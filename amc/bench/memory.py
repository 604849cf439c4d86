"""``amc-bench bench=memory``: does a long search hold its memory steady? (issue 11, item 4)

A real search (:class:`~amc.search.runner.SearchRunner`: the agent, the environment, the replay buffer, the
TensorBoard writer, the episode log and a checkpoint after every episode, exactly as ``amc-search`` runs them)
plays ``bench.episodes`` episodes in the ``search/`` folder of the run directory. The evaluator may be the stub
(``evaluator=stub``, the default here): it makes episodes instant, so 500 of them take minutes and whatever the
machinery around the evaluator leaks per episode is not hidden among the evaluator's own allocations.

After every ``sample_every`` episodes the resident set size of this process is read (``/proc/self/statm``; where
there is no ``/proc``, the peak RSS of ``getrusage``, which still rises with a leak but never falls). The first
``warmup_fraction`` of the episodes is left out of the trend: libraries allocate lazily (the optimizers' state
once learning starts, the replay buffer's pages as it fills up to its capacity, allocator arenas), which is a
one-off step, not growth. A least-squares line through the rest gives the slope in KiB per episode; the slope
times the episodes it covers is the growth, and the run is *flat* when that growth is at most
``max_growth_mib``.

Writes ``results.json`` (figures and every sample) and ``rss_vs_episode.svg`` into the run directory and prints
a table; ``amc-bench`` adds ``metrics.json``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from amc.atomic import atomic_write_json, atomic_write_text
from amc.config import compose_config, config_number, output_dir
from amc.console import ProgressLog, console, print_table
from amc.errors import AmcError, ConfigError
from amc.plots import line_svg
from amc.search.runner import SearchRunner

KIB_PER_MIB = 1024.0


# ---------------------------------------------------------------------------------------------- reading RSS
class RssProbe:
    """Reads the resident set size of this process, in KiB.

    Linux: the current RSS from ``/proc/self/statm`` (resident pages x page size), a read of a few microseconds.
    Elsewhere: ``resource.getrusage``'s peak RSS; a peak cannot fall, so a run that frees memory looks flatter
    than it is at its start, but per-episode growth still shows as a rising line.

    Attributes:
        source: ``"statm"`` (current RSS) or ``"maxrss"`` (peak RSS).
    """

    def __init__(self) -> None:
        self._page_kib = os.sysconf("SC_PAGE_SIZE") / 1024.0 if hasattr(os, "sysconf") else 4.0
        self.source = "statm" if self._statm() is not None else "maxrss"
        if self.source == "maxrss" and self._maxrss() is None:
            raise AmcError("bench=memory cannot read this process's resident memory on this platform "
                           "(no /proc/self/statm and no resource module)")

    def _statm(self) -> float | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page_kib
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _maxrss() -> float | None:
        try:
            import resource
        except ImportError:
            return None
        peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        return peak / 1024.0 if sys.platform == "darwin" else peak  # macOS reports bytes, Linux KiB

    def __call__(self) -> float:
        """The RSS now (``statm``) or the peak so far (``maxrss``), in KiB."""
        value = self._statm() if self.source == "statm" else self._maxrss()
        if value is None:  # /proc vanished mid-run (a chroot, a container quirk): keep sampling the peak
            self.source, value = "maxrss", self._maxrss()
        return float(value)


class RssSampler:
    """Keeps ``(episode, RSS KiB, seconds)`` samples in arrays sized up front.

    Appending to growing lists would add a little per-episode growth of its own to what is measured; the
    arrays are allocated (and touched) before the first episode.

    Args:
        capacity: the most samples that will be taken.
        probe: reads the RSS.
    """

    def __init__(self, capacity: int, probe: RssProbe) -> None:
        self.probe = probe
        self.episode = np.zeros(capacity, dtype=np.int64)
        self.rss_kib = np.zeros(capacity, dtype=np.float64)
        self.seconds = np.zeros(capacity, dtype=np.float64)
        self.count = 0
        self._t0 = time.perf_counter()

    def sample(self, episode: int) -> None:
        """Record the RSS after ``episode`` episodes (0 = before the first)."""
        if self.count == len(self.rss_kib):  # more calls than planned (a caller's bug): never grow the arrays
            return
        i = self.count
        self.episode[i], self.rss_kib[i], self.seconds[i] = episode, self.probe(), time.perf_counter() - self._t0
        self.count += 1

    def series(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The samples taken so far: episodes, RSS in KiB, seconds since the sampler was made."""
        n = self.count
        return self.episode[:n].copy(), self.rss_kib[:n].copy(), self.seconds[:n].copy()


# ---------------------------------------------------------------------------------------------- the trend
@dataclass
class MemoryTrend:
    """Whether resident memory grows with the episodes, from the samples after the warm-up.

    Attributes:
        warmup_episodes: samples at episodes below this are left out of the fit.
        samples_fitted: samples the line is fitted to.
        first_episode, last_episode: the episodes the fitted samples span.
        slope_kib_per_episode: least-squares slope of RSS against episode (KiB per episode).
        growth_mib: ``slope x (last_episode - first_episode)``: what the trend adds over the fitted span.
        delta_mib: measured RSS at the last fitted sample minus at the first (noisier than the fit).
        max_growth_mib: the threshold.
        flat: ``growth_mib <= max_growth_mib``.
    """

    warmup_episodes: int
    samples_fitted: int
    first_episode: int
    last_episode: int
    slope_kib_per_episode: float
    intercept_kib: float
    growth_mib: float
    delta_mib: float
    max_growth_mib: float
    flat: bool


def warmup_episodes(episodes: int, warmup_fraction: float) -> int:
    """The number of episodes at the start left out of the trend (``ceil(fraction x episodes)``)."""
    return int(math.ceil(warmup_fraction * episodes - 1e-9))


def memory_trend(episodes: Sequence[int], rss_kib: Sequence[float], warmup: int,
                 max_growth_mib: float) -> MemoryTrend:
    """Fit RSS against episode by least squares over the samples at episode >= ``warmup``; judge flatness.

    The decision rests on the fitted growth, not on end minus start: a single sample caught during a
    transient allocation (a checkpoint being written) moves the difference of two samples far more than it
    moves a line through hundreds of them.

    Args:
        episodes: the episode of each sample (episodes done when it was taken).
        rss_kib: the resident memory of each sample, KiB.
        warmup: samples at earlier episodes are not fitted.
        max_growth_mib: the most growth over the fitted span that still counts as flat.

    Returns:
        the trend; ValueError if fewer than 3 samples remain after the warm-up (no trend to speak of).
    """
    x = np.asarray(episodes, dtype=np.float64)
    y = np.asarray(rss_kib, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"episodes and rss_kib must be 1-D of equal length, got {x.shape} and {y.shape}")
    keep = (x >= warmup) & np.isfinite(y)
    xs, ys = x[keep], y[keep]
    if len(xs) < 3 or xs.max() == xs.min():
        raise ValueError(f"{len(xs)} samples after the warm-up (episode >= {warmup}): need at least 3 to fit a trend")
    slope, intercept = np.polyfit(xs, ys, 1)
    span = float(xs.max() - xs.min())
    growth = float(slope) * span / KIB_PER_MIB
    return MemoryTrend(warmup_episodes=int(warmup), samples_fitted=int(len(xs)), first_episode=int(xs.min()),
                       last_episode=int(xs.max()), slope_kib_per_episode=float(slope), intercept_kib=float(intercept),
                       growth_mib=growth, delta_mib=float(ys[-1] - ys[0]) / KIB_PER_MIB,
                       max_growth_mib=float(max_growth_mib), flat=bool(growth <= max_growth_mib))


# ---------------------------------------------------------------------------------------------- the search
@dataclass
class MemoryBenchSettings:
    """``conf/bench/memory.yaml``, checked before any work."""

    episodes: int
    sample_every: int
    warmup_fraction: float
    max_growth_mib: float
    overrides: list[str]

    @classmethod
    def from_config(cls, b: DictConfig, seed: int) -> "MemoryBenchSettings":
        episodes = config_number(b, "episodes", int, 1, prefix="bench.")
        every = config_number(b, "sample_every", int, 1, prefix="bench.")
        fraction = config_number(b, "warmup_fraction", float, 0.0, 0.9, prefix="bench.")
        threshold = config_number(b, "max_growth_mib", float, 0.0, prefix="bench.")
        s = b.get("search")
        if s is None or not OmegaConf.is_dict(s):
            raise ConfigError("bench.search must be a mapping (model, agent, evaluator, budget, budget_fraction, ...)")
        metric = str(s.get("budget"))
        if metric not in ("flops", "params", "latency"):
            raise ConfigError(f"bench.search.budget must be flops, params or latency, got {metric!r}")
        fraction_kept = config_number(s, "budget_fraction", float, prefix="bench.search.")
        extra = s.get("overrides") or []
        if not OmegaConf.is_list(extra) and not isinstance(extra, list):
            raise ConfigError(f"bench.search.overrides must be a list of amc-search overrides, got {extra!r}")
        extra = [str(o) for o in extra]
        # The RSS read is this process's: worker processes would hold the episodes' memory out of sight.
        if any(o.split("=", 1)[0].lstrip("+~") == "workers" and o.split("=", 1)[-1].strip() != "1" for o in extra):
            raise ConfigError("bench=memory measures the search's own process: run it with workers=1 "
                              "(worker processes' memory would not be sampled)")
        overrides = [f"model={s.model}", f"agent={s.agent}", f"evaluator={s.evaluator}", f"budget={metric}",
                     f"budget.{metric}={fraction_kept}", f"episodes={episodes}", f"seed={seed}",
                     f"checkpoint_every={config_number(s, 'checkpoint_every', int, 1, prefix='bench.search.')}",
                     f"progress={str(bool(s.get('progress', False))).lower()}", *extra]
        return cls(episodes=episodes, sample_every=every, warmup_fraction=fraction, max_growth_mib=threshold,
                   overrides=overrides)


def sampled_episodes(episodes: int, every: int) -> np.ndarray:
    """The episodes after which the RSS is read: 0 (set-up done), every ``every``-th, and the last."""
    return np.unique(np.concatenate([np.arange(0, episodes + 1, every), [episodes]]))


def _sampled_runner(cfg: DictConfig, run_dir: Path, sampler: RssSampler, every: int):  # noqa: ANN202
    """A :class:`SearchRunner` that samples the RSS after its own per-episode bookkeeping (log, checkpoint):
    the sample is taken once the runner has finished with the episode, so what was allocated for it (log lines,
    the checkpoint) is in it."""
    total = int(cfg.episodes)
    # the search runs without its own progress output (bench.search.progress: false): a line per sample instead,
    # so a log shows the long search advancing and its memory with it
    progress = ProgressLog("bench=memory episode", total, echo=True)

    def sample(report) -> None:  # noqa: ANN001 (agents.base.EpisodeReport)
        done = int(report.episode) + 1
        if done % every == 0 or done == total:
            sampler.sample(done)
            progress.update(done, f"RSS {sampler.rss_kib[sampler.count - 1] / KIB_PER_MIB:.1f} MiB")

    return SearchRunner(cfg, run_dir, after_episode=sample)


def rss_chart(episodes: np.ndarray, rss_kib: np.ndarray, trend: MemoryTrend, title: str) -> str:
    """RSS (MiB) per episode with the fitted line over the episodes after the warm-up, as SVG."""
    fit_x = np.array([trend.first_episode, trend.last_episode], dtype=np.float64)
    fit_y = (trend.intercept_kib + trend.slope_kib_per_episode * fit_x) / KIB_PER_MIB
    return line_svg({"resident memory (RSS)": (episodes, rss_kib / KIB_PER_MIB),
                     f"least-squares fit after the warm-up ({trend.slope_kib_per_episode:+.2f} KiB/episode)":
                         (fit_x, fit_y)},
                    title=title, x_label="episodes done", y_label="RSS (MiB)")


def memory_bench(cfg: DictConfig, out_dir: Path | None = None) -> dict[str, Any]:
    """Run a search of ``bench.episodes`` episodes, sampling RSS after each; report whether it stays flat.

    Args:
        cfg: the composed ``conf/bench.yaml`` with ``bench=memory``.
        out_dir: where ``results.json``, the chart and the search's ``search/`` folder go (default: the Hydra
            run directory).

    Returns:
        the figures (also in ``results.json``): RSS at start / after the warm-up / at the end / peak (MiB), the
        slope (KiB per episode), the growth (MiB), the verdict and every sample.
    """
    b = cfg.bench
    seed = config_number(cfg, "seed", int)
    settings = MemoryBenchSettings.from_config(b, seed)
    out = output_dir(out_dir)
    search_dir = out / "search"
    warmup = warmup_episodes(settings.episodes, settings.warmup_fraction)
    sampled = sampled_episodes(settings.episodes, settings.sample_every)
    if int((sampled >= warmup).sum()) < 3:
        raise ConfigError(f"bench.episodes={settings.episodes} leaves too few samples after the warm-up "
                          f"({warmup} episodes) at sample_every={settings.sample_every} (a trend needs 3): "
                          f"run more episodes or sample more often")
    search_cfg = compose_config("search", settings.overrides,
                                "bench.search does not make a valid amc-search config")

    probe = RssProbe()
    sampler = RssSampler(len(sampled), probe)
    started = time.perf_counter()
    runner = _sampled_runner(search_cfg, search_dir, sampler, settings.sample_every)
    sampler.sample(0)  # everything built (model, space, evaluator, agent), no episode played yet
    search = runner.run()
    wall_s = time.perf_counter() - started

    episodes, rss, seconds = sampler.series()
    trend = memory_trend(episodes, rss, warmup, settings.max_growth_mib)
    after_warmup = int(np.argmax(episodes >= warmup))
    mib = rss / KIB_PER_MIB
    results: dict[str, Any] = {
        "episodes": int(search["episodes"]), "samples": int(len(episodes)), "sample_every": settings.sample_every,
        "rss_source": probe.source,
        "rss_start_mib": float(mib[0]), "rss_after_warmup_mib": float(mib[after_warmup]),
        "rss_end_mib": float(mib[-1]), "rss_peak_mib": float(mib.max()),
        "warmup_episodes": warmup, "warmup_fraction": settings.warmup_fraction,
        "slope_kib_per_episode": trend.slope_kib_per_episode, "growth_mib": trend.growth_mib,
        "delta_after_warmup_mib": trend.delta_mib, "max_growth_mib": settings.max_growth_mib, "flat": trend.flat,
        "trend": asdict(trend),
        "wall_s": wall_s, "search_s": float(search["search_s"]), "setup_s": float(search.get("setup_s", 0.0)),
        "episodes_per_s": float(search["episodes"]) / max(float(search["search_s"]), 1e-9),
        "search": {"agent": str(search_cfg.agent.name), "evaluator": str(search_cfg.evaluator.name),
                   "model": str(search["model"]), "budget": search["budget"], "seed": seed,
                   "overrides": settings.overrides, "run_dir": str(search_dir)},
        "series": {"episode": [int(e) for e in episodes], "rss_kib": [float(r) for r in rss],
                   "seconds": [float(s) for s in seconds]},
    }

    title = (f"bench=memory: RSS per episode, {search_cfg.agent.name} agent, {search_cfg.evaluator.name} evaluator, "
             f"{settings.episodes} episodes")
    atomic_write_text(out / "rss_vs_episode.svg", rss_chart(episodes, rss, trend, title))
    atomic_write_json(out / "results.json", results)

    source = "current RSS, /proc/self/statm" if probe.source == "statm" else "peak RSS, getrusage"
    print_table(f"resident memory over {results['episodes']} episodes ({source}; {search_cfg.agent.name} agent, "
                f"{search_cfg.evaluator.name} evaluator; {wall_s:.0f} s)",
                ["figure", "value"],
                [["RSS at start (set-up done)", f"{results['rss_start_mib']:.1f} MiB"],
                 [f"RSS after the warm-up (episode {int(episodes[after_warmup])})",
                  f"{results['rss_after_warmup_mib']:.1f} MiB"],
                 [f"RSS at the end (episode {int(episodes[-1])})", f"{results['rss_end_mib']:.1f} MiB"],
                 ["RSS peak", f"{results['rss_peak_mib']:.1f} MiB"],
                 [f"slope after the warm-up ({trend.samples_fitted} samples)",
                  f"{trend.slope_kib_per_episode:+.2f} KiB/episode"],
                 [f"growth over episodes {trend.first_episode}-{trend.last_episode} (fit)",
                  f"{trend.growth_mib:+.2f} MiB"],
                 ["measured change over the same span", f"{trend.delta_mib:+.2f} MiB"],
                 ["verdict", f"{'flat' if trend.flat else 'GROWING'} (threshold {settings.max_growth_mib:g} MiB)"]])
    console.print(f"samples and figures: {out / 'results.json'}; chart: {out / 'rss_vs_episode.svg'}; "
                  f"the search's own outputs: {search_dir}")
    return results
