"""What one episode's policy is worth: the proxy mAP of the pruned model and its cost, as an EpisodeOutcome.

The environment hands the evaluator the applied ratios at the end of an episode; this module turns them into
kept channels (the configured criterion picks which), scores the pruned model with the
:class:`~amc.reward.proxy.ProxyEvaluator`, counts its FLOPs and params analytically on the pruning space and,
when the budget or the reward needs it, estimates its latency from the per-unit
:class:`~amc.eval.latency_table.LatencyTable` (measured once per device and input size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from amc.eval.latency_table import LatencyTable
from amc.pruning.criteria import Criterion
from amc.pruning.space import PruningSpace
from amc.reward.functions import EpisodeOutcome
from amc.reward.proxy import ProxyEvaluator, ProxyResult


@dataclass
class CostFigures:
    """Analytic cost of one policy and of the unpruned model (and the table's latency estimate, if any)."""

    flops: float
    params: float
    full_flops: float
    full_params: float
    latency_ms: float | None = None
    full_latency_ms: float | None = None


def policy_figures(space: PruningSpace, ratios: Sequence[float], latency_table: LatencyTable | None = None
                   ) -> CostFigures:
    """FLOPs (2 x MACs), params and, with a table, estimated latency of ``ratios`` and of the unpruned model."""
    kept = space.kept_channels(ratios)
    cost, full = space.cost(kept), space.full_cost
    latency = full_latency = None
    if latency_table is not None:
        latency = latency_table.estimate(kept)
        full_latency = latency_table.estimate(space.full_widths)
    return CostFigures(2.0 * cost.macs, float(cost.params), 2.0 * full.macs, float(full.params), latency, full_latency)


class ProxyPolicyEvaluator:
    """Scores a ratio array by proxy mAP (the search's per-episode evaluation).

    Args:
        space: the pruning space of the model.
        proxy: the prepared proxy evaluator of the same model.
        criterion: picks the channels each unit keeps (prepared on the model).
        latency_table: latency estimates for the outcome (None: latency not reported).
    """

    def __init__(self, space: PruningSpace, proxy: ProxyEvaluator, criterion: Criterion,
                 latency_table: LatencyTable | None = None) -> None:
        self.space, self.proxy, self.criterion, self.latency_table = space, proxy, criterion, latency_table
        self.last_result: ProxyResult | None = None

    def __call__(self, ratios: np.ndarray) -> EpisodeOutcome:
        selection = self.criterion.select(self.space.kept_channels(ratios))
        self.last_result = result = self.proxy(selection)
        f = policy_figures(self.space, ratios, self.latency_table)
        return EpisodeOutcome(map50_95=result.map50_95, flops=f.flops, params=f.params, full_flops=f.full_flops,
                              full_params=f.full_params, latency_ms=f.latency_ms, full_latency_ms=f.full_latency_ms)

    def unpruned_map(self) -> float:
        """Proxy mAP@0.5:0.95 of the unpruned model (same subset, same settings)."""
        return self.proxy(None).map50_95

    def close(self) -> None:
        self.proxy.close()
