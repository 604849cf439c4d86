#!/usr/bin/env python3
"""Which proxy ranks policies like the default fine-tune? (issue 20: the next step after item 5)

`scripts/finetune_cells.py` fine-tuned every held-out policy of `bench=compare` with the default `amc-finetune`. At
30% FLOPs the search's own proxy (30 distillation steps) ranked those fine-tunes with Spearman 0.406 only: it calls
uniform pruning the worst policy there is, five epochs bring it level with the searches. This script re-scores the
same policies (rebuilt exactly: the channels each cell was scored with, checked against its recorded widths) with
a proxy setting of your choice, on the search split as the search does, and says how well that proxy's mAP and
its reward (minus the distillation loss, `reward=recovery`) rank them against the default fine-tune's mAP.

Usage:
    python scripts/proxy_vs_finetune.py FINETUNE_DIR OUT_JSON [--run-dir docs/results/compare-heldout]
        [--methods ...] [--seeds ...] [--threads 1] [-- PROXY_KEY=VALUE ...]

    FINETUNE_DIR  a finetune_cells.py output folder (docs/results/finetune-cells-0.3): its results.json names the
                  budget and holds every cell's fine-tuned mAPs
    OUT_JSON      one record per scored cell, written after each (run the same command again to continue), and
                  the report; the report is also printed
    PROXY_KEY=VALUE  settings of conf/proxy/default.yaml on top of the search's (recover_steps=100, bn_batches=8 ...)

Reported: per method, the mean proxy mAP and reward; Spearman of each against the default fine-tune's mAP over every
policy and over the search policies alone (the baselines' policy is the same in every seed); the median seconds
per policy on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from amc.atomic import atomic_write_json
from amc.bench.common import safe_spearman
from amc.bench.compare import METHODS, SEARCH_METHODS, CompareBench
from amc.errors import ConfigError, script_main
from amc.search.setup import SearchSetup

SCORES = {"map": "proxy mAP", "reward": "minus the distillation loss (reward=recovery)"}


def _proxy_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as a mapping (values parsed as YAML: numbers, null, true)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"proxy settings are KEY=VALUE, got {item!r}")
        out[key] = OmegaConf.create(f"v: {value}").v
    return out


def report(cells: dict[str, dict[str, dict[str, Any]]], methods: list[str], seeds: list[int]) -> dict[str, Any]:
    """Per method the mean proxy scores; Spearman of each score with the default fine-tune's best mAP over every
    policy and over the search policies; the median seconds per policy (``cells``: method -> seed -> record)."""
    records = [cells[m][str(s)] for m in methods for s in seeds if str(s) in cells.get(m, {})]
    search = [r for r in records if r["method"] in SEARCH_METHODS]
    per_method = {m: {k: statistics.fmean(cells[m][str(s)][k] for s in seeds if str(s) in cells[m])
                      for k in ("map", "reward", "finetuned")}
                  for m in methods if any(str(s) in cells.get(m, {}) for s in seeds)}
    spearman = {k: {who: safe_spearman([r[k] for r in group], [r["finetuned"] for r in group])
                    for who, group in (("every policy", records), ("search policies", search)) if len(group) >= 3}
                for k in SCORES}
    seconds = sorted(r["seconds"] for r in records)
    return {"policies": len(records), "per_method": per_method, "spearman_vs_default": spearman,
            "median_seconds": seconds[len(seconds) // 2] if seconds else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("finetune_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--run-dir", type=Path, default=Path("docs/results/compare-heldout"))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: every seed of FINETUNE_DIR")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    overrides = _proxy_overrides(argv[cut + 1:])
    torch.set_num_threads(a.threads)
    finetuned = json.loads((a.finetune_dir / "results.json").read_text())
    budget_key, seeds = str(finetuned["budget"]), a.seeds or [int(s) for s in finetuned["seeds"]]
    bench = CompareBench.of_run(a.run_dir.resolve(), budget_key, seeds, a.methods)
    budget = bench.budget(budget_key)
    out: dict[str, Any] = json.loads(a.out.read_text()) if a.out.is_file() else {}
    if out and (out.get("proxy_overrides") != overrides or out.get("budget") != budget_key):
        raise ConfigError(f"{a.out} holds another proxy setting or budget ({out.get('proxy_overrides')}, "
                          f"{out.get('budget')}): choose another output file")
    out.update(budget=budget_key, proxy_overrides=overrides, finetune_dir=str(a.finetune_dir),
               threads=a.threads, torch=torch.__version__)
    cells: dict[str, dict[str, dict[str, Any]]] = out.setdefault("cells", {})
    cfg = bench.cfgs[(budget.key, a.methods[0], seeds[0])].copy()  # the search's proxy (seed 0 in every cell)
    for key, value in overrides.items():
        OmegaConf.update(cfg, f"evaluator.proxy.{key}", value, force_add=True)
    with tempfile.TemporaryDirectory() as work:
        setup = SearchSetup(cfg, Path(work))
        setup.build_env()
        proxy = setup.evaluate.proxy
        try:
            for seed in seeds:
                for method in a.methods:
                    if str(seed) in cells.get(method, {}):
                        continue
                    record = bench.finished_record(budget, method, seed, all_judged=False)
                    if record is None:
                        raise ConfigError(f"the cell {budget_key}/{method}/seed {seed} has not finished in {a.run_dir}")
                    selection = bench.cell_selection(setup, budget, method, record)
                    # a baseline's policy is the same in every seed (checked: same channels), so it is scored once
                    same = next((c for c in cells.get(method, {}).values() if c.get("kept") == record["kept"]), None)
                    if same is None:
                        result = proxy(selection)
                        scores = {"map": result.map50_95, "reward": -result.recover_loss, "seconds": result.total_s}
                    else:
                        scores = {k: same[k] for k in ("map", "reward", "seconds")}
                    cells.setdefault(method, {})[str(seed)] = {
                        "method": method, "seed": seed, **scores, "kept": record["kept"],
                        "finetuned": finetuned["cells"][method][str(seed)]["best"]}
                    atomic_write_json(a.out, out)
                    print(f"{method} seed {seed}: proxy mAP {scores['map']:.4f}, reward {scores['reward']:.4f}, "
                          f"{scores['seconds']:.1f} s", flush=True)
        finally:
            proxy.close()
    out["report"] = report(cells, a.methods, seeds)
    atomic_write_json(a.out, out)
    print(json.dumps(out["report"], indent=1))


if __name__ == "__main__":
    script_main(main)
