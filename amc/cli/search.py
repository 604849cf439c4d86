"""``amc-search``: the AMC-style pruning search (Gymnasium environment + stable-baselines3 DDPG agent).

With no arguments a short search runs on the embedded demo model and data on the CPU. Everything is configured
from ``conf/search.yaml`` and its groups (model, data, agent, reward, evaluator, device, budget), e.g.::

    amc-search budget.flops=0.3 agent=random episodes=200
    amc-search -m budget.flops=0.3,0.5,0.7 seed=0,1                 # a sweep, one run directory per job
    amc-search -m hydra/launcher=slurm budget.flops=0.3,0.5 seed=0,1  # the same on a Slurm cluster
    amc-search resume=outputs/search/2026-11-26_10-00-00            # continue an interrupted search
"""

from __future__ import annotations

from omegaconf import DictConfig

from amc.cli.app import amc_app, run_dir


@amc_app("search")
def main(cfg: DictConfig) -> dict:
    from amc.search.runner import SearchRunner, load_resume_config

    out = run_dir()
    if cfg.get("resume"):
        # The run continues with the config it started with: a resume changes nothing but where it starts.
        cfg = load_resume_config(out)
    return SearchRunner(cfg, out).run()


if __name__ == "__main__":
    main()
