"""Torch-Pruning's dependency graph (DepGraph) of an amc YOLOv7, and one DepGraph group per pruning unit.

amc computes its channel partition analytically (:class:`~amc.pruning.space.PruningSpace`); DepGraph finds it
by tracing autograd. The two must agree (``tests/test_depgraph.py`` checks every official cfg), and the DepGraph
groups are what Torch-Pruning's importance criteria score (see :mod:`amc.pruning.baselines`).

What a plain ``tp.DependencyGraph().build_dependency(model, x)`` would get wrong on YOLOv7:

* it traces in eval mode, where IAuxDetect skips its auxiliary convolutions ``m2`` (and so never sees the
  layers feeding them): the head is switched to training mode for the trace;
* the implicit layers (``ia``: ``x + implicit``, ``im``: ``implicit * x``) hold bare parameters of shape
  ``(1, C, 1, 1)``: they are declared as unwrapped parameters pruned along dim 1;
* the head's output convolutions (``m``, ``m2``) must keep their outputs (the anchors x (5 + classes) layout):
  :func:`head_output_convs` lists them as ignored layers for any pruner or ``get_all_groups``;
* a fused model (BatchNorm folded) has lost the structure amc prunes: refused with :class:`ConfigError`.

A ``tp.DependencyGraph`` holds autograd nodes and cannot be deep-copied: build one per model copy.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from amc.errors import ConfigError
from amc.models.heads import Detect
from amc.pruning.space import PruningSpace


def head_output_convs(model: nn.Module) -> list[nn.Conv2d]:
    """The detection head's output convolutions (``m`` and, for IAuxDetect, ``m2``): never pruned."""
    head = _head(model)
    return [conv for convs in head.output_convs() for conv in convs]


def implicit_parameters(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """The head's implicit-layer parameters as Torch-Pruning's ``unwrapped_parameters`` (pruned along dim 1)."""
    head = _head(model)
    return [(layer.implicit, 1) for name in ("ia", "im") for layer in getattr(head, name, ())]


def example_size(model: nn.Module) -> int:
    """The smallest square image the model accepts (its largest stride): enough to trace the graph."""
    return max(32, int(max(_head(model).level_strides)))


def build_dependency_graph(model: nn.Module, img_size: int | None = None,
                           example_inputs: torch.Tensor | None = None) -> tp.DependencyGraph:
    """Trace ``model`` (an unfused :class:`~amc.models.yolo.YOLOv7`) into a Torch-Pruning dependency graph.

    Args:
        model: the model; its weights, modes (train/eval) and ``requires_grad`` flags are left as they were.
        img_size: side of the random example image (default: :func:`example_size`); the graph does not depend
            on it, so a small one keeps tracing fast.
        example_inputs: an explicit example batch instead.

    Raises:
        ConfigError: the model is fused.
    """
    if getattr(model, "fused", False) or getattr(_head(model), "folded", False):
        raise ConfigError("this model is fused (BatchNorm folded); build the dependency graph of the unfused "
                          "model and fuse after pruning")
    if example_inputs is None:
        size = img_size or example_size(model)
        param = next(model.parameters())
        example_inputs = torch.randn(1, int(getattr(model.arch, "ch", 3)), size, size, dtype=param.dtype,
                                     device=param.device)
    head = _head(model)
    modes = [(m, m.training) for m in model.modules()]
    frozen = [p for p in model.parameters() if not p.requires_grad]

    def forward_fn(m: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        head.train()  # every output, auxiliary heads included (Torch-Pruning has put the model in eval mode)
        return m(x)

    try:
        for p in frozen:  # tracing follows autograd: every weight must be part of the graph
            p.requires_grad_(True)
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=forward_fn,
                unwrapped_parameters=implicit_parameters(model), verbose=False)
    finally:
        for p in frozen:
            p.requires_grad_(False)
        for m, training in modes:
            m.training = training


def root_conv(model: nn.Module, space: PruningSpace, unit: int) -> nn.Conv2d:
    """The convolution whose output channels are unit ``unit``'s first producer."""
    u = space.units[unit]
    block = model.get_submodule(u.name)
    return block.rbr_dense[0] if u.kind == "RepConv" else block.conv


def unit_groups(model: nn.Module, space: PruningSpace, DG: tp.DependencyGraph | None = None) -> list[tp.Group]:
    """One DepGraph group per unit of ``space``, in unit order, over all the unit's channels.

    Each group is rooted at the output channels of the unit's first producer (``<path>.conv``, or
    ``<path>.rbr_dense.0`` for a RepConv), so ``group[0]`` is that convolution and every score a Torch-Pruning
    importance returns for the group is indexed by the unit's channels.

    Args:
        model: the unfused model ``space`` was built from.
        space: its pruning space.
        DG: its dependency graph (built with :func:`build_dependency_graph` when not given).

    Raises:
        ConfigError: the model is fused.
        RuntimeError: a group would cut a head output convolution (graph and space disagree).
    """
    if DG is None:
        DG = build_dependency_graph(model)
    protected = set(head_output_convs(model))
    groups = []
    for u in range(len(space)):
        conv = root_conv(model, space, u)
        group = DG.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
        for item in group:
            if item.dep.target.module in protected and DG.is_out_channel_pruning_fn(item.dep.handler):
                raise RuntimeError(f"the DepGraph group of unit {space.units[u].name} cuts the outputs of "
                                   f"{DG._module2name.get(item.dep.target.module)}")
        groups.append(group)
    return groups


def group_members(model: nn.Module, DG: tp.DependencyGraph, group: tp.Group) -> dict[tuple[str, str], set[int]]:
    """What a group touches: ``{(module or parameter name, 'out' | 'in' | 'ch'): channel indices}``.

    Convolutions are ``out`` (output channels) or ``in`` (input channels); BatchNorm layers and the implicit
    parameters have a single channel axis (``ch``). Graph-only nodes (concat, add, ...) are left out.
    """
    modules = {id(m): name for name, m in model.named_modules()}
    params = {id(p): name for name, p in model.named_parameters()}
    out: dict[tuple[str, str], set[int]] = {}
    for item in group:
        target = item.dep.target.module
        if isinstance(target, nn.Parameter):
            key = (params[id(target)], "ch")
        elif isinstance(target, nn.Conv2d):
            key = (modules[id(target)], "out" if DG.is_out_channel_pruning_fn(item.dep.handler) else "in")
        elif isinstance(target, nn.modules.batchnorm._BatchNorm):
            key = (modules[id(target)], "ch")
        else:
            continue
        out.setdefault(key, set()).update(int(i) for i in item.idxs)
    return out


def _head(model: nn.Module) -> Detect:
    head = model.model[-1]
    if not isinstance(head, Detect):
        raise ConfigError(f"the last layer of the model is a {type(head).__name__}, not a detection head")
    return head

