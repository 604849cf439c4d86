"""Resolving official cfgs into explicit architectures, and clear errors for malformed ones."""

from __future__ import annotations

import copy

import pytest
import yaml

from amc.errors import ConfigError
from amc.models import Architecture, load_cfg, official_cfg_names, parse_cfg
from amc.models.io import official_cfg_dir
from conftest import FIXTURES


def mini_cfg() -> dict:
    return yaml.safe_load((FIXTURES / "mini.yaml").read_text())


def test_all_fifteen_official_cfgs_are_shipped_and_parse() -> None:
    names = official_cfg_names()
    assert len(names) == 15
    for name in names:
        arch = load_cfg(official_cfg_dir() / name)
        assert arch.head.module in ("Detect", "IDetect", "IAuxDetect")
        assert arch.nc == 80


def test_widths_and_strides_follow_the_official_rules() -> None:
    arch = load_cfg(official_cfg_dir() / "training/yolov7-tiny.yaml")
    ch = arch.channels()
    assert ch[0] == 32 and ch[6] == 128 and ch[7] == 64  # Concat of four 32-wide convs
    assert [float(s) for s in arch.strides()][:3] == [2.0, 4.0, 4.0]
    assert arch.head_strides() == [8.0, 16.0, 32.0]
    assert arch.layers[0].args["act"] == "LeakyReLU(0.1)"
    narrow = parse_cfg({**yaml.safe_load((official_cfg_dir() / "training/yolov7-tiny.yaml").read_text()),
                        "width_multiple": 0.3}, nc=7)
    assert narrow.nc == 7
    assert narrow.channels()[0] == 16  # ceil(32 * 0.3 / 8) * 8


def test_composite_modules_get_explicit_inner_widths() -> None:
    e6e = load_cfg(official_cfg_dir() / "training/yolov7-e6e.yaml")
    downc = e6e.layers[2]
    assert downc.module == "DownC" and downc.args["cv1"] == 80 and downc.args["cv2"] == downc.args["cv3"] == 80
    v7 = load_cfg(official_cfg_dir() / "training/yolov7.yaml")
    spp = next(layer for layer in v7.layers if layer.module == "SPPCSPC")
    assert [spp.args[f"cv{j}"] for j in range(1, 8)] == [512] * 7
    rep = next(layer for layer in v7.layers if layer.module == "RepConv")
    assert rep.args["identity"] is False


def test_architecture_dict_round_trip() -> None:
    arch = parse_cfg(mini_cfg())
    again = Architecture.from_dict(yaml.safe_load(yaml.safe_dump(arch.to_dict())))
    assert again == arch
    assert arch.layers[1].args["identity"] is True


def _bad(cfg: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_cfg(cfg, source="bad.yaml")


def test_unknown_module_is_named() -> None:
    cfg = mini_cfg()
    cfg["backbone"][3][2] = "Focus"
    _bad(cfg, r"bad.yaml: layer 3 uses unknown module 'Focus'")


def test_malformed_row() -> None:
    cfg = mini_cfg()
    cfg["backbone"][2] = [-1, 1, "Conv"]
    _bad(cfg, r"layer 2 must be \[from, number, module, args\]")


def test_from_index_out_of_range() -> None:
    cfg = mini_cfg()
    cfg["head"][1][0] = [-1, 40]
    _bad(cfg, r"layer 12 reads from 40, which is not an earlier layer")
    cfg = mini_cfg()
    cfg["backbone"][0][0] = -2
    _bad(cfg, r"layer 0 reads from -2")


def test_unknown_activation_and_bad_args() -> None:
    cfg = mini_cfg()
    cfg["backbone"][3][3][5] = "nn.GELU()"
    _bad(cfg, r"unknown activation")
    cfg = mini_cfg()
    cfg["backbone"][0][3] = ["wide", 3, 2]
    _bad(cfg, r"layer 0 \(Conv\) has malformed args")


def test_missing_keys_and_head_checks() -> None:
    cfg = mini_cfg()
    del cfg["anchors"]
    _bad(cfg, r"missing 'anchors'")
    cfg = mini_cfg()
    cfg["head"][-1][0] = [13, 14]
    _bad(cfg, r"IDetect reads 2 layers but there are 3 anchor rows")
    cfg = mini_cfg()
    cfg["head"].append([-1, 1, "Conv", [8, 1, 1]])
    _bad(cfg, r"a detection head must be the last layer|the last layer must be a detection head")


def test_shortcut_of_different_widths_is_refused() -> None:
    cfg = mini_cfg()
    cfg["backbone"][6][3][0] = 48
    _bad(cfg, r"layer 7 adds tensors of different widths")


def test_missing_and_invalid_yaml_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_cfg(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("nc: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_cfg(bad)


def test_amc_architecture_validation() -> None:
    data = parse_cfg(mini_cfg()).to_dict()
    broken = copy.deepcopy(data)
    broken["layers"][3][1] = "Nope"
    with pytest.raises(ConfigError, match="unknown module 'Nope'"):
        Architecture.from_dict(broken)
    broken = copy.deepcopy(data)
    del broken["layers"][0][2]["c2"]
    with pytest.raises(ConfigError, match="needs an integer 'c2'"):
        Architecture.from_dict(broken)
    with pytest.raises(ConfigError, match="not an amc architecture"):
        Architecture.from_dict({"nc": 1})


def _repeated_cfg(depth: float) -> dict:
    cfg = mini_cfg()
    cfg["depth_multiple"] = depth
    cfg["backbone"][6] = [-1, 3, "Conv", [32, 3, 1]]  # number 3: scaled by depth_multiple
    return cfg


def test_depth_multiple_scales_repeats_as_officially() -> None:
    import torch

    from amc.models import YOLOv7, count_architecture

    deep, shallow = parse_cfg(_repeated_cfg(1.0)), parse_cfg(_repeated_cfg(0.33))
    assert deep.layers[6].args["n"] == 3 and "n" not in shallow.layers[6].args  # round(3 * 0.33) = 1
    model = YOLOv7(deep)
    assert isinstance(model.model[6], torch.nn.Sequential) and len(model.model[6]) == 3
    assert "model.6.2.conv.weight" in model.state_dict()
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 64, 64))[0].shape[-1] == 7
    extra = count_architecture(deep, 64).params - count_architecture(shallow, 64).params
    assert extra == 2 * (32 * 32 * 9 + 2 * 32)
    assert count_architecture(deep, 64).params == sum(p.numel() for p in model.parameters())


def test_repeating_a_multi_input_module_is_refused() -> None:
    cfg = mini_cfg()
    cfg["head"][1][1] = 2
    _bad(cfg, r"layer 12: repeating Concat \(number=2\) is not supported")
