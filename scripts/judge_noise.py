#!/usr/bin/env python3
"""How noisy is the bench's judge? Each exported policy of a ``bench=compare`` run judged again with other seeds.

The bench judges a policy by its full-val mAP after a 1-epoch fine-tune whose augmentation stream and data order
come from the cell's seed (``CompareBench.judge``); both methods of a seed get the same stream, so the pairing
removes the seed's luck only as far as two different pruned networks react alike to it. At 30% FLOPs the gaps
between DDPG and random search (~0.01) are the size of a 1e-7 weight perturbation's effect (0.005-0.01, issue 20).
This script re-judges each finished search cell's exported policy with the fine-tune seeds ``seed + 1000 r`` for
``r`` in ``--repeats`` (the same for every method of a seed, so the pairs stay paired; the seeds a bench with
``bench.finetune.judge_seeds`` uses: a cell's own judgements are read, not redone), on this machine, and reports:

* the judge's own spread: the sd of one policy's mAP over the fine-tune seeds (pooled over policies);
* DDPG against each other method paired by seed, on the cell's own judgement (r = 0, read from the cell) and on the
  mean over every fine-tune seed (``paired``: mean, bootstrap interval, seeds won, sign test).

Usage: python scripts/judge_noise.py RUN_DIR OUT_JSON [--budget 0.3] [--seeds 8 9 10 11] [--methods ddpg random]
                                     [--repeats 1 2] [--threads 1] [--bench-override OVERRIDE ...]
OUT_JSON is written after every judgement and read back: the same command continues where a killed one stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amc.atomic import atomic_write_json
from amc.bench.compare import CompareBench, cell_judges
from amc.bench.compare_stats import JUDGE_SEED_STRIDE, mean_std, paired
from amc.errors import ConfigError, script_main
from amc.search.setup import SearchSetup

def report(cells: dict[str, dict[str, dict[str, float]]], budget: str) -> dict[str, Any]:
    """The judge's spread and the paired comparisons from ``method -> seed -> repeat -> 1-epoch mAP``."""
    spreads = [statistics.stdev(by_repeat.values()) for by_seed in cells.values() for by_repeat in by_seed.values()
               if len(by_repeat) >= 2]
    out: dict[str, Any] = {"judge_sd": float(np.sqrt(np.mean(np.square(spreads)))) if spreads else None,
                           "policies": len(spreads), "summary": {}, "paired": {}}
    for label, reduce in (("cell", lambda r: r.get("0")), ("mean", lambda r: float(np.mean(list(r.values()))))):
        records = {m: [{"seed": int(s), "map": reduce(r)} for s, r in sorted(by_seed.items(), key=lambda x: int(x[0]))
                       if reduce(r) is not None] for m, by_seed in cells.items()}
        out["summary"][label] = {m: mean_std([r["map"] for r in rs]) for m, rs in records.items()}
        out["paired"][label] = paired({budget: records}, metric="map")[budget] if "ddpg" in records else {}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--budget", default="0.3")
    ap.add_argument("--seeds", type=int, nargs="+", default=[8, 9, 10, 11])
    ap.add_argument("--methods", nargs="+", default=["ddpg", "random"])
    ap.add_argument("--repeats", type=int, nargs="+", default=[1, 2], help="r >= 1: fine-tune seed seed + 1000 r")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bench-override", nargs="*", default=[], help="overrides the bench ran with")
    a = ap.parse_args()
    if min(a.repeats) < 1:
        raise ConfigError("--repeats: r = 0 is the cell's own judgement (read from the cell); give r >= 1")
    torch.set_num_threads(a.threads)
    bench = CompareBench.of_run(a.run_dir.resolve(), a.budget, a.seeds, a.methods, a.bench_override)
    budget = bench.budget(a.budget)
    out: dict[str, Any] = json.loads(a.out.read_text()) if a.out.is_file() else {}
    out.update(budget=a.budget, run_dir=str(a.run_dir), threads=a.threads, torch=torch.__version__,
               seed_stride=JUDGE_SEED_STRIDE)
    cells: dict[str, dict[str, dict[str, float]]] = out.setdefault("cells", {})
    with tempfile.TemporaryDirectory() as work:
        setup = SearchSetup(bench.cfgs[(budget.key, a.methods[0], a.seeds[0])], Path(work))
        setup.build_env()
        try:
            for seed in a.seeds:
                for method in a.methods:
                    record = bench.finished_record(budget, method, seed, all_judged=False)
                    if record is None:
                        raise ConfigError(f"the cell {a.budget}/{method}/seed {seed} has not finished in {a.run_dir}")
                    judged = {str(r): j["map"] for r, j in enumerate(cell_judges(record))}  # the cell's own
                    done = cells.setdefault(method, {}).setdefault(str(seed), {})
                    done.update({r: v for r, v in judged.items() if r not in done})
                    selection = bench.cell_selection(setup, budget, method, record)  # baselines recomputed
                    for r in a.repeats:
                        if str(r) in done:
                            continue
                        done[str(r)] = bench.judgement(setup, selection, seed, r)["map"]
                        atomic_write_json(a.out, out)
                        print(f"{method} seed {seed} repeat {r}: {done[str(r)]:.4f} (cell: {done['0']:.4f})",
                              flush=True)
        finally:
            setup.evaluate.close()
    out["report"] = report(cells, a.budget)
    atomic_write_json(a.out, out)
    rep = out["report"]
    print(f"judge sd over fine-tune seeds: {rep['judge_sd']:.4f} ({rep['policies']} policies)")
    for label, by_other in rep["paired"].items():
        print(f"{label}: " + "; ".join(f"DDPG - {o} {p['mean']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}], "
                                       f"ahead in {p['wins']}/{len(p['seeds'])}" for o, p in by_other.items()))


if __name__ == "__main__":
    script_main(main)
