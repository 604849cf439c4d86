"""What every search agent shares: the episode loop, the per-episode report and atomic, exact checkpoints.

A search agent plays whole episodes of the pruning environment (one step per prunable unit, the reward at the
last step) and, where it learns, updates itself after each episode. :meth:`SearchAgent.run` is resumable: it
plays until ``episodes_done`` reaches the requested total, so a resumed search is ``load`` + ``run(same total)``.

:meth:`SearchAgent.run_batched` plays the same episodes several at a time on a stable-baselines3 ``VecEnv``
(one environment per worker process, see :mod:`amc.search.parallel`): every episode has one step per unit, so the
environments step in lockstep and their (expensive) final evaluations run in parallel. The agent then takes the
batch's episodes in a fixed order (environment 0 first) and treats each exactly as its serial loop would
(replay, the same number of updates, the report); it is resumable at batch boundaries.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium
import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv

from amc.atomic import atomic_file
from amc.errors import CheckpointError, ConfigError
from amc.gym_api import IDLE_ACTION, STEP_REWARD

CHECKPOINT = "agent.pt"
"""The file :meth:`SearchAgent.save` writes into its directory (one file, so one rename makes it atomic)."""


@dataclass
class EpisodeReport:
    """One finished episode, as the runner logs it.

    Attributes:
        episode: 0-based episode index.
        ratios: the applied policy (sparsity per unit, after the environment's action wall).
        reward: the episode's reward (the last step's reward).
        penalized: whether the reward is the penalty of a non-finite outcome.
        info: the last step's ``info`` (outcome, cost, kept widths ...).
        metrics: the agent's own figures for this episode (losses, sigma, reward baseline ...).
        phase: what the agent was doing: ``warmup``, ``explore``, ``random`` or ``uniform``.
        seconds: wall time of the episode including the agent's updates (in a batch: the batch's wall time
            divided by its episodes, so the episodes' seconds still add up to the search time).
        last_in_batch: whether the agent's state now includes every episode reported so far (always true in the
            serial loop; in :meth:`SearchAgent.run_batched` only for a batch's last episode, the one place where
            a checkpoint can be taken that a resumed run continues exactly).
    """

    episode: int
    ratios: np.ndarray
    reward: float
    penalized: bool
    info: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    phase: str = ""
    seconds: float = 0.0
    last_in_batch: bool = True


@dataclass
class Transition:
    """One step as the agent stores it: the action is the one the environment applied, not the requested one."""

    obs: np.ndarray
    action: np.ndarray
    next_obs: np.ndarray


@dataclass
class Rollout:
    """One played episode: its transitions, the final reward and the last step's info."""

    transitions: list[Transition]
    reward: float
    info: dict[str, Any]


def ratio_bounds(env: gymnasium.Env) -> tuple[float, float]:
    """The environment's ``(lo, hi)`` sparsity bounds: action -1 requests ``lo``, +1 requests ``hi``."""
    bounds = getattr(env.unwrapped, "ratio_bounds", None)
    if bounds is None:
        raise ConfigError(f"{type(env.unwrapped).__name__} has no ratio_bounds: the agents need the pruning "
                          "environment's (lo, hi) sparsity bounds to map ratios to actions")
    lo, hi = (float(b) for b in bounds)
    return lo, hi


def action_mode(env: gymnasium.Env) -> str:
    """How the environment maps actions to ratios: ``absolute`` (AMC: ``lo + (a + 1) / 2 * (hi - lo)``), ``centred``
    (the deviation from the budget's uniform ratio) or ``relative`` (from the unit's fair share of the remaining
    budget), both in units of ``(hi - lo) / 2``, so that action 0 is uniform pruning. Environments that do not say
    are absolute."""
    return str(getattr(env.unwrapped, "action_mode", "absolute"))


class BudgetCentredSampler:
    """Random sparsities that spend the budget: each unit's ratio uniform in ``[lo, min(hi, 2 r - lo)]``, where ``r``
    is the uniform policy's ratio at the budget (``env.uniform_ratio()``), so the policies average the budget's
    sparsity and spread around it. Uniform in the whole ``[lo, hi]`` instead, most policies land far under the
    budget (about 49% of the FLOPs kept under a 70% budget on the demo) and score almost nothing.

    With centred or budget-relative actions (``action_mode``), whose action 0 is uniform pruning, the same spread
    is drawn as actions uniform in ``[-d, d]``, ``d = min(1, (r - lo) / ((hi - lo) / 2))`` (centred: exactly the
    ratios above; relative: around each unit's fair share).
    Environments without ``uniform_ratio`` get ratios uniform in their bounds.
    """

    def __init__(self, env: gymnasium.Env) -> None:
        self.env = env
        self.bounds = ratio_bounds(env)
        lo, hi = self.bounds
        uniform = getattr(env.unwrapped, "uniform_ratio", None)
        self.high = min(hi, 2.0 * float(uniform()) - lo) if uniform is not None else hi
        self.relative = action_mode(env) != "absolute"
        self.spread = min(1.0, (self.high - lo) / (hi - lo)) if uniform is not None else 1.0

    def __call__(self, rng: np.random.Generator) -> float:
        """One action (in [-1, 1]) requesting a ratio drawn from the distribution above."""
        if self.relative:
            return float(rng.uniform(-self.spread, self.spread))
        return action_for_ratio(self.env, float(rng.uniform(self.bounds[0], self.high)))


def action_for_ratio(env: gymnasium.Env, ratio: float) -> float:
    """The action that requests ``ratio`` at the environment's current unit, as the environment maps actions to
    ratios (its own ``action_for_ratio``: a float32 action that requests at least ``ratio``, never a hair less, which
    could land below a channel-rounding step). The mapping is the environment's; agents never redo it."""
    return float(np.asarray(env.unwrapped.action_for_ratio(float(ratio)), dtype=np.float32).reshape(-1)[0])


class SearchAgent(ABC):
    """Plays episodes of a pruning environment and keeps every piece of state needed to continue exactly.

    Subclasses implement :meth:`play_episode` and extend :meth:`state_dict` / :meth:`load_state_dict`; they
    keep the constructor options they were built with in :attr:`options` so that :meth:`load` can rebuild them.
    All randomness of an agent comes from its own ``numpy`` Generator (and, for networks, torch generators
    seeded from it), never from global RNGs that other code (the evaluator, data loaders) also draws from:
    that is what makes a seed reproduce the actions and a checkpoint continue them.

    Args:
        env: the pruning environment (``Box(-1, 1, (1,))`` actions, fixed-length episodes).
        seed: seeds every random choice of the agent.
    """

    name: ClassVar[str]

    def __init__(self, env: gymnasium.Env, seed: int = 0) -> None:
        space = env.action_space
        if not (isinstance(space, gymnasium.spaces.Box) and space.shape == (1,)
                and np.all(space.low == -1) and np.all(space.high == 1)):
            raise ConfigError(f"search agents need a Box(-1, 1, (1,)) action space, got {space}")
        self.env = env
        self.seed = int(seed)
        self.episodes_done = 0
        self.rng = np.random.default_rng(self.seed)
        self.options: dict[str, Any] = {}

    # -- playing ---------------------------------------------------------------------------------------------

    def run(self, episodes: int, on_episode: Callable[[EpisodeReport], None] | None = None) -> None:
        """Play episodes until :attr:`episodes_done` equals ``episodes``.

        ``on_episode`` is called after each episode and the agent's updates for it, so a :meth:`save` there
        captures a state from which :meth:`run` continues exactly.
        """
        if episodes < self.episodes_done:
            raise ConfigError(f"the agent has already played {self.episodes_done} episodes; ask for at least that "
                              f"many (got {episodes})")
        while self.episodes_done < episodes:
            report = self.play_episode()
            if on_episode is not None:
                on_episode(report)

    @abstractmethod
    def play_episode(self) -> EpisodeReport:
        """Play one episode, update the agent for it, increment :attr:`episodes_done` and report it."""

    def rollout(self, act: Callable[[np.ndarray], float]) -> Rollout:
        """Play one episode choosing each action with ``act(observation) -> action in [-1, 1]``.

        The environment is seeded at the agent's very first episode only (later resets continue its state),
        so an uninterrupted agent and a resumed one reset it identically.
        """
        obs, _ = self.env.reset(seed=self.seed if self.episodes_done == 0 else None)
        transitions: list[Transition] = []
        while True:
            action = np.array([act(obs)], dtype=np.float32)
            next_obs, reward, terminated, truncated, info = self.env.step(action)
            # the environment may raise the requested ratio (action wall); learn from what was applied
            applied = np.asarray(info.get("applied_action", action), dtype=np.float32).reshape(1)
            transitions.append(Transition(np.asarray(obs, np.float32), applied, np.asarray(next_obs, np.float32)))
            obs = next_obs
            if terminated or truncated:
                return Rollout(transitions, float(reward), dict(info))

    def run_batched(self, vec_env: VecEnv, episodes: int,
                    on_episode: Callable[[EpisodeReport], None] | None = None) -> None:
        """Play episodes ``vec_env.num_envs`` at a time until :attr:`episodes_done` equals ``episodes``.

        Each batch plays ``min(num_envs, episodes left)`` episodes in parallel (the environments beyond that sit
        it out), then hands them to :meth:`finish_batch` in environment order. ``on_episode`` is called for each
        episode of the batch after the agent has processed the whole batch; only the batch's last report has
        ``last_in_batch`` set, and a :meth:`save` there captures a state from which :meth:`run_batched` (with
        the same number of environments) continues exactly.

        Args:
            vec_env: ``num_envs`` copies of the pruning environment, each wrapped in
                :class:`envs.vector.LockstepEnv` (see :func:`envs.vector.make_vec_env`).
            episodes: the total number of episodes, counting those already played.
            on_episode: called with each episode's report.
        """
        if episodes < self.episodes_done:
            raise ConfigError(f"the agent has already played {self.episodes_done} episodes; ask for at least that "
                              f"many (got {episodes})")
        while self.episodes_done < episodes:
            started = time.perf_counter()
            n = min(vec_env.num_envs, episodes - self.episodes_done)
            reports = self.play_batch(vec_env, n)
            seconds = (time.perf_counter() - started) / max(len(reports), 1)
            for i, report in enumerate(reports):
                report.seconds, report.last_in_batch = seconds, i == len(reports) - 1
                if on_episode is not None:
                    on_episode(report)

    def play_batch(self, vec_env: VecEnv, n: int) -> list[EpisodeReport]:
        """Play ``n`` episodes at once on the first ``n`` environments of ``vec_env`` and report them in order.

        The default plays each environment with :meth:`batch_action` and lets :meth:`finish_batch` account for
        the episodes; agents override those two, not this.
        """
        first = self.episodes_done
        rollouts = self.rollout_batch(vec_env, n, lambda obs: [self.batch_action(first + i, o)
                                                               for i, o in enumerate(obs)])
        return self.finish_batch(rollouts)

    def batch_action(self, episode: int, obs: np.ndarray) -> float:
        """The action of ``episode`` (absolute index) for ``obs`` in a batched rollout (agents override it, or
        :meth:`play_batch` for batch-wide work such as one actor pass over all observations)."""
        raise NotImplementedError(f"the {self.name} agent cannot play batched episodes")

    def finish_batch(self, rollouts: list[Rollout]) -> list[EpisodeReport]:
        """Account for a batch's episodes in order (store, update, count, report); agents override it."""
        raise NotImplementedError(f"the {self.name} agent cannot play batched episodes")

    def rollout_batch(self, vec_env: VecEnv, n: int, act: Callable[[np.ndarray], Any]) -> list[Rollout]:
        """Play one episode on each of the first ``n`` environments of ``vec_env`` in lockstep.

        At every step ``act`` gets the ``(n, obs_dim)`` observations of the playing environments and returns
        their ``n`` actions in ``[-1, 1]``; the other environments get :data:`IDLE_ACTION`. Every environment is
        reset at the start (SB3's ``VecEnv`` resets a finished one itself, which a resumed run could not
        reproduce, so the episode never starts from that automatic reset). All playing episodes must end at
        the same step, as the pruning environment's do (one step per unit).
        """
        if not 1 <= n <= vec_env.num_envs:
            raise ValueError(f"a batch plays 1 to {vec_env.num_envs} episodes, got {n}")
        obs = np.asarray(vec_env.reset(), dtype=np.float32)
        transitions: list[list[Transition]] = [[] for _ in range(n)]
        while True:
            actions = np.full((vec_env.num_envs, 1), IDLE_ACTION, dtype=np.float32)
            actions[:n, 0] = np.asarray(act(obs[:n]), dtype=np.float32).reshape(n)
            next_obs, rewards, dones, infos = vec_env.step(actions)
            done = np.asarray(dones[:n], dtype=bool)
            for i in range(n):
                info = infos[i]
                applied = np.asarray(info.get("applied_action", actions[i]), dtype=np.float32).reshape(1)
                # a finished environment was reset by the VecEnv: its episode's last observation is in the info
                after = info["terminal_observation"] if done[i] else next_obs[i]
                transitions[i].append(Transition(obs[i].copy(), applied, np.asarray(after, np.float32)))
            if done.any():
                if not done.all():
                    raise RuntimeError("batched episodes must all end at the same step (one step per unit); "
                                       f"these ended early: {np.flatnonzero(done).tolist()}")
                return [Rollout(transitions[i], float(infos[i].get(STEP_REWARD, rewards[i])), dict(infos[i]))
                        for i in range(n)]
            obs = np.asarray(next_obs, dtype=np.float32)

    def report(self, rollout: Rollout, phase: str, started: float,
               metrics: dict[str, float] | None = None) -> EpisodeReport:
        """The :class:`EpisodeReport` of the episode ``episodes_done - 1``."""
        info = rollout.info
        return EpisodeReport(episode=self.episodes_done - 1, ratios=np.asarray(info["ratios"], dtype=np.float64),
                             reward=rollout.reward, penalized=bool(info.get("penalized", False)), info=info,
                             metrics=dict(metrics or {}), phase=phase, seconds=time.perf_counter() - started)

    # -- checkpoints ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (tensors and plain values only: loadable with weights_only)."""
        unwrapped = self.env.unwrapped
        return {"agent": self.name, "seed": self.seed, "options": dict(self.options),
                "episodes_done": self.episodes_done, "rng": self.rng.bit_generator.state,
                "n_units": int(getattr(unwrapped, "n_units", -1)),
                "obs_shape": tuple(int(d) for d in (self.env.observation_space.shape or ()))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state into this (freshly built) agent."""
        self.episodes_done = int(state["episodes_done"])
        self.rng.bit_generator.state = state["rng"]

    def save(self, directory: str | Path) -> Path:
        """Write the agent's state to ``directory/agent.pt`` atomically and return that path.

        The state goes to a temporary file beside the target which is then renamed over it (one
        ``os.replace``), so a crash or kill at any moment leaves either the previous checkpoint or the new one.
        """
        path = Path(directory) / CHECKPOINT
        with atomic_file(path) as tmp:
            torch.save(self.state_dict(), tmp)
        return path

    @classmethod
    def load(cls, directory: str | Path, env: gymnasium.Env) -> SearchAgent:
        """The agent saved in ``directory`` (of whichever registered kind it is), on ``env``.

        Only tensors and plain values are read (``weights_only=True``: loading runs no code).
        """
        from agents import AGENTS  # deliberate: the registry (agents/__init__.py) imports this module (a cycle)

        path = Path(directory) / CHECKPOINT
        if not path.is_file():
            raise CheckpointError(f"no agent checkpoint at {path}; start a new search or point to its directory")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
            raise CheckpointError(f"{path} is not a readable agent checkpoint ({type(e).__name__}: {e})") from e
        kind = AGENTS.get(str(state.get("agent")))
        if kind is None or not issubclass(kind, cls):
            raise CheckpointError(f"{path} holds a {state.get('agent')!r} agent, not a {cls.__name__}")
        n_units = int(getattr(env.unwrapped, "n_units", -1))
        obs_shape = tuple(int(d) for d in (env.observation_space.shape or ()))
        if (state["n_units"], tuple(state["obs_shape"])) != (n_units, obs_shape):
            raise CheckpointError(f"{path} was saved on an environment with {state['n_units']} units and "
                                  f"observations {tuple(state['obs_shape'])}, this one has {n_units} and "
                                  f"{obs_shape}: resume with the same model and search settings")
        agent = kind(env, seed=state["seed"], **state["options"])
        agent.load_state_dict(state)
        return agent
