"""A tiny, instant pruning environment with the contract's interface, to test the agents without a model.

Six units; the reward at the last step is ``0.5 - 2 * mean((ratio - target) ** 2)`` for fixed per-unit target
ratios, so the best policy is far from uniform. A budget (mean applied ratio >= ``budget``) is enforced with an
action wall like PruningEnv's: the applied ratio is raised so that the rest of the units, all at the upper
bound, can still meet it.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from amc.reward.functions import Reward

TARGETS = np.array([0.1, 0.7, 0.2, 0.6, 0.05, 0.75])


class ToyPruningEnv(gymnasium.Env):
    """Box(-1, 1, (1,)) actions, Box(0, 1, (11,)) observations, one step per unit, reward at the end."""

    def __init__(self, budget: float = 0.3, ratio_bounds: tuple[float, float] = (0.0, 0.8),
                 targets: np.ndarray = TARGETS) -> None:
        self.targets = np.asarray(targets, dtype=np.float64)
        self.n_units = len(self.targets)
        self.budget = float(budget)
        self.ratio_bounds = (float(ratio_bounds[0]), float(ratio_bounds[1]))
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, (11,), np.float32)
        self.ratios: list[float] = []
        self.episodes = 0

    def uniform_ratio(self) -> float:
        return self.budget

    def requested_ratio(self, action: float) -> float:
        """The ratio an action asks for (PruningEnv's absolute mode): ``lo + (a + 1) / 2 * (hi - lo)``, clipped."""
        lo, hi = self.ratio_bounds
        a = min(max(float(action), -1.0), 1.0)
        return min(max(lo + (a + 1.0) / 2.0 * (hi - lo), lo), hi)

    def action_for_ratio(self, ratio: float) -> np.ndarray:
        """The float32 action (shape ``(1,)``) requesting at least ``ratio`` (PruningEnv's, absolute mode): agents
        map ratios to actions through the environment, never on their own."""
        lo, hi = self.ratio_bounds
        a = np.float32(np.clip(2.0 * (float(ratio) - lo) / (hi - lo) - 1.0, -1.0, 1.0))
        while a < 1.0 and self.requested_ratio(float(a)) < ratio:
            a = np.nextafter(a, np.float32(2.0))
        return np.array([a], dtype=np.float32)

    def _obs(self) -> np.ndarray:
        t, lo, hi = len(self.ratios), *self.ratio_bounds
        obs = np.zeros(11, np.float32)
        obs[0] = min(t, self.n_units - 1) / (self.n_units - 1)
        obs[1] = 0.5
        obs[8] = sum(self.ratios) / (self.n_units * hi)
        obs[9] = (self.n_units - t) / self.n_units
        obs[10] = (self.ratios[-1] - lo) / (hi - lo) if self.ratios else 0.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        self.ratios = []
        self.episodes += 1
        return self._obs(), {}

    def step(self, action: np.ndarray):  # type: ignore[override]
        assert len(self.ratios) < self.n_units, "reset() is required after termination"
        lo, hi = self.ratio_bounds
        a = float(np.asarray(action).reshape(-1)[0])
        requested = float(np.clip(lo + (a + 1.0) / 2.0 * (hi - lo), lo, hi))
        rest = self.n_units - len(self.ratios) - 1
        needed = self.budget * self.n_units - sum(self.ratios) - hi * rest  # the action wall
        ratio = min(max(requested, needed), hi)
        self.ratios.append(ratio)
        info: dict[str, Any] = {"unit": f"unit{len(self.ratios) - 1}", "requested_ratio": requested, "ratio": ratio,
                                "applied_action": 2.0 * (ratio - lo) / (hi - lo) - 1.0}
        if len(self.ratios) < self.n_units:
            return self._obs(), 0.0, False, False, info
        ratios = np.array(self.ratios)
        reward = Reward(float(0.5 - 2.0 * np.mean((ratios - self.targets) ** 2)), False)
        info.update(ratios=ratios, reward=reward, penalized=reward.penalized, outcome=None, cost={})
        return self._obs(), reward.value, True, False, info


class Recorder(gymnasium.Wrapper):
    """Records every requested action and every step's info (and can disturb the global RNGs at each step)."""

    def __init__(self, env: gymnasium.Env, disturb_global_rngs: bool = False) -> None:
        super().__init__(env)
        self.actions: list[float] = []
        self.infos: list[dict[str, Any]] = []
        self.disturb = disturb_global_rngs

    def step(self, action):  # type: ignore[no-untyped-def, override]
        if self.disturb:  # like an evaluator that shuffles data or samples with the global RNGs
            import random

            import torch

            np.random.random(3), torch.rand(3), random.random()
        self.actions.append(float(np.asarray(action).reshape(-1)[0]))
        out = self.env.step(action)
        self.infos.append(out[-1])
        return out
