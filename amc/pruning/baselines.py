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

from collections.abc import Callable

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from amc.errors import ConfigError
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


def minimum_flops_ratio(space: PruningSpace, fused: bool = False) -> float:
    """The smallest FLOPs ratio any policy reaches (every unit at ``rounding.max_ratio``)."""
    return space.min_cost(fused=fused).macs / _full_macs(space, fused)


def check_budget(space: PruningSpace, flops_ratio: float, fused: bool = False) -> float:
    """``flops_ratio`` as a float, after checking that some policy keeps at most that fraction of the FLOPs.

    Raises:
        ConfigError: not a number in (0, 1], or below :func:`minimum_flops_ratio` (the message names it).
    """
    try:
        target = float(flops_ratio)
    except (TypeError, ValueError):
        target = float("nan")
    if not 0.0 < target <= 1.0:  # NaN fails too
        raise ConfigError(f"flops_ratio is the fraction of FLOPs to keep, a number in (0, 1]; got {flops_ratio!r}")
    lowest = minimum_flops_ratio(space, fused)
    if target < lowest:
        raise ConfigError(f"FLOPs budget {target:g} is unreachable: with every unit at the largest sparsity "
                          f"({space.rounding.max_ratio:g}) the model keeps {lowest:.4f} of its FLOPs; ask for at "
                          f"least {lowest:.4f} or raise pruning.max_ratio")
    return target


def smallest_scale(space: PruningSpace, ratios_at: Callable[[float], np.ndarray], hi: float, flops_ratio: float,
                   fused: bool = False, tol: float = 1e-12) -> float:
    """The smallest ``s`` in ``[0, hi]`` whose policy ``ratios_at(s)`` keeps at most ``flops_ratio`` of the FLOPs.

    The cost falls step by step as ``s`` grows (kept channels are rounded), so bisection finds the start of the
    first step under the budget, to ``tol``. ``ratios_at(hi)`` must meet the budget.
    """
    budget = flops_ratio * _full_macs(space, fused)

    def fits(s: float) -> bool:
        return space.policy_cost(ratios_at(s), fused).macs <= budget

    lo = 0.0
    if fits(lo):
        return lo
    while hi - lo > tol:  # invariant: ratios_at(lo) is over the budget, ratios_at(hi) within it
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def uniform_policy(space: PruningSpace, flops_ratio: float, fused: bool = False, tol: float = 1e-12) -> BaselineResult:
    """The same ratio for every unit: the smallest one whose model keeps at most ``flops_ratio`` of the FLOPs.

    Kept channels are rounded (``space.rounding``), so the cost is a step function of the ratio; bisection
    over ``[0, max_ratio]`` finds the start of the first step under the budget (to ``tol``).

    Raises:
        ConfigError: the budget is below :func:`minimum_flops_ratio`.
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
    budget, found by bisection over the sorted scores on the analytic cost.

    Raises:
        ConfigError: the budget is unreachable, or the model is fused.
    """
    flops_ratio = check_budget(space, flops_ratio, fused)
    import torch_pruning as tp

    from amc.pruning.depgraph import unit_groups

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

    full_macs = _full_macs(space, fused)
    budget = flops_ratio * full_macs
    per_unit = [np.sort(s.double().numpy()) for s in scores]
    thresholds = np.unique(np.concatenate(per_unit)) if per_unit else np.zeros(0)
    min_widths = space.min_widths

    def kept_at(k: int) -> np.ndarray:
        """Rounded kept widths when the channels scoring <= thresholds[k] go (k = -1: none go)."""
        if k < 0:
            raw = space.full_widths
        else:
            t = thresholds[k]
            raw = np.array([len(s) - np.searchsorted(s, t, side="right") for s in per_unit], dtype=np.int64)
        return np.maximum(space.round_widths(raw), min_widths)

    def fits(k: int) -> bool:
        return space.cost(kept_at(k), fused).macs <= budget

    lo, hi = -1, len(thresholds) - 1  # fits(hi) (every unit at its minimum width, checked above)
    if fits(lo):
        hi = lo
    else:  # invariant: not fits(lo), fits(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(mid):
                hi = mid
            else:
                lo = mid
    kept = kept_at(hi)
    result = _result("global-magnitude", space, ratios_for_widths(space, kept), kept, flops_ratio, fused)
    result.scores = scores
    result.threshold = float(thresholds[hi]) if hi >= 0 else None
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
