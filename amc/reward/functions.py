"""Reward functions of the search: what one episode's policy is worth, from its accuracy and its cost.

All rewards grow with accuracy. ``budget`` assumes the environment enforces the budget (AMC's
resource-constrained mode: actions are clipped so every policy fits), so accuracy alone is the reward.
A non-finite result (NaN mAP from a collapsed model, an infinite latency) never reaches the agent: it
becomes :attr:`RewardFunction.penalty`, flagged so the episode can be logged and counted.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from amc.errors import ConfigError
from amc.pruning.budget import Budget
from amc.registry import make_registered

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeOutcome:
    """What an episode's policy achieved.

    Attributes:
        map50_95: proxy mAP@0.5:0.95 in [0, 1].
        flops: FLOPs of the pruned model (2 x MACs, one image).
        params: its parameters.
        latency_ms: its measured or table-estimated latency (None if not measured).
        full_flops, full_params, full_latency_ms: the unpruned model's figures.
        recover_loss: the distillation loss left after the proxy's recovery steps (None without them).
    """

    map50_95: float
    flops: float
    params: float
    full_flops: float
    full_params: float
    latency_ms: float | None = None
    full_latency_ms: float | None = None
    recover_loss: float | None = None

    @property
    def error(self) -> float:
        return 1.0 - self.map50_95


@dataclass(frozen=True)
class Reward:
    """The reward of one episode and whether it had to be replaced by the penalty."""

    value: float
    penalized: bool
    reason: str = ""


class RewardFunction(ABC):
    """Maps an :class:`EpisodeOutcome` to a scalar; higher is better.

    Args:
        penalty: the reward of an episode whose result is not finite (below any real reward).
    """

    name: ClassVar[str]
    needs_latency: ClassVar[bool] = False
    needs_recovery: ClassVar[bool] = False  # reads ``recover_loss`` (the proxy's recovery steps must run)
    #: options a reward no longer takes -> what replaced them (:func:`make_reward` answers with it in one line)
    retired: ClassVar[dict[str, str]] = {}

    def __init__(self, penalty: float = -10.0) -> None:
        if not math.isfinite(penalty):
            raise ConfigError(f"reward penalty must be finite, got {penalty}")
        self.penalty = float(penalty)

    @abstractmethod
    def value(self, outcome: EpisodeOutcome) -> float:
        """The raw reward (may be non-finite for broken outcomes)."""

    def __call__(self, outcome: EpisodeOutcome) -> Reward:
        """The reward, with any non-finite input or result replaced by :attr:`penalty` (and logged)."""
        fields = {"map50_95": outcome.map50_95, "flops": outcome.flops, "params": outcome.params}
        if self.needs_latency:
            fields["latency_ms"] = outcome.latency_ms if outcome.latency_ms is not None else float("nan")
        if self.needs_recovery:
            fields["recover_loss"] = outcome.recover_loss if outcome.recover_loss is not None else float("nan")
        bad = [k for k, v in fields.items() if v is None or not math.isfinite(v)]
        try:
            value = float("nan") if bad else self.value(outcome)
        except (ValueError, ZeroDivisionError, OverflowError) as e:
            value, bad = float("nan"), [f"{type(e).__name__}: {e}"]
        if not math.isfinite(value):
            reason = f"non-finite {', '.join(bad)}" if bad else f"non-finite {self.name} reward"
            log.warning("episode penalized (%s): reward %s replaced by %s", reason, value, self.penalty)
            return Reward(self.penalty, True, reason)
        return Reward(value, False)


class NegativeError(RewardFunction):
    """``-error`` with error = 1 - mAP: accuracy only (the budget is enforced by the environment)."""

    name = "error"

    def value(self, outcome: EpisodeOutcome) -> float:
        return -outcome.error


class BudgetAccuracy(NegativeError):
    """Budget-constrained accuracy (AMC's resource-constrained search): ``-error``; the environment clips the
    actions so every policy meets the FLOPs, params or latency budget, so accuracy is all that is left."""

    name = "budget"


class ErrorLogFlops(RewardFunction):
    """AMC's accuracy-guaranteed reward ``-error * log(FLOPs)``: fewer FLOPs at the same error score higher."""

    name = "error_log_flops"

    def value(self, outcome: EpisodeOutcome) -> float:
        return -outcome.error * math.log(outcome.flops)


class LatencyAware(RewardFunction):
    """MnasNet-style latency reward ``mAP * (latency / target) ** w``.

    The target is the search's latency budget, the one :class:`~amc.pruning.budget.Budget` the environment also
    enforces: ``budget.fraction`` of the unpruned model's latency (``EpisodeOutcome.full_latency_ms``). ``w`` is
    ``alpha`` when the latency is within the target and ``beta`` above it (MnasNet's soft constraint uses
    alpha = beta = -0.07; alpha = 0, beta = -1 makes the target nearly hard). Under the environment's budget wall
    every policy is within the target, so ``alpha`` grades how far below it a policy gets.

    Args:
        budget: the latency budget: a :class:`~amc.pruning.budget.Budget` or the ``budget`` config group it is
            read from (``conf/reward/latency.yaml`` hands over the search's ``${budget}``).

    Raises:
        ConfigError: no budget, or a budget on FLOPs or params (the message says how to set a latency budget).
    """

    name = "latency"
    needs_latency = True
    retired = {  # its own target, before the target moved to the one budget
        "target_fraction": "the latency reward's target is the search's latency budget: budget=latency "
                           "budget.latency=F (F x the unpruned latency)",
        "target_ms": "the latency reward's target is the search's latency budget, a fraction of the unpruned "
                     "latency: budget=latency budget.latency=F (F = the target in ms / the unpruned model's ms)",
    }

    def __init__(self, budget: Budget | Mapping[str, Any] | None = None, alpha: float = -0.07, beta: float = -0.07,
                 penalty: float = -10.0) -> None:
        super().__init__(penalty)
        if budget is None:
            raise ConfigError("reward=latency takes its target from the latency budget: give it "
                              "budget=Budget('latency', fraction) (the search hands over its budget= group)")
        if not isinstance(budget, Budget):
            budget = Budget.from_config(budget)
        if budget.metric != "latency":
            raise ConfigError(f"reward=latency takes its target from the budget, which limits {budget.metric}: "
                              f"search with budget=latency (budget.latency=F: F x the unpruned latency)")
        self.budget, self.alpha, self.beta = budget, alpha, beta

    def value(self, outcome: EpisodeOutcome) -> float:
        if outcome.full_latency_ms is None:
            raise ValueError("the latency reward needs the unpruned latency")
        ratio = outcome.latency_ms / (outcome.full_latency_ms * self.budget.fraction)
        return outcome.map50_95 * ratio ** (self.alpha if ratio <= 1 else self.beta)


class RecoveryLoss(RewardFunction):
    """Minus the distillation loss left after the proxy's recovery steps (``proxy.recover_steps``): a dense
    reward for harsh budgets, where the environment enforces the budget as for ``budget``.

    Why: at 30% FLOPs on the demo even the recovered proxy mAP is ~0 for almost every policy (the mean per
    episode of a 60-episode search is 0.003), so an mAP reward is nearly always 0 and the agent has nothing to
    learn from. The loss grades every policy: how far its outputs still are from the unpruned model's after the
    same few steps. On the 12 policies of ``amc-bench bench=fidelity`` it ranks them like their fine-tuned mAP
    with Spearman rho 0.874 at 30% and 0.979 at 50% FLOPs (``scripts/recovery_loss_fidelity.py``).
    """

    name = "recovery"
    needs_recovery = True

    def value(self, outcome: EpisodeOutcome) -> float:
        assert outcome.recover_loss is not None  # __call__ penalizes a missing loss before this
        return -outcome.recover_loss


REWARDS: dict[str, type[RewardFunction]] = {cls.name: cls for cls in
                                             (NegativeError, ErrorLogFlops, BudgetAccuracy, LatencyAware,
                                              RecoveryLoss)}
"""Every reward function by name (``reward.name`` in ``conf/``)."""


def make_reward(name: str, **options: Any) -> RewardFunction:
    """A reward function by name with its options; unknown names or options end in a one-line ConfigError, and so
    does a retired option that is set (the message says what replaced it; left at None it is ignored)."""
    retired = getattr(REWARDS.get(str(name)), "retired", {})
    given = sorted(k for k in retired if options.get(k) is not None)
    if given:
        raise ConfigError(f"reward.{given[0]} is gone: {retired[given[0]]}")
    options = {k: v for k, v in options.items() if k not in retired}
    return make_registered(REWARDS, name, "reward", **options)


def reward_from_config(node: Mapping[str, Any]) -> RewardFunction:
    """The reward a ``conf/reward/*.yaml`` node describes: ``name`` plus that reward's options (``reward=latency``'s
    ``budget`` is the search's budget group, interpolated)."""
    options = {str(k): v for k, v in dict(node).items() if k != "name"}
    if "name" not in node:
        raise ConfigError("reward config needs a 'name' (one of: " + ", ".join(REWARDS) + ")")
    return make_reward(str(node["name"]), **options)
