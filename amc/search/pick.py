"""Which of its episodes a search exports (``export_rule`` of ``conf/search.yaml``).

A search plays its episodes the same way under every rule; the rule only decides which scored episode becomes
``best_policy.yaml``, the pruned model and the bench's cell. Rules:

* ``reward``: the best reward (AMC's choice; ties: the earliest).
* ``map_top10``: the best proxy mAP among the 10 best rewards. At 30% FLOPs the proxy mAP ranks the search
  policies' default fine-tune better than the recovery reward does (Spearman 0.841 against 0.679,
  docs/evaluator.md); restricting it to the best rewards keeps it away from the policies the reward calls poor.
* ``map``: the best proxy mAP of the whole search.
* ``map_top10_learned``: ``map_top10`` over the episodes the agent chose after its warm-up (an agent without a
  warm-up, like random search, picks as ``map_top10``); until such an episode exists, over the warm-up ones.
  Exporting a warm-up draw is a failed DDPG seed (issue 20).

The runner keeps only the episodes a rule may still pick (:func:`candidates`): the best rewards of the warm-up
and of the later episodes and the best proxy mAP, never the whole history, so its saved state stays small on long
searches and :func:`pick` over those candidates equals :func:`pick` over every episode.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from amc.errors import ConfigError

EXPORT_RULES = ("reward", "map_top10", "map", "map_top10_learned")
"""Every rule, AMC's first (``docs/results.md``, "Which episode should a search export?", compares them)."""
TOP_K = 10
"""How many of the best rewards the ``map_top10`` rules choose among."""
WARMUP_PHASE = "warmup"
"""The ``phase`` of an agent's warm-up episodes (:class:`agents.base.EpisodeReport`)."""


def check_rule(rule: str) -> str:
    """``rule`` if it is a known export rule; a one-line :class:`ConfigError` naming the known ones otherwise."""
    if rule not in EXPORT_RULES:
        raise ConfigError(f"export_rule must be one of {', '.join(EXPORT_RULES)}, got {rule!r}")
    return rule


def _by_reward(episodes: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(episodes, key=lambda e: (-e["reward"], e["episode"]))


def _best_map(episodes: Iterable[dict[str, Any]]) -> dict[str, Any]:
    # an episode scored without a proxy mAP (a reward that needs none) ranks last
    return min(episodes, key=lambda e: (-(e.get("map50_95") if e.get("map50_95") is not None else -1.0),
                                        e["episode"]))


def pick(episodes: Iterable[dict[str, Any]], rule: str) -> dict[str, Any]:
    """The episode ``rule`` exports among ``episodes`` (records with ``episode``, ``reward``, ``map50_95``,
    ``phase`` and ``penalized``; a penalized episode is never exported).

    Raises:
        ConfigError: an unknown rule, or no episode scored.
    """
    check_rule(rule)
    scored = [e for e in episodes if not e.get("penalized")]
    if not scored:
        raise ConfigError("no episode of this search scored")
    if rule == "map_top10_learned":
        scored = [e for e in scored if e.get("phase") != WARMUP_PHASE] or scored
    if rule == "reward":
        return _by_reward(scored)[0]
    return _best_map(scored if rule == "map" else _by_reward(scored)[:TOP_K])


def candidates(episodes: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The episodes any rule may still pick, now or after more episodes: the :data:`TOP_K` best rewards among the
    warm-up episodes and among the others, and the best proxy mAP (penalized episodes dropped), in episode order."""
    scored = [e for e in episodes if not e.get("penalized")]
    if not scored:
        return []
    warmup = [e for e in scored if e.get("phase") == WARMUP_PHASE]
    learned = [e for e in scored if e.get("phase") != WARMUP_PHASE]
    keep = {e["episode"]: e for e in [*_by_reward(warmup)[:TOP_K], *_by_reward(learned)[:TOP_K], _best_map(scored)]}
    return [keep[n] for n in sorted(keep)]
