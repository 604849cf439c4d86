"""Policy files: round trip, provenance, and every refusal happening before any pruning work."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from amc.errors import ConfigError
from amc.models import load_cfg
from amc.models.io import packaged
from amc.pruning.policy import Policy
from amc.pruning.space import ChannelRounding, PruningSpace


@pytest.fixture(scope="module")
def space() -> PruningSpace:
    return PruningSpace.from_architecture(load_cfg(packaged("training/yolov7-tiny.yaml")), 640,
                                          ChannelRounding(8, 8, 0.8))


def test_round_trip(space, tmp_path):
    ratios = np.random.default_rng(0).uniform(0, 0.8, len(space))
    policy = Policy.from_ratios(space, ratios, method="uniform", criterion="l2", budget={"flops": 0.5},
                                metrics={"map50_95": 0.3}, source="x.pt")
    path = policy.save(tmp_path / "p.yaml")
    loaded = Policy.load(path)
    assert loaded.to_dict() == policy.to_dict()
    assert np.allclose(loaded.ratios_for(space), ratios, atol=1e-6)
    data = yaml.safe_load(path.read_text())
    assert data["format"] == "amc-policy/1" and list(data["ratios"]) == space.names
    cost = space.policy_cost(ratios)
    assert data["cost"]["params"] == cost.params
    assert data["cost"]["flops_ratio"] == pytest.approx(cost.macs / space.full_cost.macs)
    assert data["rounding"] == {"multiple": 8, "min_channels": 8, "max_ratio": 0.8}


def write(tmp_path, data) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_refusals(space, tmp_path):
    good = Policy.from_ratios(space, np.full(len(space), 0.5)).to_dict()
    with pytest.raises(ConfigError, match="not an amc policy"):
        Policy.load(write(tmp_path, {**good, "format": "x"}))
    with pytest.raises(ConfigError, match="does not exist"):
        Policy.load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must be a number"):
        Policy.load(write(tmp_path, {**good, "ratios": {**good["ratios"], "model.0": "half"}}))
    with pytest.raises(ConfigError, match="method"):
        Policy.load(write(tmp_path, {**good, "method": "magic"}))
    (tmp_path / "bad.yaml").write_text("ratios: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Policy.load(tmp_path / "bad.yaml")
    # a policy for a different model
    other = PruningSpace.from_architecture(load_cfg(packaged("training/yolov7.yaml")), 640)
    with pytest.raises(ConfigError, match="made for model"):
        Policy.from_dict(good).ratios_for(other)
    # same fingerprint but a unit name it does not have (edited file)
    renamed = {**good, "ratios": {("model.999" if k == "model.0" else k): v for k, v in good["ratios"].items()}}
    with pytest.raises(ConfigError, match="model.999"):
        Policy.from_dict(renamed).ratios_for(space)
    # ratio above max_ratio
    with pytest.raises(ConfigError, match="outside"):
        Policy.from_dict({**good, "ratios": {**good["ratios"], "model.0": 0.95}, "channels": {}}).ratios_for(space)
    # channels that do not follow from the ratios
    with pytest.raises(ConfigError, match="do not follow"):
        Policy.from_dict({**good, "channels": {**good["channels"], "model.0": 3}}).ratios_for(space)
