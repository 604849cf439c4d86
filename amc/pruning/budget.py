"""The budget: how much of the unpruned model a pruned one may keep, and the one solver for "the largest setting
that fits".

Every part of amc that fits a policy to a budget does it here:

* :class:`Budget` is the budget itself (a metric and a fraction), validated once (:meth:`Budget.from_config` reads
  the ``budget`` config group with the search's one-line errors);
* :class:`BudgetEnforcer` is AMC's action wall (the environment's, see below) and the fair share of the remaining
  budget (:meth:`BudgetEnforcer.fair_ratio`: the uniform baseline of a search and budget-relative actions);
* :func:`first_fitting` (over ordered discrete settings) and :func:`smallest_fitting_scale` (over a continuous
  scale) are the bisections behind every "largest setting that fits": the wall's fair share, the uniform and
  global-magnitude baselines (:mod:`amc.pruning.baselines`), :func:`scale_to_budget` (random policies of the
  benches) and :func:`global_threshold_widths` (the global ranking against any cost, e.g. a latency table's).

AMC's resource-constrained search (He et al. 2018, section 3.3; ``env/channel_pruning_env.py`` of
github.com/mit-han-lab/amc) never lets an episode end over budget: before each layer is pruned, the agent's
ratio is raised, if needed, to the smallest one that still lets the rest of the network meet the budget when
every later layer is pruned as much as allowed. Every policy an episode produces therefore fits, and the reward
can be accuracy alone.

:class:`BudgetEnforcer` does that on the exact analytic cost of a :class:`~amc.pruning.space.PruningSpace`
(FLOPs or parameters) or on a :class:`~amc.reward.latency_table.LatencyTable` estimate (latency). A unit's
kept width is a step function of its ratio (channels are rounded to ``rounding.multiple``), so the cost is
step-shaped in the ratio: the enforcer finds the first step that fits. It precomputes, once, every width each
unit can keep and the smallest ratio that reaches it (``thresholds``, by bisection on the space's own
rounding), so one decision costs one batch evaluation of the few candidate widths of one unit, not a bisection
of full-model costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from amc.config import config_number
from amc.errors import ConfigError
from amc.pruning.space import PruningSpace

#: The resources a budget can limit.
METRICS = ("flops", "params", "latency")


@dataclass(frozen=True)
class Budget:
    """How much of the unpruned model's resource a pruned model may keep.

    Attributes:
        metric: ``flops`` (multiply-accumulates of the unfused model, as the rest of amc counts them),
            ``params`` or ``latency`` (a latency table's estimate).
        fraction: the fraction to keep, in ``(0, 1]`` (1 puts no limit on the search).
    """

    metric: str
    fraction: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"budget metric {self.metric!r} is unknown; choose one of {', '.join(METRICS)}")
        try:
            fraction = float(self.fraction)
        except (TypeError, ValueError):
            fraction = float("nan")
        if not 0.0 < fraction <= 1.0:  # NaN fails too
            raise ConfigError(f"budget fraction is the share of the model's {self.metric} to keep, a number in "
                              f"(0, 1]; got {self.fraction!r}")
        object.__setattr__(self, "fraction", fraction)  # frozen: store the validated float


    @classmethod
    def from_config(cls, node: Any) -> "Budget":
        """The ``budget`` config group (``metric`` and the fraction under the metric's name), one-line errors."""
        metric = str(node.get("metric"))
        if metric not in METRICS:
            raise ConfigError(f"budget.metric must be flops, params or latency, got {metric!r}")
        fraction = config_number(node, metric, float, prefix="budget.")
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"budget.{metric} is the fraction of the unpruned model's {metric} to keep, "
                              f"in (0, 1]; got {fraction}")
        return cls(metric, fraction)


class BudgetEnforcer:
    """Raises a unit's sparsity ratio just enough that the model can still meet the budget.

    Args:
        space: the pruning space (ratios are sparsities, in unit order).
        budget: what to limit and to which fraction.
        latency_table: a :class:`~amc.reward.latency_table.LatencyTable` for ``space`` (needed for a latency
            budget; anything with its ``estimate_batch(widths)`` and ``check_space(space)`` works).
        upper: the largest ratio any unit may get (default ``space.rounding.max_ratio``); the cheapest
            completion of a partial policy has every remaining unit at this ratio.
        lower: the smallest ratio any unit may get (default 0); the most generous completion of a partial policy
            has every remaining unit at this ratio.
        spend: also the wall's other side: lower a unit's ratio just enough that the most generous completion
            still reaches the limit, so that a policy never leaves budget unspent (beyond what the last unit's
            width steps allow). Why: pruning past the budget only costs accuracy, and an agent whose actor drifts
            there wastes its episodes (issue 20: a DDPG search at 50% FLOPs whose last 15 policies kept 0.455 of
            the FLOPs, its best a warm-up draw). Measured, it did not stop that drift (docs/results.md): off in
            the environment's default.

    Attributes:
        full: the budget metric of the unpruned model (MACs, parameters or ms).
        limit: ``budget.fraction * full``: a policy fits when its cost is at most this.
        min_fraction: the smallest fraction reachable (every unit at ``upper``).
        full_widths, upper_widths, lower_widths: every unit's width unpruned, at ``upper`` and at ``lower``.
        widths, thresholds: per unit, every width it can keep (widest first) and the smallest ratio keeping it
            (``space.kept_channels`` keeps ``widths[u][k]`` for ratios in ``[thresholds[u][k], thresholds[u][k+1])``).

    Raises:
        ConfigError: ``upper`` outside ``[0, max_ratio]``, a latency budget without a table (or with a table for
            another model), or an unreachable budget (the message names the smallest reachable fraction).
    """

    def __init__(self, space: PruningSpace, budget: Budget, latency_table: Any = None,
                 upper: float | None = None, lower: float = 0.0, spend: bool = False) -> None:
        if not isinstance(budget, Budget):
            raise ConfigError(f"budget must be an amc.pruning.budget.Budget, got {type(budget).__name__}")
        max_ratio = float(space.rounding.max_ratio)
        upper = max_ratio if upper is None else float(upper)
        if not 0.0 <= upper <= max_ratio:
            raise ConfigError(f"upper ratio bound {upper} is outside [0, {max_ratio}] (pruning.max_ratio)")
        lower = float(lower)
        if not 0.0 <= lower <= upper:
            raise ConfigError(f"lower ratio bound {lower} is outside [0, {upper}] (the upper bound)")
        if budget.metric == "latency":
            if latency_table is None:
                raise ConfigError("a latency budget needs a latency table (build one with amc-bench latency-table "
                                  "or budget on flops or params)")
            latency_table.check_space(space)
        self.space, self.budget, self.latency_table, self.upper = space, budget, latency_table, upper
        self.lower, self.spend = lower, bool(spend)
        self.n_units = space.n_units
        self.full_widths = space.full_widths  # cached: the space recomputes it on every access
        self.widths, self.thresholds = _reachable_widths(space)
        self.upper_widths = np.array([self._width(u, upper) for u in range(self.n_units)], dtype=np.int64)
        self.lower_widths = np.array([self._width(u, lower) for u in range(self.n_units)], dtype=np.int64)
        self.full = self.cost(self.full_widths)
        self.limit = budget.fraction * self.full
        cheapest = self.cost(self.upper_widths)
        self.min_fraction = cheapest / self.full
        if cheapest > self.limit:  # the very comparison every decision makes
            reachable = math.ceil(self.min_fraction * 1e4) / 1e4  # rounded up: the number quoted must work
            raise ConfigError(f"{budget.metric} budget {budget.fraction:g} is unreachable: with every unit at "
                              f"sparsity {upper:g} the model keeps {self.min_fraction:.4f} of its {budget.metric}; "
                              f"ask for a fraction of at least {reachable:.4f} or raise the upper ratio bound")

    # ------------------------------------------------------------------ cost
    def cost(self, widths: Sequence[int] | np.ndarray) -> float:
        """The budget metric of the model whose units keep ``widths`` channels (MACs, parameters or ms)."""
        return float(self.costs(np.asarray(widths, dtype=np.int64)[None])[0])

    def costs(self, widths: np.ndarray) -> np.ndarray:
        """:meth:`cost` of each row of a ``(B, units)`` array of widths."""
        if self.budget.metric == "latency":
            return np.asarray(self.latency_table.estimate_batch(widths), dtype=np.float64)
        key = "macs" if self.budget.metric == "flops" else "params"
        return np.array([getattr(self.space.cost(w), key) for w in widths], dtype=np.float64)

    def fits(self, ratios: Sequence[float]) -> bool:
        """Whether the policy ``ratios`` (one per unit) meets the budget."""
        return self.cost(self.space.kept_channels(ratios)) <= self.limit

    # ------------------------------------------------------------------ the action wall
    def min_ratio(self, prefix_ratios: Sequence[float], requested: float) -> float:
        """The smallest ratio ``>= requested`` for the next unit such that the cheapest completion meets the limit.

        Args:
            prefix_ratios: the ratios of the units decided so far (the first ``len(prefix_ratios)`` units).
            requested: the ratio asked for the next unit, in ``[0, upper]``.

        The cheapest completion keeps every later unit at ``upper``. When ``prefix_ratios`` itself could still
        be completed within the budget (as every prefix an episode builds can), the result is at most ``upper``.
        """
        r = self.space.check_ratios(prefix_ratios, partial=True)
        head = self.full_widths[: len(r)]
        return self.next_ratio(self.space.round_widths(head * (1.0 - r), head), requested)[0]

    def next_ratio(self, prefix_widths: np.ndarray, requested: float) -> tuple[float, int]:
        """:meth:`min_ratio` given the kept widths of the decided units; also returns the next unit's kept width.

        This is what the environment calls at every step (it tracks widths, so no ratio is rounded twice). With
        ``spend`` the ratio may also come out *below* ``requested`` (never below ``lower``): the largest ratio
        whose most generous completion (every later unit at ``lower``) still reaches the limit, unless the wall
        needs more.
        """
        t = len(prefix_widths)
        if t >= self.n_units:
            raise ValueError(f"every one of the {self.n_units} units is already decided")
        requested = float(requested)
        if not 0.0 <= requested <= self.upper:
            raise ValueError(f"requested ratio {requested} is outside [0, {self.upper}]")
        thresholds, widths = self.thresholds[t], self.widths[t]
        # Candidates: every width unit t can keep between the requested ratio and `upper`, widest first.
        first = int(np.searchsorted(thresholds, requested, side="right")) - 1
        last = int(np.searchsorted(thresholds, self.upper, side="right")) - 1
        if self.spend:
            first = self._spend_cap(prefix_widths, t, first, last)
        candidates = widths[first:last + 1]
        base = self.upper_widths.copy()
        base[:t] = prefix_widths
        fit = self._candidate_costs(base, t, candidates) <= self.limit
        # The narrowest candidate is the completion the previous decision checked, so one always fits; should
        # rounding in a latency estimate ever disagree by an ulp, that candidate is still the right answer.
        k = int(np.argmax(fit)) if fit.any() else len(candidates) - 1
        if k == 0 and float(thresholds[first]) <= requested < (float(thresholds[first + 1])
                                                               if first + 1 < len(thresholds) else np.inf):
            return requested, int(candidates[0])  # the width the request keeps: the request stands as asked
        return max(float(thresholds[first + k]), self.lower), int(candidates[k])

    def _spend_cap(self, prefix_widths: np.ndarray, t: int, first: int, last: int) -> int:
        """The index (into unit ``t``'s widths) to start the wall's search from under ``spend``: ``first`` (the
        request's), or a wider one where the request would leave budget that no later unit can spend: the
        narrowest width whose most generous completion still costs at least the limit (the width at ``lower``
        when none does)."""
        lowest = int(np.searchsorted(self.thresholds[t], self.lower, side="right")) - 1
        base = self.lower_widths.copy()
        base[:t] = prefix_widths
        spends = self._candidate_costs(base, t, self.widths[t][lowest:last + 1]) >= self.limit
        # costs fall as the width narrows, so `spends` is True then False: its last True is the narrowest
        cap = lowest + (int(np.flatnonzero(spends)[-1]) if spends.any() else 0)
        return min(first, cap)

    def _candidate_costs(self, base: np.ndarray, t: int, candidates: np.ndarray) -> np.ndarray:
        """The budget metric of ``base`` with unit ``t`` at each candidate width."""
        if self.budget.metric == "latency":
            batch = np.repeat(base[None], len(candidates), axis=0)
            batch[:, t] = candidates
            return self.costs(batch)
        # FLOPs and parameters are quadratic in the widths (exact integers): three costs give the polynomial in
        # unit t's width, which then prices every candidate at once.
        key = "macs" if self.budget.metric == "flops" else "params"
        f = []
        for x in (0, 1, 2):
            base[t] = x
            f.append(getattr(self.space.cost(base), key))
        c = (f[2] - 2 * f[1] + f[0]) // 2
        b = f[1] - f[0] - c
        x = candidates.astype(np.int64)
        return (f[0] + b * x + c * x * x).astype(np.float64)

    def uniform_ratio(self) -> float:
        """The smallest constant ratio (in ``[0, upper]``) whose policy meets the budget (:meth:`fair_ratio` of
        an empty prefix)."""
        return self.fair_ratio(np.zeros(0, dtype=np.int64))

    def fair_ratio(self, prefix_widths: np.ndarray) -> float:
        """The smallest constant ratio (in ``[0, upper]``) for every undecided unit that lets the policy meet the
        budget, given the kept widths of the decided units: the remaining budget shared out evenly.

        The uniform baseline of a search (empty prefix) and the environment's budget-relative actions
        (``action_mode=relative``) both use it. The cost only changes where
        some remaining unit's width does, at one of the ``thresholds``, so the answer is the first fitting
        threshold (found by :func:`first_fitting` over them), nudged 1e-6 (or half the way to the next threshold)
        into its step: the widths are those of the step's start, and mapping the ratio to an action and back (float32)
        cannot fall onto the previous, over-budget step. When even ``upper`` does not fit, ``upper``.
        """
        t = len(prefix_widths)
        if t >= self.n_units:
            raise ValueError(f"every one of the {self.n_units} units is already decided")
        points = np.unique(np.concatenate([[0.0], *self.thresholds[t:]]))
        points = points[points <= self.upper]
        base = self.upper_widths.copy()
        base[:t] = prefix_widths

        def fits(i: int) -> bool:
            widths = base.copy()
            for u in range(t, self.n_units):
                widths[u] = self._width(u, points[i])
            return self.cost(widths) <= self.limit

        last = len(points) - 1
        if not fits(last):
            return float(self.upper)
        hi = first_fitting(fits, -1, last)
        start = float(points[hi])
        if start == 0.0:
            return 0.0
        step_end = float(points[hi + 1]) if hi + 1 < len(points) else self.upper
        return min(start + 1e-6, start + 0.5 * (step_end - start)) if step_end > start else start

    def _width(self, u: int, ratio: float) -> int:
        """The width unit ``u`` keeps at ``ratio`` (the same as ``space.kept_channels``, from the thresholds)."""
        return int(self.widths[u][int(np.searchsorted(self.thresholds[u], ratio, side="right")) - 1])


def _reachable_widths(space: PruningSpace) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per unit, every width it can keep for a ratio in ``[0, max_ratio]`` (widest first) and the smallest ratio
    that keeps it (0 for the full width).

    Candidates are the full width, the multiples of ``rounding.multiple`` between, and the width at
    ``max_ratio``; each one's smallest ratio is found by bisection on the space's own rounding, down to adjacent
    floats, for all candidates of all units at once. Candidates the rounding skips (near the full width when the
    multiple does not divide it) are dropped.
    """
    full = space.full_widths
    max_ratio = float(space.rounding.max_ratio)
    narrowest = space.round_widths(full * (1.0 - max_ratio))
    m = space.rounding.multiple
    units, cands = [], []
    for u, (f, lo) in enumerate(zip(full.tolist(), narrowest.tolist())):
        ws = sorted({f, lo, *range((lo // m + 1) * m, f, m)}, reverse=True)
        units += [u] * len(ws)
        cands += ws
    units_a, cands_a = np.array(units), np.array(cands, dtype=np.int64)
    unit_full = full[units_a]

    def width_at(r: np.ndarray) -> np.ndarray:
        return space.round_widths(unit_full * (1.0 - r), unit_full)

    lo = np.zeros(len(cands_a))
    hi = np.full(len(cands_a), max_ratio)
    # invariant (for candidates narrower than full): width_at(lo) > cand >= width_at(hi); 80 halvings of
    # [0, 0.9] reach adjacent floats, after which mid equals lo or hi and nothing moves.
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        ok = width_at(mid) <= cands_a
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    thresholds = np.where(cands_a == unit_full, 0.0, hi)
    reached = width_at(thresholds) == cands_a
    widths_out, thresholds_out = [], []
    for u in range(space.n_units):
        sel = (units_a == u) & reached
        widths_out.append(cands_a[sel])
        thresholds_out.append(thresholds[sel])
    return widths_out, thresholds_out


# ---------------------------------------------------------------------------------------------- the solver
def first_fitting(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The first setting in ``(lo, hi]`` that fits, by bisection: "the largest setting that fits" when settings
    are ordered from the largest (keeps most) to the smallest and ``fits`` is monotone along them.

    ``fits(hi)`` must hold and ``fits(lo)`` must not (``lo`` may be a virtual setting, e.g. -1, never evaluated).
    """
    while hi - lo > 1:  # invariant: setting lo over the budget (or virtual), setting hi within it
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def smallest_fitting_scale(fits: Callable[[float], bool], hi: float, tol: float = 1e-12) -> float:
    """The smallest ``s`` in ``[0, hi]`` with ``fits(s)``, to ``tol``: the continuous :func:`first_fitting`.

    ``fits`` must be monotone (pruning more never stops fitting) and ``fits(hi)`` must hold; the answer is 0 when
    ``fits(0)``, else the start of the first step that fits (costs fall step by step: kept channels are rounded).
    """
    lo = 0.0
    if fits(lo):
        return lo
    while hi - lo > tol:  # invariant: lo over the budget, hi within it
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


# ---------------------------------------------------------------------------------------------- FLOPs budgets
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

    The cost falls step by step as ``s`` grows (kept channels are rounded), so bisection
    (:func:`smallest_fitting_scale`) finds the start of the first step under the budget, to ``tol``.
    ``ratios_at(hi)`` must meet the budget.
    """
    budget = flops_ratio * _full_macs(space, fused)
    return smallest_fitting_scale(lambda s: space.policy_cost(ratios_at(s), fused).macs <= budget, hi, tol)


def scale_to_budget(space: PruningSpace, direction: np.ndarray, flops_ratio: float) -> np.ndarray:
    """Ratios ``clip(s * direction, 0, max_ratio)`` with the smallest ``s`` whose model keeps <= ``flops_ratio``.

    The policy keeps as much as the budget allows along ``direction`` (see :func:`smallest_scale`, which the
    uniform baseline uses with a constant direction).

    Raises:
        ConfigError: the budget is out of reach (below every unit at ``max_ratio``).
    """
    target = check_budget(space, flops_ratio)
    d = np.clip(np.asarray(direction, dtype=np.float64), 0.0, None)
    if len(d) != len(space) or not np.any(d > 0):
        raise ValueError("direction needs one non-negative ratio per unit, not all zero")
    max_ratio = float(space.rounding.max_ratio)

    def ratios(s: float) -> np.ndarray:
        return np.clip(s * d, 0.0, max_ratio)

    hi = max_ratio / float(d[d > 0].min())  # at hi every unit with d > 0 is at max_ratio
    if space.policy_cost(ratios(hi)).macs > target * space.full_cost.macs:
        # units with d == 0 keep everything: the direction cannot reach the budget
        raise ConfigError(f"no scaling of this direction reaches {target:g} of the FLOPs")
    return ratios(smallest_scale(space, ratios, hi, target))


def global_threshold_widths(space: PruningSpace, scores: Sequence[Any], fits: Callable[[np.ndarray], bool],
                            unreachable: str | None = None) -> tuple[np.ndarray, float | None]:
    """Kept widths of a global ranking: every unit drops its channels scoring at or below one threshold, kept
    counts rounded as the space rounds (multiple, minimum channels, ``max_ratio``), at the lowest threshold whose
    widths ``fits`` (by :func:`first_fitting` over the sorted scores).

    Args:
        space: the pruning space.
        scores: per unit, a score per channel (torch tensors).
        fits: whether kept widths meet the budget (FLOPs on the analytic cost, or a latency table's estimate).
        unreachable: when given, dropping every channel the rounding allows must fit, else a
            :class:`ConfigError` with this message (without it, that is assumed).

    Returns:
        ``(widths, threshold)``: the kept widths and the threshold (None: nothing dropped).
    """
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

    last = len(thresholds) - 1
    if fits(kept_at(-1)):
        return kept_at(-1), None
    if unreachable is not None and not fits(kept_at(last)):
        raise ConfigError(unreachable)
    k = first_fitting(lambda i: fits(kept_at(i)), -1, last)
    return kept_at(k), (float(thresholds[k]) if k >= 0 else None)


def _full_macs(space: PruningSpace, fused: bool) -> int:
    return space.cost(space.full_widths, fused).macs
