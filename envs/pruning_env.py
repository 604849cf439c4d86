"""The pruning search as a Gymnasium environment: one step per prunable unit, AMC-style.

An episode walks the units of a :class:`~amc.pruning.space.PruningSpace` in forward order. At each step the
agent sees AMC's embedding of the current unit (He et al. 2018, section 3.1; ``env/channel_pruning_env.py`` of
github.com/mit-han-lab/amc) and answers with one action in ``[-1, 1]``, mapped linearly to a sparsity ratio in
``ratio_bounds``. :class:`~amc.pruning.budget.BudgetEnforcer` raises the ratio where needed so that the policy can
still meet the budget (AMC's action wall) and, with ``spend_budget``, lowers it where the policy would otherwise
prune past the budget, the applied ratio is recorded, and after the last unit the whole
policy is evaluated once: the reward is 0 at every step but the last, which gets ``reward(evaluate(ratios))``.

Example::

    import gymnasium, envs
    env = gymnasium.make("amc/YOLOv7Pruning-v0", space=space, evaluate=proxy_evaluator, reward=BudgetAccuracy(),
                         budget=Budget("flops", 0.5))
    obs, _ = env.reset(seed=0)
    for _ in range(env.unwrapped.n_units):
        obs, reward, terminated, truncated, info = env.step(agent_action(obs))
    info["ratios"], info["outcome"].map50_95, reward
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from amc.errors import ConfigError
from amc.pruning.space import PruningSpace
from amc.reward.functions import EpisodeOutcome, RewardFunction
from amc.pruning.budget import Budget, BudgetEnforcer

#: How an action maps to a ratio (see :class:`PruningEnv`'s ``action_mode``).
ACTION_MODES = ("absolute", "centred", "relative")

#: The observation's features, in order (all in [0, 1]).
FEATURES = ("index", "kind", "in_channels", "out_channels", "kernel", "stride", "feature_size", "flops",
            "flops_removed", "flops_prunable", "previous_ratio")


class PruningEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Choose a sparsity ratio for every unit of a pruning space, within a resource budget.

    Args:
        space: the pruning space (units in forward order).
        evaluate: maps the applied policy (sparsity ratios, one per unit) to its :class:`EpisodeOutcome`;
            called once per episode, after the last step.
        reward: turns the outcome into the episode's reward (non-finite outcomes become its penalty).
        budget: the resource budget every policy must meet.
        ratio_bounds: ``(lo, hi)`` sparsity bounds of one unit: action -1 requests ``lo``, +1 requests ``hi``.
            The default is AMC's preserve-ratio bounds [0.2, 1] as sparsities; ``hi`` must not exceed
            ``space.rounding.max_ratio``.
        latency_table: the latency table for a latency budget (and for ``info["cost"]["latency_ratio"]``).
        action_mode: how an action becomes a ratio. ``absolute`` (AMC): ``lo + (a + 1) / 2 * (hi - lo)``, then
            the wall raises it where the budget needs. ``centred`` (the default of amc-search): the same line
            moved so that action 0 is the budget's uniform ratio ``u``, ``u + a * (hi - lo) / 2`` clipped to
            ``[lo, hi]``, then the wall: an untrained actor (outputs near 0) proposes uniform pruning instead of
            ratios near the middle of the bounds, which prune far past a mild budget (0.4 everywhere keeps ~40% of
            the FLOPs under a 70% budget) and cost a search its first learning episodes. ``relative``: the deviation
            from the unit's fair share, ``fair + a * (hi - lo) / 2`` clipped to ``[lo, hi]``, where ``fair`` is
            the constant ratio that would spend the remaining budget evenly over the undecided units
            (:meth:`~amc.pruning.budget.BudgetEnforcer.fair_ratio`). Action 0 everywhere is then the uniform policy,
            and a unit kept light raises the share of every later unit a little instead of leaving the wall to
            prune the last units to ``hi``, where no action of theirs changes anything (why: an AMC agent whose
            first units ask too little sat in that corner for a whole search, README "Does the search pay?").
        spend_budget: the wall's other side (:class:`~amc.pruning.budget.BudgetEnforcer`'s ``spend``): a ratio is
            also *lowered* where the units left could no longer use the budget it leaves (every later unit at
            ``lo``), so every policy keeps as much of the budget as the width steps allow instead of pruning past
            it. AMC lets a policy prune past a FLOPs budget, which only costs accuracy; a DDPG actor drifted there
            and failed its search, and with this on it still drifted and failed (issue 20, docs/results.md).

    Observation (``Box(0, 1, (11,), float32)``, see :data:`FEATURES`): AMC's layer embedding of the unit about to
    be decided: its index, kind, input and output channels, kernel, stride, feature-map size (h x w) and FLOPs
    (each min-max normalized over the units), then the FLOPs already removed by the decided units, the FLOPs
    the remaining units could still remove (full width minus at ``hi``), both as fractions of the full model,
    and the previous unit's applied ratio. The observation returned with ``terminated=True`` describes the last
    unit after its decision (nothing is left to prune).

    Info at every step: ``unit`` (name of the unit just decided), ``requested_ratio``, ``ratio`` (applied),
    ``applied_action`` (the applied ratio as a float32 action, shape ``(1,)``, rounded up so that it requests
    at least that ratio: what an agent stores in its replay buffer). At the last step also ``ratios`` (the
    applied policy), ``kept`` (channels per unit), ``outcome``, ``reward`` (:class:`~amc.reward.functions.Reward`),
    ``penalized`` and ``cost`` (``flops_ratio``, ``params_ratio``, ``latency_ratio`` or None without a table).

    Raises:
        ConfigError: bad ``ratio_bounds``, or a budget the enforcer refuses (unreachable, latency without table).
    """

    metadata = {"render_modes": []}

    def __init__(self, space: PruningSpace, evaluate: Callable[[np.ndarray], EpisodeOutcome],
                 reward: RewardFunction, budget: Budget, ratio_bounds: Sequence[float] = (0.0, 0.8),
                 latency_table: Any = None, action_mode: str = "absolute", spend_budget: bool = False) -> None:
        if action_mode not in ACTION_MODES:
            raise ConfigError(f"action_mode must be one of {', '.join(ACTION_MODES)}, got {action_mode!r}")
        try:
            lo, hi = (float(b) for b in ratio_bounds)
        except (TypeError, ValueError):
            raise ConfigError(f"ratio_bounds must be two numbers (lo, hi), got {ratio_bounds!r}") from None
        max_ratio = float(space.rounding.max_ratio)
        if not 0.0 <= lo < hi <= max_ratio:
            raise ConfigError(f"ratio_bounds ({lo:g}, {hi:g}) must satisfy 0 <= lo < hi <= {max_ratio:g} "
                              f"(pruning.max_ratio)")
        self.space = space
        self.evaluate = evaluate
        self.reward_fn = reward
        self.budget = budget
        self.ratio_bounds = (lo, hi)
        self.action_mode = action_mode
        self.spend_budget = bool(spend_budget)
        self.latency_table = latency_table
        self.enforcer = BudgetEnforcer(space, budget, latency_table, upper=hi, lower=lo, spend=spend_budget)
        self.n_units = space.n_units
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, (len(FEATURES),), np.float32)

        # Everything about the units that does not change during an episode, computed once.
        self._names = space.names
        self._static = _static_features(space)
        self._full_widths = self.enforcer.full_widths
        self._upper_widths = self.enforcer.upper_widths
        full = space.cost(self._full_widths)
        self._full_macs, self._full_params = full.macs, full.params
        self._full_latency = (float(latency_table.estimate(self._full_widths)) if latency_table is not None
                              else None)

        # Episode state: None until reset(); _t is the next unit to decide (n_units once the episode is over).
        self._t: int | None = None
        self._ratios = np.zeros(self.n_units)
        self._widths = self._full_widths.copy()
        self._fair = 0.0  # relative mode: the fair share of unit _t given the decisions so far
        # centred mode: action 0 asks for the budget's uniform ratio, fixed for the environment
        self._uniform = self.uniform_ratio() if action_mode == "centred" else 0.0

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode at the first unit (the environment itself draws nothing at random)."""
        super().reset(seed=seed)
        self._t = 0
        self._ratios = np.zeros(self.n_units)
        self._widths = self._full_widths.copy()
        self._update_fair()
        return self._observation(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Decide the current unit: map ``action`` to a ratio, apply the budget wall, move to the next unit."""
        if self._t is None:
            raise RuntimeError("PruningEnv.step() before reset(): call reset() to start an episode")
        if self._t >= self.n_units:
            raise RuntimeError("the episode is over (every unit has its ratio): call reset() to start another")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (1,) or not np.isfinite(a[0]):
            raise ValueError(f"action must be one finite number in [-1, 1], got {action!r}")
        t = self._t
        requested = self.requested_ratio(float(a[0]))
        ratio, width = self.enforcer.next_ratio(self._widths[:t], requested)
        self._ratios[t] = ratio
        self._widths[t] = width
        applied_action = self.action_for_ratio(ratio)  # before _t moves on: relative actions depend on the unit
        self._t = t + 1
        self._update_fair()
        info: dict[str, Any] = {"unit": self._names[t], "requested_ratio": requested, "ratio": ratio,
                                "applied_action": applied_action}
        if self._t < self.n_units:
            return self._observation(), 0.0, False, False, info
        return self._observation(), *self._finish(info)

    # ------------------------------------------------------------------ actions <-> ratios
    def requested_ratio(self, action: float) -> float:
        """The ratio an action asks for at the current unit, clipped to ``[lo, hi]``: ``lo + (a + 1) / 2 * (hi - lo)``
        (absolute mode), ``u + a * (hi - lo) / 2`` (centred, ``u`` the uniform ratio) or ``fair + a * (hi - lo) / 2``
        (relative mode, ``fair`` the unit's fair share)."""
        lo, hi = self.ratio_bounds
        a = min(max(float(action), -1.0), 1.0)
        if self.action_mode != "absolute":
            return min(max(self._centre() + a * (hi - lo) / 2.0, lo), hi)
        return min(max(lo + (a + 1.0) / 2.0 * (hi - lo), lo), hi)

    def action_for_ratio(self, ratio: float) -> np.ndarray:
        """The float32 action (shape ``(1,)``) for ``ratio`` at the current unit: requests at least ``ratio``, at most
        a float32 step more (clipped to ``[-1, 1]``).

        The plain inverse of :meth:`requested_ratio`, rounded to float32, can land a hair below ``ratio`` (and
        below the width step the ratio starts); this steps it up to the next float32 until it does not, so
        replaying the action asks for the ratio again.
        """
        lo, hi = self.ratio_bounds
        if self.action_mode != "absolute":
            exact = (float(ratio) - self._centre()) / ((hi - lo) / 2.0)
        else:
            exact = 2.0 * (float(ratio) - lo) / (hi - lo) - 1.0
        a = np.float32(np.clip(exact, -1.0, 1.0))
        while a < 1.0 and self.requested_ratio(float(a)) < ratio:
            a = np.nextafter(a, np.float32(2.0))
        return np.array([a], dtype=np.float32)

    def uniform_ratio(self) -> float:
        """The smallest constant ratio in ``[lo, hi]`` whose policy meets the budget (the uniform baseline)."""
        return max(self.ratio_bounds[0], self.enforcer.uniform_ratio())

    # ------------------------------------------------------------------ internals
    def _centre(self) -> float:
        """The ratio action 0 asks for: the budget's uniform ratio (centred) or the unit's fair share (relative)."""
        return self._uniform if self.action_mode == "centred" else self._fair

    def _update_fair(self) -> None:
        """Relative mode: the fair share of the next unit to decide (nothing to do in absolute mode or at the end)."""
        if self.action_mode == "relative" and self._t is not None and self._t < self.n_units:
            self._fair = self.enforcer.fair_ratio(self._widths[: self._t])

    def _observation(self) -> np.ndarray:
        """The embedding of unit ``_t`` (of the last unit once all are decided) given the decisions so far."""
        t = self._t
        obs = np.empty(len(FEATURES), dtype=np.float64)
        obs[:8] = self._static[min(t, self.n_units - 1)]
        # _widths holds the decided units and full widths after them; the cheapest completion has them at hi.
        decided_full_rest = self.space.cost(self._widths).macs
        cheapest = self._widths.copy()
        cheapest[t:] = self._upper_widths[t:]
        decided_upper_rest = self.space.cost(cheapest).macs
        obs[8] = (self._full_macs - decided_full_rest) / self._full_macs
        obs[9] = (decided_full_rest - decided_upper_rest) / self._full_macs
        obs[10] = self._ratios[t - 1] if t > 0 else 0.0
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    def _finish(self, info: dict[str, Any]) -> tuple[float, bool, bool, dict[str, Any]]:
        """Evaluate the finished policy; the reward, terminated, truncated and the completed info of the last step."""
        ratios = self._ratios.copy()
        kept = self.space.kept_channels(ratios)
        # Both hold by construction; checking costs microseconds once per episode and catches a broken invariant
        # before a policy over budget is evaluated, logged or exported.
        if not np.array_equal(kept, self._widths) or not self.enforcer.fits(ratios):
            raise RuntimeError(f"internal error: the episode's policy does not meet the {self.budget.metric} budget "
                               f"or its widths disagree with the space's rounding: {ratios.tolist()}")
        outcome = self.evaluate(ratios.copy())
        reward = self.reward_fn(outcome)
        cost = self.space.cost(kept)
        latency = (float(self.latency_table.estimate(kept)) / self._full_latency if self.latency_table is not None
                   else None)
        info.update(ratios=ratios, kept=kept, outcome=outcome, reward=reward, penalized=reward.penalized,
                    cost={"flops_ratio": cost.macs / self._full_macs, "params_ratio": cost.params / self._full_params,
                          "latency_ratio": latency})
        return float(reward.value), True, False, info


def _static_features(space: PruningSpace) -> np.ndarray:
    """The first 8 features of every unit, ``(units, 8)``: index, kind, in/out channels, kernel, stride, feature-map
    size, FLOPs, each min-max normalized over the units (0 where all units agree)."""
    kinds = sorted({u.kind for u in space.units})
    raw = np.array([[u.index, kinds.index(u.kind), u.in_channels, u.channels, u.kernel, u.stride,
                     u.feature_hw[0] * u.feature_hw[1], u.macs] for u in space.units], dtype=np.float64)
    lo, span = raw.min(axis=0), np.ptp(raw, axis=0)
    return np.divide(raw - lo, span, out=np.zeros_like(raw), where=span > 0)
