"""Search agents: AMC's DDPG (crediting, warm-up, noise, learning rates, determinism, exact resume, learning)
and the random and uniform baselines, on the instant toy environment of tests/toy_env.py."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
import yaml

from agents import AGENTS, DDPGAgent, RandomSearchAgent, SearchAgent, UniformAgent, agent_from_config, make_agent
from agents.base import AGENT_FILE, LEGACY_FILE, action_for_ratio
from agents.noise import TruncatedNormalNoise, sample_truncated_normal
from amc.errors import CheckpointError, ConfigError
from amc.registry import option_names
from toy_env import Recorder, ToyPruningEnv

CONF = Path(__file__).resolve().parents[1] / "conf" / "agent"
SMALL = dict(actor_hidden=[32, 32], critic_hidden=[32, 32], batch_size=16)  # fast networks for mechanics tests


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def ddpg(seed: int = 0, env=None, **options) -> DDPGAgent:
    return DDPGAgent(env if env is not None else Recorder(ToyPruningEnv()), seed, **{**SMALL, **options})


def actor_state(agent: DDPGAgent) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in agent.model.actor.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- (1) reward crediting ---------------------------------------------------------------------------------------

def test_every_transition_gets_the_final_reward_and_done_and_the_applied_action():
    env = Recorder(ToyPruningEnv(budget=0.6))  # a high budget: the action wall raises many requests
    agent = ddpg(env=env, warmup=2)
    reports = []
    agent.run(1, reports.append)
    buffer, n = agent.replay_buffer, env.unwrapped.n_units
    assert buffer.size() == n == len(env.infos)
    assert np.all(buffer.rewards[:n, 0] == np.float32(reports[0].reward))
    assert reports[0].reward == env.infos[-1]["reward"].value
    assert np.all(buffer.dones[:n, 0] == 1.0)
    applied = np.array([info["applied_action"] for info in env.infos], np.float32)
    np.testing.assert_array_equal(buffer.actions[:n, 0, 0], applied)
    assert not np.allclose(applied, np.array(env.actions, np.float32))  # the wall did act: stored != requested
    # next_observations chain: each transition's next state is the following transition's state
    np.testing.assert_array_equal(buffer.next_observations[:n - 1, 0], buffer.observations[1:n, 0])
    np.testing.assert_array_equal(reports[0].ratios, env.infos[-1]["ratios"])
    assert reports[0].episode == 0 and reports[0].phase == "warmup" and not reports[0].penalized


# -- (2) warm-up -----------------------------------------------------------------------------------------------

def test_warmup_is_uniform_random_without_updates_then_one_step_per_transition():
    env = Recorder(ToyPruningEnv())
    agent = ddpg(seed=7, env=env, warmup=3)
    before = actor_state(agent)
    reports = []
    agent.run(3, reports.append)
    n = env.unwrapped.n_units
    # the warm-up actions are the agent's Generator's uniform draws and nothing else
    np.testing.assert_allclose(env.actions, np.random.default_rng(7).uniform(-1, 1, 3 * n).astype(np.float32))
    assert agent.model._n_updates == 0 and same_state(before, actor_state(agent))
    assert [r.phase for r in reports] == ["warmup"] * 3 and all("actor_loss" not in r.metrics for r in reports)
    agent.run(5, reports.append)
    assert [r.phase for r in reports[3:]] == ["explore"] * 2
    assert agent.model._n_updates == 2 * n
    assert [r.metrics["gradient_steps"] for r in reports[3:]] == [n, n]
    assert not same_state(before, actor_state(agent))
    assert {"actor_loss", "critic_loss", "reward_baseline", "sigma"} <= set(reports[-1].metrics)


# -- (3) noise ----------------------------------------------------------------------------------------------------

def test_sigma_decays_per_episode_after_warmup_in_ratio_units():
    agent = ddpg(warmup=2, sigma=0.4, sigma_decay=0.9)
    reports = []
    agent.run(7, reports.append)
    for r in reports:
        k = r.episode - 2
        expected = 0.0 if k < 0 else 0.4 * 0.9 ** k
        assert r.metrics["sigma"] == pytest.approx(expected)
    # ratio bounds (0, 0.8): the action scale [-1, 1] spans 0.8 of ratio, so 0.4 ratio = 1.0 action
    assert agent.noise.sigma(0) == pytest.approx(1.0) and agent.noise.sigma(3) == pytest.approx(0.9 ** 3)


def test_truncated_normal_stays_in_range_without_mass_on_the_bounds():
    rng = np.random.default_rng(0)
    mu, sigma = 0.9, 1.25  # AMC's initial sigma 0.5 on ratio bounds (0, 0.8), around a mean near the bound
    x = np.array([sample_truncated_normal(rng, mu, sigma) for _ in range(20000)])
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert np.mean(x > 1 - 1e-3) < 0.002 and np.mean(x < -1 + 1e-3) < 0.002  # clipping would pile ~47% at +1
    # the mean of N(mu, sigma^2) truncated to [-1, 1]
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))  # noqa: E731
    a, b = (-1 - mu) / sigma, (1 - mu) / sigma
    assert x.mean() == pytest.approx(mu + sigma * (phi(a) - phi(b)) / (cdf(b) - cdf(a)), abs=0.01)
    # a small sigma stays near the mean; sigma 0 is the mean; every draw takes exactly one uniform
    y = np.array([sample_truncated_normal(rng, -0.2, 0.01) for _ in range(2000)])
    assert abs(y.mean() + 0.2) < 1e-3 and 0.009 < y.std() < 0.011
    a_rng, b_rng = np.random.default_rng(1), np.random.default_rng(1)
    assert sample_truncated_normal(a_rng, 0.3, 0.0) == pytest.approx(0.3)
    b_rng.random()
    assert a_rng.random() == b_rng.random()
    assert TruncatedNormalNoise(0.5, 0.95).sigma(4) == pytest.approx(0.5 * 0.95 ** 4)


# -- (4) learning rates -------------------------------------------------------------------------------------------

def test_separate_learning_rates_reach_the_optimizers():
    agent = ddpg(warmup=1, lr_actor=3e-4, lr_critic=2e-3)
    agent.run(3)
    assert agent.model._n_updates > 0
    assert [g["lr"] for g in agent.model.actor.optimizer.param_groups] == [3e-4]
    assert [g["lr"] for g in agent.model.critic.optimizer.param_groups] == [2e-3]
    # SB3 would have put one rate on both: the model's own learning_rate is not what the actor uses
    assert agent.model.actor.optimizer is not agent.model.critic.optimizer


# -- (5) determinism -------------------------------------------------------------------------------------------

def actions_of(seed: int, episodes: int = 8, disturb: bool = False, **options) -> list[float]:
    env = Recorder(ToyPruningEnv(), disturb_global_rngs=disturb)
    ddpg(seed, env=env, warmup=3, **options).run(episodes)
    return env.actions


def test_same_seed_same_actions_different_seed_different_actions():
    first = actions_of(0)
    assert len(first) == 8 * 6
    assert first == actions_of(0, disturb=True)  # other code drawing from the global RNGs changes nothing
    other = actions_of(1)
    assert first[:18] != other[:18] and first[18:] != other[18:]  # warm-up and learning episodes both differ


# -- (6) save / load -------------------------------------------------------------------------------------------

def test_resume_continues_exactly(tmp_path):
    full_env = Recorder(ToyPruningEnv())
    full = ddpg(3, env=full_env, warmup=2)
    full.run(8)

    first_env = Recorder(ToyPruningEnv())
    first = ddpg(3, env=first_env, warmup=2)
    first.run(5, lambda report: first.save(tmp_path))  # saved after every episode, as the runner does
    assert first_env.actions == full_env.actions[:30]

    resumed_env = Recorder(ToyPruningEnv())
    resumed = SearchAgent.load(tmp_path, resumed_env)
    assert isinstance(resumed, DDPGAgent) and resumed.episodes_done == 5
    assert resumed.options == first.options
    resumed.run(8)
    assert resumed_env.actions == full_env.actions[30:]  # bit-identical continuation
    assert same_state(actor_state(resumed), actor_state(full))
    assert resumed.model.reward_baseline == full.model.reward_baseline
    assert resumed.model._n_updates == full.model._n_updates
    np.testing.assert_array_equal(resumed.replay_buffer.rewards, full.replay_buffer.rewards)
    for a, b in zip(resumed.model.critic.optimizer.state_dict()["state"].values(),
                    full.model.critic.optimizer.state_dict()["state"].values(), strict=True):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    agent = ddpg(warmup=1)
    agent.run(2)
    folder = tmp_path / "agent"
    agent.save(folder)
    agent.run(3)

    def crash(obj, f, *args, **kwargs):  # a write that dies halfway through the model zip
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        agent.save(folder)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["agent"]  # no temporary folder left behind
    assert SearchAgent.load(folder, ToyPruningEnv()).episodes_done == 2
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not an agent checkpoint folder: save the agent into a folder of its"):
        agent.save(tmp_path)  # a folder holding other files is never replaced
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no agent checkpoint"):
        SearchAgent.load(tmp_path, ToyPruningEnv())
    (tmp_path / AGENT_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        SearchAgent.load(tmp_path, ToyPruningEnv())
    (tmp_path / AGENT_FILE).unlink()
    (tmp_path / LEGACY_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable agent checkpoint"):
        SearchAgent.load(tmp_path, ToyPruningEnv())
    agent = ddpg(warmup=1)
    agent.run(1)
    agent.save(tmp_path)
    five_units = ToyPruningEnv(targets=np.array([0.1, 0.2, 0.3, 0.4, 0.5]))
    with pytest.raises(CheckpointError, match="6 units"):
        SearchAgent.load(tmp_path, five_units)
    with pytest.raises(CheckpointError, match="not a RandomSearchAgent"):
        RandomSearchAgent.load(tmp_path, ToyPruningEnv())
    assert isinstance(DDPGAgent.load(tmp_path, ToyPruningEnv()), DDPGAgent)


# -- (7) learning -----------------------------------------------------------------------------------------------

def rewards_of(agent: SearchAgent, episodes: int) -> np.ndarray:
    rewards: list[float] = []
    agent.run(episodes, lambda report: rewards.append(report.reward))
    return np.array(rewards)


def test_ddpg_learns_on_the_toy_problem():
    ddpg_rewards = rewards_of(DDPGAgent(ToyPruningEnv(), 0, warmup=10, actor_hidden=[64, 64],
                                        critic_hidden=[64, 64], lr_actor=1e-3, lr_critic=1e-2, batch_size=32), 60)
    random_rewards = rewards_of(RandomSearchAgent(ToyPruningEnv(), 0), 60)
    uniform_reward = rewards_of(UniformAgent(ToyPruningEnv(), 0), 1)[0]
    assert ddpg_rewards.max() > uniform_reward
    assert ddpg_rewards[-10:].mean() > random_rewards.mean() + 0.05  # measured: 0.336 vs 0.217
    assert ddpg_rewards[-10:].mean() > ddpg_rewards[:10].mean() + 0.05  # better than its own warm-up


# -- (8) baselines ---------------------------------------------------------------------------------------------

def test_random_agent_is_seeded_uniform_and_resumable(tmp_path):
    plain_env = Recorder(ToyPruningEnv())  # AMC's random baseline: uniform actions over the whole bounds
    RandomSearchAgent(plain_env, 5, around_budget=False).run(4)
    np.testing.assert_allclose(plain_env.actions, np.random.default_rng(5).uniform(-1, 1, 24).astype(np.float32))
    env = Recorder(ToyPruningEnv())  # the default: ratios spread around the budget's uniform ratio
    agent = RandomSearchAgent(env, 5)
    reports = []
    agent.run(4, reports.append)
    lo, hi = env.unwrapped.ratio_bounds
    r = env.unwrapped.uniform_ratio()
    ratios = lo + (np.asarray(env.actions) + 1) / 2 * (hi - lo)
    assert ratios.min() >= lo - 1e-6 and ratios.max() <= min(hi, 2 * r - lo) + 1e-6
    assert abs(ratios.mean() - r) < 0.1 * (hi - lo)  # 24 draws centred on r
    expected = np.random.default_rng(5).uniform(lo, min(hi, 2 * r - lo), 24)
    np.testing.assert_allclose(ratios, expected, atol=1e-6)
    assert [r.phase for r in reports] == ["random"] * 4 and agent.episodes_done == 4
    agent.save(tmp_path)
    agent.run(6)
    resumed_env = Recorder(ToyPruningEnv())
    resumed = SearchAgent.load(tmp_path, resumed_env)
    assert isinstance(resumed, RandomSearchAgent)
    resumed.run(6)
    assert resumed_env.actions == env.actions[24:]
    other = Recorder(ToyPruningEnv())
    RandomSearchAgent(other, 6).run(4)
    assert other.actions != env.actions[:24]


def test_uniform_agent_plays_one_episode_at_the_uniform_ratio(tmp_path):
    env = Recorder(ToyPruningEnv())
    agent = UniformAgent(env, 0)
    reports = []
    agent.run(10, reports.append)
    assert env.unwrapped.episodes == 1 and len(reports) == 1 and agent.episodes_done == 10
    assert reports[0].phase == "uniform" and reports[0].episode == 0
    requested = [info["requested_ratio"] for info in env.infos]
    assert requested == pytest.approx([env.unwrapped.uniform_ratio()] * 6)
    assert min(requested) >= env.unwrapped.uniform_ratio()  # float32 actions never request a hair less
    agent.save(tmp_path)
    resumed = SearchAgent.load(tmp_path, env)
    resumed.run(12)
    assert env.unwrapped.episodes == 1 and resumed.episodes_done == 12
    with pytest.raises(ConfigError, match="already played 12"):
        resumed.run(3)
    # the agents map a ratio to an action through the environment (its own action_for_ratio, the inverse of its
    # requested_ratio), never on their own
    toy = ToyPruningEnv(ratio_bounds=(0.0, 0.8))
    assert action_for_ratio(toy, 0.3) == pytest.approx(-0.25)
    for r in np.linspace(0.0, 0.8, 97):
        a = action_for_ratio(toy, float(r))
        assert a == np.float32(a) and toy.requested_ratio(a) >= r


def test_run_never_goes_back():
    agent = RandomSearchAgent(ToyPruningEnv(), 0)
    agent.run(2)
    agent.run(2)
    assert agent.episodes_done == 2
    with pytest.raises(ConfigError, match="already played 2 episodes"):
        agent.run(1)


# -- (9) registry and configs -------------------------------------------------------------------------------

def test_make_agent_and_errors():
    assert isinstance(make_agent("ddpg", ToyPruningEnv(), 0, warmup=5, **SMALL), DDPGAgent)
    assert isinstance(make_agent("random", ToyPruningEnv(), 0), RandomSearchAgent)
    assert isinstance(make_agent("uniform", ToyPruningEnv(), 0), UniformAgent)
    with pytest.raises(ConfigError, match="unknown agent 'ppo'; valid: ddpg, random, uniform"):
        make_agent("ppo", ToyPruningEnv(), 0)
    with pytest.raises(ConfigError, match="agent 'ddpg' has no option 'lr'"):
        make_agent("ddpg", ToyPruningEnv(), 0, lr=1e-3)
    with pytest.raises(ConfigError, match="agent 'random' has no option 'warmup'"):
        make_agent("random", ToyPruningEnv(), 0, warmup=3)
    with pytest.raises(ConfigError, match="set by the search"):
        agent_from_config({"name": "random", "seed": 3}, ToyPruningEnv())
    for bad in (dict(warmup=-1), dict(tau=0.0), dict(sigma=-0.1), dict(sigma_decay=1.5), dict(lr_actor=0.0),
                dict(actor_hidden=[]), dict(replay_episodes=0), dict(moving_alpha=0.0), dict(batch_size=0)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            make_agent("ddpg", ToyPruningEnv(), 0, **bad)
    with pytest.raises(ConfigError, match="needs a 'name'"):
        agent_from_config({}, ToyPruningEnv())


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_configs_map_one_to_one_with_defaults(name):
    node = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    assert node["name"] == name
    options = {k: v for k, v in node.items() if k != "name"}
    cls = AGENTS[name]
    assert sorted(options) == sorted(set(option_names(cls)) - {"env", "seed"})
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k in options}
    for key, value in options.items():
        default = defaults[key]
        assert (list(default) if isinstance(default, tuple) else default) == value, key
    agent = agent_from_config(node, ToyPruningEnv(), seed=0)
    assert isinstance(agent, cls)


def test_ddpg_defaults_are_amcs():
    agent = DDPGAgent(ToyPruningEnv(), 0)
    o = agent.options
    assert (o["warmup"], o["actor_hidden"], o["critic_hidden"], o["lr_actor"], o["lr_critic"], o["batch_size"],
            o["tau"], o["discount"], o["replay_episodes"], o["sigma"], o["sigma_decay"], o["moving_alpha"]) == (
        100, [300, 300], [300, 300], 1e-4, 1e-3, 64, 0.01, 1.0, 100, 0.5, 0.95, 0.5)
    assert agent.replay_buffer.buffer_size == 100 * 6
    linears = [m for m in agent.model.actor.mu if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [300, 300, 1]
    assert isinstance(agent.model.actor.mu[-1], torch.nn.Tanh)
    assert len(agent.model.critic.q_networks) == 1  # DDPG: one critic (SB3's TD3 has two)


def test_agents_need_the_contract_action_space():
    env = ToyPruningEnv()
    env.action_space = gymnasium.spaces.Box(0.0, 1.0, (1,), np.float32)
    with pytest.raises(ConfigError, match=r"Box\(-1, 1, \(1,\)\)"):
        RandomSearchAgent(env, 0)


# -- integration with the real environment ----------------------------------------------------------------------

def test_agents_on_the_real_pruning_env_with_the_stub_evaluator(tmp_path):
    from amc.models.io import load_model
    from amc.pruning.space import PruningSpace
    from amc.reward.functions import BudgetAccuracy
    from envs import Budget, PruningEnv, StubEvaluator

    model, _ = load_model("demo-model")
    space = PruningSpace.from_model(model, 256)

    def make_env() -> Recorder:
        return Recorder(PruningEnv(space, StubEvaluator(space), BudgetAccuracy(), Budget("flops", 0.5)))

    env = make_env()
    agent = make_agent("ddpg", env, 0, warmup=2, **SMALL)
    reports = []
    agent.run(3, reports.append)
    n = space.n_units
    assert agent.replay_buffer.size() == 3 * n and agent.model._n_updates == n
    np.testing.assert_array_equal(agent.replay_buffer.actions[:n, 0, 0],
                                  np.concatenate([info["applied_action"] for info in env.infos[:n]]))
    assert all(r.info["cost"]["flops_ratio"] <= 0.5 + 1e-9 for r in reports)
    agent.save(tmp_path)
    agent.run(4)
    resumed_env = make_env()
    resumed = SearchAgent.load(tmp_path, resumed_env)
    resumed.run(4)
    assert resumed_env.actions == env.actions[3 * n:]

    uniform_env = make_env()
    uniform = []
    make_agent("uniform", uniform_env, 0).run(5, uniform.append)
    assert len(uniform) == 1 and uniform[0].info["cost"]["flops_ratio"] <= 0.5 + 1e-9
    assert min(info["requested_ratio"] for info in uniform_env.infos) >= uniform_env.unwrapped.uniform_ratio()


# -- imitate_best: self-imitation of the best episode ------------------------------------------------------------

def test_imitate_best_pulls_the_actor_to_the_best_episode_and_resumes_exactly(tmp_path):
    """imitate_best > 0 keeps the best episode's observations and applied actions, adds their cloning loss to the
    actor's, and a resumed search continues bit-identically (the best episode travels in agent.json); 0 is AMC's
    update, untouched."""
    def distance(agent: DDPGAgent) -> float:
        with torch.no_grad():
            mu = agent.model.actor(torch.as_tensor(agent.best_obs)).numpy()
        return float(np.mean((mu - agent.best_actions) ** 2))

    plain, pulled = ddpg(4, warmup=3), ddpg(4, warmup=3, imitate_best=10.0)
    plain.run(3)
    pulled.run(3)
    assert plain.best_obs is None and pulled.best_obs is not None
    assert pulled.best_obs.shape[0] == pulled.n_units and pulled.best_actions.shape == (pulled.n_units, 1)
    before = distance(pulled)
    plain.run(9)
    pulled.run(9)
    assert distance(pulled) < before  # the actor moved towards the best episode's actions

    full_env = Recorder(ToyPruningEnv())
    full = ddpg(5, env=full_env, warmup=2, imitate_best=1.0)
    full.run(8)
    first = ddpg(5, env=Recorder(ToyPruningEnv()), warmup=2, imitate_best=1.0)
    first.run(5, lambda report: first.save(tmp_path))
    resumed_env = Recorder(ToyPruningEnv())
    resumed = SearchAgent.load(tmp_path, resumed_env)
    assert resumed.options["imitate_best"] == 1.0 and resumed.best_reward == first.best_reward
    resumed.run(8)
    assert resumed_env.actions == full_env.actions[30:]
    assert same_state(actor_state(resumed), actor_state(full))
    np.testing.assert_array_equal(resumed.best_actions, full.best_actions)


@pytest.mark.parametrize("damage", ["short", "nan", "not a list"])
def test_a_malformed_best_episode_is_refused(tmp_path, damage):
    agent = ddpg(warmup=1, imitate_best=1.0)
    agent.run(2)
    agent.save(tmp_path)
    meta = json.loads((tmp_path / AGENT_FILE).read_text())
    best = meta["best_episode"]
    if damage == "short":
        best["obs"] = best["obs"][:-1]
    elif damage == "nan":
        best["actions"][0] = [float("nan")]
    else:
        best["actions"] = "1e9"
    (tmp_path / AGENT_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="best_episode"):
        SearchAgent.load(tmp_path, Recorder(ToyPruningEnv()))
