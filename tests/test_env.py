"""The pruning environment: budget wall, observation, reward, Gymnasium / SB3 API, and the stub evaluator."""

from __future__ import annotations

import time
import warnings

import gymnasium
import numpy as np
import pytest
import torch

import envs
from amc.errors import ConfigError
from amc.reward.latency_table import BlockEntry, LatencyTable, TableKey, grid_points
from amc.models.io import load_model
from amc.pruning.baselines import uniform_policy
from amc.pruning.space import ChannelRounding, PruningSpace
from amc.reward.functions import BudgetAccuracy, EpisodeOutcome, ErrorLogFlops
from envs import FEATURES, Budget, BudgetEnforcer, PruningEnv, StubEvaluator
from conftest import irregular

IMG = 256
LO, HI = 0.0, 0.8  # the environment's default ratio bounds


@pytest.fixture(scope="module")
def space() -> PruningSpace:
    model, _ = load_model("demo-model")
    return PruningSpace.from_model(model, IMG)


def synthetic_table(space: PruningSpace) -> LatencyTable:
    """A real :class:`LatencyTable` over the space's blocks with made-up times (no measuring: milliseconds to make).

    Each block costs ``in x out x h x w`` ns plus 10 us; bilinear interpolation of that product is exact, so the
    table is monotone in the widths like a measured one.
    """
    key = TableKey(space.fingerprint, "torch-cpu", tuple(space.img_size), 1, 1, "synthetic", torch.__version__)
    full, low, m = space.full_widths, space.min_widths, space.rounding.multiple
    blocks = [(s.path, s.kind, s.inputs, space.slot_unit.get(s.slot, -1), space.slot_width[s.slot], s.in_hw)
              for s in space.sites]
    blocks += [(h.conv_path, "head", h.inputs, -1, 24, (8, 8)) for h in space.head_inputs]
    entries = []
    for path, kind, inputs, out_unit, out_width, hw in blocks:
        in_const, in_units = 0, {}
        for slot, channels in inputs:
            u = space.slot_unit.get(slot, -1)
            if u < 0:
                in_const += channels
            else:
                in_units[u] = in_units.get(u, 0) + 1
        in_grid = grid_points(in_const + sum(c * low[u] for u, c in in_units.items()),
                              in_const + sum(c * full[u] for u, c in in_units.items()), m, 3)
        out_grid = [out_width] if out_unit < 0 else grid_points(low[out_unit], full[out_unit], m, 3)
        ms = [[1e-6 * hw[0] * hw[1] * ci * co + 0.01 for co in out_grid] for ci in in_grid]
        entries.append(BlockEntry(path, kind, in_const, in_units, 0 if out_unit >= 0 else out_width, out_unit,
                                  tuple(hw), in_grid, out_grid, raw_ms=ms, ms=ms))
    return LatencyTable(key, space.n_units, entries, full_ms=10.0)


@pytest.fixture(scope="module")
def table(space: PruningSpace) -> LatencyTable:
    return synthetic_table(space)


def make_env(space, metric="flops", fraction=0.5, table=None, evaluate=None, reward=None, **kwargs) -> PruningEnv:
    return PruningEnv(space, evaluate or StubEvaluator(space), reward or BudgetAccuracy(), Budget(metric, fraction),
                      latency_table=table, **kwargs)


def play(env: PruningEnv, actions) -> list[tuple]:
    """One episode with the given actions (a callable of the step, or an array): [(obs, reward, term, trunc, info)]."""
    steps = []
    env.reset(seed=0)
    for t in range(env.n_units):
        a = actions(t) if callable(actions) else actions[t]
        steps.append(env.step(np.array([a], dtype=np.float32)))
    return steps


def metric_cost(space: PruningSpace, table: LatencyTable, metric: str, widths: np.ndarray) -> float:
    """The budget metric computed the reference way, independent of the enforcer."""
    if metric == "latency":
        return table.estimate(widths)
    cost = space.cost(widths)
    return cost.macs if metric == "flops" else cost.params


def fractions_for(space, table, metric) -> list[float]:
    """Budgets from a hair above the smallest reachable one (every unit at HI) to 1."""
    lowest = metric_cost(space, table, metric, space.kept_channels(np.full(space.n_units, HI)))
    lowest /= metric_cost(space, table, metric, space.full_widths)
    return [lowest * (1 + 1e-9), lowest * 1.02, lowest + 0.3 * (1 - lowest), 0.5 * (1 + lowest), 1.0]


# ---------------------------------------------------------------- budget and enforcer
def test_budget_is_validated():
    assert Budget("flops", 1).fraction == 1.0 and isinstance(Budget("params", 1).fraction, float)
    for metric, fraction in (("watts", 0.5), ("flops", 0.0), ("flops", 1.5), ("flops", float("nan")),
                             ("params", "half"), ("latency", None)):
        with pytest.raises(ConfigError):
            Budget(metric, fraction)
    with pytest.raises(AttributeError):  # frozen
        Budget("flops", 0.5).fraction = 0.3


@pytest.mark.parametrize("metric", ["flops", "params", "latency"])
def test_unreachable_budget_names_the_smallest_fraction(space, table, metric):
    lowest = BudgetEnforcer(space, Budget(metric, 1.0), table, upper=HI).min_fraction
    with pytest.raises(ConfigError) as err:
        make_env(space, metric, lowest * 0.99, table)
    message = str(err.value)
    assert "\n" not in message and "unreachable" in message and f"{lowest:.4f}" in message
    quoted = float(message.split("at least ")[1].split()[0])
    assert quoted >= lowest
    make_env(space, metric, quoted, table)  # the fraction the message asks for works


def test_latency_budget_needs_a_table_for_this_space(space, table):
    with pytest.raises(ConfigError, match="latency table"):
        make_env(space, "latency", 0.5)
    other = PruningSpace.from_architecture(space.arch, 128)
    with pytest.raises(ConfigError, match="latency table was built"):
        make_env(other, "latency", 0.5, table)


def test_ratio_bounds_are_validated(space):
    for bounds in ((0.5, 0.2), (0.3, 0.3), (-0.1, 0.5), (0.0, 0.95), ("a", "b"), (0.1,)):
        with pytest.raises(ConfigError, match="ratio_bounds"):
            make_env(space, ratio_bounds=bounds)


def test_thresholds_reproduce_the_space_rounding(space):
    enforcer = BudgetEnforcer(space, Budget("flops", 1.0))
    for u in range(space.n_units):
        widths, thresholds = enforcer.widths[u], enforcer.thresholds[u]
        assert widths[0] == space.full_widths[u] and thresholds[0] == 0.0
        assert np.all(np.diff(widths) < 0) and np.all(np.diff(thresholds) > 0)
        for w, th in zip(widths, thresholds):
            r = np.zeros(space.n_units)
            r[u] = th
            assert space.kept_channels(r)[u] == w  # the threshold keeps this width ...
            if th > 0:
                r[u] = np.nextafter(th, 0.0)
                assert space.kept_channels(r)[u] > w  # ... and is the smallest ratio that does
    rng = np.random.default_rng(0)
    for _ in range(20):
        r = rng.uniform(0, space.rounding.max_ratio, space.n_units)
        assert [enforcer._width(u, x) for u, x in enumerate(r)] == space.kept_channels(r).tolist()


@pytest.mark.parametrize("rounding", [ChannelRounding(), ChannelRounding(3, 5, 0.85), ChannelRounding(1, 1, 0.95)],
                         ids=["x8", "x3-min5", "x1"])
def test_odd_widths_and_roundings(space, rounding):
    """Widths the multiple does not divide (a pruned model's) and other roundings: every width each unit can keep
    is found, and random episodes still meet the budget."""
    odd = PruningSpace.from_architecture(irregular(space.arch, 1), IMG, rounding)
    assert np.any(odd.full_widths % 8)
    enforcer = BudgetEnforcer(odd, Budget("flops", 1.0))
    grid = np.linspace(0, rounding.max_ratio, 2001)
    for u in range(odd.n_units):
        full = np.full(len(grid), odd.full_widths[u])
        assert set(odd.round_widths(full * (1 - grid), full).tolist()) <= set(enforcer.widths[u].tolist())
        for w, th in zip(enforcer.widths[u], enforcer.thresholds[u]):
            r = np.zeros(odd.n_units)
            r[u] = th
            assert odd.kept_channels(r)[u] == w
    fraction = enforcer.min_fraction + 0.2 * (1 - enforcer.min_fraction)
    env = make_env(odd, "flops", fraction, ratio_bounds=(0.0, rounding.max_ratio))
    for seed in range(5):
        info = play(env, np.random.default_rng(seed).uniform(-1, 1, odd.n_units))[-1][4]
        assert odd.policy_cost(info["ratios"]).macs <= fraction * odd.full_cost.macs


def test_min_ratio_is_the_smallest_fitting_ratio(space):
    enforcer = BudgetEnforcer(space, Budget("flops", 0.4), upper=HI)
    limit = 0.4 * space.full_cost.macs
    rng = np.random.default_rng(1)
    prefix: list[float] = []
    for t in range(space.n_units):
        requested = float(rng.uniform(0, 0.3))
        ratio = enforcer.min_ratio(prefix, requested)
        assert requested <= ratio <= HI

        def completion(r):
            return space.policy_cost(prefix + [r] + [HI] * (space.n_units - t - 1)).macs

        assert completion(ratio) <= limit
        if ratio > requested:
            assert completion(float(np.nextafter(ratio, 0.0))) > limit
        prefix.append(ratio)
    assert enforcer.fits(prefix)
    with pytest.raises(ValueError, match="outside"):
        enforcer.min_ratio([], 0.85)


# ---------------------------------------------------------------- the budget holds for every episode
@pytest.mark.parametrize("metric", ["flops", "params", "latency"])
def test_random_actions_always_meet_the_budget(space, table, metric):
    full = metric_cost(space, table, metric, space.full_widths)
    for i, fraction in enumerate(fractions_for(space, table, metric)):
        env = make_env(space, metric, fraction, table)
        limit = fraction * full
        clipped = 0
        for seed in range(12):
            rng = np.random.default_rng(seed)
            actions = rng.uniform(-1, 1, space.n_units)
            if seed % 3 == 0:  # extremes too: the action space's corners
                actions = rng.choice([-1.0, 1.0], space.n_units)
            steps = play(env, actions)
            info = steps[-1][4]
            ratios = info["ratios"]
            requested = np.array([s[4]["requested_ratio"] for s in steps])
            assert np.array_equal(ratios, [s[4]["ratio"] for s in steps])
            assert np.all(ratios >= requested) and np.all((LO <= ratios) & (ratios <= HI))
            assert np.array_equal(info["kept"], space.kept_channels(ratios))
            assert metric_cost(space, table, metric, info["kept"]) <= limit, (metric, fraction, seed)
            if metric != "latency":
                key = "macs" if metric == "flops" else "params"
                assert getattr(space.policy_cost(ratios), key) <= limit
            clipped += int(np.sum(ratios > requested))
            if fraction == 1.0:
                assert np.array_equal(ratios, requested)  # no limit: nothing is ever clipped
        if i < 2:
            assert clipped > 0  # the budgets near the minimum did make the wall act


@pytest.mark.parametrize("metric", ["flops", "params", "latency"])
def test_pruning_nothing_gets_the_last_units_clipped(space, table, metric):
    full = metric_cost(space, table, metric, space.full_widths)
    for fraction in fractions_for(space, table, metric):
        env = make_env(space, metric, fraction, table)
        info = play(env, np.full(space.n_units, -1.0))[-1][4]
        ratios = info["ratios"]
        assert metric_cost(space, table, metric, info["kept"]) <= fraction * full
        if fraction < 1.0:
            assert ratios[0] == 0.0 and ratios.max() > 0.0  # nothing requested, yet the wall pruned
        else:
            assert np.all(ratios == 0.0)


def test_uniform_ratio_is_the_smallest_that_fits(space):
    n = space.n_units
    for fraction in (0.3, 0.5, 0.8):
        env = make_env(space, "flops", fraction, ratio_bounds=(0.0, 0.9))
        r = env.uniform_ratio()
        assert env.enforcer.fits(np.full(n, r))
        assert np.array_equal(space.kept_channels(np.full(n, r)), uniform_policy(space, fraction).kept)
        # Played through the action scale (float32), every unit gets exactly the uniform widths.
        info = play(env, lambda t: env.action_for_ratio(r)[0])[-1][4]
        assert np.array_equal(info["kept"], space.kept_channels(np.full(n, r)))
    env = make_env(space, "flops", 1.0, ratio_bounds=(0.1, 0.8))
    assert env.uniform_ratio() == 0.1  # never below the lower bound


def test_action_for_ratio_inverts_the_action_mapping(space):
    env = make_env(space, ratio_bounds=(0.2, 0.7))
    assert env.requested_ratio(-1) == 0.2 and env.requested_ratio(1) == 0.7 and env.requested_ratio(5) == 0.7
    for ratio in np.linspace(0.2, 0.7, 101):
        a = env.action_for_ratio(ratio)
        assert a.shape == (1,) and a.dtype == np.float32 and env.action_space.contains(a)
        assert ratio <= env.requested_ratio(float(a[0])) <= ratio + 1e-7


# ---------------------------------------------------------------- observation
def test_observation_features(space):
    env = make_env(space, "flops", 0.4)
    full_macs = space.full_cost.macs
    obs0, info0 = env.reset(seed=3)
    assert info0 == {}
    actions = np.random.default_rng(0).uniform(-1, 1, space.n_units)
    observations, ratios = [obs0], []
    for t in range(space.n_units):
        obs, reward, terminated, truncated, info = env.step(np.array([actions[t]], dtype=np.float32))
        observations.append(obs)
        ratios.append(info["ratio"])
        assert info["unit"] == space.units[t].name and not truncated
        assert terminated == (t == space.n_units - 1)
        assert reward == 0.0 or terminated
    kept = space.kept_channels(ratios)
    for t, obs in enumerate(observations):
        assert obs.shape == (len(FEATURES),) == (11,) and obs.dtype == np.float32
        assert env.observation_space.contains(obs)
        unit = space.units[min(t, space.n_units - 1)]
        assert obs[0] == pytest.approx(unit.index / (space.n_units - 1))
        assert obs[10] == np.float32(ratios[t - 1] if t > 0 else 0.0)  # the previous applied ratio
        decided = space.full_widths.copy()
        decided[:t] = kept[:t]
        cheapest = decided.copy()
        cheapest[t:] = space.kept_channels(np.full(space.n_units, HI))[t:]
        removed = (full_macs - space.cost(decided).macs) / full_macs
        prunable = (space.cost(decided).macs - space.cost(cheapest).macs) / full_macs
        assert obs[8] == np.float32(removed) and obs[9] == np.float32(prunable)
    assert observations[0][8] == 0.0 and observations[-1][9] == 0.0
    # Static features: min-max normalized over the units (the biggest unit's FLOPs is 1, the smallest 0).
    flops = np.array([obs[7] for obs in observations[:-1]])
    assert flops.min() == 0.0 and flops.max() == 1.0
    assert observations[0][7] == np.float32((space.units[0].macs - min(u.macs for u in space.units))
                                            / np.ptp([u.macs for u in space.units]))


def test_episodes_are_deterministic(space):
    env = make_env(space, "params", 0.3)
    actions = np.random.default_rng(5).uniform(-1, 1, space.n_units)
    first, second = play(env, actions), play(env, actions)
    for a, b in zip(first, second):
        assert np.array_equal(a[0], b[0]) and a[1:4] == b[1:4] and a[4]["ratio"] == b[4]["ratio"]
    assert first[-1][4]["outcome"] == second[-1][4]["outcome"]


# ---------------------------------------------------------------- reward and info
def test_reward_only_at_the_last_step(space, table):
    evaluate = StubEvaluator(space, latency_table=table)
    reward_fn = ErrorLogFlops()
    env = make_env(space, "latency", 0.6, table, evaluate=evaluate, reward=reward_fn)
    steps = play(env, np.random.default_rng(2).uniform(-1, 1, space.n_units))
    assert evaluate.calls == 1
    assert all(s[1] == 0.0 and s[2] is False for s in steps[:-1])
    for _, _, _, _, info in steps:
        assert {"unit", "requested_ratio", "ratio", "applied_action"} <= set(info)
        assert info["applied_action"].shape == (1,) and info["applied_action"].dtype == np.float32
        assert env.requested_ratio(float(info["applied_action"][0])) >= info["ratio"]
    _, reward, terminated, truncated, info = steps[-1]
    assert terminated is True and truncated is False and isinstance(reward, float)
    assert set(info) == {"unit", "requested_ratio", "ratio", "applied_action", "ratios", "kept", "outcome",
                         "reward", "penalized", "cost"}
    outcome = evaluate(info["ratios"])
    assert info["outcome"] == outcome and reward == reward_fn(outcome).value == info["reward"].value
    assert info["penalized"] is False
    cost = space.cost(info["kept"])
    assert info["cost"]["flops_ratio"] == cost.macs / space.full_cost.macs
    assert info["cost"]["params_ratio"] == cost.params / space.full_cost.params
    assert info["cost"]["latency_ratio"] == pytest.approx(table.estimate(info["kept"]) / table.full_ms)
    assert info["cost"]["latency_ratio"] <= 0.6
    assert outcome.latency_ms == table.estimate(info["kept"]) and outcome.full_latency_ms == pytest.approx(10.0)
    info = play(make_env(space), np.zeros(space.n_units))[-1][4]
    assert info["cost"]["latency_ratio"] is None and info["outcome"].latency_ms is None


def test_nan_outcome_is_penalized(space):
    stub = StubEvaluator(space)

    def broken(ratios):
        good = stub(ratios)
        return EpisodeOutcome(float("nan"), good.flops, good.params, good.full_flops, good.full_params)

    reward_fn = BudgetAccuracy(penalty=-7.0)
    _, reward, terminated, _, info = play(make_env(space, evaluate=broken, reward=reward_fn),
                                          np.zeros(space.n_units))[-1]
    assert terminated and reward == -7.0 and info["penalized"] is True and info["reward"].penalized


def test_episode_order_is_enforced(space):
    env = make_env(space)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1, dtype=np.float32))
    play(env, np.zeros(space.n_units))
    with pytest.raises(RuntimeError, match="episode is over.*reset"):
        env.step(np.zeros(1, dtype=np.float32))
    obs_a, _ = env.reset(seed=11)
    obs_b, _ = env.reset(seed=11)
    assert np.array_equal(obs_a, obs_b)
    for bad in (np.array([np.nan], dtype=np.float32), np.zeros(2, dtype=np.float32)):
        with pytest.raises(ValueError, match="action"):
            env.step(bad)
    info = env.step(np.array([7.0]))[4]  # outside the box: clipped like any Box action, not an error
    assert info["requested_ratio"] == info["ratio"] == HI


# ---------------------------------------------------------------- Gymnasium and stable-baselines3
def test_registered_and_made_with_gymnasium(space):
    assert envs.ENV_ID in gymnasium.registry
    env = gymnasium.make(envs.ENV_ID, space=space, evaluate=StubEvaluator(space), reward=BudgetAccuracy(),
                         budget=Budget("flops", 0.5))
    assert isinstance(env.unwrapped, PruningEnv) and env.unwrapped.n_units == space.n_units
    assert env.unwrapped.space is space and env.unwrapped.ratio_bounds == (LO, HI)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the passive checker of gymnasium.make warns about nothing either
        env.reset(seed=0)
        for _ in range(space.n_units):
            _, reward, terminated, _, _ = env.step(env.action_space.sample())
    assert terminated and reward < 0


@pytest.mark.parametrize("how", ["make", "direct"])
@pytest.mark.parametrize("metric", ["flops", "latency"])
def test_gymnasium_and_sb3_checkers_pass_without_warnings(space, table, how, metric):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    kwargs = dict(space=space, evaluate=StubEvaluator(space), reward=BudgetAccuracy(), budget=Budget(metric, 0.5),
                  latency_table=table)
    env = gymnasium.make(envs.ENV_ID, **kwargs) if how == "make" else PruningEnv(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # A directly built env has no spec, so the checker could not re-make it to try render modes (it has none).
        check_env(env.unwrapped, skip_render_check=how == "direct")
        sb3_check_env(env, warn=True)


# ---------------------------------------------------------------- the stub evaluator
def test_stub_is_deterministic_and_consistent(space):
    a, b = StubEvaluator(space, seed=4), StubEvaluator(space, seed=4)
    ratios = np.random.default_rng(0).uniform(0, 0.8, space.n_units)
    assert a(ratios) == b(ratios) == a(ratios) and a.calls == 2
    assert not np.array_equal(a.importance, StubEvaluator(space, seed=5).importance)
    assert a.importance.sum() == pytest.approx(1.0) and np.ptp(a.importance) > 0
    outcome = a(ratios)
    cost = space.policy_cost(ratios)
    assert outcome.flops == 2 * cost.macs and outcome.params == cost.params and outcome.latency_ms is None
    assert a(np.zeros(space.n_units)).map50_95 == pytest.approx(0.5)
    assert 0 < outcome.map50_95 < 0.5 and a(np.full(space.n_units, 0.9)).map50_95 < outcome.map50_95


def test_stub_rewards_a_non_uniform_policy_over_uniform(space):
    """What lets a test see a search beat the uniform baseline: a greedy policy that prunes the units losing the
    least made-up mAP per FLOP first beats the uniform policy at the same 50% FLOPs budget."""
    stub, n = StubEvaluator(space), space.n_units
    uniform = uniform_policy(space, 0.5)
    env = make_env(space, "flops", 0.5, evaluate=stub)
    order = np.argsort(stub.importance / np.array([u.macs for u in space.units]))  # cheapest mAP per FLOP first
    ratios = np.zeros(n)
    for u in order:
        if env.enforcer.fits(ratios):
            break
        ratios[u] = HI
    assert env.enforcer.fits(ratios) and not np.allclose(ratios, ratios[0])
    assert space.policy_cost(ratios).macs <= 0.5 * space.full_cost.macs
    assert stub(ratios).map50_95 > stub(uniform.ratios).map50_95 + 0.01
    # ... and the environment plays it unchanged, so an agent can find it.
    info = play(env, [env.action_for_ratio(r)[0] for r in ratios])[-1][4]
    assert np.array_equal(info["kept"], space.kept_channels(ratios))


# ---------------------------------------------------------------- speed
def test_steps_are_fast(space, table, one_torch_thread):
    """An episode's steps cost less than one forward pass of the demo model over 16 images at the same size (the
    proxy evaluator runs 200 val and 128 BN images per episode by default, conf/proxy/default.yaml): the
    environment's bookkeeping stays a few percent of an episode. Timed in turns in one run, no absolute figure
    (a busy machine slows both alike)."""
    model, _ = load_model("demo-model")
    model.eval()
    x = torch.zeros(16, 3, IMG, IMG)
    actions = np.random.default_rng(0).uniform(-1, 1, (6, space.n_units)).astype(np.float32)
    for metric in ("flops", "latency"):
        env = make_env(space, metric, 0.5, table)
        episode_s, forward_s = [], []
        for episode in actions:
            started = time.perf_counter()
            env.reset()
            for a in episode:
                env.step(a[None])
            episode_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            with torch.no_grad():
                model(x)
            forward_s.append(time.perf_counter() - started)
        # the fastest of each (load only ever adds time). Measured on a busy 2-core machine: episodes of 55 steps
        # 7 ms (flops) and 12-16 ms (latency) against 125-160 ms for the forward pass, an 8-20x margin; a step
        # that ran anything model-sized (a forward pass, rebuilding a model) would cost more than the 16 images.
        assert min(episode_s) < min(forward_s), f"{metric}: episode {min(episode_s):.4f} s, " \
            f"forward of 16 images {min(forward_s):.4f} s"


def test_relative_actions_deviate_from_the_fair_share_of_the_budget_left(space):
    """action_mode=relative: action 0 at every unit is uniform pruning (up to the rounding's leftovers); any actions spend the budget (policies fit and
    land near it), the replayed applied action asks for the applied ratio again, and a unit kept light raises the
    fair share of the units after it rather than leaving the wall to prune the last units to the upper bound."""
    n = space.n_units
    for fraction in (0.3, 0.5):
        env = make_env(space, "flops", fraction, ratio_bounds=(0.0, 0.8), action_mode="relative")
        info = play(env, lambda t: 0.0)[-1][4]
        uniform = uniform_policy(space, fraction).kept
        # uniform pruning, except that units may keep a channel step more where the rounding left budget over
        assert env.enforcer.fits(info["ratios"]) and np.all(info["kept"] >= uniform)
        assert np.all(info["kept"] <= space.kept_channels(np.full(n, env.uniform_ratio() - 0.1)))
        assert info["cost"]["flops_ratio"] >= uniform_policy(space, fraction).flops_ratio
        rng = np.random.default_rng(int(fraction * 10))
        for _ in range(3):
            steps = play(env, lambda t: float(rng.uniform(-1, 1)))
            last = steps[-1][4]
            assert env.enforcer.fits(last["ratios"]) and last["cost"]["flops_ratio"] > fraction - 0.08
            for _, _, _, _, step_info in steps:
                assert step_info["requested_ratio"] <= step_info["ratio"] + 1e-12
        # a light first half: relative actions spread the cost over the second half, where their own (neutral)
        # actions still decide; absolute ones leave the wall to override the later units' requests
        overridden = {}
        for mode, light_action in (("relative", -0.5), ("absolute", -1.0)):
            env_m = make_env(space, "flops", fraction, ratio_bounds=(0.0, 0.8), action_mode=mode)
            steps = play(env_m, lambda t: light_action if t < n // 2 else float(rng.uniform(-1, 1)))
            assert env_m.enforcer.fits(steps[-1][4]["ratios"])
            overridden[mode] = sum(info["ratio"] > info["requested_ratio"] + 1e-6 for *_, info in steps)
        assert overridden["relative"] < overridden["absolute"]
    env = make_env(space, "flops", 0.5, action_mode="relative")
    env.reset(seed=0)
    fair = env.enforcer.fair_ratio(np.zeros(0, dtype=np.int64))
    assert fair == env.enforcer.uniform_ratio() and env.requested_ratio(0.0) == pytest.approx(fair)
    with pytest.raises(ConfigError, match="action_mode"):
        make_env(space, "flops", 0.5, action_mode="sideways")


def test_centred_actions_put_action_zero_on_the_uniform_ratio(space):
    """action_mode=centred: ratio = u + a (hi - lo) / 2 with u the budget's uniform ratio, then the wall: action 0
    everywhere is exactly uniform pruning (an untrained actor's neutral output spends the budget, it does not prune
    far past it), the mapping is the absolute one shifted, and the replayed applied action asks for the ratio."""
    n = space.n_units
    for fraction in (0.3, 0.7):
        env = make_env(space, "flops", fraction, ratio_bounds=(0.0, 0.8), action_mode="centred")
        u = env.uniform_ratio()
        steps = play(env, lambda t: 0.0)
        assert np.array_equal(steps[-1][4]["kept"], space.kept_channels(np.full(n, u)))
        env.reset(seed=0)
        assert env.requested_ratio(0.5) == pytest.approx(min(u + 0.2, 0.8))
        assert env.requested_ratio(-1.0) == pytest.approx(max(u - 0.4, 0.0))
        for r in (0.0, 0.1, u, 0.55):
            assert env.requested_ratio(float(env.action_for_ratio(r)[0])) >= r
    # an untrained actor (actions ~0) under a mild budget: centred spends it, absolute asks for 0.4 everywhere
    absolute = make_env(space, "flops", 0.7, ratio_bounds=(0.0, 0.8))
    centred_flops = steps[-1][4]["cost"]["flops_ratio"]  # uniform pruning (coarse rounding on this small model)
    assert centred_flops == pytest.approx(uniform_policy(space, 0.7).flops_ratio)
    assert play(absolute, lambda t: 0.0)[-1][4]["cost"]["flops_ratio"] < centred_flops - 0.1


# ---------------------------------------------------------------- spend_budget: the wall's other side
@pytest.mark.parametrize("metric", ["flops", "params", "latency"])
def test_spend_budget_keeps_every_policy_at_the_budget(space, table, metric):
    """spend_budget: a policy never prunes past the budget by more than the last units' width steps allow, whatever
    the actions (all +1 included: the plain wall lets that policy prune everything to the upper bound), and still
    meets it; ratios are only ever lowered to the low bound, never below."""
    full = metric_cost(space, table, metric, space.full_widths)
    slack = 0.02 if metric == "params" else 0.01  # the last units' width steps: coarsest in parameters
    for fraction in fractions_for(space, table, metric)[2:4]:
        limit = fraction * full
        for bounds in ((0.0, 0.8), (0.1, 0.8)):
            env = make_env(space, metric, fraction, table, ratio_bounds=bounds, spend_budget=True)
            for seed in range(6):
                rng = np.random.default_rng(seed)
                actions = rng.uniform(-1, 1, space.n_units) if seed % 2 else np.ones(space.n_units)
                steps = play(env, actions)
                info = steps[-1][4]
                cost = metric_cost(space, table, metric, info["kept"])
                assert limit * (1 - slack / fraction) <= cost <= limit, (metric, fraction, bounds, seed)
                assert np.all(info["ratios"] >= bounds[0]) and np.all(info["ratios"] <= bounds[1])
                assert np.array_equal(info["kept"], space.kept_channels(info["ratios"]))
        plain = make_env(space, metric, fraction, table)
        plain_cost = metric_cost(space, table, metric, play(plain, np.ones(space.n_units))[-1][4]["kept"])
        assert plain_cost < limit * 0.8  # without the knob, pruning everything hard stays far past the budget


def test_spend_budget_leaves_requests_alone_until_the_end(space):
    """The cap only bites where the units left could no longer spend the budget: early units keep their request,
    and uniform pruning at the budget (action 0, centred) is the same policy with or without the knob but for the
    last units, which spend what the rounding of the uniform ratio left (never narrower)."""
    env = make_env(space, "flops", 0.5, spend_budget=True, action_mode="centred")
    steps = play(env, np.ones(space.n_units))
    lowered = [t for t, s in enumerate(steps) if s[4]["ratio"] < s[4]["requested_ratio"]]
    assert lowered and min(lowered) > space.n_units // 2
    plain = make_env(space, "flops", 0.5, action_mode="centred")
    spent, uniform = play(env, lambda t: 0.0)[-1][4], play(plain, lambda t: 0.0)[-1][4]
    changed = np.flatnonzero(spent["kept"] != uniform["kept"])
    assert np.all(spent["kept"] >= uniform["kept"]) and (changed.size == 0 or changed.min() > space.n_units // 2)
    assert uniform["cost"]["flops_ratio"] <= spent["cost"]["flops_ratio"] <= 0.5
