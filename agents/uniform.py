"""The uniform baseline: the same sparsity for every unit, the smallest one that meets the budget."""

from __future__ import annotations

import time
from collections.abc import Callable

import gymnasium
import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from agents.base import EpisodeReport, Rollout, SearchAgent, action_for_ratio, action_mode


class UniformAgent(SearchAgent):
    """One episode with the constant ratio ``env.unwrapped.uniform_ratio()`` at every unit.

    The environment is deterministic for a fixed policy, so every further episode would repeat the first:
    :meth:`run` plays one and then counts the requested total as done.

    Args:
        env: the pruning environment (its ``unwrapped`` has ``uniform_ratio()`` and ``ratio_bounds``).
        seed: unused by the policy (kept for the common interface and the environment's first reset).
    """

    name = "uniform"

    def __init__(self, env: gymnasium.Env, seed: int = 0) -> None:
        super().__init__(env, seed)
        # centred actions: 0 is the uniform ratio; relative ones: every unit's fair share, the uniform ratio when all
        # take it (a unit may keep a channel step more where the rounding of the units before it left budget over)
        self.action = (0.0 if action_mode(env) != "absolute"
                       else action_for_ratio(env, float(env.unwrapped.uniform_ratio())))

    def play_episode(self) -> EpisodeReport:
        started = time.perf_counter()
        rollout = self.rollout(lambda obs: self.action)
        self.episodes_done += 1
        return self.report(rollout, "uniform", started, {"uniform_action": self.action})

    def run(self, episodes: int, on_episode: Callable[[EpisodeReport], None] | None = None) -> None:
        """Play the one uniform episode (unless already played), then set ``episodes_done = episodes``."""
        self._play_once(episodes, on_episode, self.play_episode)

    def run_batched(self, vec_env: VecEnv, episodes: int,
                    on_episode: Callable[[EpisodeReport], None] | None = None) -> None:
        """:meth:`run` on ``vec_env``'s first environment (the one episode there is to play)."""
        self._play_once(episodes, on_episode, lambda: self.play_batch(vec_env, 1)[0])

    def batch_action(self, episode: int, obs: np.ndarray) -> float:
        return self.action

    def finish_batch(self, rollouts: list[Rollout]) -> list[EpisodeReport]:
        started, reports = time.perf_counter(), []
        for rollout in rollouts:
            self.episodes_done += 1
            reports.append(self.report(rollout, "uniform", started, {"uniform_action": self.action}))
        return reports

    def _play_once(self, episodes: int, on_episode: Callable[[EpisodeReport], None] | None,
                   play: Callable[[], EpisodeReport]) -> None:
        if episodes < self.episodes_done:
            super().run(episodes)  # the common one-line error
        if self.episodes_done == 0 and episodes > 0:
            report = play()
            self.episodes_done = episodes  # before on_episode: a checkpoint saved there is a finished search
            if on_episode is not None:
                on_episode(report)
        self.episodes_done = max(self.episodes_done, episodes)
