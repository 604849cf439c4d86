"""What one episode's policy is worth: the proxy mAP of the pruned model and its cost, as an EpisodeOutcome.

The environment hands the evaluator the applied ratios at the end of an episode; this module turns them into
kept channels (the configured criterion picks which), scores the pruned model with the
:class:`~amc.reward.proxy.ProxyEvaluator`, counts its FLOPs and params analytically on the pruning space and,
when the budget or the reward needs it, estimates its latency from the per-unit
:class:`~amc.reward.latency_table.LatencyTable` (measured once per device and input size).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from amc.pruning.criteria import Criterion
from amc.pruning.space import PruningSpace
from amc.reward.functions import EpisodeOutcome
from amc.reward.latency_table import LatencyTable
from amc.reward.proxy import ProxyEvaluator, ProxyResult


def policy_outcome(space: PruningSpace, ratios: Sequence[float], map50_95: float,
                   latency_table: LatencyTable | None = None, recover_loss: float | None = None) -> EpisodeOutcome:
    """The outcome of ``ratios`` scored ``map50_95`` (and ``recover_loss``): FLOPs (2 x MACs) and params counted
    on the space, and with a table the estimated latency, each with the unpruned model's figure."""
    kept = space.kept_channels(ratios)
    cost, full = space.cost(kept), space.full_cost
    latency = full_latency = None
    if latency_table is not None:
        latency = latency_table.estimate(kept)
        full_latency = latency_table.estimate(space.full_widths)
    return EpisodeOutcome(map50_95=map50_95, flops=2.0 * cost.macs, params=float(cost.params),
                          full_flops=2.0 * full.macs, full_params=float(full.params), latency_ms=latency,
                          full_latency_ms=full_latency, recover_loss=recover_loss)


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
        recover_loss = result.recover_loss if self.reports_recover_loss else None
        return policy_outcome(self.space, ratios, result.map50_95, self.latency_table, recover_loss)

    @property
    def reports_recover_loss(self) -> bool:
        """Whether outcomes carry ``recover_loss`` (the proxy runs recovery steps), as reward=recovery needs."""
        return self.proxy.recovery.enabled

    @property
    def image_files(self) -> list[str]:
        """The files of the images every policy is scored on."""
        return self.proxy.image_files

    def unpruned_map(self) -> float:
        """Proxy mAP@0.5:0.95 of the unpruned model (same subset, same settings)."""
        return self.proxy(None).map50_95

    def close(self) -> None:
        self.proxy.close()
