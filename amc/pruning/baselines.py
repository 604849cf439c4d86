"""Baseline policies at the same FLOPs budget as the search: uniform sparsity and Torch-Pruning's global ranking.

Both return sparsity ratios in the space's unit order (the policy format the search exports) and meet the
budget on the exact analytic cost of :class:`~amc.pruning.space.PruningSpace`, so a baseline costs
milliseconds (plus, for the global ranking, one DepGraph trace of the model on a small image).

* :func:`uniform_policy`: one ratio for every unit, the smallest that meets the budget.
* :func:`global_magnitude_policy`: Torch-Pruning's global pruning criterion: per-channel group L2 magnitude
  (``GroupMagnitudeImportance(p=2)``, mean-normalized inside each group, as Torch-Pruning's pruners use it),
  one threshold over all units, the channels scoring at or below it removed. The threshold is the lowest
  that meets the budget once kept counts are rounded as the space rounds them.

A budget is ``flops_ratio``: the fraction of the unpruned model's FLOPs (MACs) the pruned model may keep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from amc.pruning.budget import check_budget, global_threshold_widths, smallest_scale
from amc.pruning.depgraph import unit_groups
from amc.pruning.space import PolicyCost, PruningSpace


@dataclass
class BaselineResult:
    """A baseline policy and what it achieves.

    Attributes:
        method: ``uniform`` or ``global-magnitude``.
        ratios: sparsity ratio per unit, in space order (``space.kept_channels(ratios) == kept``).
        kept: channels each unit keeps.
        target: the requested FLOPs ratio.
        flops_ratio: the achieved one (pruned MACs / unpruned MACs, <= ``target``).
        cost: params and MACs of the pruned model.
        scores: per unit, the importance of each channel (global magnitude only); keep the best with
            ``amc.pruning.selection.top_channels(result.scores, result.kept)``.
        threshold: the global score threshold (global magnitude only): channels scoring at or below it go,
            before rounding the kept counts.
    """

    method: str
    ratios: np.ndarray
    kept: np.ndarray
    target: float
    flops_ratio: float
    cost: PolicyCost
    scores: list[torch.Tensor] | None = None
    threshold: float | None = None


def uniform_policy(space: PruningSpace, flops_ratio: float, fused: bool = False, tol: float = 1e-12) -> BaselineResult:
    """The same ratio for every unit: the smallest one whose model keeps at most ``flops_ratio`` of the FLOPs.

    Kept channels are rounded (``space.rounding``), so the cost is a step function of the ratio; bisection
    over ``[0, max_ratio]`` finds the start of the first step under the budget (to ``tol``).

    Raises:
        ConfigError: the budget is below :func:`~amc.pruning.budget.minimum_flops_ratio`.
    """
    flops_ratio = check_budget(space, flops_ratio, fused)
    n = len(space)
    hi = smallest_scale(space, lambda r: np.full(n, r), float(space.rounding.max_ratio), flops_ratio, fused, tol)
    ratios = np.full(n, hi)
    return _result("uniform", space, ratios, space.kept_channels(ratios), flops_ratio, fused)


def global_magnitude_policy(model: nn.Module, space: PruningSpace, flops_ratio: float, fused: bool = False,
                            DG=None, importance=None) -> BaselineResult:
    """Torch-Pruning's global magnitude ranking, thresholded to meet ``flops_ratio``.

    Args:
        model: the unfused model ``space`` was built from (its weights give the scores; it is not modified).
        space: its pruning space.
        flops_ratio: fraction of the FLOPs to keep.
        fused: count FLOPs of the fused model (BatchNorm folded) instead.
        DG: the model's dependency graph, if already built (:func:`amc.pruning.depgraph.build_dependency_graph`).
        importance: a Torch-Pruning group importance (default ``GroupMagnitudeImportance(p=2)``, mean-normalized
            per group); called once per unit on its DepGraph group.

    Each unit keeps the channels scoring above one global threshold, its count rounded as the space rounds
    (multiple, minimum channels, ``max_ratio``); the threshold is the lowest whose rounded model meets the
    budget, found by bisection over the sorted scores on the analytic cost
    (:func:`~amc.pruning.budget.global_threshold_widths`).

    Raises:
        ConfigError: the budget is unreachable, or the model is fused.
    """
    flops_ratio = check_budget(space, flops_ratio, fused)
    if importance is None:
        importance = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer="mean")
    groups = unit_groups(model, space, DG)
    scores = []
    for u, group in enumerate(groups):
        s = importance(group)
        width = int(space.full_widths[u])
        if s is None:  # a group without weights: nothing to rank, every channel is equal
            s = torch.ones(width)
        s = torch.nan_to_num(s.detach().float().cpu(), nan=0.0)  # an all-zero group normalizes to 0/0
        if s.numel() != width:
            raise RuntimeError(f"importance of unit {space.units[u].name} has {s.numel()} scores for {width} channels")
        scores.append(s)

    budget = flops_ratio * _full_macs(space, fused)
    kept, threshold = global_threshold_widths(space, scores, lambda widths: space.cost(widths, fused).macs <= budget)
    result = _result("global-magnitude", space, ratios_for_widths(space, kept), kept, flops_ratio, fused)
    result.scores = scores
    result.threshold = threshold
    return result


def ratios_for_widths(space: PruningSpace, kept: np.ndarray) -> np.ndarray:
    """Sparsity ratios in ``[0, max_ratio]`` with ``space.kept_channels(ratios) == kept``.

    ``1 - kept / full`` where that maps back exactly (it is the middle of the ratios rounding to ``kept``);
    otherwise (a count clamped by ``min_channels`` or ``max_ratio``) the ratio is found by bisection, since
    the kept count falls step by step as the ratio grows.

    Raises:
        ValueError: some width is not reachable under ``space.rounding``.
    """
    kept = np.asarray(kept, dtype=np.int64)
    full, max_ratio = space.full_widths, float(space.rounding.max_ratio)
    ratios = np.clip(1.0 - kept / full, 0.0, max_ratio)

    def kept_one(u: int, r: float) -> int:
        target = np.zeros(len(full))
        target[u] = full[u] * (1.0 - r)
        return int(space.round_widths(target)[u])

    for u in np.flatnonzero(space.round_widths(full * (1.0 - ratios)) != kept):
        lo, hi = 0.0, max_ratio  # kept_one(u, .) falls step by step from lo to hi
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            if kept_one(u, mid) > kept[u]:
                lo = mid
            else:
                hi = mid
        if kept_one(u, hi) != kept[u]:
            raise ValueError(f"unit {space.units[u].name} cannot keep {kept[u]} of {full[u]} channels "
                             f"under {space.rounding}")
        ratios[u] = hi
    return ratios


def _full_macs(space: PruningSpace, fused: bool) -> int:
    return space.cost(space.full_widths, fused).macs


def _result(method: str, space: PruningSpace, ratios: np.ndarray, kept: np.ndarray, target: float,
            fused: bool) -> BaselineResult:
    cost = space.cost(kept, fused)
    return BaselineResult(method=method, ratios=np.asarray(ratios, dtype=np.float64), kept=np.asarray(kept),
                          target=float(target), flops_ratio=cost.macs / _full_macs(space, fused), cost=cost)
