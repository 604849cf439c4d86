#!/usr/bin/env python3
"""Does the bench's ranking survive a real fine-tune? (issue 20, item 5)

`amc-bench bench=compare` judges every policy by a short fine-tune (1 epoch on 1000 images). A user runs the default
`amc-finetune` instead (5 epochs on every training image, with distillation). This script takes the finished cells
of a bench=compare run directory, rebuilds each cell's pruned model exactly (the channels it was scored with,
checked against the widths the cell recorded), fine-tunes it with the default `amc-finetune` (its own process, one
after the other; the fine-tune's seed is the cell's seed) and says whether the order of the methods holds.

Usage:
    python scripts/finetune_cells.py RUN_DIR OUT_DIR [--budget 0.5] [--seeds 0 1 2 3]
                                     [--methods ddpg random uniform global_magnitude] [--bench-override O]
                                     [-- FINETUNE_OVERRIDE ...]

    RUN_DIR   a bench=compare run directory (or docs/results/compare-heldout: its cells/ is all it reads)
    OUT_DIR   models/<method>-seed<k>/ (the rebuilt pruned models), finetune/<method>-seed<k>/ (each amc-finetune
              run directory), logs/, results.json and results.md. Run the same command again to continue: a finished
              fine-tune is read back, an interrupted one resumes (amc-finetune resume=).
    FINETUNE_OVERRIDE  given to every amc-finetune, e.g. device=cuda, or epochs=1 train_images=16 for a smoke test
                       (results are then not the default fine-tune's, and results.json records the overrides).

Reported per method: the default fine-tune's best mAP@0.5:0.95 (amc-finetune keeps the best epoch by val fitness),
its last epoch's mAP (no choice made on the val images), and the bench's 1-epoch mAP of the same policy; per seed,
every method's two mAPs; DDPG against each other method paired by seed under both fine-tunes (mean difference,
bootstrap 95% interval, seeds won, sign test: amc.bench.compare_stats.paired, as the bench reports them); and the
Spearman rank correlation of the 1-epoch mAP with the default fine-tune's over every fine-tuned policy, and of each
epoch of the default fine-tune with its best (how early its final order shows).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from amc.atomic import atomic_write_json, atomic_write_text
from amc.bench.compare import METHODS, SEARCH_METHODS, CompareBench
from amc.bench.common import safe_spearman
from amc.bench.compare_stats import mean_std, paired
from amc.console import fmt_mean_std
from amc.errors import AmcError, script_main
from amc.models.io import save_model


def _finetune(python: str, model_dir: Path, run: Path, seed: int, overrides: list[str], log: Path) -> dict[str, Any]:
    """The default amc-finetune of one pruned model in its own process (resumed if it was interrupted)."""
    metrics = run / "metrics.json"
    if not metrics.is_file():
        if (run / "trainer_state.pt").is_file():
            args = [f"resume={run}"]
        else:
            args = [f"model.path={model_dir}", f"seed={seed}", f"hydra.run.dir={run}", "progress=false", *overrides]
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:
            done = subprocess.run([python, "-m", "amc.cli.finetune", *args], stdout=out, stderr=subprocess.STDOUT,
                                  check=False)
        if done.returncode != 0 or not metrics.is_file():
            raise AmcError(f"amc-finetune of {model_dir} failed (exit {done.returncode}); see {log}")
    return json.loads(metrics.read_text())


FINETUNES = ("best", "last", "bench_1epoch")  # a cell's mAPs: default fine-tune (best, last epoch), the bench's 1 epoch
JUDGES = {"bench_1epoch": "the bench's 1-epoch mAP", "map_proxy": "the search's proxy mAP (search split)"}
LABELS = {"best": "default fine-tune, best epoch", "last": "default fine-tune, last epoch",
          "bench_1epoch": "bench 1-epoch"}


def report(cells: dict[str, dict[int, dict[str, Any]]], budget: str, seeds: list[int], methods: list[str],
           overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """results.json's figures and results.md's lines from the fine-tuned cells (``method -> seed -> record``).

    Per method the mean and sd of each fine-tune's mAP; the methods' order by mean under each; DDPG against every
    other method seed by seed under each (:func:`amc.bench.compare_stats.paired`: mean difference, bootstrap 95%
    interval, wins / ties / losses, sign test), the same statistics the bench reports; and how well the bench's
    1-epoch fine-tune and the search's proxy mAP rank the policies as the default fine-tune does (Spearman over
    every fine-tuned cell, and over the search policies alone: the baselines' policy is the same in every seed).
    """
    summary = {m: {k: mean_std([cells[m][s][k] for s in seeds]) for k in FINETUNES} for m in methods}
    orders = {k: sorted(methods, key=lambda m: -(summary[m][k][0] or 0.0)) for k in FINETUNES}
    pairs: dict[str, Any] = {}
    if "ddpg" in methods:
        for k in FINETUNES:  # paired() reads {budget: {method: [records with "seed"]}}: one budget here
            records = {budget: {m: [{"seed": s, k: cells[m][s][k]} for s in seeds] for m in methods}}
            pairs[k] = paired(records, metric=k)[budget]
    groups = {"every policy": [cells[m][s] for m in methods for s in seeds],
              "search policies": [cells[m][s] for m in methods if m in SEARCH_METHODS for s in seeds]}
    spearman = {judge: {who: safe_spearman([c[judge] for c in group], [c["best"] for c in group])
                        for who, group in groups.items() if group and all(judge in c for c in group)}
                for judge in ("bench_1epoch", "map_proxy")}
    # How early in the default fine-tune its final order shows: Spearman of each epoch's mAP with the best epoch's
    # (the cells' per-epoch history; folders made before it was recorded have none).
    by_epoch: dict[str, list[float | None]] = {}
    histories = [c.get("history") for c in groups["every policy"]]
    if histories and all(histories) and len({len(h) for h in histories}) == 1:
        for who, group in groups.items():
            by_epoch[who] = [safe_spearman([c["history"][k] for c in group], [c["best"] for c in group])
                             for k in range(len(histories[0]))]
    results = {"budget": budget, "seeds": seeds, "methods": methods, "finetune_overrides": overrides,
               "cells": cells, "summary": summary, "order": orders,
               "order_holds": orders["best"] == orders["bench_1epoch"],
               "ddpg_ahead_in_seeds": {o: {k: pairs[k][o]["wins"] for k in FINETUNES} for o in pairs.get("best", {})},
               "paired": pairs, "spearman_vs_default": spearman, "spearman_by_epoch": by_epoch}
    lines = [f"# Default amc-finetune of the bench=compare policies at {budget} FLOPs, seeds {seeds}", "",
             f"amc-finetune overrides: {overrides or 'none (the default fine-tune)'}", "",
             "| method | " + " | ".join(LABELS[k] for k in FINETUNES) + " |", "| --- | ---: | ---: | ---: |"]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(fmt_mean_std(*summary[m][k], digits=4) for k in FINETUNES) + " |")
    lines += ["", "| seed | " + " | ".join(f"{m} (default / 1-epoch)" for m in methods) + " |",
              "| ---: |" + " ---: |" * len(methods)]
    for s in seeds:
        lines.append(f"| {s} | " + " | ".join(f"{cells[m][s]['best']:.4f} / {cells[m][s]['bench_1epoch']:.4f}"
                                              for m in methods) + " |")
    lines += ["", f"Order by mean: default (best) {orders['best']}, default (last) {orders['last']}, bench 1-epoch "
              f"{orders['bench_1epoch']}: the order {'holds' if results['order_holds'] else 'changes'}."]
    for other in pairs.get("best", {}):
        lines.append(f"- DDPG - {other}: " + "; ".join(
            f"{LABELS[k]} {p['mean']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}], ahead in {p['wins']}/"
            f"{len(p['seeds'])} seeds (sign test p {p['sign_p']:.3f})"
            for k in ("best", "bench_1epoch") for p in [pairs[k][other]]))
    for judge, by_group in spearman.items():
        for who, rho in by_group.items():
            if rho is not None:
                lines.append(f"- Spearman rank correlation of {JUDGES[judge]} with the default fine-tune's mAP, "
                             f"{who} ({len(groups[who])}): {rho:.3f}")
    for who, rhos in by_epoch.items():
        lines.append(f"- Spearman of each epoch's mAP of the default fine-tune with its best, {who}: "
                     + ", ".join("-" if r is None else f"{r:.3f}" for r in rhos))
    return results, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--budget", default="0.5")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--python", default=sys.executable, help="the interpreter amc is installed in")
    ap.add_argument("--bench-override", action="append", default=[],
                    help="an amc-bench override the run was made with beyond the defaults (repeatable), e.g. "
                         "\"bench.search.overrides=['export_rule=map_top10_learned']\" for re-exported cells")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)  # amc-finetune overrides follow a "--"
    a = ap.parse_args(argv[:cut])
    a.overrides = argv[cut + 1:]
    run_dir, out = a.run_dir.resolve(), a.out_dir.resolve()
    bench = CompareBench.of_run(run_dir, a.budget, a.seeds, a.methods, a.bench_override)
    budget = bench.budget(a.budget)
    ready = [s for s in a.seeds if all(bench.cell_path(budget, m, s).is_file() for m in a.methods)]
    if not ready:
        raise AmcError(f"no seed of {a.seeds} has every method finished in {run_dir} at budget {a.budget}")
    if ready != a.seeds:  # a bench still running: fine-tune what it has, the same command later does the rest
        print(f"seeds {sorted(set(a.seeds) - set(ready))} have unfinished cells: fine-tuning seeds {ready} only")
        a.seeds = ready
    cells: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in a.methods}
    for seed in a.seeds:  # seed-major: an interrupted run has whole seeds first
        for method in a.methods:
            name = f"{method}-seed{seed}"
            model_dir = out / "models" / name
            if model_dir.is_dir():  # rebuilt by an earlier run: only the record is needed
                record = bench.finished_record(budget, method, seed, all_judged=False)
            else:
                with tempfile.TemporaryDirectory() as work:
                    model, source, record = bench.cell_model(budget, method, seed, Path(work))
                save_model(model, model_dir, extra={"pruned_from": source, "bench_cell": f"{a.budget}/{name}"})
            print(f"fine-tuning {name} (budget {a.budget}) ...", flush=True)
            metrics = _finetune(a.python, model_dir, out / "finetune" / name, seed, a.overrides,
                                out / "logs" / f"{name}.log")
            cells[method][seed] = {"best": metrics["best_map50_95"], "best_epoch": metrics["best_epoch"],
                                   "last": metrics["history"][-1].get("map50_95"), "epochs": metrics["epochs"],
                                   "history": [h.get("map50_95") for h in metrics["history"]],
                                   "bench_1epoch": record["map_finetuned"], "map_proxy": record["map_proxy"],
                                   "seconds": metrics["seconds"]}
            print(f"  {name}: default fine-tune best {cells[method][seed]['best']:.4f} (epoch "
                  f"{metrics['best_epoch']}), last {cells[method][seed]['last']:.4f}; bench 1-epoch "
                  f"{record['map_finetuned']:.4f}", flush=True)
    results, lines = report(cells, a.budget, a.seeds, a.methods, a.overrides)
    results["run_dir"] = str(run_dir)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    script_main(main)
