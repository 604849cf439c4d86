"""Parallel episodes of a search: N pruning environments in N worker processes, stepped in lockstep by the agent.

With ``workers: N`` the search builds N :class:`~envs.pruning_env.PruningEnv` in worker processes
(:func:`envs.vector.make_vec_env`: the lockstep plumbing is the environments' side), each worker building its own
model copy and evaluator from the search config (:class:`amc.search.setup.SearchSetup`), and the agent plays N
episodes at once (:meth:`agents.base.SearchAgent.run_batched`). The fork server preloads torch and amc, so each
worker forks from an interpreter that has imported them once, instead of importing them again.

Where each worker runs is decided once (:func:`amc.search.setup.worker_placement`, checked when the main process
builds its environment): ``device=cuda`` spreads the workers round-robin over the visible GPUs (one model copy
per worker on its GPU; with one GPU they share it), and ``worker_devices: [cuda:0, cuda:1]`` places them as
listed. Each worker's config then names its own device.

Example::

    vec_env = make_search_vec_env(cfg, run_dir, workers=4)
    agent.run_batched(vec_env, episodes=400, on_episode=log)
    vec_env.close()
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import gymnasium
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.vec_env import VecEnv

from amc.console import console
from amc.errors import ConfigError
from amc.search.setup import SearchSetup, worker_placement
from envs.vector import make_vec_env

PRELOAD = ["torch", "stable_baselines3", "amc.search.setup", "envs"]
"""Modules the fork server imports once, before it forks the workers."""


# ---------------------------------------------------------------------------------------------- the search's workers
def search_worker_env(config: dict[str, Any], run_dir: str, rank: int, workers: int) -> gymnasium.Env:
    """Worker ``rank`` of ``workers``: the search's environment, built from the plain config in this process."""
    setup = SearchSetup(OmegaConf.create(config), Path(run_dir), worker=(rank, workers))
    setup.build_env()
    return setup.env


def worker_configs(cfg: DictConfig, workers: int) -> list[dict[str, Any]]:
    """The plain config of each worker: the search's, with ``device.name`` set to the worker's own device."""
    configs = []
    for device in worker_placement(cfg, workers):
        config = OmegaConf.to_container(cfg, resolve=True)
        config["device"]["name"] = device
        configs.append(config)
    return configs


def make_search_vec_env(cfg: DictConfig, run_dir: Path, workers: int, start_method: str | None = None) -> VecEnv:
    """``workers`` search environments, one per worker process, each with its own model copy and evaluator on its
    own device (:func:`amc.search.setup.worker_placement`).

    The config travels as plain data (each worker composes nothing and reads no Hydra state). Call it after the
    main process has built its own environment: a latency table it measured is then read from the run
    directory, and decoded evaluation images from the disk cache, instead of being redone N times.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    configs = worker_configs(cfg, workers)
    devices = [c["device"]["name"] for c in configs]
    if len(set(devices)) > 1:
        console.print(f"workers on {', '.join(devices)}")
    fns = [functools.partial(search_worker_env, config, str(run_dir), rank, workers)
           for rank, config in enumerate(configs)]
    return make_vec_env(fns, start_method=start_method, preload=PRELOAD)


def episodes_per_hour(episodes: int, seconds: float) -> float:
    """Throughput of ``episodes`` played in ``seconds`` of wall time (nan for no time)."""
    return episodes * 3600.0 / seconds if seconds > 0 else math.nan
