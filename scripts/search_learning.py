"""Does the agent learn? Per search of an ``amc-bench bench=compare`` run: its best episode and how its episodes'
reward moved from the first to the last ones (a learning agent's late episodes score better than its early ones;
random search's do not).

Reads ``cells/<budget>/<method>/seed<N>/search/episodes.jsonl`` (or ``.jsonl.gz``, as under ``docs/results/``).

Usage: python scripts/search_learning.py docs/results/compare-recovery-reward-0.3 [--window 15]
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path


def read_episodes(path: Path) -> list[dict]:
    """The episode records of one search, from ``episodes.jsonl`` or its gzip copy."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the run directory of a bench=compare run")
    parser.add_argument("--window", type=int, default=15, help="episodes averaged at the start and at the end")
    args = parser.parse_args()
    logs = sorted(Path(args.run_dir, "cells").glob("*/*/seed*/search/episodes.jsonl*"))
    if not logs:
        raise SystemExit(f"no cells/*/*/seed*/search/episodes.jsonl under {args.run_dir}")
    w = args.window
    print(f"{'budget':10} {'method':8} {'seed':>4} {'episodes':>8} {'best ep':>7} {'best reward':>11} "
          f"{'mean first ' + str(w):>13} {'mean last ' + str(w):>12} {'best proxy mAP':>14}")
    for path in logs:
        budget, method, seed = path.parts[-5], path.parts[-4], path.parts[-3]
        episodes = [e for e in read_episodes(path) if not e.get("penalized")]
        if not episodes:
            print(f"{budget:10} {method:8} {seed[4:]:>4}  every episode penalized (see {path})")
            continue
        rewards = [e["reward"] for e in episodes]
        best = max(range(len(episodes)), key=rewards.__getitem__)
        print(f"{budget:10} {method:8} {seed[4:]:>4} {len(episodes):>8} {best + 1:>7} {rewards[best]:>11.4f} "
              f"{sum(rewards[:w]) / len(rewards[:w]):>13.4f} {sum(rewards[-w:]) / len(rewards[-w:]):>12.4f} "
              f"{episodes[best]['map50_95']:>14.4f}")


if __name__ == "__main__":
    main()
