"""Reward functions: values, ordering, and non-finite outcomes turned into logged penalties."""

from __future__ import annotations

import logging
import math

import pytest

from amc.errors import ConfigError
from amc.reward.functions import REWARDS, EpisodeOutcome, make_reward


def outcome(map_=0.5, flops=1e9, params=1e6, latency=10.0, full_latency=20.0, loss=0.3) -> EpisodeOutcome:
    return EpisodeOutcome(map50_95=map_, flops=flops, params=params, full_flops=2e9, full_params=2e6,
                          latency_ms=latency, full_latency_ms=full_latency, recover_loss=loss)


def test_values():
    assert make_reward("error")(outcome(0.4)).value == pytest.approx(-0.6)
    assert make_reward("budget")(outcome(0.4)).value == pytest.approx(-0.6)
    assert make_reward("error_log_flops")(outcome(0.4, flops=1e9)).value == pytest.approx(-0.6 * math.log(1e9))
    # MnasNet: mAP * (latency / target) ** w, target = half the unpruned latency by default
    r = make_reward("latency", alpha=-0.07, beta=-1.0)
    assert r(outcome(0.4, latency=5.0)).value == pytest.approx(0.4 * 0.5 ** -0.07)
    assert r(outcome(0.4, latency=20.0)).value == pytest.approx(0.4 * 2.0 ** -1.0)
    assert make_reward("latency", target_ms=8.0)(outcome(0.4, latency=8.0)).value == pytest.approx(0.4)
    assert make_reward("recovery")(outcome(0.4, loss=0.25)).value == pytest.approx(-0.25)


def test_ordering():
    for name in REWARDS:
        r = make_reward(name)
        if r.needs_recovery:  # graded by the loss left after the recovery steps, not by the mAP
            assert r(outcome(0.5, loss=0.2)).value > r(outcome(0.6, loss=0.3)).value
            continue
        assert r(outcome(0.6)).value > r(outcome(0.5)).value, name  # more accurate is better at equal cost
    r = make_reward("error_log_flops")
    assert r(outcome(0.5, flops=1e8)).value > r(outcome(0.5, flops=1e9)).value  # cheaper is better
    r = make_reward("latency")
    assert r(outcome(0.5, latency=5.0)).value > r(outcome(0.5, latency=15.0)).value


@pytest.mark.parametrize("name", sorted(REWARDS))
@pytest.mark.parametrize("broken", [dict(map_=float("nan")), dict(flops=float("inf")), dict(map_=None),
                                    dict(latency=float("nan")), dict(loss=float("nan")), dict(loss=None)])
def test_non_finite_becomes_a_logged_penalty(name, broken, caplog):
    r = make_reward(name, penalty=-3.0)
    if ("latency" in broken and not r.needs_latency) or ("loss" in broken and not r.needs_recovery):
        assert not r(outcome(**broken)).penalized  # not an input of this reward
        return
    with caplog.at_level(logging.WARNING):
        result = r(outcome(**broken))
    assert result.penalized and result.value == -3.0 and math.isfinite(result.value)
    assert "penalized" in caplog.text and result.reason


def test_zero_flops_and_missing_latency_are_penalized_not_raised():
    assert make_reward("error_log_flops")(outcome(flops=0.0)).penalized
    assert make_reward("latency")(outcome(latency=None)).penalized
    assert make_reward("latency")(outcome(full_latency=None)).penalized


def test_bad_names_and_options():
    with pytest.raises(ConfigError, match="unknown reward 'x'"):
        make_reward("x")
    with pytest.raises(ConfigError, match="has no option 'gamma'"):
        make_reward("error", gamma=1)
    with pytest.raises(ConfigError, match="finite"):
        make_reward("error", penalty=float("-inf"))
    with pytest.raises(ConfigError, match="target_ms"):
        make_reward("latency", target_ms=-1.0)


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_every_reward_has_a_config(name):
    """conf/reward/<name>.yaml builds the reward it names, with every option it lists."""
    from pathlib import Path

    import yaml

    from amc.reward.functions import reward_from_config

    node = yaml.safe_load((Path(__file__).parents[1] / "conf" / "reward" / f"{name}.yaml").read_text())
    reward = reward_from_config(node)
    assert reward.name == name and reward.penalty == node["penalty"]
