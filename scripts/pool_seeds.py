#!/usr/bin/env python3
"""Pool the seeds of several measurements of one budget and pair DDPG with every other method over all of them.

The bench's statistics (`amc.bench.compare_stats.paired`: mean of DDPG - other per seed, 95% bootstrap interval,
wins / ties / losses, sign test) are computed per results file; a claim such as "over 12 seeds DDPG is ahead of
random search in 5" pools the shipped seeds (docs/results/compare-heldout) with fresh ones (docs/results/compare-
fresh). This script reads, per judge, any mix of:

* a ``bench=compare`` results.json (``budgets``): each cell's ``map_finetuned``, the bench's 1-epoch judge;
* a ``scripts/finetune_cells.py`` results.json (``order``): each policy's best mAP of the default amc-finetune;
* a ``scripts/export_rule.py`` output (``report``): each cell's exported policy re-judged on one machine by the
  bench's 1-epoch judge, under the export rule ``--rule`` (default ``reward``, what a search exports by default).

The first file that holds a (method, seed) gives its value (list a re-judged file before the bench it re-judges to
prefer it); every pooled value records its file.

Usage: python scripts/pool_seeds.py OUT_JSON --budget 0.3 --judge NAME FILE [FILE ...] [--judge NAME FILE ...]
                                    [--rule reward]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from amc.atomic import atomic_write_json
from amc.bench.compare_stats import mean_std, paired
from amc.errors import ConfigError, script_main
from amc.search.pick import check_rule


def values(data: dict[str, Any], budget: str, rule: str = "reward") -> dict[str, dict[int, float]]:
    """``method -> seed -> mAP`` of one results file at ``budget`` (the file's kind is told by its keys)."""
    if "budgets" in data:  # bench=compare
        methods = data["budgets"].get(budget, {})
        return {m: {int(r["seed"]): r["map_finetuned"] for r in agg.get("per_seed", [])
                    if r.get("map_finetuned") is not None} for m, agg in methods.items()}
    if str(data.get("budget")) != budget:
        return {}
    if "order" in data:  # finetune_cells.py
        return {m: {int(s): c["best"] for s, c in cells.items() if c.get("best") is not None}
                for m, cells in data["cells"].items()}
    if "report" in data:  # export_rule.py
        return {m: {int(s): c[rule]["map_finetuned"] for s, c in cells.items()
                    if c.get(rule, {}).get("map_finetuned") is not None} for m, cells in data["cells"].items()}
    raise ConfigError("not a bench=compare, finetune_cells.py or export_rule.py results file")


def pool(files: list[Path], budget: str, rule: str = "reward") -> tuple[dict[str, list[dict[str, Any]]], dict]:
    """The pooled per-seed records ``method -> [{seed, map, file}]`` (ordered by seed; the first file wins)."""
    pooled: dict[str, dict[int, dict[str, Any]]] = {}
    for path in files:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read a results file ({exc})") from None
        try:
            found = values(data, budget, rule)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        for method, seeds in found.items():
            for seed, value in seeds.items():
                pooled.setdefault(method, {}).setdefault(seed, {"seed": seed, "map": float(value),
                                                                "file": str(path)})
    records = {m: [s[k] for k in sorted(s)] for m, s in pooled.items()}
    if "ddpg" not in records:
        raise ConfigError(f"no DDPG cell at budget {budget} in {', '.join(map(str, files))}")
    return records, paired({budget: records}, metric="map")[budget]


def table(report: dict[str, Any]) -> str:
    """The pooled comparisons as markdown, one row per judge and method."""
    rows = ["| judge | method | seeds | mean ± sd | DDPG - method [95% CI] | DDPG ahead |",
            "| --- | --- | ---: | ---: | --- | ---: |"]
    for judge, entry in report["judges"].items():
        for method, records in entry["records"].items():
            mean, sd = mean_std([r["map"] for r in records])
            diff = entry["paired"].get(method)
            pair = (f"{diff['mean']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]" if diff else "")
            ahead = f"{diff['wins']} of {len(diff['seeds'])}" if diff else ""
            rows.append(f"| {judge} | {method} | {len(records)} | {mean:.4f} ± {sd or 0:.4f} | {pair} | {ahead} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="where the pooled comparisons go (JSON)")
    parser.add_argument("--budget", default="0.3", help="the budget key of the results files (0.3, 0.5)")
    parser.add_argument("--judge", nargs="+", action="append", required=True, metavar=("NAME", "FILE"),
                        help="a judge's name and the results files pooled under it (repeat for several judges)")
    parser.add_argument("--rule", default="reward", help="the export rule read from export_rule.py outputs")
    args = parser.parse_args(argv)
    check_rule(args.rule)
    report: dict[str, Any] = {"budget": args.budget, "rule": args.rule, "judges": {}}
    for name, *files in args.judge:
        if not files:
            raise ConfigError(f"--judge {name}: give the results files pooled under it")
        records, pairs = pool([Path(f) for f in files], args.budget, args.rule)
        report["judges"][name] = {"files": files, "records": records, "paired": pairs}
    atomic_write_json(args.out, report)
    print(table(report))


if __name__ == "__main__":
    script_main(main)
