"""Physical pruning and the masked fast path: same outputs, exact cost, a model that runs, fuses, saves, exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amc.models import YOLOv7, load_cfg, official_cfg_names, parse_cfg
from amc.models.io import load_model, packaged, save_model
from amc.pruning.masks import ChannelMasks
from amc.pruning.physical import prune_model
from amc.pruning.selection import ChannelSelection, top_channels
from amc.pruning.space import ChannelRounding, PruningSpace
from conftest import mini_cfg, randomize_


def random_selection(space: PruningSpace, seed: int, high: float = 0.8) -> ChannelSelection:
    rng = np.random.default_rng(seed)
    kept = space.kept_channels(rng.uniform(0, high, len(space)))
    gen = torch.Generator().manual_seed(seed)
    return ChannelSelection(top_channels([torch.rand(u.channels, generator=gen) for u in space.units], kept))


def outputs(model: YOLOv7, x: torch.Tensor) -> list[torch.Tensor]:
    """Decoded eval predictions and raw training maps (BatchNorm kept in eval so both paths are deterministic)."""
    model.eval()
    with torch.no_grad():
        pred = model(x)[0]
        model.model[-1].train()
        raw = model(x)
        model.eval()
    return [pred, *raw]


def assert_close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        scale = max(1.0, float(x.abs().max()))
        assert float((x - y).abs().max()) <= 2e-4 * scale, float((x - y).abs().max())


def small_rounding() -> ChannelRounding:
    return ChannelRounding(multiple=1, min_channels=1, max_ratio=0.9)


@pytest.mark.parametrize("head", ["Detect", "IDetect", "IAuxDetect"])
def test_masked_equals_physical_all_modules(head):
    model = randomize_(YOLOv7(parse_cfg(mini_cfg(head))), seed=1).eval()
    space = PruningSpace.from_model(model, 64, small_rounding())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    full = outputs(model, x)
    masks = ChannelMasks(model, space)
    for seed in range(3):
        selection = random_selection(space, seed)
        pruned = prune_model(model, space, selection)
        masks.apply(selection)
        assert_close(outputs(model, x), outputs(pruned, x))
        counted, analytic = pruned.cost(64), space.cost(selection.widths)
        assert (counted.params, counted.macs) == (analytic.params, analytic.macs)
        assert sum(p.numel() for p in pruned.parameters()) == analytic.params
    masks.remove()
    assert_close(outputs(model, x), full)  # hooks gone, model unchanged


@pytest.mark.parametrize("name", ["training/yolov7-tiny.yaml", "training/yolov7.yaml"])  # e6e modules: see mini
def test_masked_equals_physical_official(name):
    torch.manual_seed(0)
    model = randomize_(YOLOv7(load_cfg(packaged(name))), seed=2).eval()
    space = PruningSpace.from_model(model, 128)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    selection = random_selection(space, 5)
    pruned = prune_model(model, space, selection)
    masks = ChannelMasks(model, space)
    masks.apply(selection)
    assert_close(outputs(model, x), outputs(pruned, x))
    masks.remove()
    counted, analytic = pruned.cost(128), space.cost(selection.widths)
    assert (counted.params, counted.macs) == (analytic.params, analytic.macs)
    assert counted.params < model.cost(128).params
    # physically smaller: every tensor of the pruned model is a slice of the original
    assert sum(p.numel() for p in pruned.parameters()) == analytic.params


def test_masks_restore_refit_weights():
    model = randomize_(YOLOv7(parse_cfg(mini_cfg())), seed=3).eval()
    space = PruningSpace.from_model(model, 64, small_rounding())
    name = "model.13.conv.weight"
    original = model.state_dict()[name].clone()
    selection = random_selection(space, 1)
    selection.weights = {name: torch.full_like(original, 0.5)}
    masks = ChannelMasks(model, space)
    masks.apply(selection)
    assert torch.equal(model.state_dict()[name], torch.full_like(original, 0.5))
    x = torch.rand(1, 3, 64, 64)
    assert_close(outputs(model, x), outputs(prune_model(model, space, selection), x))
    masks.apply(random_selection(space, 2))
    assert torch.equal(model.state_dict()[name], original)
    masks.remove()


def test_pruned_model_fuses_saves_loads_and_exports(tmp_path):
    import onnxruntime as ort
    model = randomize_(YOLOv7(load_cfg(packaged("training/yolov7-tiny.yaml"))), seed=4).eval()
    space = PruningSpace.from_model(model, 96)
    pruned = prune_model(model, space, random_selection(space, 3))
    x = torch.rand(1, 3, 96, 96)
    ref = outputs(pruned, x)
    loaded, _ = load_model(save_model(pruned, tmp_path / "pruned"))
    assert_close(outputs(loaded, x), ref)
    assert loaded.arch.to_dict() == pruned.arch.to_dict()
    fused = loaded.eval().fuse()
    with torch.no_grad():
        pred = fused(x)[0]
    assert float((pred - ref[0]).abs().max()) < 1e-2 * max(1.0, float(ref[0].abs().max()))
    torch.onnx.export(fused, (x,), str(tmp_path / "p.onnx"), dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["pred"])
    onnx_pred = ort.InferenceSession(str(tmp_path / "p.onnx")).run(None, {"images": x.numpy()})[0]
    assert float(np.abs(onnx_pred - pred.numpy()).max()) < 1e-3 * max(1.0, float(pred.abs().max()))


@pytest.mark.parametrize("name", sorted(official_cfg_names()))
def test_every_official_cfg_uniform_half_flops(name, tmp_path):
    from amc.pruning.baselines import uniform_policy
    from amc.pruning.criteria import make_criterion

    torch.manual_seed(0)
    model, _ = load_model(str(packaged(name)))  # full width: the real models, pruned to half their FLOPs
    model.eval()
    space = PruningSpace.from_model(model, 640)
    found = uniform_policy(space, 0.5)
    criterion = make_criterion("l1")
    criterion.prepare(model, space)
    selection = criterion.select(list(space.kept_channels(found.ratios)))
    pruned = prune_model(model, space, selection)
    cost, full = pruned.cost(640), model.cost(640)
    assert 0.45 <= cost.macs / full.macs <= 0.5
    assert (cost.params, cost.macs) == (space.cost(selection.widths).params, space.cost(selection.widths).macs)
    x = torch.rand(1, 3, 64, 64)
    ref = outputs(pruned, x)
    assert all(torch.isfinite(t).all() for t in ref)
    loaded, _ = load_model(save_model(pruned, tmp_path / "m"))
    assert_close(outputs(loaded, x), ref)


def test_masks_follow_half_precision_and_refuse_double_masking():
    model = randomize_(YOLOv7(parse_cfg(mini_cfg())), seed=5).eval()
    space = PruningSpace.from_model(model, 64, small_rounding())
    selection = random_selection(space, 4)
    pruned = prune_model(model.double(), space, selection)
    assert next(pruned.parameters()).dtype == torch.float64  # the pruned copy keeps the source dtype
    masks = ChannelMasks(model, space)
    with pytest.raises(RuntimeError, match="already has channel masks"):
        ChannelMasks(model, space)
    masks.apply(selection)
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    assert_close(outputs(model, x), outputs(pruned, x))
    model.bfloat16()  # the masks are fp32; the hooks follow the activations' dtype
    with torch.no_grad():
        assert model(x.bfloat16())[0].dtype == torch.bfloat16
    masks.remove()
    ChannelMasks(model, space).remove()  # removable, then maskable again
