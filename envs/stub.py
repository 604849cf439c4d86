"""A cheap, deterministic stand-in for the proxy evaluator: tests and benchmarks of the search machinery.

:class:`StubEvaluator` prices a policy in microseconds with a made-up mAP, so the environment, the agents and the
runner can be exercised (and timed without the evaluator, e.g. for memory benchmarks) with no model, data or
GPU. Its mAP is not meant to resemble a detector's; it only has the one property the tests of a search need:
units differ in how much pruning them hurts, so some non-uniform policies beat the uniform one at the same
budget, and a learning agent has something to find.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from amc.pruning.space import PruningSpace
from amc.reward.functions import EpisodeOutcome


class StubEvaluator:
    """A made-up mAP that is a smooth function of the kept widths: ``full_map * exp(-sharpness * damage)``.

    ``damage = sum_u importance_u * (1 - kept_u / full_u) ** 2`` with per-unit ``importance`` drawn once from a
    log-normal (seeded; normalized to sum 1). Pruning an important unit costs more mAP than pruning an
    unimportant one, and the square makes spreading the pruning cheaper than concentrating it, so the best
    policy at a budget prunes cheap-to-lose, FLOPs-heavy units more: not the uniform policy.

    Args:
        space: the pruning space the policies are for.
        seed: seeds the importance weights.
        full_map: the mAP of the unpruned model.
        sharpness: how fast the mAP falls with the damage.
        latency_table: if given, ``latency_ms`` is its estimate (else None, as the contract's evaluators without
            latency measurement report).

    Attributes:
        importance: the per-unit weights (sum 1).
        calls: how many policies were evaluated.
    """

    reports_recover_loss = True  # its damage stands in for the recovery loss (reward=recovery on the stub)

    def __init__(self, space: PruningSpace, seed: int = 0, full_map: float = 0.5, sharpness: float = 4.0,
                 latency_table: Any = None) -> None:
        self.space = space
        self.full_map, self.sharpness = float(full_map), float(sharpness)
        self.latency_table = latency_table
        weights = np.random.default_rng(seed).lognormal(0.0, 1.0, space.n_units)
        self.importance = weights / weights.sum()
        self.calls = 0
        self._full_widths = space.full_widths
        self._full = space.cost(self._full_widths)
        self._full_latency = None if latency_table is None else float(latency_table.estimate(self._full_widths))

    def damage(self, kept: np.ndarray) -> float:
        """The made-up damage of keeping ``kept`` channels; also the stub's ``recover_loss`` (for reward=recovery)."""
        pruned = 1.0 - np.asarray(kept, dtype=np.float64) / self._full_widths
        return float(self.importance @ (pruned * pruned))

    def map_of(self, kept: np.ndarray) -> float:
        """The made-up mAP of the model whose units keep ``kept`` channels."""
        return self.full_map * math.exp(-self.sharpness * self.damage(kept))

    def __call__(self, ratios: Sequence[float] | np.ndarray) -> EpisodeOutcome:
        """The outcome of the policy ``ratios`` (sparsities, one per unit)."""
        self.calls += 1
        kept = self.space.kept_channels(ratios)
        cost = self.space.cost(kept)
        latency = None if self.latency_table is None else float(self.latency_table.estimate(kept))
        return EpisodeOutcome(map50_95=self.map_of(kept), flops=2.0 * cost.macs, params=float(cost.params),
                              full_flops=2.0 * self._full.macs, full_params=float(self._full.params),
                              latency_ms=latency, full_latency_ms=self._full_latency,
                              recover_loss=self.damage(kept))
