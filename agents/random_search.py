"""Random search: every episode a fresh random policy (the baseline any learning agent must beat)."""

from __future__ import annotations

import time

import gymnasium
import numpy as np

from agents.base import BudgetCentredSampler, EpisodeReport, Rollout, SearchAgent


class RandomSearchAgent(SearchAgent):
    """Random sparsities at every step of every episode, drawn from the agent's seeded Generator; never learns.

    With ``around_budget`` (the default) the sparsities spread around the budget's uniform ratio
    (:class:`~agents.base.BudgetCentredSampler`). Uniform in the whole ``[lo, hi]`` instead (``around_budget=False``,
    AMC's random baseline) most policies land far under the budget, which compares a handicapped baseline with
    the agent, not two searches.

    Args:
        env: the pruning environment.
        seed: seeds the ratios.
        around_budget: centre the ratios on the budget's uniform ratio (else uniform in the env's bounds).
    """

    name = "random"

    def __init__(self, env: gymnasium.Env, seed: int = 0, around_budget: bool = True) -> None:
        super().__init__(env, seed)
        self.around_budget = bool(around_budget)
        self.options = dict(around_budget=self.around_budget)  # rebuilt with the same options on load
        self._sample = BudgetCentredSampler(env)

    def _action(self) -> float:
        if not self.around_budget:
            return float(self.rng.uniform(-1.0, 1.0))
        return self._sample(self.rng)

    def play_episode(self) -> EpisodeReport:
        started = time.perf_counter()
        rollout = self.rollout(lambda obs: self._action())
        self.episodes_done += 1
        return self.report(rollout, "random", started)

    def batch_action(self, episode: int, obs: np.ndarray) -> float:
        return self._action()

    def finish_batch(self, rollouts: list[Rollout]) -> list[EpisodeReport]:
        started, reports = time.perf_counter(), []
        for rollout in rollouts:
            self.episodes_done += 1
            reports.append(self.report(rollout, "random", started))
        return reports
