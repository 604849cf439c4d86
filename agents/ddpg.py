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
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import polyak_update, update_learning_rate
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from torch.nn import functional as F

from agents.base import BudgetCentredSampler, EpisodeReport, Rollout, SearchAgent, ratio_bounds
from agents.noise import TruncatedNormalNoise
from amc.errors import ConfigError


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

    Built without an environment: the agent plays the episodes and fills :attr:`replay_buffer` itself.

    Args:
        observation_space, action_space: the environment's spaces.
        actor_hidden, critic_hidden: hidden layer widths.
        lr_actor, lr_critic: Adam learning rates of the actor and the critic.
        buffer_size: replay buffer capacity in transitions.
        batch_size: minibatch size of a gradient step.
        tau: soft target-update coefficient.
        discount: discount factor of the critic's target.
        moving_alpha: step of the moving-average reward baseline.
        rng: the Generator the replay buffer samples with.
        init_seed: seeds the network initialization (in a forked torch RNG: the global one is left as it was).
        device: torch device of the networks.
    """

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Box, *, actor_hidden: Sequence[int],
                 critic_hidden: Sequence[int], lr_actor: float, lr_critic: float, buffer_size: int,
                 batch_size: int, tau: float, discount: float, moving_alpha: float, rng: np.random.Generator,
                 init_seed: int, device: str = "cpu") -> None:
        super().__init__("MlpPolicy", env=None, learning_rate=lr_critic, buffer_size=buffer_size, learning_starts=0,
                         batch_size=batch_size, tau=tau, gamma=discount, replay_buffer_class=SeededReplayBuffer,
                         replay_buffer_kwargs={"rng": rng, "handle_timeout_termination": False},
                         policy_kwargs={"net_arch": {"pi": list(actor_hidden), "qf": list(critic_hidden)},
                                        "n_critics": 1},
                         seed=None,  # SB3 would seed the global RNGs; all our randomness is the agent's own
                         device=device, _init_setup_model=False)
        self.observation_space, self.action_space, self.n_envs = observation_space, action_space, 1
        self.lr_actor, self.lr_critic, self.moving_alpha = float(lr_actor), float(lr_critic), float(moving_alpha)
        self.reward_baseline: float | None = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self._setup_model()
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])
        self.policy.set_training_mode(False)

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

    def train(self, gradient_steps: int, batch_size: int = 64) -> dict[str, float]:  # type: ignore[override]
        """``gradient_steps`` DDPG updates (critic, then actor, then soft target updates, as AMC and SB3 do).

        Returns:
            the mean actor and critic losses, the reward baseline after the updates and the step count.
        """
        assert self.replay_buffer is not None
        self.policy.set_training_mode(True)
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])
        actor_losses, critic_losses = [], []
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
    """

    name = "ddpg"

    def __init__(self, env: gymnasium.Env, seed: int = 0, warmup: int = 100,
                 actor_hidden: Sequence[int] = (300, 300), critic_hidden: Sequence[int] = (300, 300),
                 lr_actor: float = 1e-4, lr_critic: float = 1e-3, batch_size: int = 64, tau: float = 0.01,
                 discount: float = 1.0, replay_episodes: int = 100, sigma: float = 0.5, sigma_decay: float = 0.95,
                 moving_alpha: float = 0.5, device: str = "cpu", warmup_around_budget: bool = False) -> None:
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
        n_units = int(env.unwrapped.n_units)  # type: ignore[attr-defined]
        lo, hi = ratio_bounds(env)
        _check(hi > lo, f"the environment's ratio_bounds must have lo < hi, got ({lo}, {hi})")
        self.options = dict(warmup=int(warmup), actor_hidden=actor_hidden, critic_hidden=critic_hidden,
                            lr_actor=float(lr_actor), lr_critic=float(lr_critic), batch_size=int(batch_size),
                            tau=float(tau), discount=float(discount), replay_episodes=int(replay_episodes),
                            sigma=float(sigma), sigma_decay=float(sigma_decay), moving_alpha=float(moving_alpha),
                            device=str(device), warmup_around_budget=bool(warmup_around_budget))
        # AMC's warm-up draws uniform actions; around the budget, the replay buffer starts with policies that
        # spend the budget (see BudgetCentredSampler) instead of mostly far-under-budget ones
        self._warmup_sample = BudgetCentredSampler(env) if warmup_around_budget else None
        self.warmup, self.batch_size, self.n_units = int(warmup), int(batch_size), n_units
        self.sigma, self.sigma_decay = float(sigma), float(sigma_decay)
        # sigma is configured in ratio units (AMC's actions are ratios); the actions span [lo, hi] over [-1, 1]
        self.action_per_ratio = 2.0 / (hi - lo)
        self.noise = TruncatedNormalNoise(self.sigma * self.action_per_ratio, self.sigma_decay)
        self.model = AMCDDPG(env.observation_space, env.action_space,  # type: ignore[arg-type]
                             actor_hidden=actor_hidden, critic_hidden=critic_hidden, lr_actor=lr_actor,
                             lr_critic=lr_critic, buffer_size=int(replay_episodes) * n_units,
                             batch_size=int(batch_size), tau=tau, discount=discount, moving_alpha=moving_alpha,
                             rng=self.rng, init_seed=self.seed, device=device)

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
        metrics = {"sigma": self.sigma_at(self.episodes_done), "replay_size": float(self.replay_buffer.size())}
        if k >= 0:  # AMC: one gradient step per transition of the episode, once the warm-up is over
            with single_thread():
                metrics.update(self.model.train(len(rollout.transitions), self.batch_size))
        self.episodes_done += 1
        return self.report(rollout, "warmup" if k < 0 else "explore", started, metrics)

    # -- checkpoints ----------------------------------------------------------------------------------------

    _BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")

    def state_dict(self) -> dict[str, Any]:
        buffer = self.replay_buffer
        state = super().state_dict()
        state.update(
            policy=self.model.policy.state_dict(),  # actor, critic and both targets
            actor_optimizer=self.model.actor.optimizer.state_dict(),
            critic_optimizer=self.model.critic.optimizer.state_dict(),
            replay={"pos": int(buffer.pos), "full": bool(buffer.full),
                    **{k: torch.from_numpy(np.array(getattr(buffer, k))) for k in self._BUFFER_ARRAYS}},
            reward_baseline=self.model.reward_baseline, n_updates=int(self.model._n_updates))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.model.policy.load_state_dict(state["policy"])
        self.model.actor.optimizer.load_state_dict(state["actor_optimizer"])
        self.model.critic.optimizer.load_state_dict(state["critic_optimizer"])
        buffer, replay = self.replay_buffer, state["replay"]
        for k in self._BUFFER_ARRAYS:
            np.copyto(getattr(buffer, k), replay[k].numpy())
        buffer.pos, buffer.full = int(replay["pos"]), bool(replay["full"])
        baseline = state["reward_baseline"]
        self.model.reward_baseline = None if baseline is None else float(baseline)
        self.model._n_updates = int(state["n_updates"])
