"""Search agents: AMC's DDPG (on stable-baselines3) and the random and uniform baselines.

Every agent plays whole episodes of the pruning environment (``envs``) and checkpoints exactly; build one by
name with :func:`make_agent` or from a ``conf/agent/*.yaml`` node with :func:`agent_from_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium

from agents.base import EpisodeReport, SearchAgent
from agents.ddpg import DDPGAgent
from agents.random_search import RandomSearchAgent
from agents.uniform import UniformAgent
from amc.errors import ConfigError
from amc.registry import make_registered

AGENTS: dict[str, type[SearchAgent]] = {cls.name: cls for cls in (DDPGAgent, RandomSearchAgent, UniformAgent)}
"""Every search agent by name (``agent.name`` in ``conf/agent/``)."""


def make_agent(name: str, env: gymnasium.Env, seed: int = 0, **options: Any) -> SearchAgent:
    """An agent by name on ``env``; unknown names or options end in a one-line ConfigError."""
    return make_registered(AGENTS, name, "agent", env=env, seed=seed, **options)


def agent_from_config(node: Mapping[str, Any], env: gymnasium.Env, seed: int = 0) -> SearchAgent:
    """The agent a ``conf/agent/*.yaml`` node describes: ``name`` plus that agent's options."""
    if "name" not in node:
        raise ConfigError("agent config needs a 'name' (one of: " + ", ".join(AGENTS) + ")")
    options = {str(k): v for k, v in dict(node).items() if k != "name"}
    for reserved in ("env", "seed"):
        if reserved in options:
            raise ConfigError(f"agent option {reserved!r} is set by the search, not in the agent config")
    return make_agent(str(node["name"]), env, seed, **options)


__all__ = ["AGENTS", "DDPGAgent", "EpisodeReport", "RandomSearchAgent", "SearchAgent", "UniformAgent",
           "agent_from_config", "make_agent"]
