"""Proxy mAP: adaptive BN, masked == physical scoring, state restored after every episode."""

from __future__ import annotations

import copy

import pytest
import torch

from amc.data.datasets import load_dataset
from amc.data.loaders import EvalSet, sample_batches
from amc.errors import ConfigError
from amc.eval.evaluator import DetectionEvaluator, EvalSettings
from amc.models.io import load_model
from amc.pruning import ChannelRounding, PruningSpace, make_criterion, prune_model, uniform_policy
from amc.reward.proxy import ProxyEvaluator, ProxySettings, recalibrate_batch_norm

SETTINGS = dict(val_images=120, img_size=256, bn_batches=2, bn_batch_size=32, bn_img_size=256,
                eval=EvalSettings(conf_thres=0.01, max_det=100))


@pytest.fixture(scope="module")
def demo():
    # the demo splits in the amc cache folder (generated on first use, as the quick start does)
    model, _ = load_model("demo-model")
    space = PruningSpace.from_model(model, 256, ChannelRounding(8, 8, 0.9))
    criterion = make_criterion("l1")
    criterion.prepare(model, space)
    selection = criterion.select(list(space.kept_channels(uniform_policy(space, 0.85).ratios)))
    return model, space, selection, load_dataset("demo", None, "val"), load_dataset("demo", None, "train")


def test_adaptive_bn_helps_the_pruned_model_not_the_unpruned(demo):
    model, space, selection, val, train = demo
    with_bn = ProxyEvaluator(model, space, val, train, ProxySettings(**SETTINGS))
    full_bn, pruned_bn = with_bn(None), with_bn(selection)
    with_bn.close()
    without = ProxyEvaluator(model, space, val, train, ProxySettings(adaptive_bn=False, **SETTINGS))
    full, pruned = without(None), without(selection)
    without.close()
    assert abs(full_bn.map50_95 - full.map50_95) < 0.01  # the unpruned model: same mAP within noise
    assert pruned_bn.map50_95 > pruned.map50_95 + 0.01  # the pruned model: re-estimated statistics help
    assert full.map50_95 > pruned_bn.map50_95  # and pruning still costs accuracy
    assert pruned_bn.bn_s > 0 and pruned.bn_s == 0 and pruned_bn.images == 120


def test_masked_proxy_equals_physical_model_with_the_same_statistics(demo):
    model, space, selection, val, train = demo
    before = copy.deepcopy(model.state_dict())
    proxy = ProxyEvaluator(model, space, val, train, ProxySettings(path="masked", **SETTINGS))
    masked = proxy(selection)
    proxy.close()
    proxy = ProxyEvaluator(model, space, val, train, ProxySettings(**SETTINGS))  # physical, the default
    sliced = proxy(selection)
    proxy.close()
    assert masked.map50_95 == pytest.approx(sliced.map50_95, abs=2e-3)
    for k, v in model.state_dict().items():  # weights and BatchNorm statistics restored
        assert torch.equal(v, before[k]), k
    pruned = prune_model(model, space, selection)
    batches = sample_batches(train, 2, 32, 256, seed=0, augment=True)
    recalibrate_batch_norm(pruned, [images for images, _ in batches])
    subset = val.subset(120, 0)
    physical = DetectionEvaluator(subset, EvalSet(subset, 256, 32, progress=False), SETTINGS["eval"])(pruned)
    assert masked.map50_95 == pytest.approx(physical.map50_95, abs=2e-3)
    assert masked.map50 == pytest.approx(physical.map50, abs=2e-3)


def test_fast_and_cocoeval_backends_give_the_same_map(demo):
    model, space, selection, val, train = demo
    scores = {}
    for backend in ("fast", "cocoeval"):
        proxy = ProxyEvaluator(model, space, val, train, ProxySettings(adaptive_bn=False, map_backend=backend,
                                                                       **SETTINGS))
        assert proxy.evaluator.map_backend == backend
        scores[backend] = proxy(None), proxy(selection)
        proxy.close()
    assert ProxySettings().map_backend == "fast"  # the proxy's default
    for fast, coco in zip(scores["fast"], scores["cocoeval"]):
        assert fast.map50_95 == pytest.approx(coco.map50_95, abs=1e-12) and fast.map50_95 > 0.1
        assert fast.map50 == pytest.approx(coco.map50, abs=1e-12)


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="val_images"):
        ProxySettings(val_images=0)
    with pytest.raises(ConfigError, match="bn_batches"):
        ProxySettings(bn_batches=0)
    with pytest.raises(ConfigError, match="img_size"):
        ProxySettings(img_size=0)
    with pytest.raises(ConfigError, match="proxy.path"):
        ProxySettings(path="magic")
    with pytest.raises(ConfigError, match="proxy.map_backend"):
        ProxySettings(map_backend="magic")


def test_adaptive_bn_needs_training_images(demo):
    model, space, _, val, _ = demo
    with pytest.raises(ConfigError, match="training images"):
        ProxyEvaluator(model, space, val, None, ProxySettings(**SETTINGS))


def test_conf_proxy_default_equals_the_code_defaults():
    """conf/proxy/default.yaml and ProxySettings() must not drift apart."""
    from dataclasses import asdict
    from pathlib import Path

    import yaml

    from amc.reward.proxy import proxy_settings

    node = yaml.safe_load((Path(__file__).parents[1] / "conf" / "proxy" / "default.yaml").read_text())
    from_conf, code = proxy_settings(node), ProxySettings()
    assert asdict(from_conf) == asdict(code)
    assert proxy_settings({"map_backend": "cocoeval"}).map_backend == "cocoeval"


def test_short_recovery_distils_a_copy_and_is_deterministic(demo):
    """recover_steps trains the pruned copy towards the unpruned outputs; the model itself is untouched."""
    model, space, _, val, train = demo
    harsh = make_criterion("l1")
    harsh.prepare(model, space)
    selection = harsh.select(list(space.kept_channels(uniform_policy(space, 0.5).ratios)))
    before = copy.deepcopy(model.state_dict())
    scores = {}
    for steps in (0, 1, 12, 12):
        proxy = ProxyEvaluator(model, space, val, train, ProxySettings(recover_steps=steps, **SETTINGS))
        scores.setdefault(steps, []).append(proxy(selection))
        unpruned = proxy(None)  # no steps for the unpruned model
        proxy.close()
        assert unpruned.recover_s == 0.0
    for k, v in model.state_dict().items():  # the original weights and statistics never trained
        assert torch.equal(v, before[k]), k
    plain, one, twelve = scores[0][0], scores[1][0], scores[12][0]
    assert plain.recover_s == 0.0 and plain.recover_loss != plain.recover_loss  # NaN: no steps
    assert twelve.recover_s > 0.0 and twelve.recover_loss < one.recover_loss  # the distillation loss falls
    assert twelve.map50_95 > plain.map50_95 + 0.005  # and the pruned detector recovers some accuracy
    assert scores[12][1].map50_95 == twelve.map50_95  # same settings, same score (CPU)


def test_episode_outcome_carries_the_recovery_loss_for_reward_recovery(demo):
    """The search's evaluator hands the recovery loss to the reward (reward=recovery is minus it); None without steps."""
    from amc.reward.functions import make_reward
    from amc.reward.evaluation import ProxyPolicyEvaluator

    model, space, _, val, train = demo
    criterion = make_criterion("l1")
    criterion.prepare(model, space)
    ratios = uniform_policy(space, 0.5).ratios
    for steps in (0, 2):
        evaluate = ProxyPolicyEvaluator(space, ProxyEvaluator(model, space, val, train,
                                                              ProxySettings(recover_steps=steps, **SETTINGS)), criterion)
        outcome = evaluate(ratios)
        evaluate.close()
        if steps == 0:
            assert outcome.recover_loss is None and make_reward("recovery")(outcome).penalized
        else:
            assert outcome.recover_loss == evaluate.last_result.recover_loss > 0
            assert make_reward("recovery")(outcome).value == -outcome.recover_loss


def test_recovery_settings_are_checked():
    with pytest.raises(ConfigError, match="recover_steps"):
        ProxySettings(recover_steps=-1)
    with pytest.raises(ConfigError, match="recover_lr"):
        ProxySettings(recover_lr=0.0)
    with pytest.raises(ConfigError, match="adaptive_bn=true"):
        ProxySettings(recover_steps=5, adaptive_bn=False)
    with pytest.raises(ConfigError, match="path=physical"):
        ProxySettings(recover_steps=5, path="masked")
