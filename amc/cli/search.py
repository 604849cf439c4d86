"""``amc-search``: the AMC-style pruning search (Gymnasium environment + stable-baselines3 DDPG agent).

With no arguments a short search runs on the embedded demo model and data on the CPU. Everything is configured
from ``conf/search.yaml`` and its groups (model, data, agent, reward, evaluator, device, budget), e.g.::

    amc-search budget.flops=0.3 agent=random episodes=200
    amc-search -m budget.flops=0.3,0.5,0.7 seed=0,1                 # a sweep, one run directory per job
    amc-search -m hydra/launcher=slurm budget.flops=0.3,0.5 seed=0,1  # the same on a Slurm cluster
    amc-search resume=outputs/search/2026-11-26_10-00-00            # continue an interrupted search
    amc-search resume=outputs/search/2026-11-26_10-00-00 episodes=200  # extend a search (finished or not)

A run directory is used by one command at a time (a second one is refused), and a resume continues the run with
its own settings: only episodes, progress, checkpoint_every and final.* may differ from them.
"""

from __future__ import annotations

from omegaconf import DictConfig

from amc.cli.app import amc_app
from amc.config import run_dir
from amc.resume import apply_changes, record_changes, resume_changes, task_overrides
from amc.search.resume import SEARCH_RESUME


@amc_app("search", resume=SEARCH_RESUME)
def main(cfg: DictConfig) -> dict:
    from amc.search.runner import SearchRunner, load_resume_config  # torch: kept off start-up so --help is fast

    out = run_dir()
    changes = {}
    if cfg.get("resume"):
        # The run continues with the config it started with; the command line may only change the settings
        # listed in amc.search.resume.MUTABLE_ON_RESUME (any other difference was refused before Hydra started).
        changes = resume_changes(SEARCH_RESUME, cfg, task_overrides())
        cfg = apply_changes(load_resume_config(out), changes)
    runner = SearchRunner(cfg, out)
    record_changes(SEARCH_RESUME, out, changes)  # once the runner accepted them: a later resume keeps them
    return runner.run()


if __name__ == "__main__":
    main()
