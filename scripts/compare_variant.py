#!/usr/bin/env python3
"""A DDPG setting's cells against a finished bench=compare run, paired by seed (issue 20, item 3).

A setting that only changes the DDPG agent (or the environment, for a first look) is confirmed on the real
environment by running just its DDPG cells (``bench.methods=[ddpg]``, e.g. ``scripts/gpu_compare_seeds.sh`` with
``METHOD_GROUPS=ddpg``): this script sets them beside the shipped bench's cells of the same budget and seeds
(``docs/results/compare-heldout`` by default) and reports, on fine-tuned mAP, the variant's mean and spread, its
paired difference with the shipped DDPG and with every baseline (mean, 95% bootstrap interval, wins / ties /
losses: :func:`amc.bench.compare_stats.paired`), its failed seeds (:func:`~amc.bench.compare_stats.search_failed`)
and its episodes to 95% of the final best as a share of random search's.

The baselines' cells come from the shipped run as they are: where the variant changes the environment (e.g.
``spend_budget``), random search would change too, so the comparison with random search is then only indicative.

Usage:
    python scripts/compare_variant.py VARIANT_RUN [--base docs/results/compare-heldout] [--budget 0.5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from amc.atomic import atomic_write_json
from amc.bench.compare_stats import paired, read_episodes, search_failed, summarize


def load_cells(run: Path, budget: str, methods: tuple[str, ...] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every finished cell record of ``run`` at FLOPs ``budget``, per method (seed order)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for method_dir in sorted((run / "cells" / f"flops-{budget}").glob("*")):
        if not method_dir.is_dir() or (methods is not None and method_dir.name not in methods):
            continue
        records = [json.loads(p.read_text()) for p in method_dir.glob("seed*.json")]
        if records:
            out[method_dir.name] = sorted(records, key=lambda r: r["seed"])
    return out


def failed_seeds(run: Path, budget: str) -> list[int]:
    """The DDPG seeds of ``run`` whose search failed (issue 20's definition)."""
    failed = []
    for record in load_cells(run, budget, ("ddpg",)).get("ddpg", []):
        episodes = read_episodes(run / "cells" / f"flops-{budget}" / "ddpg" / f"seed{record['seed']}" / "search"
                                 / "episodes.jsonl")
        if search_failed(episodes):
            failed.append(record["seed"])
    return failed


def speed_share(cells: dict[str, list[dict[str, Any]]]) -> float | None:
    """Mean episodes to 95% of the final best, DDPG over random search: the bench's own aggregate
    (:func:`amc.bench.compare_stats.summarize`), as the README headline divides it."""
    agg = summarize({"x": {m: cells[m] for m in ("ddpg", "random") if cells.get(m)}})["x"]
    ours, theirs = (agg.get(m, {}).get("episodes_to_95") for m in ("ddpg", "random"))
    return ours / theirs if ours and theirs else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", type=Path, help="a bench=compare run dir holding the variant's DDPG cells")
    parser.add_argument("--base", type=Path, default=Path("docs/results/compare-heldout"),
                        help="the finished bench whose cells the variant is set beside")
    parser.add_argument("--budget", default="0.5", help="the FLOPs budget (as in the cells' folder name)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    base = load_cells(args.base, args.budget)
    variant = load_cells(args.variant, args.budget, ("ddpg",)).get("ddpg", [])
    if not variant or "ddpg" not in base:
        print(f"error: no DDPG cells at flops-{args.budget} in {args.variant if not variant else args.base}",
              file=sys.stderr)
        return 2
    seeds = {r["seed"] for r in variant}
    # the variant in the DDPG column, the shipped DDPG as one more 'baseline'
    cells = {m: [r for r in records if r["seed"] in seeds] for m, records in base.items() if m != "ddpg"}
    cells["shipped_ddpg"] = [r for r in base["ddpg"] if r["seed"] in seeds]
    cells["ddpg"] = variant
    values = [r["map_finetuned"] for r in variant]
    result = {"budget": args.budget, "variant": str(args.variant), "base": str(args.base), "seeds": sorted(seeds),
              "map_finetuned": statistics.fmean(values),
              "map_finetuned_std": statistics.stdev(values) if len(values) > 1 else None,
              "paired": paired({args.budget: cells})[args.budget],
              "failed_seeds": failed_seeds(args.variant, args.budget),
              "shipped_failed_seeds": [s for s in failed_seeds(args.base, args.budget) if s in seeds],
              "episodes_to_95_share": speed_share(cells),
              "shipped_episodes_to_95_share": speed_share({"ddpg": cells["shipped_ddpg"],
                                                           "random": cells.get("random", [])})}
    std = result["map_finetuned_std"]
    print(f"variant DDPG at {float(args.budget):.0%} FLOPs, seeds {sorted(seeds)}: fine-tuned mAP "
          f"{result['map_finetuned']:.3f}" + (f" ± {std:.3f}" if std is not None else ""))
    print("| against | mean difference | 95% interval | wins / ties / losses |")
    print("|---|---:|---:|---:|")
    for other, entry in result["paired"].items():
        lo, hi = entry["ci95"]
        print(f"| {other} | {entry['mean']:+.3f} | [{lo:+.3f}, {hi:+.3f}] | "
              f"{entry['wins']} / {entry['ties']} / {entry['losses']} |")
    share, shipped = result["episodes_to_95_share"], result["shipped_episodes_to_95_share"]
    print(f"failed DDPG seeds: {result['failed_seeds']} (shipped: {result['shipped_failed_seeds']}); episodes to 95% "
          f"as a share of random search's: {share if share is None else round(share, 2)} (shipped: "
          f"{shipped if shipped is None else round(shipped, 2)})")
    if args.json is not None:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
