"""The statistics of ``amc-bench bench=compare``: from per-seed cell records to what its table and ``results.json``
report.

* :func:`summarize`: per budget and method, means and sample standard deviations over seeds;
* :func:`wins`: whether DDPG's means beat each baseline's (the issue's targets);
* :func:`paired`: DDPG against every other method seed by seed: mean difference, bootstrap interval, wins / ties /
  losses and a sign test;
* :func:`episodes_to_95` and :func:`best_so_far`: how fast a search found its best policy;
* :func:`search_failed` and :func:`read_episodes`: whether a learning search failed (issue 20's definition).

Pure functions of records (no model, no files except :func:`read_episodes`), so the report can be rebuilt from
the committed cells alone.
"""

from __future__ import annotations

import gzip
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("map_proxy", "map_full", "map_finetuned")
"""The mAPs@0.5:0.95 reported per cell; each gets a mean and a ``_std`` over seeds."""
JUDGE_SEED_STRIDE = 1000
"""The fine-tune seed of a cell's judgement r is ``seed + JUDGE_SEED_STRIDE * r`` (:func:`judge_seed`)."""


def judge_seed(seed: int, r: int) -> int:
    """The fine-tune seed of judgement ``r`` of a cell of ``seed`` (r = 0: the cell's seed, as benches judged before
    ``bench.finetune.judge_seeds``): the same for every method of a seed, so judgements stay paired."""
    return seed + JUDGE_SEED_STRIDE * r


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of ``values``.

    ``None`` entries (a skipped fine-tune) make both ``None``: a mean of what was not measured is not reported.
    The std is ``None`` below two values (one seed has no spread to measure).
    """
    if not values or any(v is None for v in values):
        return None, None
    floats = [float(v) for v in values]  # type: ignore[arg-type]
    return statistics.fmean(floats), (statistics.stdev(floats) if len(floats) >= 2 else None)


def best_so_far(maps: Sequence[float | None]) -> list[float | None]:
    """The running maximum of per-episode proxy mAPs (``None``: a penalized episode, which counts for nothing)."""
    out: list[float | None] = []
    best: float | None = None
    for m in maps:
        if m is not None and math.isfinite(m) and (best is None or m > best):
            best = float(m)
        out.append(best)
    return out


def episodes_to_95(maps: Sequence[float | None], fraction: float = 0.95) -> int | None:
    """The first episode (1-based) whose best-so-far proxy mAP reaches ``fraction`` of the run's final best.

    ``None`` when no episode scored.
    """
    curve = best_so_far(maps)
    final = curve[-1] if curve else None
    if final is None:
        return None
    target = fraction * final
    return next(i + 1 for i, m in enumerate(curve) if m is not None and m >= target)


def summarize(cells: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``budget key -> method -> aggregate`` from the per-seed cell records (ordered by seed).

    Every aggregate holds the means over seeds (``map_proxy``, ``map_full``, ``map_finetuned``, ``flops_ratio``,
    ``wall_s``, ``episodes_to_95``), the sample stds of the mAPs (``<metric>_std``), the ``seeds`` and the per-seed
    values (``per_seed``: one record per seed, the same keys). ``episodes_to_95`` is ``None`` for methods without
    a search.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, methods in cells.items():
        out[key] = {}
        for method, records in methods.items():
            agg: dict[str, Any] = {}
            for metric in METRICS:
                agg[metric], agg[f"{metric}_std"] = mean_std([r[metric] for r in records])
            for name in ("wall_s", "flops_ratio", "episodes_to_95", "latency_ratio"):
                agg[name] = mean_std([r.get(name) for r in records])[0]
            agg["seeds"] = [r["seed"] for r in records]
            agg["per_seed"] = [{k: r.get(k) for k in ("seed", *METRICS, "flops_ratio", "latency_ratio", "wall_s",
                                                        "episodes_to_95")} for r in records]
            out[key][method] = agg
    return out


def cell_machines(cells: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Where the cells ran: ``machines``, one entry per distinct machine record (torch, device, CPU, threads, GPU)
    with the seeds that ran there per budget, and ``mixed_seeds``: per budget, the seeds whose methods did not all
    run on one machine (their paired differences then carry the machines' difference too).

    A bench may be finished on another machine seed by seed (a FLOPs cell's fingerprint leaves out where it ran),
    so the results say which seeds came from where rather than naming one machine for all.
    """
    entries: dict[str, dict[str, Any]] = {}
    per_seed: dict[tuple[str, int], set[str]] = {}
    for key, methods in cells.items():
        for records in methods.values():
            for r in records:
                machine = r.get("machine") or {}
                label = repr(sorted(machine.items()))
                seeds = entries.setdefault(label, {"machine": machine, "seeds": {}})["seeds"].setdefault(key, set())
                seeds.add(r["seed"])
                per_seed.setdefault((key, r["seed"]), set()).add(label)
    mixed: dict[str, list[int]] = {}
    for (key, seed), labels in sorted(per_seed.items()):
        if len(labels) > 1:
            mixed.setdefault(key, []).append(seed)
    return {"machines": [{"machine": e["machine"], "seeds": {k: sorted(v) for k, v in e["seeds"].items()}}
                         for e in entries.values()], "mixed_seeds": mixed}


def wins(summary: dict[str, dict[str, dict[str, Any]]], margin: float) -> dict[str, dict[str, Any]]:
    """Per budget, whether ddpg's mean mAP >= uniform's + ``margin`` and >= random's and global magnitude's.

    Judged on the fine-tuned mAP and on the proxy mAP separately; a comparison whose numbers are missing (a
    method not run, the fine-tune skipped) is ``None``, and so is ``all`` unless every comparison is known.
    """
    out: dict[str, dict[str, Any]] = {}
    for key, methods in summary.items():
        entry: dict[str, Any] = {"margin": margin}
        for label, metric in (("finetuned", "map_finetuned"), ("proxy", "map_proxy")):
            def value(method: str) -> float | None:
                return methods.get(method, {}).get(metric)

            ddpg = value("ddpg")

            def at_least(other: float | None, plus: float = 0.0) -> bool | None:
                if ddpg is None or other is None:
                    return None
                return bool(ddpg >= other + plus - 1e-12)  # equal means count as a tie won

            checks = {"beats_uniform_by_margin": at_least(value("uniform"), margin),
                      "beats_random": at_least(value("random")),
                      "beats_global_magnitude": at_least(value("global_magnitude"))}
            known = list(checks.values())
            entry[label] = {"ddpg": ddpg, **checks, "all": None if None in known else all(known)}
        out[key] = entry
    return out


def paired(cells: dict[str, dict[str, list[dict[str, Any]]]], metric: str = "map_finetuned",
           resamples: int = 10_000) -> dict[str, dict[str, Any]]:
    """Per budget, DDPG against each other method seed by seed: ``ddpg - other`` on ``metric`` for every seed both
    measured, its mean, a 95% bootstrap interval of that mean (``resamples`` resamplings of the seeds, fixed
    generator), how many seeds DDPG wins / ties / loses, and the two-sided sign-test p-value of the wins against the
    losses (ties dropped). A mean whose interval holds 0 is a tie within the seeds' spread."""
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, Any]] = {}
    for key, methods in cells.items():
        ddpg = {r["seed"]: r.get(metric) for r in methods.get("ddpg", [])}
        entry: dict[str, Any] = {}
        for other in (m for m in methods if m != "ddpg"):
            theirs = {r["seed"]: r.get(metric) for r in methods[other]}
            seeds = [s for s in ddpg if s in theirs and ddpg[s] is not None and theirs[s] is not None]
            if not seeds:
                continue
            diffs = np.array([float(ddpg[s]) - float(theirs[s]) for s in seeds])
            means = rng.choice(diffs, size=(resamples, len(diffs)), replace=True).mean(1)
            won, lost = int((diffs > 0).sum()), int((diffs < 0).sum())
            entry[other] = {"seeds": seeds, "diffs": diffs.tolist(), "mean": float(diffs.mean()),
                            "ci95": [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))],
                            "wins": won, "ties": len(diffs) - won - lost, "losses": lost,
                            "sign_p": _sign_test(won, lost)}
        out[key] = entry
    return out


def _sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign-test p-value of ``wins`` against ``losses`` (binomial, p = 1/2)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2.0 * tail)


def search_failed(episodes: Sequence[dict[str, Any]], window: int = 15, exported: int | None = None) -> bool | None:
    """Whether a learning search failed (issue 20): its exported episode (number ``exported``; ``None``: the best
    reward, what a search exports by default) is a warm-up draw, or the mean reward of its last ``window`` episodes
    is no better than its warm-up's. ``None`` for a search without a warm-up phase (random search) or without
    episodes."""
    warm = [e["reward"] for e in episodes if e.get("phase") == "warmup" and not e.get("penalized")]
    if not warm or not episodes:
        return None
    rewards = [e["reward"] if not e.get("penalized") else -math.inf for e in episodes]
    chosen = next((e for e in episodes if e.get("episode") == exported), None) if exported is not None else None
    if chosen is None:
        chosen = episodes[int(np.argmax(rewards))]
    return bool(chosen.get("phase") == "warmup" or statistics.fmean(rewards[-window:]) <= statistics.fmean(warm))


def read_episodes(path: Path) -> list[dict[str, Any]]:
    """The records of a search's ``episodes.jsonl`` (or its gzipped copy ``episodes.jsonl.gz``); [] when absent."""
    for candidate, opener in ((path, open), (path.with_name(path.name + ".gz"), gzip.open)):
        if candidate.is_file():
            with opener(candidate, "rt") as f:
                return [json.loads(line) for line in f if line.strip()]
    return []
