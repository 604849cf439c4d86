"""``amc-bench bench=memory``: the trend test itself (does it catch a leak?), the RSS probe, and a short real run.

The 500-episode figure of the README comes from ``amc-bench bench=memory``; here a short run checks that the
benchmark runs a real search, samples after every episode and writes what it promises, and the flatness test
is checked on made-up series where the answer is known.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amc.bench.memory import RssProbe, RssSampler, memory_trend, warmup_episodes

EPISODES = np.arange(0, 501)


def noisy(base_mib: float, slope_kib: float, seed: int = 0, noise_mib: float = 1.5) -> np.ndarray:
    """An RSS series in KiB: ``base + slope x episode`` plus allocator-like noise (uniform, +-noise_mib)."""
    rng = np.random.default_rng(seed)
    return base_mib * 1024 + slope_kib * EPISODES + rng.uniform(-noise_mib, noise_mib, len(EPISODES)) * 1024


def test_flat_series_is_flat() -> None:
    trend = memory_trend(EPISODES, noisy(350, 0.0), warmup=100, max_growth_mib=8)
    assert trend.flat
    assert abs(trend.slope_kib_per_episode) < 2 and abs(trend.growth_mib) < 1
    assert trend.samples_fitted == 401 and (trend.first_episode, trend.last_episode) == (100, 500)


@pytest.mark.parametrize("slope_kib", [32.0, 100.0])
def test_growing_series_is_flagged(slope_kib: float) -> None:
    trend = memory_trend(EPISODES, noisy(350, slope_kib), warmup=100, max_growth_mib=8)
    assert not trend.flat
    assert trend.slope_kib_per_episode == pytest.approx(slope_kib, rel=0.1)
    assert trend.growth_mib == pytest.approx(slope_kib * 400 / 1024, rel=0.1)


def test_a_small_leak_hidden_in_noise_is_still_found() -> None:
    # 25 KiB per episode is 10 MiB over 400 episodes, inside +-3 MiB noise: end minus start alone could miss it
    trend = memory_trend(EPISODES, noisy(350, 25.0, seed=1, noise_mib=3.0), warmup=100, max_growth_mib=8)
    assert not trend.flat and 8 < trend.growth_mib < 12


def test_warmup_step_is_excluded_but_counts_when_not() -> None:
    # a one-off 30 MiB allocation at episode 40 (learning starts), flat afterwards
    rss = noisy(320, 0.0) + np.where(EPISODES >= 40, 30 * 1024, 0)
    assert memory_trend(EPISODES, rss, warmup=100, max_growth_mib=8).flat
    assert not memory_trend(EPISODES, rss, warmup=0, max_growth_mib=8).flat


def test_trend_needs_samples_after_the_warmup() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        memory_trend([0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0], warmup=3, max_growth_mib=8)
    assert warmup_episodes(500, 0.2) == 100 and warmup_episodes(50, 0.2) == 10 and warmup_episodes(7, 0.0) == 0


def test_probe_sees_memory_being_touched() -> None:
    probe = RssProbe()
    if probe.source != "statm":
        pytest.skip("peak RSS only on this platform (no /proc/self/statm)")
    before = probe()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, every page written
    after = probe()
    assert after - before > 48 * 1024, (before, after)
    del block


def test_sampler_never_grows_past_its_capacity() -> None:
    sampler = RssSampler(3, RssProbe())
    for episode in range(5):
        sampler.sample(episode)
    episodes, rss, seconds = sampler.series()
    assert list(episodes) == [0, 1, 2] and (rss > 0).all() and (np.diff(seconds) >= 0).all()


# ---------------------------------------------------------------------------------------------- the command
def amc_bench(*overrides: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "AMC_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "amc.cli.bench", "bench=memory", *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


KEYS = ("episodes", "samples", "rss_source", "rss_start_mib", "rss_after_warmup_mib", "rss_end_mib", "rss_peak_mib",
        "warmup_episodes", "slope_kib_per_episode", "growth_mib", "delta_after_warmup_mib", "max_growth_mib", "flat",
        "wall_s", "search_s", "series", "search")


def test_short_memory_bench_runs_a_real_search_and_samples_every_episode(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = amc_bench(f"hydra.run.dir={out}", "bench.episodes=40", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "resident memory over 40 episodes" in run.stdout and "KiB/episode" in run.stdout
    results = json.loads((out / "results.json").read_text())
    for key in KEYS:
        assert key in results, key
    # one sample before the first episode, then one after each
    assert results["episodes"] == 40 and results["samples"] == 41
    assert results["series"]["episode"] == list(range(41))
    assert results["warmup_episodes"] == 8 and results["trend"]["samples_fitted"] == 33
    assert all(r > 10 * 1024 for r in results["series"]["rss_kib"])  # a Python + torch process: tens of MiB at least
    assert results["rss_end_mib"] == pytest.approx(results["series"]["rss_kib"][-1] / 1024)
    assert isinstance(results["flat"], bool)
    assert results["flat"] == (results["growth_mib"] <= results["max_growth_mib"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["bench"] == "memory" and metrics["samples"] == 41 and metrics["growth_mib"] == results["growth_mib"]
    assert (out / "rss_vs_episode.svg").read_text().startswith("<svg")
    # the search was a real one, in its own folder: the DDPG agent learned, logged and checkpointed
    search = out / "search"
    assert results["search"]["agent"] == "ddpg" and results["search"]["evaluator"] == "stub"
    log = [json.loads(line) for line in (search / "episodes.jsonl").read_text().splitlines()]
    assert len(log) == 40 and {e["phase"] for e in log} >= {"warmup", "explore"}
    assert json.loads((search / "checkpoint" / "state.json").read_text())["episodes_done"] == 40
    assert any((search / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("overrides, message", [
    (["bench.warmup_fraction=1.5"], "bench.warmup_fraction"),
    (["bench.episodes=0"], "bench.episodes"),
    (["bench.episodes=2"], "too few samples"), (["bench.episodes=40", "bench.sample_every=20"], "too few samples"),
    (["bench.search.agent=nosuch"], "bench.search"),
    (["bench.search.overrides=['workers=2']"], "workers=1"),
])
def test_bad_settings_are_one_line(tmp_path: Path, overrides: list[str], message: str) -> None:
    run = amc_bench(f"hydra.run.dir={tmp_path / 'run'}", *overrides, cwd=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "run" / "search").exists()
