"""AMC's DDPG agent (He et al., "AMC: AutoML for Model Compression and Acceleration on Mobile Devices", ECCV
2018; official code github.com/mit-han-lab/amc, ``amc_search.py`` and ``lib/agent.py``) on stable-baselines3.

stable-baselines3's :class:`~stable_baselines3.DDPG` supplies the actor and critic networks, their target copies,
the Adam optimizers, the :class:`~stable_baselines3.common.buffers.ReplayBuffer` and ``polyak_update``.
:class:`AMCDDPG` overrides only what AMC does differently:

* separate actor and critic learning rates (AMC ``--lr_a 1e-4``, ``--lr_c 1e-3``; SB3 gives both optimizers one
  learning-rate schedule in ``_update_learning_rate``);
* a moving-average reward baseline subtracted from every sampled batch's rewards at update time
  (AMC ``lib/agent.py``: ``moving_average += moving_alpha * (batch_mean_reward - moving_average)``, alpha 0.5);
* a plain DDPG target (SB3's DDPG is TD3 with its tricks turned off; its ``train`` still draws target-policy
  noise from the global torch RNG and clips it to 0, which we skip so the agent never touches global RNGs).

:class:`DDPGAgent` runs its own episode loop instead of SB3's ``learn()``: AMC credits the episode's final reward
to every step, which is only known at the last step, it updates after whole episodes, its noise decays per
episode, and the search checkpoints at episode boundaries; ``learn()`` stores transitions as they happen and
counts in steps. The AMC choices, each with its source:

* warm-up: the first ``warmup`` episodes take uniformly random actions and no update happens (AMC
  ``--warmup 100``; AMC's loop tests ``episode <= warmup`` and so plays one more random episode; here exactly
  ``warmup`` are random and the first exploring episode uses sigma0);
* exploration: a truncated normal around the actor's action, truncated to the action range, sigma decaying
  x ``sigma_decay`` per episode after the warm-up (AMC ``--init_delta 0.5 --delta_decay 0.95``, paper Sec. 3.4).
  AMC's actions are preserved ratios in [0, 1], so its sigma is in ratio units; ours are in [-1, 1] over the
  environment's sparsity bounds [lo, hi], so sigma is converted: ``sigma_action = sigma * 2 / (hi - lo)``;
* crediting: every transition is stored with the episode's final reward (AMC ``amc_search.py``:
  ``agent.observe(final_reward, ...)`` for each step of the trajectory) and ``done=True``, so the critic learns
  the episode's (baselined) reward directly, an n-step return over the whole episode with discount 1.
  (AMC's code keeps ``done`` False except at the last step, so with discount 1 its targets add the next
  state's value on top of the final reward at every step, so early layers' targets grow with the number of
  layers left; amc uses the Monte-Carlo target, which is the same for every step of an episode.) The stored action is the one the environment applied after its action wall
  (``info["applied_action"]``), since that is what produced the reward;
* updates: after each post-warm-up episode, one gradient step per transition of the episode
  (AMC calls ``update_policy()`` once per stored step), batch 64, tau 0.01, discount 1. With parallel episodes
  (:meth:`~agents.base.SearchAgent.run_batched`) a batch's episodes are all played with the actor as it was at
  the batch's start, then stored and learned from one after the other with these same updates per episode;
* networks: actor and critic with two hidden layers of 300 (AMC ``--hidden1 300 --hidden2 300``); SB3's
  critic feeds the concatenated (state, action) to its first layer, which equals AMC's sum of two linear
  layers ``fc11(s) + fc12(a)`` up to one redundant bias; the actor ends in tanh ([-1, 1]) where AMC's ends in
  a sigmoid ([0, 1]): the same squashing on our action scale;
* replay buffer: ``replay_episodes`` episodes of transitions (AMC ``--rmsize 100``, multiplied by the number
  of prunable layers in ``amc_search.py``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import GymEnv, ReplayBufferSamples
from stable_baselines3.common.utils import polyak_update, update_learning_rate
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from stable_baselines3.td3.policies import TD3Policy
from torch.nn import functional as F

from agents.base import AGENT_FILE, BudgetCentredSampler, EpisodeReport, Rollout, SearchAgent, ratio_bounds
from agents.checkpoint import (MIN_UNPACK_BYTES, read_npz, read_sb3_data, read_sb3_zip, unpack_limit, write_npz)
from agents.noise import TruncatedNormalNoise
from amc.atomic import atomic_file
from amc.errors import CheckpointError, ConfigError

MODEL_FILE = "model.zip"
"""The DDPG agent's stable-baselines3 zip in its checkpoint folder (``stable_baselines3.DDPG.load`` reads it)."""
REPLAY_FILE = "replay_buffer.npz"
"""The DDPG agent's replay buffer in its checkpoint folder (:meth:`AMCDDPG.load_replay_buffer`, ``np.load``)."""
MAX_REPLAY_BYTES = 4 << 30
"""The largest replay buffer an :class:`AMCDDPG` allocates: a search's is ~1 MB (100 episodes x ~100 units)."""
REPLAY_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
"""The arrays of SB3's ``ReplayBuffer`` that hold transitions (``next_observations`` is None when it optimizes
memory)."""


class SeededReplayBuffer(ReplayBuffer):
    """SB3's replay buffer drawing its batch indices from the agent's Generator instead of the global numpy RNG
    (whose state other code shares: a search must replay, and resume, the same batches).

    With one environment SB3's ``_get_samples`` still draws its env index from the global RNG; that draw is
    always 0 and changes no result.
    """

    def __init__(self, *args: Any, rng: np.random.Generator, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rng = rng

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """``batch_size`` stored transitions, uniformly with replacement (as SB3 does)."""
        upper = self.buffer_size if self.full else self.pos
        return self._get_samples(self.rng.integers(0, upper, size=batch_size), env=env)


class AMCDDPG(DDPG):
    """stable-baselines3 DDPG with AMC's update: separate learning rates and a moving-average reward baseline.

    Built from an environment (``AMCDDPG(env=env)``) or from its spaces alone (``observation_space=``,
    ``action_space=``): the search's agent plays the episodes and fills :attr:`replay_buffer` itself. The replay
    buffer is SB3's ``ReplayBuffer`` drawing its batches from ``rng`` (:class:`SeededReplayBuffer`); the networks
    are initialized from ``init_seed`` in a forked torch RNG, so the global RNGs are left as they were.

    Saving and loading, the stable-baselines3 way:

    * :meth:`save` writes SB3's zip. Its ``data`` names only stable-baselines3 and Gymnasium classes, so plain
      ``stable_baselines3.DDPG.load(path)`` reads it (without amc installed) and its actor gives the same actions;
      the AMC additions (``lr_actor``, ``lr_critic``, ``moving_alpha``, ``reward_baseline``, the Generator state)
      are plain JSON values there.
    * :meth:`load` is SB3's: it **unpickles** (cloudpickle) the ``":serialized:"`` values of the zip's ``data``,
      so a crafted file runs code. Use it on files you made or trust only.
    * :meth:`safe_load` (a new model) and :meth:`restore` (in place) read the same zip **safely**: plain JSON
      values and ``torch.load(weights_only=True)`` tensors only, every size checked first. amc's resume uses them.
    * :meth:`save_replay_buffer` / :meth:`load_replay_buffer` keep SB3's names and signatures but write and read
      an ``.npz`` of the buffer's arrays (``observations``, ``next_observations``, ``actions``, ``rewards``,
      ``dones``, ``timeouts``, ``pos``, ``full``), never a pickle: safe on untrusted files, and ``np.load``
      reads it anywhere.

    Args:
        policy: the policy (class or SB3 alias); DDPG's ``MlpPolicy`` (``TD3Policy``).
        env: the environment, or None with ``observation_space`` and ``action_space``.
        lr_actor, lr_critic: Adam learning rates of the actor and the critic (``learning_rate``, SB3's one
            schedule, is ``lr_critic``: what plain SB3 would apply to both after loading the zip).
        buffer_size: replay buffer capacity in transitions (at most :data:`MAX_REPLAY_BYTES` of arrays).
        batch_size: minibatch size of a gradient step.
        tau: soft target-update coefficient.
        gamma: discount factor of the critic's target.
        moving_alpha: step of the moving-average reward baseline.
        actor_hidden, critic_hidden: hidden layer widths (SB3's ``net_arch={"pi": ..., "qf": ...}``).
        observation_space, action_space: the spaces, when no ``env`` is given.
        rng: the Generator the replay buffer samples with (a new one seeded with ``init_seed`` if None).
        init_seed: seeds the network initialization.
        verbose: SB3's verbosity.
        device: torch device of the networks.
        _init_setup_model: build the networks and the buffer now (SB3's ``load`` builds them itself).
    """

    def __init__(self, policy: str | type[TD3Policy] = "MlpPolicy", env: GymEnv | str | None = None,
                 lr_actor: float = 1e-4, lr_critic: float = 1e-3, buffer_size: int = 10_000,
                 batch_size: int = 64, tau: float = 0.01, gamma: float = 1.0, moving_alpha: float = 0.5,
                 actor_hidden: Sequence[int] = (300, 300), critic_hidden: Sequence[int] = (300, 300),
                 observation_space: spaces.Space | None = None, action_space: spaces.Space | None = None,
                 rng: np.random.Generator | None = None, init_seed: int = 0, verbose: int = 0,
                 device: torch.device | str = "auto", _init_setup_model: bool = True) -> None:
        super().__init__(policy, env=env, learning_rate=lr_critic, buffer_size=buffer_size,  # type: ignore[arg-type]
                         learning_starts=0, batch_size=batch_size, tau=tau, gamma=gamma,
                         replay_buffer_kwargs={"handle_timeout_termination": False},
                         policy_kwargs={"net_arch": {"pi": [int(w) for w in actor_hidden],
                                                     "qf": [int(w) for w in critic_hidden]}, "n_critics": 1},
                         verbose=verbose,
                         seed=None,  # SB3 would seed the global RNGs; all our randomness is the agent's own
                         device=device, _init_setup_model=False)
        if env is None:
            self.observation_space, self.action_space, self.n_envs = observation_space, action_space, 1
        self.lr_actor, self.lr_critic, self.moving_alpha = float(lr_actor), float(lr_critic), float(moving_alpha)
        self.reward_baseline: float | None = None
        self.init_seed = int(init_seed)
        self.rng = rng if rng is not None else np.random.default_rng(self.init_seed)
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        """SB3's set-up (networks, optimizers, aliases) with a :class:`SeededReplayBuffer`, in a forked torch RNG.

        Called by ``__init__`` and by SB3's :meth:`load`, which first puts the zip's ``data`` in ``__dict__``:
        the Generator state it holds (``_rng_state``, written by :meth:`save`) is applied here.
        """
        if self.observation_space is None or self.action_space is None:
            raise ConfigError("AMCDDPG needs an env or its observation_space and action_space")
        if self.replay_buffer is None:
            transition = _transition_bytes(self.observation_space, self.action_space)
            if self.buffer_size < 1 or self.buffer_size * transition > MAX_REPLAY_BYTES:
                raise ConfigError(f"a replay buffer of {self.buffer_size:,} transitions takes "
                                  f"{self.buffer_size * transition:,} bytes; it must hold 1 to "
                                  f"{MAX_REPLAY_BYTES // transition:,} ({MAX_REPLAY_BYTES >> 30} GiB)")
            # built here rather than from replay_buffer_class, which stays SB3's own ReplayBuffer in the saved zip
            # so that plain stable-baselines3 (without amc) can load it
            self.replay_buffer = SeededReplayBuffer(self.buffer_size, self.observation_space, self.action_space,
                                                    device=self.device, n_envs=self.n_envs,
                                                    optimize_memory_usage=self.optimize_memory_usage,
                                                    rng=self.rng, **self.replay_buffer_kwargs)
        rng_state = self.__dict__.pop("_rng_state", None)
        if rng_state is not None:
            self.rng.bit_generator.state = rng_state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            super()._setup_model()
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])
        self.policy.set_training_mode(False)

    def _excluded_save_params(self) -> list[str]:
        # the Generator is saved as its plain state (_rng_state), not as a pickle
        return [*super()._excluded_save_params(), "rng"]

    # -- saving and loading ----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str] | io.BufferedIOBase, exclude: Iterable[str] | None = None,
             include: Iterable[str] | None = None) -> None:
        """SB3's :meth:`~stable_baselines3.common.base_class.BaseAlgorithm.save` (a zip; ``.zip`` is added to a
        path without a suffix), written atomically (a temporary file renamed over ``path``), with the replay
        Generator's state as a plain JSON value so that a loaded model samples the same batches."""
        self._rng_state = self.rng.bit_generator.state
        try:
            if isinstance(path, (str, os.PathLike)):
                with atomic_file(_with_suffix(path, ".zip")) as tmp, open(tmp, "wb") as f:
                    super().save(f, exclude=exclude, include=include)  # type: ignore[arg-type]
            else:
                super().save(path, exclude=exclude, include=include)
        finally:
            del self._rng_state

    @classmethod
    def load(cls, path: str | os.PathLike[str] | io.BufferedIOBase,  # type: ignore[override]
             env: GymEnv | None = None, device: torch.device | str = "auto",
             custom_objects: dict[str, Any] | None = None, print_system_info: bool = False,
             force_reset: bool = True, **kwargs: Any) -> AMCDDPG:
        """stable-baselines3's loader, unchanged: a new model from a :meth:`save` zip.

        **Not safe on untrusted files**: SB3 cloudpickle-deserializes the ``":serialized:"`` values of the zip's
        ``data`` entry, and a crafted value runs arbitrary code. For a file from elsewhere use :meth:`safe_load`.
        """
        return super().load(path, env=env, device=device, custom_objects=custom_objects,  # type: ignore[return-value]
                            print_system_info=print_system_info, force_reset=force_reset, **kwargs)

    @classmethod
    def safe_load(cls, path: str | os.PathLike[str], env: GymEnv, rng: np.random.Generator | None = None,
                  device: torch.device | str = "auto") -> AMCDDPG:
        """A new model from a :meth:`save` zip, **safe on untrusted files**: nothing in it is unpickled.

        The hyper-parameters come from the plain JSON values of the zip's ``data`` (its cloudpickled values are
        never decoded), the spaces from ``env``; networks larger than the file could hold are refused before they
        are built, then :meth:`restore` reads the weights. The model is not attached to ``env`` (call ``set_env``
        before SB3's ``learn``).

        Args:
            path: the zip.
            env: an environment (or ``VecEnv``) with the spaces the model was saved with.
            rng: the Generator to sample the replay buffer with (its state is set from the zip).
            device: torch device of the networks.

        Raises:
            CheckpointError: unreadable, inconsistent or oversized; :class:`UnsafeCheckpointError` for a state
                dict that pickles more than tensors.
        """
        where = os.fspath(path)
        data = read_sb3_data(path)
        try:
            arch = data["policy_kwargs"]["net_arch"]
            options = dict(actor_hidden=_widths(arch["pi"]), critic_hidden=_widths(arch["qf"]),
                           buffer_size=_plain(data, "buffer_size", int), batch_size=_plain(data, "batch_size", int),
                           tau=_plain(data, "tau", float), gamma=_plain(data, "gamma", float),
                           lr_actor=_plain(data, "lr_actor", float), lr_critic=_plain(data, "lr_critic", float),
                           moving_alpha=_plain(data, "moving_alpha", float),
                           init_seed=_plain(data, "init_seed", int))
        except KeyError as e:
            raise CheckpointError(f"{where}: its data has no plain JSON value for {e} (pickled values are never "
                                  "read): not an AMCDDPG zip, or a tampered one") from e
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{where} is not an AMCDDPG zip: {e}") from e
        need = network_bytes(env.observation_space, env.action_space, options["actor_hidden"],
                             options["critic_hidden"])
        if need > unpack_limit(os.stat(path).st_size):
            raise CheckpointError(f"{where} declares networks of {need:,} bytes in a {os.stat(path).st_size:,}-byte "
                                  "file: refusing to build them (a corrupt or hostile file)")
        try:
            model = cls(observation_space=env.observation_space, action_space=env.action_space, rng=rng,
                        device=device, **options)
        except ConfigError as e:
            raise CheckpointError(f"{where}: {e}") from e
        model.restore(path)
        return model

    def restore(self, path: str | os.PathLike[str]) -> None:
        """Put a :meth:`save` zip's state into this model, **safe on untrusted files**: nothing is unpickled.

        Reads the policy and both optimizers (``torch.load(weights_only=True)``, each entry bounded by this
        model's own size), and the reward baseline, update count and Generator state (plain JSON). The zip must
        have been saved by a model with this one's networks and hyper-parameters.

        Raises:
            CheckpointError: unreadable, oversized or saved with other settings; :class:`UnsafeCheckpointError`
                for a state dict that pickles more than tensors.
        """
        where = os.fspath(path)
        own = sum(t.numel() * t.element_size() for t in self.policy.state_dict().values())
        data, params = read_sb3_zip(path, max_state_bytes=4 * own + MIN_UNPACK_BYTES)
        mine = json.loads(json.dumps(self.policy_kwargs))
        if data.get("policy_kwargs") != mine:
            raise CheckpointError(f"{where} holds networks {data.get('policy_kwargs')}, this model has {mine}")
        for key in ("buffer_size", "batch_size", "tau", "gamma", "lr_actor", "lr_critic", "moving_alpha"):
            saved, own_value = data.get(key), getattr(self, key)
            if saved != own_value or isinstance(saved, bool):
                raise CheckpointError(f"{where} was saved with {key}={saved!r}, this model has {own_value!r}")
        try:
            baseline = data["reward_baseline"]
            if baseline is not None:
                baseline = _plain(data, "reward_baseline", float)
            n_updates = _plain(data, "_n_updates", int)
            rng_state = data["_rng_state"]
            probe = np.random.default_rng()  # validates the state before the shared Generator takes it
            probe.bit_generator.state = rng_state
        except KeyError as e:
            raise CheckpointError(f"{where}: its data has no plain JSON value for {e} (pickled values are never "
                                  "read): not an AMCDDPG zip, or a tampered one") from e
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: {e}") from e
        _check_saved_state(self, params, where)
        try:
            self.set_parameters(params, exact_match=True, device=self.device)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{where} does not fit this model ({type(e).__name__}: "
                                  f"{(str(e).splitlines() or [''])[0][:200]})") from e
        self.reward_baseline, self._n_updates = baseline, n_updates
        self.rng.bit_generator.state = rng_state

    def save_replay_buffer(self, path: str | os.PathLike[str] | io.BufferedIOBase) -> None:
        """Save the replay buffer, SB3's method with a safe format: an ``.npz`` (added to a path without a suffix)
        of the buffer's arrays and its ``pos`` / ``full``, written atomically; no pickle."""
        assert self.replay_buffer is not None, "The replay buffer is not defined"
        buffer = self.replay_buffer
        arrays = {name: getattr(buffer, name) for name in _replay_arrays(buffer)}
        arrays.update(pos=np.int64(buffer.pos), full=np.bool_(buffer.full))
        if isinstance(path, (str, os.PathLike)):
            with atomic_file(_with_suffix(path, ".npz")) as tmp, open(tmp, "wb") as f:
                write_npz(f, arrays)
        else:
            write_npz(path, arrays)  # type: ignore[arg-type]

    def load_replay_buffer(self, path: str | os.PathLike[str] | io.BufferedIOBase,
                           truncate_last_traj: bool = True) -> None:
        """Load a :meth:`save_replay_buffer` file into the replay buffer, in place, **safe on untrusted files**.

        Every array's declared shape and dtype must be exactly this buffer's (built from the spaces and
        ``buffer_size``, never from the file) before it is read, with ``allow_pickle=False``; nothing changes
        unless all of them are. SB3's pickled buffers are refused (they could run code).

        Args:
            path: the ``.npz`` (``.npz`` is added to a path without a suffix).
            truncate_last_traj: SB3's option for ``HerReplayBuffer``; unused (a DDPG buffer has no trajectories).
        """
        assert self.replay_buffer is not None, "The replay buffer is not defined"
        buffer = self.replay_buffer
        source = _with_suffix(path, ".npz") if isinstance(path, (str, os.PathLike)) else path
        expected = {name: (getattr(buffer, name).shape, getattr(buffer, name).dtype)
                    for name in _replay_arrays(buffer)}
        expected.update(pos=((), np.dtype(np.int64)), full=((), np.dtype(np.bool_)))
        arrays = read_npz(source, expected)  # type: ignore[arg-type]
        pos, full = int(arrays.pop("pos")), bool(arrays.pop("full"))
        if not 0 <= pos < buffer.buffer_size:
            raise CheckpointError(f"{source}: replay position {pos} is outside the buffer's {buffer.buffer_size}")
        for name, array in arrays.items():
            np.copyto(getattr(buffer, name), array)
        buffer.pos, buffer.full = pos, full

    def _update_learning_rate(self, optimizers: list[torch.optim.Optimizer] | torch.optim.Optimizer) -> None:
        """AMC's separate rates: ``lr_actor`` for the actor's optimizer, ``lr_critic`` for the critic's.

        SB3 sets the one ``learning_rate`` schedule on every optimizer it is given (and logs it).
        """
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            if optimizer is self.actor.optimizer:
                update_learning_rate(optimizer, self.lr_actor)
            elif optimizer is self.critic.optimizer:
                update_learning_rate(optimizer, self.lr_critic)
            else:
                raise ValueError("unknown optimizer: AMCDDPG has an actor and a critic optimizer only")

    def train(self, gradient_steps: int, batch_size: int = 64,  # type: ignore[override]
              imitate: tuple[float, np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
        """``gradient_steps`` DDPG updates (critic, then actor, then soft target updates, as AMC and SB3 do).

        Args:
            gradient_steps: how many updates.
            batch_size: the minibatch of each.
            imitate: ``(weight, observations, actions)``: add ``weight`` x the mean squared distance of the actor's
                actions on ``observations`` to ``actions`` (the best episode so far) to every actor loss
                (:class:`DDPGAgent`'s ``imitate_best``); None: plain DDPG.

        Returns:
            the mean actor and critic losses, the reward baseline after the updates and the step count.
        """
        assert self.replay_buffer is not None
        self.policy.set_training_mode(True)
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])
        actor_losses, critic_losses = [], []
        if imitate is not None:
            weight = float(imitate[0])
            best_obs = torch.as_tensor(np.asarray(imitate[1], np.float32), device=self.device)
            best_actions = torch.as_tensor(np.asarray(imitate[2], np.float32), device=self.device)
        for _ in range(gradient_steps):
            self._n_updates += 1
            data = self.replay_buffer.sample(batch_size)
            # AMC's moving-average baseline: a batch-level running mean of the reward (lowers the variance of
            # the critic's targets; the rewards of a pruning search sit in a narrow band far from 0)
            batch_mean = float(data.rewards.mean())
            if self.reward_baseline is None:
                self.reward_baseline = batch_mean
            else:
                self.reward_baseline += self.moving_alpha * (batch_mean - self.reward_baseline)
            rewards = data.rewards - self.reward_baseline

            with torch.no_grad():
                next_q = self.critic_target.q1_forward(data.next_observations,
                                                       self.actor_target(data.next_observations))
                target_q = rewards + (1.0 - data.dones) * self.gamma * next_q
            critic_loss = F.mse_loss(self.critic.q1_forward(data.observations, data.actions), target_q)
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()

            actor_loss = -self.critic.q1_forward(data.observations, self.actor(data.observations)).mean()
            if imitate is not None:
                actor_loss = actor_loss + weight * F.mse_loss(self.actor(best_obs), best_actions)
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            self.actor.optimizer.step()

            # the MLPs have no batch norm, so the parameters are all the target networks follow
            polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
            polyak_update(self.actor.parameters(), self.actor_target.parameters(), self.tau)
            actor_losses.append(actor_loss.item())
            critic_losses.append(critic_loss.item())
        self.policy.set_training_mode(False)
        metrics = {"gradient_steps": float(gradient_steps)}
        if gradient_steps:
            metrics.update(actor_loss=float(np.mean(actor_losses)), critic_loss=float(np.mean(critic_losses)),
                           reward_baseline=float(self.reward_baseline))  # type: ignore[arg-type]
        return metrics


def _with_suffix(path: str | os.PathLike[str], suffix: str) -> Path:
    """``path``, with ``suffix`` added when it has none (SB3's rule for its ``.zip`` and ``.pkl`` files)."""
    path = Path(path)
    return path if path.suffix else path.with_suffix(suffix)


def _replay_arrays(buffer: ReplayBuffer) -> list[str]:
    return [name for name in REPLAY_ARRAYS if getattr(buffer, name, None) is not None]


def _flat(space: spaces.Space) -> int:
    return math.prod(int(d) for d in (space.shape or ()))


def _transition_bytes(observation_space: spaces.Space, action_space: spaces.Space) -> int:
    """The replay buffer's bytes per transition: observation and next one, action, reward, done, timeout."""
    obs_bytes = _flat(observation_space) * np.dtype(observation_space.dtype or np.float32).itemsize
    return 2 * obs_bytes + 4 * (_flat(action_space) + 3)


def network_bytes(observation_space: spaces.Space, action_space: spaces.Space, actor_hidden: Sequence[int],
                  critic_hidden: Sequence[int]) -> int:
    """The float32 bytes of one actor and one critic (state -> action, state + action -> value) of these widths."""
    obs, act = _flat(observation_space), _flat(action_space)

    def mlp(widths: list[int]) -> int:
        return sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=False))

    return 4 * (mlp([obs, *map(int, actor_hidden), act]) + mlp([obs + act, *map(int, critic_hidden), 1]))


def _widths(value: Any) -> list[int]:
    if not (isinstance(value, list) and value and all(type(w) is int and w > 0 for w in value)):
        raise ValueError(f"hidden widths must be a list of positive integers, got {value!r}")
    return value


def _plain(data: Mapping[str, Any], key: str, kind: type) -> Any:
    """``data[key]`` as a plain JSON ``int`` (not a bool) or a finite ``float`` (an int is one too)."""
    value = data[key]
    if kind is int and type(value) is int:
        return value
    if kind is float and type(value) in (int, float) and math.isfinite(value):
        return float(value)
    raise ValueError(f"{key} is {value!r}, not a plain {kind.__name__}")


def _check_saved_state(model: AMCDDPG, params: Mapping[str, Any], where: str) -> None:
    """Every tensor of the saved state dicts must have its parameter's shape, checked before any is loaded.

    torch's ``load_state_dict`` copies the matching tensors before it reports the others (a refused file would
    leave a half-loaded model), and an optimizer takes its per-parameter state (Adam's moments) as it comes: a
    wrong or stride-0 one would only fail in the middle of an update.
    """
    own = model.policy.state_dict()
    saved = params["policy"]
    if not isinstance(saved, Mapping) or saved.keys() != own.keys():
        keys = sorted(set(saved) ^ set(own)) if isinstance(saved, Mapping) else type(saved).__name__
        raise CheckpointError(f"{where}: the policy's tensors are not this model's (differing: {keys})")
    for key, value in saved.items():
        if not isinstance(value, torch.Tensor) or value.shape != own[key].shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"{where}: the policy's {key} is {got}, this model's {tuple(own[key].shape)}")
    for name, optimizer in (("actor.optimizer", model.actor.optimizer), ("critic.optimizer", model.critic.optimizer)):
        tensors = [p for group in optimizer.param_groups for p in group["params"]]
        state = params[name]
        per_param = state.get("state") if isinstance(state, Mapping) else None
        if not isinstance(per_param, Mapping) or not isinstance(state.get("param_groups"), list):
            raise CheckpointError(f"{where}: {name} is not an optimizer state dict")
        for index, entries in per_param.items():
            if type(index) is not int or not 0 <= index < len(tensors) or not isinstance(entries, Mapping):
                raise CheckpointError(f"{where}: {name} holds state for parameter {index!r} of {len(tensors)}")
            for key, value in entries.items():
                if key == "step" or not isinstance(value, torch.Tensor):
                    continue
                if value.shape != tensors[index].shape or not value.is_contiguous():
                    raise CheckpointError(f"{where}: {name}'s {key!r} of parameter {index} is {tuple(value.shape)}, "
                                          f"the parameter {tuple(tensors[index].shape)}")


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the agent's networks on one CPU thread, then give the evaluator its threads back.

    The 300-300 networks on a batch of 64 are far too small to gain from threads, and on a busy CPU the
    threads' synchronization dominates: a gradient step took 118 ms with 2 threads against 3 ms with 1 on a
    shared 2-core machine. One thread also keeps the agent's arithmetic independent of the machine's thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


class DDPGAgent(SearchAgent):
    """AMC's DDPG search agent (see the module docstring for every AMC choice and its source).

    Args:
        env: the pruning environment (``unwrapped.n_units`` and ``unwrapped.ratio_bounds`` are read).
        seed: seeds the warm-up actions, the noise, the replay sampling and the network initialization.
        warmup: episodes of uniformly random actions before learning starts (AMC: 100).
        actor_hidden: hidden layer widths of the actor (AMC: [300, 300]).
        critic_hidden: hidden layer widths of the critic (AMC: [300, 300]).
        lr_actor: Adam learning rate of the actor (AMC: 1e-4).
        lr_critic: Adam learning rate of the critic (AMC: 1e-3).
        batch_size: minibatch of each gradient step (AMC: 64).
        tau: soft target-update coefficient (AMC: 0.01).
        discount: discount of the critic's target; with ``done=True`` on every transition it has no effect
            (AMC: 1).
        replay_episodes: replay buffer capacity in episodes, x ``n_units`` transitions (AMC: 100).
        sigma: initial exploration standard deviation in RATIO units (AMC: 0.5).
        sigma_decay: its decay per episode after the warm-up (AMC: 0.95).
        moving_alpha: step of the moving-average reward baseline (AMC: 0.5).
        device: torch device of the networks ("cpu": the networks are tiny; also what determinism is tested on).
        warmup_around_budget: warm-up ratios spread around the budget's uniform ratio
            (:class:`~agents.base.BudgetCentredSampler`) instead of AMC's uniform actions.
        imitate_best: weight of a behaviour-cloning term in the actor's loss that pulls its actions towards
            those of the best episode so far (its observations and applied actions; self-imitation, Oh et al.,
            ICML 2018); 0 (AMC) leaves the actor to the critic alone. Why: with one reward shared by every unit's
            decision the critic's action gradient is weak, and nothing holds the actor near what has scored best.
    """

    name = "ddpg"

    def __init__(self, env: gymnasium.Env, seed: int = 0, warmup: int = 100,
                 actor_hidden: Sequence[int] = (300, 300), critic_hidden: Sequence[int] = (300, 300),
                 lr_actor: float = 1e-4, lr_critic: float = 1e-3, batch_size: int = 64, tau: float = 0.01,
                 discount: float = 1.0, replay_episodes: int = 100, sigma: float = 0.5, sigma_decay: float = 0.95,
                 moving_alpha: float = 0.5, device: str = "cpu", warmup_around_budget: bool = False,
                 imitate_best: float = 0.0) -> None:
        super().__init__(env, seed)
        actor_hidden, critic_hidden = [int(w) for w in actor_hidden], [int(w) for w in critic_hidden]
        _check(int(warmup) >= 0, f"agent warmup must be >= 0 episodes, got {warmup}")
        _check(all(w > 0 for w in actor_hidden + critic_hidden) and bool(actor_hidden) and bool(critic_hidden),
               f"agent actor_hidden / critic_hidden must be non-empty lists of positive widths, got "
               f"{actor_hidden} / {critic_hidden}")
        _check(lr_actor > 0 and lr_critic > 0, f"agent lr_actor and lr_critic must be > 0, got {lr_actor}, "
                                               f"{lr_critic}")
        _check(int(batch_size) >= 1, f"agent batch_size must be >= 1, got {batch_size}")
        _check(0 < tau <= 1, f"agent tau must be in (0, 1], got {tau}")
        _check(0 <= discount <= 1, f"agent discount must be in [0, 1], got {discount}")
        _check(int(replay_episodes) >= 1, f"agent replay_episodes must be >= 1, got {replay_episodes}")
        _check(math.isfinite(sigma) and sigma >= 0, f"agent sigma must be >= 0 (ratio units), got {sigma}")
        _check(0 < sigma_decay <= 1, f"agent sigma_decay must be in (0, 1], got {sigma_decay}")
        _check(0 < moving_alpha <= 1, f"agent moving_alpha must be in (0, 1], got {moving_alpha}")
        _check(math.isfinite(imitate_best) and imitate_best >= 0, f"agent imitate_best must be >= 0, got "
                                                                  f"{imitate_best}")
        n_units = int(env.unwrapped.n_units)  # type: ignore[attr-defined]
        lo, hi = ratio_bounds(env)
        _check(hi > lo, f"the environment's ratio_bounds must have lo < hi, got ({lo}, {hi})")
        self.options = dict(warmup=int(warmup), actor_hidden=actor_hidden, critic_hidden=critic_hidden,
                            lr_actor=float(lr_actor), lr_critic=float(lr_critic), batch_size=int(batch_size),
                            tau=float(tau), discount=float(discount), replay_episodes=int(replay_episodes),
                            sigma=float(sigma), sigma_decay=float(sigma_decay), moving_alpha=float(moving_alpha),
                            device=str(device), warmup_around_budget=bool(warmup_around_budget),
                            imitate_best=float(imitate_best))
        # AMC's warm-up draws uniform actions; around the budget, the replay buffer starts with policies that
        # spend the budget (see BudgetCentredSampler) instead of mostly far-under-budget ones
        self._warmup_sample = BudgetCentredSampler(env) if warmup_around_budget else None
        self.warmup, self.batch_size, self.n_units = int(warmup), int(batch_size), n_units
        self.imitate_best = float(imitate_best)
        # the best episode so far (imitate_best): its reward, observations (n_units, obs) and applied actions
        self.best_reward = -math.inf
        self.best_obs: np.ndarray | None = None
        self.best_actions: np.ndarray | None = None
        self.sigma, self.sigma_decay = float(sigma), float(sigma_decay)
        # sigma is configured in ratio units (AMC's actions are ratios); the actions span [lo, hi] over [-1, 1]
        self.action_per_ratio = 2.0 / (hi - lo)
        self.noise = TruncatedNormalNoise(self.sigma * self.action_per_ratio, self.sigma_decay)
        transition = _transition_bytes(env.observation_space, env.action_space)
        _check(int(replay_episodes) * n_units * transition <= MAX_REPLAY_BYTES,
               f"agent replay_episodes={replay_episodes} x {n_units} units is a replay buffer of "
               f"{int(replay_episodes) * n_units * transition:,} bytes, over the {MAX_REPLAY_BYTES >> 30} GiB limit")
        self.model = AMCDDPG(observation_space=env.observation_space, action_space=env.action_space,
                             actor_hidden=actor_hidden, critic_hidden=critic_hidden, lr_actor=lr_actor,
                             lr_critic=lr_critic, buffer_size=int(replay_episodes) * n_units,
                             batch_size=int(batch_size), tau=float(tau), gamma=float(discount),
                             moving_alpha=moving_alpha, rng=self.rng, init_seed=self.seed, device=device)

    @property
    def replay_buffer(self) -> SeededReplayBuffer:
        return self.model.replay_buffer  # type: ignore[return-value]

    def sigma_at(self, episode: int) -> float:
        """The exploration sigma (ratio units) of ``episode``; 0 during the warm-up."""
        k = episode - self.warmup
        return 0.0 if k < 0 else self.noise.sigma(k) / self.action_per_ratio

    def actor_action(self, obs: np.ndarray) -> float:
        """The actor's deterministic action for one observation."""
        with torch.no_grad(), single_thread():
            x = torch.as_tensor(np.asarray(obs, np.float32).reshape(1, -1), device=self.model.device)
            return float(self.model.actor(x).item())

    def actor_actions(self, obs: np.ndarray) -> list[float]:
        """The actor's deterministic actions for a batch of observations ``(n, obs_dim)``, in one pass."""
        with torch.no_grad(), single_thread():
            x = torch.as_tensor(np.asarray(obs, np.float32).reshape(len(obs), -1), device=self.model.device)
            return [float(a) for a in self.model.actor(x).reshape(-1).tolist()]

    def play_episode(self) -> EpisodeReport:
        started = time.perf_counter()
        k = self.episodes_done - self.warmup  # k-th episode after the warm-up (< 0: warm-up)
        if k < 0:
            rollout = self.rollout(lambda obs: self._warmup_action())
        else:
            rollout = self.rollout(lambda obs: self.noise(self.rng, self.actor_action(obs), k))
        return self._learn(rollout, started)

    def play_batch(self, vec_env: VecEnv, n: int) -> list[EpisodeReport]:
        """``n`` episodes at once: one actor pass over the batch's observations per step, then each episode's
        own draw (uniform in its warm-up, its own sigma after it) from the agent's Generator, environment 0
        first; warm-up and sigma count per episode, so a batch may straddle the end of the warm-up."""
        ks = [self.episodes_done + i - self.warmup for i in range(n)]

        def act(obs: np.ndarray) -> list[float]:
            mu = self.actor_actions(obs) if max(ks) >= 0 else []
            return [self._warmup_action() if k < 0 else self.noise(self.rng, mu[i], k) for i, k in enumerate(ks)]

        rollouts = self.rollout_batch(vec_env, n, act)
        started = time.perf_counter()
        return [self._learn(rollout, started) for rollout in rollouts]

    def _warmup_action(self) -> float:
        """A warm-up action: uniform in [-1, 1] (AMC), or around the budget (``warmup_around_budget``)."""
        if self._warmup_sample is None:
            return float(self.rng.uniform(-1.0, 1.0))
        return self._warmup_sample(self.rng)

    def _learn(self, rollout: Rollout, started: float) -> EpisodeReport:
        """Store episode ``episodes_done`` in the replay buffer, update (after the warm-up), count and report it."""
        k = self.episodes_done - self.warmup
        # AMC's crediting: the final reward for every step of the episode, each step terminal
        reward, done = np.array([rollout.reward], np.float32), np.array([True])
        for t in rollout.transitions:
            self.replay_buffer.add(t.obs[None], t.next_obs[None], t.action[None], reward, done, [{}])
        if self.imitate_best > 0 and rollout.reward > self.best_reward:
            self.best_reward = float(rollout.reward)
            self.best_obs = np.stack([t.obs for t in rollout.transitions]).astype(np.float32)
            self.best_actions = np.stack([t.action for t in rollout.transitions]).astype(np.float32)
        metrics = {"sigma": self.sigma_at(self.episodes_done), "replay_size": float(self.replay_buffer.size())}
        if k >= 0:  # AMC: one gradient step per transition of the episode, once the warm-up is over
            imitate = ((self.imitate_best, self.best_obs, self.best_actions) if self.best_obs is not None
                       else None)
            with single_thread():
                metrics.update(self.model.train(len(rollout.transitions), self.batch_size, imitate))
        self.episodes_done += 1
        return self.report(rollout, "warmup" if k < 0 else "explore", started, metrics)

    # -- checkpoints ----------------------------------------------------------------------------------------

    checkpoint_files = (MODEL_FILE, REPLAY_FILE)

    def checkpoint_meta(self) -> dict[str, Any]:
        """The base meta plus, with ``imitate_best``, the best episode so far (plain JSON lists: n_units x 12
        numbers)."""
        meta = super().checkpoint_meta()
        if self.best_obs is not None:
            meta["best_episode"] = {"reward": self.best_reward, "obs": self.best_obs.tolist(),
                                    "actions": self.best_actions.tolist()}
        return meta

    def save_files(self, folder: Path) -> None:
        """The networks and optimizers as stable-baselines3's zip (:data:`MODEL_FILE`), the replay buffer as an
        ``.npz`` (:data:`REPLAY_FILE`)."""
        self.model.save(folder / MODEL_FILE)
        self.model.save_replay_buffer(folder / REPLAY_FILE)

    def restore(self, folder: Path, meta: Mapping[str, Any]) -> None:
        """Read :meth:`save_files`' files safely (:meth:`AMCDDPG.restore`, :meth:`AMCDDPG.load_replay_buffer`)."""
        for name in self.checkpoint_files:
            if not (folder / name).is_file():
                raise CheckpointError(f"{folder} has no {name}: an incomplete DDPG agent checkpoint")
        self.model.restore(folder / MODEL_FILE)
        self.model.load_replay_buffer(folder / REPLAY_FILE)
        super().restore(folder, meta)
        self._restore_best(meta.get("best_episode"), folder)

    def _restore_best(self, best: Any, folder: Path) -> None:
        """The best episode of a checkpoint's meta (``imitate_best``), shapes and values checked first."""
        if best is None:
            return
        where = folder / AGENT_FILE
        obs_dim = int(np.prod(self.env.observation_space.shape or (1,)))
        try:
            reward = float(best["reward"])
            obs, actions = best["obs"], best["actions"]
            # sizes checked on the lists before any array is built from them
            if (not isinstance(obs, list) or not isinstance(actions, list) or len(obs) != self.n_units
                    or len(actions) != self.n_units or any(not isinstance(o, list) or len(o) != obs_dim for o in obs)
                    or any(not isinstance(a, list) or len(a) != 1 for a in actions)):
                raise ValueError(f"the best episode is not {self.n_units} x ({obs_dim} + 1) numbers")
            obs_a, act_a = np.array(obs, dtype=np.float32), np.array(actions, dtype=np.float32)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: best_episode is malformed ({e})") from None
        if not (math.isfinite(reward) and np.isfinite(obs_a).all() and np.isfinite(act_a).all()):
            raise CheckpointError(f"{where}: best_episode holds non-finite numbers")
        self.best_reward, self.best_obs, self.best_actions = reward, obs_a, act_a

    @classmethod
    def state_bytes(cls, options: Mapping[str, Any], env: gymnasium.Env) -> int:
        """The networks' and the replay buffer's bytes for ``options`` on ``env`` (every one of them is stored in
        the checkpoint's files, the networks several times over)."""
        obs, act = env.observation_space, env.action_space
        n_units = int(getattr(env.unwrapped, "n_units", 0))
        return (network_bytes(obs, act, options.get("actor_hidden", (300, 300)),
                              options.get("critic_hidden", (300, 300)))
                + int(options.get("replay_episodes", 100)) * n_units * _transition_bytes(obs, act))

    def load_legacy_state(self, state: Mapping[str, Any]) -> None:
        """Restore a checkpoint of amc before stable-baselines3 zips (``agent.pt``: one ``torch.save`` dict)."""
        super().load_legacy_state(state)
        params = {"policy": state["policy"], "actor.optimizer": state["actor_optimizer"],
                  "critic.optimizer": state["critic_optimizer"]}
        _check_saved_state(self.model, params, "agent.pt")
        self.model.set_parameters(params, exact_match=True, device=self.model.device)
        buffer, replay = self.replay_buffer, state["replay"]
        for name in REPLAY_ARRAYS:
            own, saved = getattr(buffer, name), replay[name]
            if tuple(saved.shape) != own.shape:  # np.copyto would broadcast a smaller array silently
                raise CheckpointError(f"agent.pt: replay {name} is {tuple(saved.shape)}, this agent's {own.shape}")
            np.copyto(own, saved.numpy())
        pos = int(replay["pos"])
        if not 0 <= pos < buffer.buffer_size:
            raise CheckpointError(f"agent.pt: replay position {pos} is outside the buffer's {buffer.buffer_size}")
        buffer.pos, buffer.full = pos, bool(replay["full"])
        baseline = state["reward_baseline"]
        self.model.reward_baseline = None if baseline is None else float(baseline)
        self.model._n_updates = int(state["n_updates"])
