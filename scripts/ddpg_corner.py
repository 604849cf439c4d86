#!/usr/bin/env python3
"""Where did each DDPG search of a bench=compare run end up? (issue 20, item 3)

A DDPG search once failed at 30% FLOPs by sitting in a corner for its whole run: its actor kept the first units
light and the budget wall pruned the later units hard, up to the upper bound, where nothing the agent asks changes
anything (docs/results.md). This script reads the episodes of every DDPG search of a bench=compare run directory
(or of docs/results/compare-heldout, whose gzipped episode logs are all it needs) and reports, per budget and
seed, over the last ``--window`` episodes: the mean sparsity of the first ``--split`` units and of the rest, how
many of the later units sit at the upper bound, the mean reward against the warm-up's, where the best episode
was, and whether the search failed by issue 20's definition (:func:`amc.bench.compare_stats.search_failed`).

Usage:
    python scripts/ddpg_corner.py RUN_DIR [--split 20] [--window 15] [--upper 0.8] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from amc.atomic import atomic_write_json
from amc.bench.compare_stats import read_episodes, search_failed


def corner_record(episodes: list[dict[str, Any]], split: int, window: int, upper: float) -> dict[str, Any]:
    """The figures of one search's episodes (see the module docstring)."""
    last = episodes[-window:]
    warm = [e["reward"] for e in episodes if e.get("phase") == "warmup"]
    best = max(episodes, key=lambda e: e["reward"])
    return {"episodes": len(episodes),
            "first_mean_ratio": statistics.fmean(statistics.fmean(e["ratios"][:split]) for e in last),
            "later_mean_ratio": statistics.fmean(statistics.fmean(e["ratios"][split:]) for e in last),
            # within 0.005 of the bound: the wall and the actor's tanh leave ratios like 0.7989 that are the bound in effect
            "later_at_upper": statistics.fmean(sum(r >= upper - 0.005 for r in e["ratios"][split:]) for e in last),
            "last_mean_reward": statistics.fmean(e["reward"] for e in last),
            "warmup_mean_reward": statistics.fmean(warm) if warm else None,
            "best_reward": best["reward"], "best_episode": best["episode"], "best_phase": best.get("phase"),
            "failed": search_failed(episodes, window)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", type=int, default=20, help="units counted as the first ones (default 20 of 55)")
    parser.add_argument("--window", type=int, default=15, help="the last episodes looked at (issue 20's 15)")
    parser.add_argument("--upper", type=float, default=0.8, help="the sparsity upper bound (ratio_bounds[1])")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    searches = sorted((args.run_dir / "cells").glob("*/ddpg/seed*/search"))
    if not searches:
        print(f"error: no DDPG search under {args.run_dir / 'cells'}", file=sys.stderr)
        return 2
    out: dict[str, dict[str, Any]] = {}
    print(f"| budget | seed | first {args.split} units | later units | later at {args.upper:g} | last {args.window} "
          f"reward | warm-up reward | best (episode) | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for search in searches:
        episodes = read_episodes(search / "episodes.jsonl")
        if not episodes:
            continue
        budget, seed = search.parts[-4].split("-", 1)[1], int(search.parts[-2].removeprefix("seed"))
        r = corner_record(episodes, args.split, args.window, args.upper)
        out.setdefault(budget, {})[str(seed)] = r
        warm = "-" if r["warmup_mean_reward"] is None else f"{r['warmup_mean_reward']:.3f}"
        print(f"| {budget} | {seed} | {r['first_mean_ratio']:.2f} | {r['later_mean_ratio']:.2f} | "
              f"{r['later_at_upper']:.1f} | {r['last_mean_reward']:.3f} | {warm} | {r['best_reward']:.3f} "
              f"({r['best_episode']}) | {'yes' if r['failed'] else 'no'} |")
    if args.json:
        atomic_write_json(args.json, {"split": args.split, "window": args.window, "upper": args.upper,
                                      "searches": out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
