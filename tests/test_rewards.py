"""Reward functions: values, ordering, and non-finite outcomes turned into logged penalties."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from amc.config import compose_config
from amc.errors import ConfigError
from amc.pruning.budget import Budget
from amc.reward.functions import REWARDS, EpisodeOutcome, RewardFunction, make_reward, reward_from_config

CONF = Path(__file__).parents[1] / "conf"


def outcome(map_=0.5, flops=1e9, params=1e6, latency=10.0, full_latency=20.0, loss=0.3) -> EpisodeOutcome:
    return EpisodeOutcome(map50_95=map_, flops=flops, params=params, full_flops=2e9, full_params=2e6,
                          latency_ms=latency, full_latency_ms=full_latency, recover_loss=loss)


def reward(name: str, **options: Any) -> RewardFunction:
    """``make_reward(name)``; the latency reward gets the search's latency budget (its target), 50% by default."""
    if name == "latency":
        options.setdefault("budget", Budget("latency", 0.5))
    return make_reward(name, **options)


def test_values():
    assert make_reward("error")(outcome(0.4)).value == pytest.approx(-0.6)
    assert make_reward("budget")(outcome(0.4)).value == pytest.approx(-0.6)
    assert make_reward("error_log_flops")(outcome(0.4, flops=1e9)).value == pytest.approx(-0.6 * math.log(1e9))
    # MnasNet: mAP * (latency / target) ** w, target = the latency budget's fraction of the unpruned latency
    r = reward("latency", alpha=-0.07, beta=-1.0)
    assert r(outcome(0.4, latency=5.0)).value == pytest.approx(0.4 * 0.5 ** -0.07)
    assert r(outcome(0.4, latency=20.0)).value == pytest.approx(0.4 * 2.0 ** -1.0)
    assert reward("latency", budget=Budget("latency", 0.4))(outcome(0.4, latency=8.0)).value == pytest.approx(0.4)
    assert make_reward("recovery")(outcome(0.4, loss=0.25)).value == pytest.approx(-0.25)


def test_ordering():
    for name in REWARDS:
        r = reward(name)
        if r.needs_recovery:  # graded by the loss left after the recovery steps, not by the mAP
            assert r(outcome(0.5, loss=0.2)).value > r(outcome(0.6, loss=0.3)).value
            continue
        assert r(outcome(0.6)).value > r(outcome(0.5)).value, name  # more accurate is better at equal cost
    r = make_reward("error_log_flops")
    assert r(outcome(0.5, flops=1e8)).value > r(outcome(0.5, flops=1e9)).value  # cheaper is better
    r = reward("latency")
    assert r(outcome(0.5, latency=5.0)).value > r(outcome(0.5, latency=15.0)).value


@pytest.mark.parametrize("name", sorted(REWARDS))
@pytest.mark.parametrize("broken", [dict(map_=float("nan")), dict(flops=float("inf")), dict(map_=None),
                                    dict(latency=float("nan")), dict(loss=float("nan")), dict(loss=None)])
def test_non_finite_becomes_a_logged_penalty(name, broken, caplog):
    r = reward(name, penalty=-3.0)
    if ("latency" in broken and not r.needs_latency) or ("loss" in broken and not r.needs_recovery):
        assert not r(outcome(**broken)).penalized  # not an input of this reward
        return
    with caplog.at_level(logging.WARNING):
        result = r(outcome(**broken))
    assert result.penalized and result.value == -3.0 and math.isfinite(result.value)
    assert "penalized" in caplog.text and result.reason


def test_zero_flops_and_missing_latency_are_penalized_not_raised():
    assert make_reward("error_log_flops")(outcome(flops=0.0)).penalized
    assert reward("latency")(outcome(latency=None)).penalized
    assert reward("latency")(outcome(full_latency=None)).penalized


def test_bad_names_and_options():
    with pytest.raises(ConfigError, match="unknown reward 'x'"):
        make_reward("x")
    with pytest.raises(ConfigError, match="has no option 'gamma'"):
        make_reward("error", gamma=1)
    with pytest.raises(ConfigError, match="finite"):
        make_reward("error", penalty=float("-inf"))


def search_config(reward_name: str, budget: str, **budget_values: float) -> Any:
    """The ``reward`` and ``budget`` groups of a search, as ``conf/search.yaml`` composes them (without Hydra)."""
    budget_node = {**yaml.safe_load((CONF / "budget" / f"{budget}.yaml").read_text()), **budget_values}
    return OmegaConf.create({"budget": budget_node,
                             "reward": yaml.safe_load((CONF / "reward" / f"{reward_name}.yaml").read_text())})


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_every_reward_has_a_config(name):
    """conf/reward/<name>.yaml builds the reward it names, with every option it lists."""
    node = search_config(name, "latency").reward
    built = reward_from_config(node)
    assert built.name == name and built.penalty == node["penalty"]


def test_the_latency_reward_takes_its_target_from_the_budget():
    """One home for the budget: reward=latency's target is the search's latency budget (budget=latency), read by
    Budget.from_config from the group conf/reward/latency.yaml interpolates; other budgets and the old target
    keys are refused in one line."""
    cfg = search_config("latency", "latency", latency=0.4)
    r = reward_from_config(cfg.reward)
    assert r.budget == Budget("latency", 0.4) == Budget.from_config(cfg.budget)
    assert r(outcome(0.4, latency=8.0, full_latency=20.0)).value == pytest.approx(0.4)  # at the target: mAP
    # the search's own composition: search.yaml's budget= group reaches the reward
    composed = compose_config("search", ["reward=latency", "budget=latency", "budget.latency=0.3"], "test")
    assert reward_from_config(composed.reward).budget == Budget("latency", 0.3)
    with pytest.raises(ConfigError, match=r"limits flops: search with budget=latency \(budget.latency=F"):
        reward_from_config(search_config("latency", "flops").reward)
    with pytest.raises(ConfigError, match="takes its target from the latency budget"):
        make_reward("latency")
    for old in ("target_fraction", "target_ms"):  # the reward's own target, before it moved to the budget
        node = {**OmegaConf.to_container(search_config("latency", "latency").reward, resolve=True), old: 0.5}
        with pytest.raises(ConfigError, match=rf"^reward.{old} is gone: .*budget=latency budget.latency=F"):
            reward_from_config(node)
