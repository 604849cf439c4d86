"""Channel-selection criteria: exact counts, hand-checkable magnitudes, seeded randomness, a Taylor pass that
leaves the model alone, and a least-squares re-fit that beats plain slicing; masked == physical for all."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from amc.data.loaders import TrainSet, collate
from amc.errors import ConfigError
from amc.factory import make_criterion  # the pruning engine's, with the detection loss for taylor
from amc.models import YOLOv7, parse_cfg
from amc.models.io import load_model
from amc.pruning.criteria import CRITERIA, unit_sites
from amc.pruning.masks import ChannelMasks
from amc.pruning.physical import prune_model
from amc.pruning.selection import ChannelSelection, segment_mask
from amc.pruning.space import ChannelRounding, PruningSpace
from conftest import mini_cfg, randomize_

SIZE = 96  # the tiny_demo images; a multiple of every model's largest stride used here
FINE = ChannelRounding(multiple=1, min_channels=1, max_ratio=0.9)  # every count reachable on small models


def demo_batches(dataset, batch_size: int = 4, size: int = SIZE) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(images, targets) batches exactly as training gets them (letterboxed, no augmentation)."""
    ts = TrainSet(dataset, img_size=size, augment=False)
    return [collate([ts[i] for i in range(j, min(j + batch_size, len(ts)))]) for j in range(0, len(ts), batch_size)]


def mini(head: str = "IAuxDetect", seed: int = 1) -> YOLOv7:
    """amc's all-modules model (RepConv with/without identity, DownC, SPPCSPC, Shortcut, ReOrg) with 3 classes."""
    return randomize_(YOLOv7(parse_cfg(mini_cfg(head), nc=3)), seed=seed).eval()


def random_kept(space: PruningSpace, seed: int) -> np.ndarray:
    return space.kept_channels(np.random.default_rng(seed).uniform(0.0, 0.8, len(space)))


def check_selection(space: PruningSpace, selection: ChannelSelection, kept) -> None:
    assert len(selection.keep) == len(space)
    for unit, idx, k in zip(space.units, selection.keep, kept):
        assert idx.dtype == torch.long and idx.dim() == 1 and len(idx) == int(k)
        assert bool((idx[1:] > idx[:-1]).all()), "indices must be sorted and distinct"
        assert len(idx) == 0 or (0 <= int(idx[0]) and int(idx[-1]) < unit.channels)


@torch.no_grad()
def outputs(model: YOLOv7, x: torch.Tensor) -> list[torch.Tensor]:
    """Decoded predictions and the raw maps of every head (auxiliary ones included), BatchNorm in eval mode."""
    model.eval()
    pred = model(x)[0]
    model.head.train()
    raw = model(x)
    model.eval()
    return [pred, *raw]


def assert_masked_equals_physical(model: YOLOv7, space: PruningSpace, selection: ChannelSelection,
                                  x: torch.Tensor) -> None:
    params = dict(model.named_parameters())
    for name, value in selection.weights.items():  # full-size tensors, as the slicer and the masks expect
        assert value.shape == params[name].shape, name
    pruned = prune_model(model, space, selection)
    masks = ChannelMasks(model, space)
    masks.apply(selection)
    try:
        masked = outputs(model, x)
    finally:
        masks.remove()
    for a, b in zip(masked, outputs(pruned, x)):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= 2e-4 * max(1.0, float(a.abs().max()))


# ------------------------------------------------------------------------------------------------ registry
def test_registry_names_and_errors():
    assert set(CRITERIA) == {"l1", "l2", "bn", "random", "taylor", "ls"}
    with pytest.raises(ConfigError) as info:
        make_criterion("l3")
    message = str(info.value)
    assert "\n" not in message and all(name in message for name in CRITERIA)
    with pytest.raises(ConfigError, match="seed"):
        make_criterion("random", sed=1)
    with pytest.raises(ConfigError):
        make_criterion("taylor", batches=0)
    model = mini()
    space = PruningSpace.from_model(model, SIZE, FINE)
    with pytest.raises(RuntimeError):
        make_criterion("l1").select(space.full_widths)
    with pytest.raises(ConfigError, match="needs data"):
        make_criterion("ls").prepare(model, space)
    criterion = make_criterion("l1")
    criterion.prepare(model, space)
    with pytest.raises(ValueError):
        criterion.select(space.full_widths[:-1])
    with pytest.raises(ValueError):
        criterion.select(space.full_widths + 1)


# ------------------------------------------------------------------------------------------------ every criterion
@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_exact_counts_and_masked_equals_physical(name, tiny_demo):
    model = mini("IAuxDetect")
    space = PruningSpace.from_model(model, SIZE, FINE)
    criterion = make_criterion(name)
    criterion.prepare(model, space, demo_batches(tiny_demo[1])[:2])
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    for seed in range(2):
        kept = random_kept(space, seed)
        selection = criterion.select(kept)
        check_selection(space, selection, kept)
        assert_masked_equals_physical(model, space, selection, x)
    full = criterion.select(space.full_widths)  # keeping everything changes nothing
    assert all(torch.equal(k, torch.arange(u.channels)) for k, u in zip(full.keep, space.units))
    assert not full.weights


# ------------------------------------------------------------------------------------------------ magnitude
def producer_modules(model: YOLOv7, space: PruningSpace, u: int) -> list[nn.Module]:
    return [model.get_submodule(s.path) for s in unit_sites(space)[u]]


@torch.no_grad()
def test_l1_l2_bn_pick_the_largest_by_hand():
    """In every unit half the channels get 'peaky' filters (one weight a) and the others 'flat' ones (all n
    weights a / n**0.75): L1 prefers the flat (a n**0.25 > a), L2 the peaky (a > a n**-0.25). BatchNorm
    gammas get a random signed permutation: bn keeps the largest |gamma|."""
    model = mini("IDetect")
    space = PruningSpace.from_model(model, SIZE, FINE)
    gen = torch.Generator().manual_seed(0)
    peaky, gammas = [], []
    for u, unit in enumerate(space.units):
        chosen = torch.randperm(unit.channels, generator=gen)[: unit.channels // 2]
        is_peaky = torch.zeros(unit.channels, dtype=torch.bool)
        is_peaky[chosen] = True
        sign = torch.randint(0, 2, (unit.channels,), generator=gen) * 2 - 1
        gamma = (torch.randperm(unit.channels, generator=gen) + 1.0) * sign
        for module in producer_modules(model, space, u):
            pairs = ([(module.rbr_dense[0], module.rbr_dense[1]), (module.rbr_1x1[0], module.rbr_1x1[1])]
                     if hasattr(module, "rbr_dense") else [(module.conv, module.bn)])
            bns = [bn for _, bn in pairs]
            if getattr(module, "rbr_identity", None) is not None:
                bns.append(module.rbr_identity)
            for conv, _ in pairs:
                w = conv.weight.view(unit.channels, -1)
                n = w.shape[1]
                w.fill_(0.0)
                w[is_peaky, 0] = 2.0
                w[~is_peaky] = 2.0 / n**0.75
            for bn in bns:
                bn.weight.copy_(gamma)
        peaky.append(torch.nonzero(is_peaky).view(-1))
        gammas.append(torch.sort(torch.argsort(-gamma.abs())[: unit.channels // 2]).values)
    kept = [u.channels // 2 for u in space.units]
    selections = {}
    for name in ("l1", "l2", "bn"):
        criterion = make_criterion(name)
        criterion.prepare(model, space)
        selections[name] = criterion.select(kept).keep
    for u, unit in enumerate(space.units):
        flat = torch.tensor([c for c in range(unit.channels) if c not in set(peaky[u].tolist())])
        assert torch.equal(selections["l2"][u], peaky[u]), unit.name
        assert torch.equal(selections["l1"][u], flat[: kept[u]]), unit.name
        assert torch.equal(selections["bn"][u], gammas[u]), unit.name


# ------------------------------------------------------------------------------------------------ random
def test_random_is_seeded_and_deterministic():
    model = mini("IDetect")
    space = PruningSpace.from_model(model, SIZE, FINE)
    kept = random_kept(space, 3)

    def keep(seed: int):
        criterion = make_criterion("random", seed=seed)
        criterion.prepare(model, space)
        first = criterion.select(kept).keep
        assert all(torch.equal(a, b) for a, b in zip(first, criterion.select(kept).keep))
        return first

    a, b, c = keep(0), keep(0), keep(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))


# ------------------------------------------------------------------------------------------------ taylor
def test_taylor_is_deterministic_and_leaves_the_model_alone(tiny_demo):
    model = mini("IAuxDetect")
    model.train()
    model.model[3].eval()  # a mixed state must come back exactly
    model.model[5].rbr_dense[0].weight.requires_grad_(False)  # so must frozen parameters
    space = PruningSpace.from_model(model, SIZE, FINE)
    # A dead channel (gamma = beta = 0 in its only producer) changes nothing when removed: its score is 0.
    dead = next(u for u, sites in enumerate(unit_sites(space)) if [s.kind for s in sites] == ["Conv"])
    with torch.no_grad():
        bn = model.get_submodule(space.units[dead].producers[0]).bn
        bn.weight[0] = bn.bias[0] = 0.0
    before = copy.deepcopy(model.state_dict())  # weights and BatchNorm running statistics
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    batches = demo_batches(tiny_demo[1])[:2]

    criterion = make_criterion("taylor", batches=2)
    criterion.prepare(model, space, batches)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert modes == {name: m.training for name, m in model.named_modules()}
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())
    scores = criterion.scores
    assert all(bool(torch.isfinite(s).all()) for s in scores) and sum(float(s.sum()) for s in scores) > 0
    assert float(scores[dead][0]) == 0.0 and float(scores[dead][1:].min()) > 0.0

    again = make_criterion("taylor", batches=2)
    again.prepare(model, space, batches)
    assert all(torch.equal(a, b) for a, b in zip(scores, again.scores))
    kept = random_kept(space, 0)
    check_selection(space, criterion.select(kept), kept)


# ------------------------------------------------------------------------------------------------ least squares
@torch.no_grad()
def test_ls_refit_beats_plain_slicing_on_the_demo_model(tiny_demo):
    """The trained demo model (yolov7-tiny layout), calibrated on train images, judged on held-out ones."""
    model, _ = load_model("demo-model")
    space = PruningSpace.from_model(model, SIZE, FINE)
    criterion = make_criterion("ls", samples=1024, batches=3)
    criterion.prepare(model, space, demo_batches(tiny_demo[1]))
    held_out = demo_batches(tiny_demo[2], batch_size=6)[0][0]
    reference = model(held_out)[1]

    def error(selection: ChannelSelection) -> float:
        out = prune_model(model, space, selection).eval()(held_out)[1]
        return sum(float((a - b).square().sum()) for a, b in zip(out, reference)) / \
            sum(float(a.square().sum()) for a in reference)

    for ratio in (0.2, 0.4):
        selection = criterion.select(space.kept_channels([ratio] * len(space)))
        assert selection.weights
        refit, plain = error(selection), error(ChannelSelection(selection.keep))
        assert refit < 0.7 * plain, (ratio, refit, plain)
    again = make_criterion("ls", samples=1024, batches=3)
    again.prepare(model, space, demo_batches(tiny_demo[1]))
    repeat = again.select(space.kept_channels([0.4] * len(space)))
    assert all(torch.equal(a, b) for a, b in zip(selection.keep, repeat.keep))
    assert all(torch.equal(selection.weights[k], repeat.weights[k]) for k in selection.weights)


@torch.no_grad()
def test_ls_refit_reconstructs_each_consumer(tiny_demo):
    """Per consumer (Conv blocks, RepConv blocks, implicit head convolutions): fed its unpruned input with the
    removed channels zeroed, the re-fitted block reproduces its original output better than the sliced one."""
    model = mini("IDetect", seed=4)
    space = PruningSpace.from_model(model, SIZE, FINE)
    criterion = make_criterion("ls", samples=2048, batches=3)
    criterion.prepare(model, space, demo_batches(tiny_demo[1]))
    selection = criterion.select(space.kept_channels([0.5] * len(space)))
    refitted = copy.deepcopy(model)
    refitted.load_state_dict({**model.state_dict(), **selection.weights})

    inputs: dict[str, torch.Tensor] = {}
    blocks = {s.path: (s.inputs, s.slot) for s in space.sites if s.kind in ("Conv", "RepConv")}
    heads = {h.conv_path: (h.inputs, None) for h in space.head_inputs}
    hooks = [model.get_submodule(p).register_forward_pre_hook(lambda m, a, p=p: inputs.__setitem__(p, a[0]))
             for p in list(blocks) + list(heads)]  # a head conv reads x + ia: the pre-hook sees exactly that
    model(demo_batches(tiny_demo[2], batch_size=6)[0][0])
    for h in hooks:
        h.remove()
    errors: dict[str, list[float]] = {"Conv": [0.0, 0.0], "RepConv": [0.0, 0.0], "head": [0.0, 0.0]}
    for path, (segments, slot) in {**blocks, **heads}.items():
        mask = segment_mask(space, segments, selection.keep).view(1, -1, 1, 1)
        if bool(mask.all()):
            continue
        rows = (segment_mask(space, [(slot, space.slot_width[slot])], selection.keep).bool() if slot is not None
                else slice(None))
        kind = "head" if slot is None else type(model.get_submodule(path)).__name__
        x = inputs[path]
        target = model.get_submodule(path)(x)[:, rows]
        for j, net in enumerate((refitted, model)):
            out = net.get_submodule(path)(x * mask)[:, rows]
            errors[kind][j] += float((out - target).square().sum() / target.square().sum())
    for kind, (refit, plain) in errors.items():
        assert 0 < refit < 0.1 * plain, (kind, refit, plain)  # these random features are nearly redundant


@pytest.mark.parametrize("name", ["training/yolov7.yaml", "training/yolov7-e6e.yaml"])
def test_ls_official_cfgs_masked_equals_physical(name):
    """RepConv, SPPCSPC, IDetect (yolov7); DownC, ReOrg, Shortcut, IAuxDetect with 4 levels (e6e)."""
    torch.manual_seed(0)
    model = randomize_(load_model(name, width_multiple=0.125)[0], seed=2).eval()
    size = 128 if "e6e" in name else 64
    space = PruningSpace.from_model(model, size, FINE)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(1, 3, size, size, generator=g), torch.tensor([[0.0, 1, 0.5, 0.5, 0.3, 0.3]]))
               for _ in range(2)]
    criterion = make_criterion("ls", samples=256, batches=2)
    criterion.prepare(model, space, batches)
    kept = random_kept(space, 1)
    selection = criterion.select(kept)
    check_selection(space, selection, kept)
    assert any(k.endswith("rbr_dense.0.weight") for k in selection.weights) == ("e6e" not in name)
    assert any(".m." in k for k in selection.weights)
    assert_masked_equals_physical(model, space, selection, torch.rand(1, 3, size, size, generator=g))
