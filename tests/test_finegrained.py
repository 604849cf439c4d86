"""Fine-grained pruning: magnitude zeroing per layer, its report, and its cost in non-zero params/FLOPs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from amc.errors import ConfigError
from amc.models import YOLOv7, count_architecture, load_model, parse_cfg
from amc.pruning.finegrained import (apply_finegrained, finegrained_layers, nonzero_cost,
                                     sparsity_report)
from conftest import irregular, mini_cfg, randomize_

# Small widths keep the big cfgs fast while every module kind stays (RepConv, SPPCSPC, IAuxDetect, DownC,
# ReOrg); yolov7-tiny is built at its real width.
BUILDS = {
    "tiny": lambda: load_model("training/yolov7-tiny.yaml")[0],
    "yolov7": lambda: load_model("training/yolov7.yaml", width_multiple=0.125)[0],
    "e6e": lambda: load_model("training/yolov7-e6e.yaml", width_multiple=0.125)[0],
    "mini-aux-irregular": lambda: randomize_(YOLOv7(irregular(parse_cfg(mini_cfg("IAuxDetect")), seed=3)).eval()),
}


@torch.no_grad()
def build(kind: str, fused: bool = False) -> YOLOv7:
    """A model with no exact zero in any convolution weight (random init can produce one in ~1e7)."""
    torch.manual_seed(0)
    model = BUILDS[kind]()
    if fused:
        model.fuse()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.masked_fill_(m.weight == 0, 1e-3)
    return model


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def conv_output_hw(model: YOLOv7, size: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Output size of every convolution that runs, from a real eval forward (independent of the meta path)."""
    names = {id(m): n for n, m in model.named_modules()}
    out: dict[str, tuple[int, int]] = {}
    handles = [m.register_forward_hook(lambda m, i, o: out.__setitem__(names[id(m)], tuple(o.shape[-2:])))
               for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, model.arch.ch, *size))
    for h in handles:
        h.remove()
    return out


# --- which layers ---------------------------------------------------------------------------------------


def test_layers_are_every_conv_but_the_head_outputs_in_order() -> None:
    model = build("yolov7")
    names = finegrained_layers(model)
    last = len(model.model) - 1
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert names == [n for n in convs if not n.startswith(f"model.{last}.")]
    assert {"model.0.conv", "model.51.cv3.conv", "model.102.rbr_dense.0", "model.102.rbr_1x1.0"} <= set(names)
    assert len(convs) - len(names) == 3  # the three IDetect outputs
    fused = finegrained_layers(build("yolov7", fused=True))
    assert "model.102.rbr_reparam" in fused and "model.102.rbr_dense.0" not in fused and "model.0.conv" in fused


def test_auxiliary_head_outputs_are_excluded_too() -> None:
    model = build("e6e")
    names = finegrained_layers(model)
    last = len(model.model) - 1
    assert not any(n.startswith(f"model.{last}.") for n in names)
    head_convs = [n for n, m in model.model[last].named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(head_convs) == sorted([f"m.{i}" for i in range(4)] + [f"m2.{i}" for i in range(4)])
    assert "model.1.conv" in names and any(".cv3.conv" in n for n in names)  # DownC branch


def test_only_yolov7_models_are_accepted() -> None:
    with pytest.raises(TypeError, match="YOLOv7"):
        finegrained_layers(nn.Sequential(nn.Conv2d(3, 4, 3)))


# --- applying -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.77, 0.999])
def test_uniform_ratio_gives_rounded_sparsity_in_every_layer(ratio: float) -> None:
    model = build("tiny")
    assert sparsity_report(model).zeros == 0
    report = apply_finegrained(model, ratio)
    assert [r.name for r in report.layers] == finegrained_layers(model)
    for row in report.layers:
        assert row.zeros == round(ratio * row.numel), row.name
        assert abs(row.sparsity - ratio) <= 0.5 / row.numel + 1e-12
    assert report.zeros == sum(r.zeros for r in report.layers)
    assert report.numel == sum(p.numel for p in report.layers)
    assert report.sparsity == pytest.approx(ratio, abs=len(report.layers) / report.numel)
    assert report == sparsity_report(model)  # the returned report measures the model


def test_zeroed_weights_are_exactly_the_smallest() -> None:
    model = build("mini-aux-irregular")
    before = snapshot(model)
    names = finegrained_layers(model)
    ratios = {names[0]: 0.1, names[2]: 0.5, names[-1]: 0.9}
    report = apply_finegrained(model, ratios).by_name()
    after = model.state_dict()
    for key, old in before.items():
        layer = key.removesuffix(".weight")
        if layer not in ratios:
            assert torch.equal(after[key], old), key  # other layers, biases, BatchNorm untouched
            continue
        new = after[key]
        zeroed = new == 0
        k = round(ratios[layer] * old.numel())
        assert int(zeroed.sum()) == report[layer].zeros == k
        assert old[zeroed].abs().max() <= old[~zeroed].abs().min()
        assert torch.equal(new[~zeroed], old[~zeroed])  # the kept weights are unchanged


def test_ties_are_broken_by_flat_index() -> None:
    model = build("tiny")
    name = finegrained_layers(model)[1]
    conv = model.get_submodule(name)
    n = conv.weight.numel()
    values = torch.tensor([1.0, -1.0, 0.5, 2.0, -0.5])[torch.arange(n) % 5]  # many equal magnitudes
    with torch.no_grad():
        conv.weight.copy_(values.view_as(conv.weight))
    ratio = 0.3  # cuts inside the |w| = 1 group: 2n/5 weights of |0.5|, then the first |1| ones
    k = round(ratio * n)
    expected = sorted(range(n), key=lambda i: (abs(float(values[i])), i))[:k]
    apply_finegrained(model, {name: ratio})
    zero_idx = torch.nonzero(conv.weight.detach().reshape(-1) == 0).view(-1).tolist()
    assert zero_idx == sorted(expected)


def test_dict_entries_only_touch_their_layers_and_float_touches_all() -> None:
    model = build("tiny")
    names = finegrained_layers(model)
    report = apply_finegrained(model, {names[3]: 0.4})
    assert [r.name for r in report.layers if r.zeros] == [names[3]]
    report = apply_finegrained(model, 0.2)
    assert all(r.zeros > 0 for r in report.layers)
    assert report.by_name()[names[3]].zeros == round(0.4 * report.by_name()[names[3]].numel)  # never un-zeroed


def test_head_outputs_stay_intact() -> None:
    model = build("e6e")
    head_before = snapshot(model.head)
    report = apply_finegrained(model, 0.9)
    assert report.sparsity == pytest.approx(0.9, abs=1e-3)
    for key, value in model.head.state_dict().items():
        assert torch.equal(value, head_before[key]), key


@pytest.mark.parametrize("bad, needle", [
    ({"model.0.conv": 0.5, "model.99.conv": 0.5}, "'model.99.conv'"),
    ({"model.0.conv": 0.5, "model.77.m.0": 0.1}, "'model.77.m.0'"),  # a head output
    ({"model.0.conv": 0.5, "model.1.conv": 1.0}, "1.0"),
    ({"model.0.conv": 0.5, "model.1.conv": -0.1}, "-0.1"),
    ({"model.0.conv": 0.5, "model.1.conv": None}, "None"),
    ({"model.0.conv": 0.5, "model.1.conv": "0.5"}, "'0.5'"),
    (1.0, "1.0"),
    (-0.01, "-0.01"),
    (float("nan"), "nan"),
    (True, "True"),
])
def test_bad_entries_raise_before_any_weight_changes(bad: object, needle: str) -> None:
    model = build("tiny")
    assert len(model.model) == 78  # the head is model.77
    before = snapshot(model)
    with pytest.raises(ConfigError) as err:
        apply_finegrained(model, bad)  # type: ignore[arg-type]
    message = str(err.value)
    assert needle in message and "\n" not in message
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_unknown_name_suggests_a_close_one() -> None:
    with pytest.raises(ConfigError, match="did you mean 'model.0.conv'"):
        apply_finegrained(build("tiny"), {"model.0.conv2": 0.5})


def test_deterministic_and_monotone() -> None:
    a, b = build("yolov7"), build("yolov7")
    ra, rb = apply_finegrained(a, 0.6), apply_finegrained(b, 0.6)
    assert ra == rb
    state_b = b.state_dict()
    assert all(torch.equal(v, state_b[k]) for k, v in a.state_dict().items())
    zeros_before = {n: a.get_submodule(n).weight == 0 for n in finegrained_layers(a)}
    assert apply_finegrained(a, 0.6) == ra and apply_finegrained(a, 0.3) == ra  # nothing re-zeroed or restored
    apply_finegrained(a, 0.8)
    for name, mask in zeros_before.items():
        now = a.get_submodule(name).weight == 0
        assert bool(now[mask].all()) and int(now.sum()) == round(0.8 * now.numel())


def test_zeros_survive_fusing_conv_blocks() -> None:
    model = build("tiny")  # Conv blocks only: BatchNorm folding scales whole output channels
    report = apply_finegrained(model, 0.5)
    assert sparsity_report(model.fuse()).layers == report.layers


def test_reports_serialize() -> None:
    model = build("mini-aux-irregular")
    report = apply_finegrained(model, 0.5)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["zeros"] == report.zeros and len(data["layers"]) == len(report.layers)
    assert data["layers"][0]["sparsity"] == report.layers[0].sparsity
    cost = json.loads(json.dumps(nonzero_cost(model, 64).to_dict()))
    assert cost["params"] == nonzero_cost(model, 64).params and cost["convs"]


# --- cost in non-zero params and FLOPs ----------------------------------------------------------------


@pytest.mark.parametrize("kind", list(BUILDS))
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("size", [64, (128, 64)])
def test_dense_nonzero_cost_equals_the_analytic_count(kind: str, fused: bool, size: int | tuple[int, int]) -> None:
    model = build(kind, fused)
    cost = nonzero_cost(model, size)
    dense = count_architecture(model.arch, size, fused=model.fused)
    assert cost.fused == fused and cost.img_size == dense.img_size
    assert cost.params == dense.params == sum(p.numel() for p in model.parameters())
    assert cost.macs == dense.macs and cost.gflops == dense.gflops
    assert cost.layers == dense.layers  # layer by layer: index, module, widths, size, params, MACs


def test_nonzero_cost_leaves_the_model_alone() -> None:
    model = build("mini-aux-irregular").train()  # IAuxDetect: training mode runs the auxiliary heads
    before = snapshot(model)
    nonzero_cost(model, 64)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", ["tiny", "yolov7", "e6e"])
@pytest.mark.parametrize("fused", [False, True])
def test_cost_drops_by_exactly_the_zeroed_weights(kind: str, fused: bool) -> None:
    size = (64, 128)
    model = build(kind, fused)
    base = nonzero_cost(model, size)
    hw = conv_output_hw(model, size)
    names = finegrained_layers(model)
    report = apply_finegrained(model, {**{n: 0.5 for n in names}, names[0]: 0.25, names[-1]: 0.75})
    after = nonzero_cost(model, size)
    assert base.params - after.params == report.zeros > 0
    assert base.macs - after.macs == sum(r.zeros * hw[r.name][0] * hw[r.name][1] for r in report.layers)
    nonzero = {c.name: c.nonzero for c in after.convs}
    assert all(nonzero[r.name] == r.numel - r.zeros for r in report.layers)
    assert sum(layer.params for layer in after.layers) == after.params


def test_fused_auxiliary_heads_cost_params_only() -> None:
    model = build("e6e", fused=True)
    cost = nonzero_cost(model, 64)
    aux = [c for c in cost.convs if ".m2." in c.name]
    assert len(aux) == 4 and all(c.macs == 0 and c.nonzero == c.numel for c in aux)
    unfused = nonzero_cost(build("e6e"), 64)
    assert all(c.macs == c.nonzero * c.out_hw[0] * c.out_hw[1] > 0 for c in unfused.convs if ".m2." in c.name)
