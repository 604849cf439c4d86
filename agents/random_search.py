"""Random search: every episode a fresh, uniformly random policy (the baseline any learning agent must beat)."""

from __future__ import annotations

import time

import gymnasium
import numpy as np

from agents.base import EpisodeReport, Rollout, SearchAgent


class RandomSearchAgent(SearchAgent):
    """Uniformly random actions in [-1, 1] at every step of every episode (uniform sparsities in the env's
    bounds before its action wall), drawn from the agent's seeded Generator; it never learns.

    Args:
        env: the pruning environment.
        seed: seeds the actions.
    """

    name = "random"

    def __init__(self, env: gymnasium.Env, seed: int = 0) -> None:
        super().__init__(env, seed)

    def play_episode(self) -> EpisodeReport:
        started = time.perf_counter()
        rollout = self.rollout(lambda obs: float(self.rng.uniform(-1.0, 1.0)))
        self.episodes_done += 1
        return self.report(rollout, "random", started)

    def batch_action(self, episode: int, obs: np.ndarray) -> float:
        return float(self.rng.uniform(-1.0, 1.0))

    def finish_batch(self, rollouts: list[Rollout]) -> list[EpisodeReport]:
        started, reports = time.perf_counter(), []
        for rollout in rollouts:
            self.episodes_done += 1
            reports.append(self.report(rollout, "random", started))
        return reports
