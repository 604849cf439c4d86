"""Parallel episodes: N pruning environments in N worker processes, stepped in lockstep by the agent.

The expensive part of an episode is its final evaluation (the proxy mAP of the pruned model); the steps before
it cost microseconds. With ``workers: N`` the search builds N :class:`~envs.pruning_env.PruningEnv` in
stable-baselines3's :class:`~stable_baselines3.common.vec_env.SubprocVecEnv`, each worker building its own model
copy and evaluator from the search config (:class:`amc.search.runner.SearchSetup`), and the agent plays N
episodes at once (:meth:`agents.base.SearchAgent.run_batched`): every episode has one step per prunable unit, so
the environments reach their last step, and evaluate, together.

Workers start with ``forkserver`` where the platform has it (else ``spawn``): never a plain ``fork`` of a
process that has run torch (its thread pools and CUDA state do not survive a fork). The fork server preloads
torch and amc, so each worker forks from an interpreter that has imported them once, instead of importing them
again.

Example::

    vec_env = make_search_vec_env(cfg, run_dir, workers=4)
    agent.run_batched(vec_env, episodes=400, on_episode=log)
    vec_env.close()
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from agents.base import STEP_REWARD
from amc.errors import ConfigError

PRELOAD = ["torch", "stable_baselines3", "amc.search.runner", "envs"]
"""Modules the fork server imports once, before it forks the workers."""


class LockstepEnv(gymnasium.Wrapper):
    """The worker side of a batched rollout (:meth:`agents.base.SearchAgent.rollout_batch`).

    * A NaN action (:data:`agents.base.IDLE_ACTION`) means "sit this batch out": nothing is stepped or evaluated
      and the last observation comes back with reward 0, not done. A ``VecEnv`` steps all its environments
      together; this lets a last, partial batch evaluate only the episodes it plays.
    * ``info[STEP_REWARD]`` carries the environment's float reward unchanged (``VecEnv`` buffers may be float32).
    * :meth:`close` also releases the evaluator (the proxy's device memory and cache handles).
    """

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        self._last_obs: Any = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._last_obs = obs
        return obs, info

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if np.isnan(np.asarray(action, dtype=np.float64)).any():
            if self._last_obs is None:
                raise RuntimeError("LockstepEnv.step() before reset(): call reset() to start an episode")
            return self._last_obs, 0.0, False, False, {"idle": True}
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._last_obs = obs
        info[STEP_REWARD] = float(reward)
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        close = getattr(getattr(self.env.unwrapped, "evaluate", None), "close", None)
        if close is not None:
            close()
        super().close()


def default_start_method() -> str:
    """``forkserver`` where the platform offers it (Linux, macOS), else ``spawn``: both safe with torch."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def make_vec_env(env_fns: Sequence[Callable[[], gymnasium.Env]], subprocesses: bool = True,
                 start_method: str | None = None) -> VecEnv:
    """A ``VecEnv`` of the environments ``env_fns`` build, each wrapped in :class:`LockstepEnv`.

    Args:
        env_fns: one picklable factory per environment (called in the worker process).
        subprocesses: ``SubprocVecEnv`` (one process each); ``False``: ``DummyVecEnv`` in this process (for tests
            of the batching itself: the same protocol, no parallelism).
        start_method: ``forkserver``, ``spawn`` or ``fork`` (unsafe once torch has run); None: the default.
    """
    if not env_fns:
        raise ConfigError("a vectorized environment needs at least one environment")
    wrapped = [functools.partial(_lockstep, fn) for fn in env_fns]
    if not subprocesses:
        return DummyVecEnv(wrapped)
    method = start_method or default_start_method()
    if method == "forkserver":
        # only takes effect if the fork server is not running yet (it is shared by the whole process)
        multiprocessing.set_forkserver_preload(PRELOAD)
    return SubprocVecEnv(wrapped, start_method=method)


def _lockstep(env_fn: Callable[[], gymnasium.Env]) -> gymnasium.Env:
    return LockstepEnv(env_fn())


# ---------------------------------------------------------------------------------------------- the search's workers
def search_worker_env(config: dict[str, Any], run_dir: str, rank: int, workers: int) -> gymnasium.Env:
    """Worker ``rank`` of ``workers``: the search's environment, built from the plain config in this process."""
    from amc.search.runner import SearchSetup

    setup = SearchSetup(OmegaConf.create(config), Path(run_dir), worker=(rank, workers))
    setup.build_env()
    return setup.env


def make_search_vec_env(cfg: DictConfig, run_dir: Path, workers: int, start_method: str | None = None) -> VecEnv:
    """``workers`` search environments, one per worker process, each with its own model copy and evaluator.

    The config travels as plain data (each worker composes nothing and reads no Hydra state). Call it after the
    main process has built its own environment: a latency table it measured is then read from the run
    directory, and decoded evaluation images from the disk cache, instead of being redone N times.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    config = OmegaConf.to_container(cfg, resolve=True)
    fns = [functools.partial(search_worker_env, config, str(run_dir), rank, workers) for rank in range(workers)]
    return make_vec_env(fns, start_method=start_method)


def worker_threads(threads: int, workers: int) -> int:
    """Torch CPU threads of one worker: ``device.threads`` when set, else the machine's cores shared out (N workers
    each taking every core would fight over them)."""
    if threads:
        return int(threads)
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def worker_device(name: str, rank: int) -> str:
    """The device of worker ``rank``: ``cuda`` spreads the workers over the visible GPUs round-robin (one model copy
    per worker on its GPU); ``cuda:N``, ``cpu`` and ``auto`` stay as they are."""
    if name.strip().lower() != "cuda":
        return name
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{rank % count}" if count > 1 else name


def episodes_per_hour(episodes: int, seconds: float) -> float:
    """Throughput of ``episodes`` played in ``seconds`` of wall time (nan for no time)."""
    return episodes * 3600.0 / seconds if seconds > 0 else math.nan
