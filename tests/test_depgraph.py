"""Torch-Pruning's DepGraph finds exactly amc's pruning units, channel by channel, on every official cfg."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from amc.errors import ConfigError
from amc.models import YOLOv7, load_cfg, official_cfg_names, parse_cfg
from amc.models.io import load_model, packaged
from amc.pruning.depgraph import (build_dependency_graph, group_members, head_output_convs, root_conv,
                                  unit_groups)
from amc.pruning.space import PruningSpace
from conftest import mini_cfg

Members = dict[tuple[str, str], set[int]]


def expected_members(space: PruningSpace, unit: int) -> Members:
    """What pruning ``unit`` must touch, derived from the space alone (same keys as :func:`group_members`)."""
    out: Members = {}

    def add(name: str, kind: str, idxs) -> None:
        if idxs:
            out.setdefault((name, kind), set()).update(idxs)

    def owned(segments) -> list[int]:  # positions of the unit's channels among the segments
        idxs, offset = [], 0
        for slot, channels in segments:
            if space.slot_unit.get(slot, -1) == unit:
                idxs.extend(range(offset, offset + channels))
            offset += channels
        return idxs

    for site in space.sites:
        outs = owned([(site.slot, space.slot_width[site.slot])])
        ins = owned(site.inputs)
        if site.kind == "RepConv":
            for branch in ("rbr_dense", "rbr_1x1"):
                add(f"{site.path}.{branch}.0", "out", outs)
                add(f"{site.path}.{branch}.1", "ch", outs)
                add(f"{site.path}.{branch}.0", "in", ins)
            if space.arch.layers[int(site.path.split(".")[1])].args.get("identity"):  # BN of the input channels
                add(f"{site.path}.rbr_identity", "ch", ins)
        else:
            add(f"{site.path}.conv", "out", outs)
            add(f"{site.path}.bn", "ch", outs)
            add(f"{site.path}.conv", "in", ins)
    for head in space.head_inputs:
        ins = owned(head.inputs)
        add(head.conv_path, "in", ins)
        if head.implicit_path:
            add(f"{head.implicit_path}.implicit", "ch", ins)
    return out


def check_partition(model: YOLOv7, space: PruningSpace, DG=None) -> None:
    DG = DG or build_dependency_graph(model)
    groups = unit_groups(model, space, DG)
    assert len(groups) == len(space)
    for u, group in enumerate(groups):
        assert group[0].dep.target.module is root_conv(model, space, u)
        got, want = group_members(model, DG, group), expected_members(space, u)
        assert got == want, (space.units[u].name, set(got) ^ set(want))
    # DepGraph's own enumeration of groups over the prunable convolutions finds as many as the space has units
    all_groups = list(DG.get_all_groups(ignored_layers=head_output_convs(model), root_module_types=[nn.Conv2d]))
    assert len(all_groups) == len(space)


# Each official cfg at its default size. The partition is a property of the structure alone, so these models
# are built on the meta device (no weights, no arithmetic: tracing follows autograd all the same), which keeps
# all 15 under half a minute on 2 CPU cores; real models are traced below (tiny, w6, mini, demo).
@pytest.mark.parametrize("name", official_cfg_names())
def test_depgraph_partition_equals_space(name):
    with torch.device("meta"):
        model = YOLOv7(load_cfg(packaged(name))).eval()
    space = PruningSpace.from_model(model)
    assert len(space) > 0
    check_partition(model, space)


def test_depgraph_partition_real_weights():
    torch.manual_seed(0)
    model = YOLOv7(load_cfg(packaged("training/yolov7-tiny.yaml"))).eval()
    check_partition(model, PruningSpace.from_model(model))


@pytest.mark.parametrize("head", ["Detect", "IDetect", "IAuxDetect"])
def test_depgraph_partition_mini(head):
    """amc's all-modules cfg (RepConv identity, DownC, SPPCSPC, Shortcut, ReOrg of a feature map) with each head."""
    torch.manual_seed(0)
    model = YOLOv7(parse_cfg(mini_cfg(head)))
    check_partition(model, PruningSpace.from_model(model))


def test_depgraph_demo_model():
    model, _ = load_model("demo-model")
    check_partition(model, PruningSpace.from_model(model))


def test_auxiliary_heads_are_traced_and_model_is_left_alone():
    torch.manual_seed(0)
    mini = YOLOv7(parse_cfg(mini_cfg("IAuxDetect")))
    for training in (True, False):
        mini.train(training)
        DG = build_dependency_graph(mini)
        assert all(m.training == training for m in mini.modules())
        traced = set(DG.module2node)
        assert all(conv in traced for conv in mini.head.m2)  # eval-mode tracing would miss these
        assert all(layer.implicit in traced for layer in mini.head.ia)
    # an official IAuxDetect model with real weights, mixed modes and frozen weights: all come back as they were
    model = YOLOv7(load_cfg(packaged("training/yolov7-w6.yaml")))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.model[3].eval()
    model.model[5].requires_grad_(False)
    DG = build_dependency_graph(model)
    assert model.training and not model.model[3].training and model.model[3].conv.training is False
    assert all(not p.requires_grad for p in model.model[5].parameters())
    assert model.model[5].conv in DG.module2node  # frozen weights are traced all the same
    assert all(conv in DG.module2node for conv in model.head.m2)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    check_partition(model, PruningSpace.from_model(model), DG)


def test_head_output_convs_are_never_roots():
    torch.manual_seed(0)
    model = YOLOv7(parse_cfg(mini_cfg("IAuxDetect")))
    protected = head_output_convs(model)
    assert len(protected) == 6 and all(isinstance(m, nn.Conv2d) for m in protected)
    DG = build_dependency_graph(model)
    for group in DG.get_all_groups(ignored_layers=protected, root_module_types=[nn.Conv2d]):
        assert not any(item.dep.target.module in protected and DG.is_out_channel_pruning_fn(item.dep.handler)
                       for item in group)


def test_fused_model_is_refused():
    torch.manual_seed(0)
    model = YOLOv7(parse_cfg(mini_cfg())).eval()
    space = PruningSpace.from_model(model)
    fused = copy.deepcopy(model).fuse()
    with pytest.raises(ConfigError, match="fused"):
        build_dependency_graph(fused)
    with pytest.raises(ConfigError, match="fused"):
        unit_groups(fused, space)
