"""What every search agent shares: the episode loop, the per-episode report and atomic, exact checkpoints.

A search agent plays whole episodes of the pruning environment (one step per prunable unit, the reward at the
last step) and, where it learns, updates itself after each episode. :meth:`SearchAgent.run` is resumable: it
plays until ``episodes_done`` reaches the requested total, so a resumed search is ``load`` + ``run(same total)``.

:meth:`SearchAgent.run_batched` plays the same episodes several at a time on a stable-baselines3 ``VecEnv``
(one environment per worker process, see :mod:`amc.search.parallel`): every episode has one step per unit, so the
environments step in lockstep and their (expensive) final evaluations run in parallel. The agent then takes the
batch's episodes in a fixed order (environment 0 first) and treats each exactly as its serial loop would
(replay, the same number of updates, the report); it is resumable at batch boundaries.

A checkpoint (:meth:`SearchAgent.save`) is a folder: :data:`AGENT_FILE` (plain JSON: the agent's kind, seed,
options, episode count, Generator state) and the agent's own files (DDPG: a stable-baselines3 zip and an ``.npz``
replay buffer, see :mod:`agents.ddpg`). :meth:`SearchAgent.load` reads it without unpickling anything
(:mod:`agents.checkpoint`), so resuming from a folder someone else made runs none of its code.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium
import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv

from agents.checkpoint import read_json, unpack_limit, zip_declared_bytes
from amc.atomic import atomic_dir, complete_dir
from amc.errors import CheckpointError, ConfigError
from amc.gym_api import IDLE_ACTION, STEP_REWARD

AGENT_FILE = "agent.json"
"""The file of every agent checkpoint: the agent's kind, seed, options, episode count and Generator state (JSON)."""
LEGACY_FILE = "agent.pt"
"""The one-file checkpoint of amc before stable-baselines3 zips (a ``torch.save`` dict; still read)."""
CHECKPOINT_FORMAT = 2
"""The version of the checkpoint folder :meth:`SearchAgent.save` writes (1 was :data:`LEGACY_FILE`)."""


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


def _replaceable(folder: Path) -> bool:
    """Whether :meth:`SearchAgent.save` may replace ``folder``: absent, empty, or an agent checkpoint already."""
    if not folder.exists():
        return True
    return folder.is_dir() and (not any(folder.iterdir())
                                or any((folder / name).exists() for name in (AGENT_FILE, LEGACY_FILE)))


class SearchAgent(ABC):
    """Plays episodes of a pruning environment and keeps every piece of state needed to continue exactly.

    Subclasses implement :meth:`play_episode`; those with more state than the episode count and the Generator
    write it in :meth:`save_files` and read it back, safely, in :meth:`restore` (declaring the bytes it takes in
    :meth:`state_bytes`). They keep the constructor options they were built with in :attr:`options` so that
    :meth:`load` can rebuild them.
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

    checkpoint_files: ClassVar[tuple[str, ...]] = ()
    """The files :meth:`save_files` writes beside :data:`AGENT_FILE`."""

    def checkpoint_meta(self) -> dict[str, Any]:
        """What :data:`AGENT_FILE` holds (plain JSON values): enough to rebuild the agent and to check that a
        checkpoint fits an environment before anything is allocated."""
        unwrapped = self.env.unwrapped
        return {"format": CHECKPOINT_FORMAT, "agent": self.name, "seed": self.seed, "options": dict(self.options),
                "episodes_done": self.episodes_done, "rng": self.rng.bit_generator.state,
                "n_units": int(getattr(unwrapped, "n_units", -1)),
                "obs_shape": [int(d) for d in (self.env.observation_space.shape or ())]}

    def save_files(self, folder: Path) -> None:
        """Write the agent's own state files (:attr:`checkpoint_files`) into ``folder``; none by default."""

    def restore(self, folder: Path, meta: Mapping[str, Any]) -> None:
        """Restore the state :meth:`save` wrote into this freshly built agent, reading only plain JSON values and
        tensors (subclasses read their :attr:`checkpoint_files`, then call this)."""
        episodes = meta.get("episodes_done")
        if type(episodes) is not int or episodes < 0:
            raise CheckpointError(f"{folder / AGENT_FILE}: episodes_done is {episodes!r}, not a count")
        self._set_rng_state(meta.get("rng"), folder / AGENT_FILE)
        self.episodes_done = episodes

    @classmethod
    def state_bytes(cls, options: Mapping[str, Any], env: gymnasium.Env) -> int:
        """The bytes an agent built with ``options`` on ``env`` allocates for state that its checkpoint files
        store (networks, replay buffer); a checkpoint declaring far more than its files hold is refused before
        the agent is built. 0 for agents without such state."""
        return 0

    def _set_rng_state(self, state: Any, where: Path) -> None:
        try:
            probe = np.random.default_rng()
            probe.bit_generator.state = state  # numpy validates it; the agent's Generator only takes a good one
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{where}: not a valid random generator state ({type(e).__name__}: {e})") from e
        self.rng.bit_generator.state = state

    def save(self, directory: str | Path) -> Path:
        """Write the agent's checkpoint into ``directory``, replaced as a whole, and return its path.

        The folder holds :data:`AGENT_FILE` and the agent's :attr:`checkpoint_files` (for DDPG, a
        stable-baselines3 zip and an ``.npz`` replay buffer). It is written beside ``directory`` and swapped in
        (:func:`amc.atomic.atomic_dir`), so a crash or kill at any moment leaves the previous complete checkpoint
        or the new one. ``directory`` is the agent's own: a folder holding anything but an agent checkpoint is
        refused rather than replaced.
        """
        target = Path(directory)
        if not _replaceable(target):
            raise CheckpointError(f"{target} is not an agent checkpoint folder: save the agent into a folder of its "
                                  "own (it is replaced as a whole)")
        with atomic_dir(target) as tmp:
            self.save_files(tmp)
            (tmp / AGENT_FILE).write_text(json.dumps(self.checkpoint_meta(), indent=2) + "\n")
        return target

    @classmethod
    def load(cls, directory: str | Path, env: gymnasium.Env) -> SearchAgent:
        """The agent saved in ``directory`` (of whichever registered kind it is), on ``env``.

        **Safe on untrusted files**: only plain JSON values, tensors (``torch.load(weights_only=True)``) and
        numeric arrays (``allow_pickle=False``) are read, and every size the files declare is checked against
        ``env`` and the files' own sizes before memory is allocated; nothing is ever unpickled. (The DDPG
        agent's ``model.zip`` is also readable by stable-baselines3's ``DDPG.load``, which unpickles: see
        :class:`agents.ddpg.AMCDDPG`.) A checkpoint of amc before this format (:data:`LEGACY_FILE`) is read too.

        Raises:
            CheckpointError: a missing, unreadable, mismatched or oversized checkpoint, in one line.
        """
        from agents import AGENTS  # deliberate: the registry (agents/__init__.py) imports this module (a cycle)

        folder = complete_dir(directory)  # after a kill between two renames (no atomic swap), the .old copy
        if folder is None or not ((folder / AGENT_FILE).is_file() or (folder / LEGACY_FILE).is_file()):
            raise CheckpointError(f"no agent checkpoint at {directory}; start a new search or point to its directory")
        if not (folder / AGENT_FILE).is_file():
            return cls._load_legacy(folder / LEGACY_FILE, env, AGENTS)
        path = folder / AGENT_FILE
        meta = read_json(path)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is checkpoint format {meta.get('format')!r}; this amc reads format "
                                  f"{CHECKPOINT_FORMAT}")
        kind = AGENTS.get(str(meta.get("agent")))
        if kind is None or not issubclass(kind, cls):
            raise CheckpointError(f"{path} holds a {meta.get('agent')!r} agent, not a {cls.__name__}")
        cls._check_env(meta, env, path)
        options, seed = meta.get("options"), meta.get("seed")
        if not isinstance(options, dict) or type(seed) is not int:
            raise CheckpointError(f"{path}: options {options!r} / seed {seed!r} are not an object and an integer")
        files = [folder / name for name in kind.checkpoint_files if (folder / name).is_file()]
        try:
            declared, held = kind.state_bytes(options, env), sum(f.stat().st_size for f in files)
        except (TypeError, ValueError):  # malformed options: the constructor names the bad one
            declared, held = 0, 0
        cls._check_state_bytes(declared, held, path)
        agent = cls._build(kind, env, seed, options, path)
        agent.restore(folder, meta)
        return agent

    @staticmethod
    def _check_env(meta: Mapping[str, Any], env: gymnasium.Env, path: Path) -> None:
        n_units = int(getattr(env.unwrapped, "n_units", -1))
        obs_shape = [int(d) for d in (env.observation_space.shape or ())]
        saved = (meta.get("n_units"), list(meta.get("obs_shape") or ()))
        if saved != (n_units, obs_shape):
            raise CheckpointError(f"{path} was saved on an environment with {saved[0]} units and observations "
                                  f"{tuple(saved[1])}, this one has {n_units} and {tuple(obs_shape)}: resume with "
                                  "the same model and search settings")

    @staticmethod
    def _check_state_bytes(declared: int, held: int, path: Path) -> None:
        if declared > unpack_limit(held):
            raise CheckpointError(f"{path}: its options declare {declared:,} bytes of networks and replay buffer, "
                                  f"its files hold {held:,}: refusing to build the agent (a corrupt or hostile "
                                  "checkpoint)")

    @staticmethod
    def _build(kind: type[SearchAgent], env: gymnasium.Env, seed: int, options: Mapping[str, Any],
               path: Path) -> SearchAgent:
        try:
            return kind(env, seed=seed, **options)
        except (ConfigError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: its agent options do not build an agent ({e})") from e

    @classmethod
    def _load_legacy(cls, path: Path, env: gymnasium.Env, agents: Mapping[str, type[SearchAgent]]) -> SearchAgent:
        """An agent from :data:`LEGACY_FILE`, read with ``torch.load(weights_only=True)`` after bounding its entries."""
        try:
            declared, size = zip_declared_bytes(path), path.stat().st_size
        except CheckpointError as e:
            raise CheckpointError(f"{path} is not a readable agent checkpoint ({e})") from e
        if declared > unpack_limit(size):
            raise CheckpointError(f"{path}: its entries declare {declared:,} bytes in a {size:,}-byte file: refusing "
                                  "to unpack it (a zip bomb, or a corrupt archive)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(f"{path} is not a readable agent checkpoint ({type(e).__name__}: {first})") from e
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not an agent checkpoint")
        kind = agents.get(str(state.get("agent")))
        if kind is None or not issubclass(kind, cls):
            raise CheckpointError(f"{path} holds a {state.get('agent')!r} agent, not a {cls.__name__}")
        cls._check_env({**state, "obs_shape": list(state.get("obs_shape") or ())}, env, path)
        options = state.get("options") or {}
        try:
            cls._check_state_bytes(kind.state_bytes(options, env), size, path)
        except (TypeError, ValueError):  # malformed options: the constructor names the bad one
            pass
        agent = cls._build(kind, env, state.get("seed"), options, path)
        try:
            agent.load_legacy_state(state)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f"{path} does not fit this agent ({type(e).__name__}: "
                                  f"{(str(e).splitlines() or [''])[0][:200]})") from e
        return agent

    def load_legacy_state(self, state: Mapping[str, Any]) -> None:
        """Restore a :data:`LEGACY_FILE` state (subclasses call this, then restore their own parts)."""
        self.episodes_done = int(state["episodes_done"])
        self._set_rng_state(state["rng"], Path(LEGACY_FILE))
