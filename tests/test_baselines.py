"""Baselines at an equal FLOPs budget: uniform sparsity and Torch-Pruning's global magnitude ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amc.errors import ConfigError
from amc.models import YOLOv7, load_cfg
from amc.models.io import load_model, packaged
from amc.pruning.baselines import global_magnitude_policy, ratios_for_widths, uniform_policy
from amc.pruning.budget import check_budget, minimum_flops_ratio
from amc.pruning.depgraph import build_dependency_graph, unit_groups
from amc.pruning.selection import top_channels
from amc.pruning.space import ChannelRounding, PruningSpace

TINY = "training/yolov7-tiny.yaml"
IMG = 128  # the cost is analytic: a small image keeps the space cheap, ratios behave as at 640


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = YOLOv7(load_cfg(packaged(TINY))).eval()
    return model, PruningSpace.from_model(model, IMG)


@pytest.fixture(scope="module")
def tiny_graph(tiny):
    return build_dependency_graph(tiny[0])


@pytest.fixture(scope="module")
def demo():
    model, _ = load_model("demo-model")
    return model, PruningSpace.from_model(model, IMG)


def macs_ratio(space: PruningSpace, ratios, fused=False) -> float:
    return space.policy_cost(ratios, fused).macs / space.cost(space.full_widths, fused).macs


def check_policy(space: PruningSpace, result, target: float, fused=False) -> None:
    """Common invariants: valid ratios, kept widths they imply, an honest achieved ratio within budget."""
    ratios = space.check_ratios(result.ratios)
    assert np.array_equal(space.kept_channels(ratios), result.kept)
    assert result.flops_ratio == pytest.approx(macs_ratio(space, ratios, fused), abs=0)
    assert result.flops_ratio <= target
    assert result.cost == space.cost(result.kept, fused)
    assert np.all(result.kept >= space.min_widths) and np.all(result.kept <= space.full_widths)


# ---------------------------------------------------------------- uniform
@pytest.mark.parametrize("target", [0.9, 0.6, 0.35, 0.1])
@pytest.mark.parametrize("rounding", [ChannelRounding(), ChannelRounding(1, 1, 0.95)], ids=["x8", "x1"])
def test_uniform_meets_budget_minimally(tiny, target, rounding):
    model, _ = tiny
    space = PruningSpace.from_model(model, IMG, rounding)
    result = uniform_policy(space, target)
    check_policy(space, result, target)
    assert result.method == "uniform" and np.all(result.ratios == result.ratios[0])
    r = float(result.ratios[0])
    assert r > 0
    # minimal: the step just before (any smaller ratio) is over budget, so the result is within one step
    before = macs_ratio(space, np.full(len(space), r - 1e-9))
    assert before > target
    assert target - result.flops_ratio < before - result.flops_ratio
    if rounding.multiple == 1:  # fine steps: the budget is met closely
        assert target - result.flops_ratio < 0.01


def test_uniform_fused_and_trivial_budget(tiny):
    _, space = tiny
    fused = uniform_policy(space, 0.5, fused=True)
    check_policy(space, fused, 0.5, fused=True)
    full = uniform_policy(space, 1.0)
    assert np.all(full.ratios == 0) and full.flops_ratio == 1.0


def test_uniform_demo_model(demo):
    _, space = demo
    for target in (0.8, 0.5):
        check_policy(space, uniform_policy(space, target), target)


# ---------------------------------------------------------------- unreachable budgets
def test_unreachable_budget_names_the_minimum(tiny):
    _, space = tiny
    lowest = minimum_flops_ratio(space)
    assert lowest == pytest.approx(space.min_cost().macs / space.full_cost.macs)
    check_policy(space, uniform_policy(space, lowest), lowest)  # the minimum itself is reachable
    with pytest.raises(ConfigError, match=f"unreachable.*{lowest:.4f}"):
        uniform_policy(space, lowest * 0.99)
    with pytest.raises(ConfigError, match=f"unreachable.*{lowest:.4f}"):  # refused before touching the model
        global_magnitude_policy(None, space, lowest * 0.99)
    for bad in (0.0, -0.5, 1.5, float("nan"), "half", None):
        with pytest.raises(ConfigError):
            check_budget(space, bad)


# ---------------------------------------------------------------- global magnitude
def hand_set_model(seed: int = 0):
    """yolov7-tiny whose units 0, 3, 6 ... (if wide enough) have a weak first half: weights scaled by 1e-3."""
    torch.manual_seed(seed)
    model = YOLOv7(load_cfg(packaged(TINY))).eval()
    space = PruningSpace.from_model(model, IMG)
    DG = build_dependency_graph(model)
    weak = [u for u in range(0, len(space), 3) if space.full_widths[u] >= 32]
    with torch.no_grad():
        for u, group in zip(range(len(space)), unit_groups(model, space, DG)):
            if u not in weak:
                continue
            half = int(space.full_widths[u]) // 2
            for item in group:  # every tensor slice the unit owns: producer rows, BN, consumer columns
                module = item.dep.target.module
                if not hasattr(module, "weight"):
                    continue
                idxs = torch.tensor([i for i, r in zip(item.idxs, item.root_idxs) if r < half], dtype=torch.long)
                is_input = isinstance(module, torch.nn.Conv2d) and not DG.is_out_channel_pruning_fn(item.dep.handler)
                w = module.weight.data
                w.index_copy_(int(is_input), idxs, 1e-3 * w.index_select(int(is_input), idxs))
    return model, space, DG, weak


def test_global_magnitude_prunes_weak_channels_first():
    model, space, DG, weak = hand_set_model()
    target = 0.6
    result = global_magnitude_policy(model, space, target, DG=DG)
    check_policy(space, result, target)
    assert result.method == "global-magnitude" and len(result.scores) == len(space)
    assert [len(s) for s in result.scores] == list(space.full_widths)
    ratios, full = result.ratios, space.full_widths
    assert np.ptp(ratios) >= 0.25  # far from uniform
    others = [u for u in range(len(space)) if u not in weak]
    assert ratios[weak].mean() > ratios[others].mean() + 0.2
    keep = top_channels(result.scores, result.kept)
    for u in weak:
        half = int(full[u]) // 2
        s = result.scores[u]
        assert s[:half].max() < s[half:].min()  # the weak half scores lowest
        assert result.kept[u] <= space.round_widths(np.full(len(space), half))[u]  # every weak channel goes
        assert bool((keep[u] >= half).all())
    # minimal threshold: one score lower, the rounded model no longer fits
    lower = max(float(v) for s in result.scores for v in s if v < result.threshold)
    raw = np.array([int((s.double() > lower).sum()) for s in result.scores])
    kept = np.maximum(space.round_widths(raw), space.min_widths)
    assert space.cost(kept).macs > target * space.full_cost.macs


@pytest.mark.parametrize("target", [0.8, 0.5, 0.25])
def test_global_magnitude_meets_budget(tiny, tiny_graph, target):
    model, space = tiny
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = global_magnitude_policy(model, space, target, DG=tiny_graph)
    check_policy(space, result, target)
    assert not model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # each unit keeps its channels above the threshold, the count rounded as the space rounds
    raw = np.array([int((s.double() > result.threshold).sum()) for s in result.scores])
    assert np.array_equal(result.kept, np.maximum(space.round_widths(raw), space.min_widths))


@pytest.mark.parametrize("rounding", [ChannelRounding(), ChannelRounding(1, 1, 0.95)], ids=["x8", "x1"])
def test_global_magnitude_demo_model(demo, rounding):
    model, _ = demo
    space = PruningSpace.from_model(model, IMG, rounding)
    for target in (0.7, 0.4):
        result = global_magnitude_policy(model, space, target, fused=True)
        check_policy(space, result, target, fused=True)
    assert np.ptp(result.ratios) > 0  # trained weights: not uniform


def test_ratios_for_widths_round_trip(tiny):
    model, _ = tiny
    rng = np.random.default_rng(0)
    for rounding in (ChannelRounding(), ChannelRounding(8, 4, 0.9), ChannelRounding(3, 5, 0.7), ChannelRounding(1, 1)):
        space = PruningSpace.from_model(model, IMG, rounding)
        for _ in range(5):
            kept = space.kept_channels(rng.uniform(0, rounding.max_ratio, len(space)))
            assert np.array_equal(space.kept_channels(ratios_for_widths(space, kept)), kept)
        for kept in (space.min_widths, space.kept_channels(np.zeros(len(space)))):
            assert np.array_equal(space.kept_channels(ratios_for_widths(space, kept)), kept)
