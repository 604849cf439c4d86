#!/usr/bin/env python3
"""Which of a search's episodes should it export? (issue 20: the 30% FLOPs searches)

A search exports the episode with the best reward (``reward=recovery``: minus the distillation loss after the proxy's
recovery steps). Its episode log also holds each episode's proxy mAP, which at 30% ranks the search policies' default
fine-tune better than the reward does (`scripts/proxy_vs_finetune.py`: Spearman 0.841 against 0.679). This script
takes the finished search cells of a `bench=compare` run, picks one episode per cell by each rule, scores every
picked policy with the bench's own judge on this machine (full-val mAP after adaptive BN and the 1-epoch fine-tune
with the cell's seed: `CompareBench.judge`), and pairs the methods seed by seed under each rule.

Rules: ``reward`` (the export today), ``map_top10`` (the best proxy mAP among the 10 best rewards), ``map`` (the
best proxy mAP of the whole search), ``map_top10_learned`` (``map_top10`` over the episodes after DDPG's warm-up: a
warm-up draw exported is a failed seed; random search has no warm-up, so it picks as ``map_top10``). The search's
trajectory is the same under every rule; only the pick differs.

With ``--finetune-dir DIR`` every picked policy that is not the cell's export (those are in
docs/results/finetune-cells-<budget>) also gets the default `amc-finetune` (its own process, the cell's seed, one
thread), as scripts/finetune_cells.py runs it: DIR/models/, DIR/finetune/<method>-seed<k>-ep<episode>/.

Usage: python scripts/export_rule.py RUN_DIR OUT_JSON [--budget 0.3] [--seeds 0 ... 7] [--threads 1]
                                     [--rules reward map_top10 ...] [--finetune-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from amc.atomic import atomic_write_json
from amc.bench.compare import SEARCH_METHODS, CompareBench
from amc.bench.compare_stats import mean_std, paired, read_episodes
from amc.errors import ConfigError, script_main
from amc.models.io import save_model
from amc.pruning.physical import prune_model
from amc.pruning.selection import ChannelSelection
from amc.search.pick import EXPORT_RULES, pick
from amc.search.setup import SearchSetup

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script that runs amc-finetune
from finetune_cells import _finetune  # noqa: E402

RULES = EXPORT_RULES  # the search's own rules (amc/search/pick.py: export_rule of conf/search.yaml)


def _channels(setup: SearchSetup, ratios: np.ndarray) -> ChannelSelection:
    """The channels a search keeps for these ratios (its criterion on its model, as the search exports them)."""
    return setup.criterion.select(setup.space.kept_channels(ratios))


def report(cells: dict[str, dict[str, dict[str, Any]]], seeds: list[int], budget: str,
           exported_default: dict[str, dict[str, float]] | None = None,
           rules: Sequence[str] = RULES) -> dict[str, Any]:
    """Per rule and method the mean and sd of the judged mAPs; per rule DDPG against random search, paired by seed.

    With ``exported_default`` (method -> seed -> the default fine-tune's mAP of the cell's exported policy, from
    finetune_cells.py's results) the same for the default fine-tune (``default_finetune``), for every rule whose
    other picks were fine-tuned too (``--finetune-dir``).
    """
    methods = [m for m in SEARCH_METHODS if m in cells]
    out: dict[str, Any] = {"summary": {}, "paired": {}}
    for rule in rules:
        values = {m: {s: dict(cells[m][str(s)][rule]) for s in seeds} for m in methods}
        metrics = ["map_finetuned", "map_full", "map_proxy"]
        if exported_default is not None:
            for m in methods:
                for s in seeds:
                    entry = values[m][s]
                    if entry["episode"] == cells[m][str(s)]["reward"]["episode"]:
                        entry["default_finetune"] = exported_default[m][str(s)]
            if all("default_finetune" in values[m][s] for m in methods for s in seeds):
                metrics.append("default_finetune")
        out["summary"][rule] = {m: {k: mean_std([values[m][s][k] for s in seeds]) for k in metrics}
                                for m in methods}
        if len(methods) == 2:
            out["paired"][rule] = {}
            for k in metrics[:1] + metrics[3:]:
                records = {budget: {m: [{"seed": s, k: values[m][s][k]} for s in seeds] for m in methods}}
                if k == "default_finetune":  # the baselines' default fine-tunes too (their policy has no rule)
                    records[budget].update({m: [{"seed": s, k: exported_default[m][str(s)]} for s in seeds]
                                            for m in exported_default if m not in methods})
                out["paired"][rule][k] = paired(records, metric=k)[budget]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--budget", default="0.3")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--finetune-dir", type=Path, default=None)
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES,
                    help="the rules judged (reward always: the cell's own export, the pairing's reference)")
    ap.add_argument("--finetune-rules", nargs="+", default=list(RULES), choices=RULES,
                    help="the rules whose picks --finetune-dir fine-tunes")
    ap.add_argument("--exported-finetune", type=Path, default=None,
                    help="finetune_cells.py's output folder of this budget (the exported policies' default fine-tune)")
    a = ap.parse_args()
    rules = [r for r in RULES if r == "reward" or r in a.rules]
    torch.set_num_threads(a.threads)
    methods = list(SEARCH_METHODS)
    bench = CompareBench.of_run(a.run_dir.resolve(), a.budget, a.seeds, methods)
    budget = bench.budget(a.budget)
    out: dict[str, Any] = json.loads(a.out.read_text()) if a.out.is_file() else {}
    out.update(budget=a.budget, seeds=a.seeds, run_dir=str(a.run_dir), threads=a.threads, torch=torch.__version__)
    exported = None
    if a.exported_finetune is not None:  # finetune_cells.py's results of the same bench and budget
        tuned = json.loads((a.exported_finetune / "results.json").read_text())
        if str(tuned["budget"]) != a.budget:
            raise ConfigError(f"{a.exported_finetune} fine-tuned budget {tuned['budget']}, not {a.budget}")
        exported = {m: {s: c["best"] for s, c in by_seed.items()} for m, by_seed in tuned["cells"].items()}
        out["exported_finetune"] = str(a.exported_finetune)
    cells: dict[str, dict[str, dict[str, Any]]] = out.setdefault("cells", {})
    with tempfile.TemporaryDirectory() as work:
        setup = SearchSetup(bench.cfgs[(budget.key, methods[0], a.seeds[0])], Path(work))
        setup.build_env()
        try:
            for seed in a.seeds:
                for method in methods:
                    done = cells.setdefault(method, {}).setdefault(str(seed), {})
                    record = bench.finished_record(budget, method, seed, all_judged=False)
                    if record is None:
                        raise ConfigError(f"the cell {a.budget}/{method}/seed {seed} has not finished in {a.run_dir}")
                    log = bench.episode_log(budget, method, seed)
                    episodes = read_episodes(log)  # the shipped cells keep it gzipped
                    if not episodes:
                        raise ConfigError(f"{log}(.gz): no episode log in this search cell")
                    for rule in rules:
                        chosen = pick(episodes, rule)
                        ratios = np.asarray(chosen["ratios"], dtype=np.float64)
                        if rule == "reward" and not np.allclose(ratios, record["ratios"]):
                            raise ConfigError(f"{log}: the best-reward episode is not the policy the cell exported")
                        if rule not in done:
                            same = next((dict(v) for v in done.values() if v["episode"] == chosen["episode"]), None)
                            if same is None:
                                full, tuned = bench.judge(setup, _channels(setup, ratios), seed)
                                same = {"episode": chosen["episode"], "reward": chosen["reward"],
                                        "map_proxy": chosen["map50_95"], "map_full": full, "map_finetuned": tuned}
                            done[rule] = same
                            atomic_write_json(a.out, out)
                            print(f"{method} seed {seed} {rule}: episode {same['episode']}, proxy mAP "
                                  f"{same['map_proxy']:.4f}, judged {same['map_finetuned']:.4f} (cell's export: "
                                  f"{record['map_finetuned']:.4f})", flush=True)
                        entry = done[rule]
                        if a.finetune_dir is None or rule not in a.finetune_rules or \
                                entry["episode"] == done["reward"]["episode"] or "default_finetune" in entry:
                            continue
                        twin = next((v for v in done.values() if v["episode"] == entry["episode"]
                                     and "default_finetune" in v), None)
                        if twin is None:
                            name = f"{method}-seed{seed}-ep{entry['episode']}"
                            root = a.finetune_dir.resolve()
                            if not (root / "models" / name).is_dir():
                                save_model(prune_model(setup.model, setup.space, _channels(setup, ratios)),
                                           root / "models" / name,
                                           extra={"pruned_from": setup.source, "episode": entry["episode"]})
                            metrics = _finetune(sys.executable, root / "models" / name, root / "finetune" / name, seed,
                                                ["threads=1"], root / "logs" / f"{name}.log")
                            entry["default_finetune"] = metrics["best_map50_95"]
                            print(f"  {name}: default fine-tune {entry['default_finetune']:.4f}", flush=True)
                        else:
                            entry["default_finetune"] = twin["default_finetune"]
                        atomic_write_json(a.out, out)
        finally:
            setup.evaluate.close()  # the proxy's BN state and any masks
    out["report"] = report(cells, a.seeds, a.budget, exported, rules)
    atomic_write_json(a.out, out)
    for rule, by_method in out["report"]["summary"].items():
        for k, by_other in out["report"]["paired"].get(rule, {}).items():
            line = ", ".join(f"{m} {v[k][0]:.4f}" for m, v in by_method.items())
            print(f"{rule} ({k}): {line}; " + "; ".join(
                f"DDPG - {o} {p['mean']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}], ahead in {p['wins']}/"
                f"{len(p['seeds'])}" for o, p in by_other.items()))


if __name__ == "__main__":
    script_main(main)
