"""Fusing for deployment preserves outputs: Conv+BN, RepConv, implicit layers; pruned widths too."""

from __future__ import annotations

import copy

import pytest
import torch

from amc.models import YOLOv7, count_architecture, parse_cfg
from amc.models import modules as M
from conftest import irregular, mini_cfg, randomize_

HEADS = ["Detect", "IDetect", "IAuxDetect"]


def _pair(head: str, pruned: bool, dtype: torch.dtype) -> tuple[YOLOv7, YOLOv7]:
    arch = parse_cfg(mini_cfg(head))
    if pruned:
        arch = irregular(arch, seed=3)
    torch.manual_seed(0)
    model = randomize_(YOLOv7(arch)).to(dtype).eval()
    return model, copy.deepcopy(model).fuse()


@pytest.mark.parametrize("pruned", [False, True], ids=["regular", "pruned"])
@pytest.mark.parametrize("head", HEADS)
def test_fused_model_gives_the_same_outputs(head: str, pruned: bool) -> None:
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    for dtype, bound in ((torch.float64, 1e-9), (torch.float32, 1e-3)):
        model, fused = _pair(head, pruned, dtype)
        with torch.no_grad():
            ref, fz = model(x.to(dtype))[0], fused(x.to(dtype))[0]
        assert (ref - fz).abs().max().item() <= bound, dtype


def test_fusing_changes_the_structure() -> None:
    model, fused = _pair("IDetect", False, torch.float32)
    convs = [m for m in fused.modules() if isinstance(m, M.Conv)]
    assert convs and all(isinstance(m.bn, torch.nn.Identity) and m.conv.bias is not None for m in convs)
    reps = [m for m in fused.modules() if isinstance(m, M.RepConv)]
    assert reps and all(m.rbr_dense is None and m.rbr_1x1 is None and m.rbr_identity is None for m in reps)
    assert not any(k.endswith("running_mean") for k in fused.state_dict())
    assert fused.head.folded and fused.fused and not model.fused
    n_fused = sum(p.numel() for p in fused.parameters())
    assert n_fused < sum(p.numel() for p in model.parameters())
    assert n_fused == count_architecture(fused.arch, 64, fused=True).params


def test_each_fusion_alone_is_exact() -> None:
    """Conv+BN, RepConv (with identity) and IDetect folding, each checked on its own in float64."""
    model, _ = _pair("IDetect", False, torch.float64)
    x = torch.rand(1, 16, 8, 8, dtype=torch.float64)
    image = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    conv, rep = model.model[0], model.model[1]
    assert rep.rbr_identity is not None
    with torch.no_grad():
        ref = conv(image)
        conv.fuse()
        assert conv.fused and (conv(image) - ref).abs().max() < 1e-12
        ref = rep(x)
        rep.fuse()
        assert (rep(x) - ref).abs().max() < 1e-12
        head = model.head
        feats = [torch.rand(1, 16, s, s, dtype=torch.float64) for s in (8, 4, 2)]
        ref = head([f.clone() for f in feats])[0]
        head.fuse()
        assert (head([f.clone() for f in feats])[0] - ref).abs().max() < 1e-9


def test_fuse_twice_is_a_no_op() -> None:
    _, fused = _pair("IAuxDetect", True, torch.float64)
    state = copy.deepcopy(fused.state_dict())
    fused.fuse()
    for k, v in fused.state_dict().items():
        assert torch.equal(v, state[k]), k
