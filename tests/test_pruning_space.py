"""The pruning space: units of every official cfg, exact analytic cost, rounding, minimum reachable cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amc.errors import ConfigError
from amc.models import YOLOv7, count_architecture, load_cfg, official_cfg_names, parse_cfg
from amc.models.io import packaged
from amc.pruning.space import ChannelRounding, PruningSpace
from conftest import mini_cfg

# Unit counts equal the number of Torch-Pruning DepGraph groups (tests/test_depgraph.py checks the partition).
EXPECTED_UNITS = {
    "training/yolov7-tiny.yaml": 55, "training/yolov7.yaml": 89, "training/yolov7x.yaml": 105,
    "training/yolov7-w6.yaml": 107, "training/yolov7-e6.yaml": 145, "training/yolov7-d6.yaml": 167,
    "training/yolov7-e6e.yaml": 233, "deploy/yolov7-tiny.yaml": 55, "deploy/yolov7-tiny-silu.yaml": 55,
    "deploy/yolov7.yaml": 89, "deploy/yolov7x.yaml": 105, "deploy/yolov7-w6.yaml": 103,
    "deploy/yolov7-e6.yaml": 141, "deploy/yolov7-d6.yaml": 163, "deploy/yolov7-e6e.yaml": 229,
}


def space_of(name: str, img_size=640, **rounding) -> PruningSpace:
    return PruningSpace.from_architecture(load_cfg(packaged(name)), img_size, ChannelRounding(**rounding))


def test_every_official_cfg_has_a_space():
    assert sorted(official_cfg_names()) == sorted(EXPECTED_UNITS)
    for name, n in EXPECTED_UNITS.items():
        space = space_of(name)
        assert len(space) == n, name
        assert len(set(space.names)) == n
        # forward order: the first producer of each unit comes later than that of the previous unit
        layers = [int(u.name.split(".")[1]) for u in space.units]
        assert layers == sorted(layers), name
        # detection-head outputs are never units
        assert not any(".m." in u.name or ".m2." in u.name for u in space.units)


@pytest.mark.parametrize("name", sorted(EXPECTED_UNITS))
@pytest.mark.parametrize("fused", [False, True])
def test_analytic_cost_equals_counter(name, fused):
    space = space_of(name, img_size=(384, 640))
    rng = np.random.default_rng(len(name))
    for _ in range(3):
        kept = space.kept_channels(rng.uniform(0, 0.9, len(space)))
        cost = space.cost(kept, fused=fused)
        counted = count_architecture(space.pruned_architecture(kept), (384, 640), fused=fused)
        assert (cost.params, cost.macs) == (counted.params, counted.macs)
    full = count_architecture(space.arch, (384, 640), fused=fused)
    assert space.cost(space.full_widths, fused=fused).macs == full.macs


def test_unit_description_tiny():
    space = space_of("training/yolov7-tiny.yaml")
    first = space.units[0]
    assert (first.name, first.kind, first.channels, first.in_channels) == ("model.0", "Conv", 32, 3)
    assert (first.kernel, first.stride, first.feature_hw) == (3, 2, (320, 320))
    # what unit 0 controls: its own conv + BN, and its share of the next conv (32 -> 64, 3x3 s2, 160x160)
    assert first.macs == 3 * 32 * 9 * 320 * 320 + 4 * 32 * 320 * 320 + 32 * 64 * 9 * 160 * 160
    assert first.params == 3 * 32 * 9 + 2 * 32 + 32 * 64 * 9
    assert first.gflops == pytest.approx(2 * first.macs / 1e9)


def test_merged_channels_all_modules():
    """Shortcut inputs and a RepConv identity branch merge slots; ReOrg and concat consumers follow."""
    space = PruningSpace.from_architecture(parse_cfg(mini_cfg()), 64)
    by_name = {u.name: u for u in space.units}
    # layer 1 is a RepConv with an identity branch reading layer 0: one unit, two producers
    assert by_name["model.0"].producers == ("model.0", "model.1")
    # layer 7 adds layers 6 and 5: one unit
    assert by_name["model.5"].producers == ("model.5", "model.6")
    assert "model.1" not in by_name and "model.6" not in by_name
    kinds = {u.kind for u in space.units}
    assert {"Conv", "RepConv", "DownC.cv1", "DownC.cv3", "SPPCSPC.cv5", "SPPCSPC.cv7"} <= kinds


def test_rounding_and_range():
    space = space_of("training/yolov7-tiny.yaml", multiple=8, min_channels=16, max_ratio=0.8)
    full = space.full_widths
    assert np.array_equal(space.kept_channels(np.zeros(len(space))), full)
    kept = space.kept_channels(np.full(len(space), 0.8))
    assert np.all(kept % 8 == 0) and np.all(kept >= np.minimum(full, 16)) and np.all(kept <= full)
    kept = space.kept_channels(np.full(len(space), 0.3))
    assert np.all(np.abs(kept - full * 0.7) <= 4)  # nearest multiple of 8
    with pytest.raises(ConfigError, match="outside"):
        space.kept_channels(np.full(len(space), 0.81))
    with pytest.raises(ConfigError, match="outside"):
        space.kept_channels(np.r_[-0.1, np.zeros(len(space) - 1)])
    with pytest.raises(ConfigError, match="55 ratios"):
        space.kept_channels(np.zeros(3))
    with pytest.raises(ConfigError, match="outside"):
        space.kept_channels(np.r_[np.nan, np.zeros(len(space) - 1)])


def test_min_cost_bounds_every_completion():
    space = space_of("training/yolov7.yaml", img_size=320)
    rng = np.random.default_rng(0)
    assert space.min_cost().macs == space.cost(space.min_widths).macs
    for k in (0, 10, 50, len(space)):
        prefix = rng.uniform(0, 0.9, k)
        bound = space.min_cost(prefix).macs
        for _ in range(5):
            completion = np.r_[prefix, rng.uniform(0, 0.9, len(space) - k)]
            assert space.policy_cost(completion).macs >= bound
        assert space.policy_cost(np.r_[prefix, np.full(len(space) - k, 0.9)]).macs == bound
    assert space.min_cost(np.zeros(len(space))).macs == space.full_cost.macs


def test_mapping_names_and_fingerprint():
    space = space_of("training/yolov7-tiny.yaml")
    ratios = {n: 0.5 for n in space.names}
    assert np.allclose(space.ratios_from_mapping(ratios), 0.5)
    with pytest.raises(ConfigError, match="does not have"):
        space.ratios_from_mapping({**ratios, "model.999": 0.1})
    with pytest.raises(ConfigError, match="no ratio"):
        space.ratios_from_mapping({n: 0.5 for n in space.names[1:]})
    other = PruningSpace.from_architecture(space.pruned_architecture(space.kept_channels(np.full(55, 0.5))), 640)
    assert other.fingerprint != space.fingerprint
    assert space_of("training/yolov7-tiny.yaml").fingerprint == space.fingerprint


def test_fused_model_refused():
    model = YOLOv7(parse_cfg(mini_cfg())).eval().fuse()
    with pytest.raises(ConfigError, match="fused"):
        PruningSpace.from_model(model, 64)


def test_bad_rounding():
    with pytest.raises(ConfigError):
        ChannelRounding(multiple=0)
    with pytest.raises(ConfigError):
        ChannelRounding(max_ratio=1.0)


def test_full_width_reachable_when_the_multiple_does_not_divide_it():
    space = PruningSpace.from_architecture(parse_cfg(mini_cfg()), 64, ChannelRounding(multiple=7, min_channels=1))
    full = space.full_widths
    assert np.any(full % 7 != 0)
    assert np.array_equal(space.kept_channels(np.zeros(len(space))), full)  # ratio 0 keeps every channel
    kept = space.kept_channels(np.full(len(space), 0.5))
    assert np.all((kept % 7 == 0) | (kept == full))
