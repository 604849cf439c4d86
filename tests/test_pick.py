"""The export rules (amc.search.pick): the runner's few kept candidates pick what the whole episode log would."""

from __future__ import annotations

import numpy as np
import pytest

from amc.errors import ConfigError
from amc.search.pick import EXPORT_RULES, TOP_K, candidates, pick
from amc.search.rundir import SearchState


def episode(n: int, reward: float, map50_95: float | None, phase: str = "explore", penalized: bool = False) -> dict:
    return {"episode": n, "reward": reward, "map50_95": map50_95, "phase": phase, "penalized": penalized}


def random_log(rng: np.random.Generator, length: int, warmup: int) -> list[dict]:
    # coarse values: ties in reward and mAP are frequent, so the tie-breaking (the earliest) is exercised too
    return [episode(n, float(rng.integers(0, 12)), float(rng.integers(0, 8)), "warmup" if n <= warmup else "explore",
                    penalized=bool(rng.random() < 0.1)) for n in range(1, length + 1)]


@pytest.mark.parametrize("rule", EXPORT_RULES)
def test_the_kept_candidates_pick_as_the_whole_log_after_every_episode(rule: str) -> None:
    rng = np.random.default_rng(0)
    for trial in range(40):
        log = random_log(rng, length=int(rng.integers(1, 60)), warmup=int(rng.integers(0, 25)))
        kept: list[dict] = []
        for i, e in enumerate(log):
            kept = candidates([*kept, e])  # as the runner keeps them, one episode at a time
            assert len(kept) <= 2 * TOP_K + 1
            if any(not x["penalized"] for x in log[:i + 1]):
                assert pick(kept, rule) is pick(log[:i + 1], rule), (trial, i)


def test_the_rules_on_a_small_log() -> None:
    log = [episode(1, 0.9, 0.10, "warmup"), episode(2, 0.705, 0.30, "warmup"), episode(3, 0.8, 0.20),
           episode(4, 0.95, 0.50, penalized=True), *[episode(n, 0.6 + n / 100, 0.15) for n in range(5, 14)],
           episode(14, 0.1, 0.40)]
    assert pick(log, "reward")["episode"] == 1  # the best reward; the penalized episode 4 never
    assert pick(log, "map")["episode"] == 14  # the best proxy mAP anywhere
    assert pick(log, "map_top10")["episode"] == 2  # the best proxy mAP among the 10 best rewards (14 is not one)
    assert pick(log, "map_top10_learned")["episode"] == 3  # the same after the warm-up
    warm_only = log[:2]
    assert pick(warm_only, "map_top10_learned")["episode"] == 2  # no learned episode yet: the warm-up ones


def test_an_episode_without_a_proxy_map_ranks_last_by_map() -> None:
    log = [episode(1, 0.9, None), episode(2, 0.1, 0.01)]
    assert pick(log, "map")["episode"] == 2 and pick(log, "map_top10")["episode"] == 2


def test_unknown_rule_and_no_scored_episode_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="export_rule must be one of reward, map_top10"):
        pick([episode(1, 0.0, 0.0)], "best")
    with pytest.raises(ConfigError, match="no episode of this search scored"):
        pick([episode(1, 0.0, 0.0, penalized=True)], "reward")


def test_a_checkpoint_from_before_the_export_rules_keeps_its_best_as_the_one_candidate() -> None:
    old = {"episodes_done": 9, "best_reward": -0.2, "best_episode": 4, "best_ratios": [0.1, 0.2],
           "best_metrics": {"map50_95": 0.3, "flops_ratio": 0.5, "params_ratio": 0.6, "latency_ratio": None},
           "penalized": 0, "search_s": 1.0, "first_episode": 1}
    state = SearchState.from_dict(old)
    assert state.candidates == [{"episode": 4, "reward": -0.2, "map50_95": 0.3, "phase": "", "ratios": [0.1, 0.2],
                                 "flops_ratio": 0.5, "params_ratio": 0.6, "latency_ratio": None}]
    # a later, worse episode does not replace it under the rule those runs exported by
    kept = candidates([*state.candidates, episode(10, -0.5, 0.9)])
    assert pick(kept, "reward")["episode"] == 4
    assert SearchState.from_dict({**old, "best_ratios": None, "best_reward": None}).candidates == []
