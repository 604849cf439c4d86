"""The README's Slurm recipe (budgets x seeds, one search per job), run with submitit's local executor.

``hydra/launcher=local`` is the same hydra-submitit-launcher as ``hydra/launcher=slurm``, with submitit's local
executor instead of sbatch: the sweep is expanded, pickled and started as separate jobs, and each job writes its
own run directory under the sweep directory, exactly as on a cluster. The sweep shape is the recipe's (a budget
list x a seed list) at test scale: 2 budgets x 2 seeds, stub evaluator, 3 episodes each. Then the recipe's two
follow-ups: collecting every job's ``results.json`` and resuming a job from its run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from test_search import STUB, amc_search

BUDGETS = ("0.5", "0.7")
SEEDS = ("0", "1")


def collect(sweep: Path) -> dict[tuple[float, int], dict]:
    """The recipe's collection step: every job's results.json, keyed by (FLOPs budget, seed)."""
    found = {}
    for path in sorted(sweep.glob("*/results.json")):
        r = json.loads(path.read_text())
        found[(r["budget"]["flops"], r["seed"])] = {**r, "job_dir": path.parent}
    return found


def test_budgets_x_seeds_sweep_with_the_submitit_local_executor(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run = amc_search("-m", "hydra/launcher=local", f"hydra.sweep.dir={sweep}", f"budget.flops={','.join(BUDGETS)}",
                     f"seed={','.join(SEEDS)}", *STUB, "episodes=3", "agent.warmup=1", "final.export_model=false",
                     cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr

    # one run directory per job (0..3), each holding its own search with its own budget and seed
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    for job in jobs:
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        results = json.loads((job / "results.json").read_text())
        assert results["budget"] == {"flops": float(overrides["budget.flops"])}
        assert results["seed"] == int(overrides["seed"])
        assert results["episodes"] == 3 and results["flops_ratio"] <= results["budget"]["flops"]
        assert (job / "best_policy.yaml").is_file() and (job / "checkpoint" / "state.json").is_file()
    # the sweep holds all four combinations, found the way the recipe collects them
    found = collect(sweep)
    assert sorted(found) == sorted((float(b), int(s)) for b in BUDGETS for s in SEEDS)
    assert (sweep / "multirun.yaml").is_file()
    assert list((sweep / ".submitit").glob("*/*_log.out")), "submitit's per-job logs are where the recipe says"

    # the recipe's resume command on one job's run directory continues it there (no new run directory)
    job = found[(0.5, 1)]["job_dir"]
    before = json.loads((job / "results.json").read_text())
    resumed = amc_search(f"resume={job}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    after = json.loads((job / "results.json").read_text())
    assert after["episodes"] == 3 and after["best_reward"] == before["best_reward"] and after["seed"] == 1
    assert not (tmp_path / "outputs").exists(), "the resumed search wrote a new run directory"
