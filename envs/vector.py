"""Environments stepped in lockstep: N pruning environments in N worker processes, played N episodes at a time.

The expensive part of an episode is its final evaluation (the proxy mAP of the pruned model); the steps before
it cost microseconds. :func:`make_vec_env` puts N environments in stable-baselines3's
:class:`~stable_baselines3.common.vec_env.SubprocVecEnv` (one process each), each wrapped in :class:`LockstepEnv`,
and an agent plays N episodes at once: every episode has one step per prunable unit, so the environments reach
their last step, and evaluate, together. The protocol between the agent and the workers (the idle action, the
float reward) is :mod:`amc.gym_api`'s; the search's own workers are built by :mod:`amc.search.parallel`.

Workers start with ``forkserver`` where the platform has it (else ``spawn``): never a plain ``fork`` of a
process that has run torch (its thread pools and CUDA state do not survive a fork). The fork server can preload
modules (torch, amc), so each worker forks from an interpreter that has imported them once, instead of importing
them again.
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from amc.errors import ConfigError
from amc.gym_api import STEP_REWARD


class LockstepEnv(gymnasium.Wrapper):
    """The worker side of a batched rollout (an agent playing several episodes in lockstep, e.g.
    ``agents.base.SearchAgent.rollout_batch``).

    * A NaN action (:data:`amc.gym_api.IDLE_ACTION`) means "sit this batch out": nothing is stepped or evaluated
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
                 start_method: str | None = None, preload: Sequence[str] = ()) -> VecEnv:
    """A ``VecEnv`` of the environments ``env_fns`` build, each wrapped in :class:`LockstepEnv`.

    Args:
        env_fns: one picklable factory per environment (called in the worker process).
        subprocesses: ``SubprocVecEnv`` (one process each); ``False``: ``DummyVecEnv`` in this process (for tests
            of the batching itself: the same protocol, no parallelism).
        start_method: ``forkserver``, ``spawn`` or ``fork`` (unsafe once torch has run); None: the default.
        preload: modules the fork server imports once, before it forks the workers (``forkserver`` only).
    """
    if not env_fns:
        raise ConfigError("a vectorized environment needs at least one environment")
    wrapped = [functools.partial(_lockstep, fn) for fn in env_fns]
    if not subprocesses:
        return DummyVecEnv(wrapped)
    method = start_method or default_start_method()
    if method == "forkserver":
        # only takes effect if the fork server is not running yet (it is shared by the whole process)
        multiprocessing.set_forkserver_preload(list(preload))
    return SubprocVecEnv(wrapped, start_method=method)


def _lockstep(env_fn: Callable[[], gymnasium.Env]) -> gymnasium.Env:
    return LockstepEnv(env_fn())
