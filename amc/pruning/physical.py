"""Physical pruning: a new, smaller :class:`~amc.models.yolo.YOLOv7` holding the kept slices of the weights.

The pruned model is an ordinary amc model (its architecture lists the new widths): it runs, fuses, saves and
loads in amc's format and exports to ONNX like any other.
"""

from __future__ import annotations

import torch

from amc.models.yolo import YOLOv7
from amc.pruning.selection import ChannelSelection, segment_indices
from amc.pruning.space import PruningSpace

_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def slicing_plan(space: PruningSpace, selection: ChannelSelection) -> dict[str, tuple[torch.Tensor | None, ...]]:
    """For every tensor that shrinks: the indices to keep along dim 0 (outputs) and dim 1 (inputs)."""
    keep = selection.keep
    plan: dict[str, tuple[torch.Tensor | None, ...]] = {}

    def conv_bn(conv: str, bn: str, out: torch.Tensor, inp: torch.Tensor) -> None:
        plan[f"{conv}.weight"] = (out, inp)
        for t in _BN_TENSORS:
            plan[f"{bn}.{t}"] = (out,)

    for site in space.sites:
        out = segment_indices(space, [(site.slot, space.slot_width[site.slot])], keep)
        inp = segment_indices(space, site.inputs, keep)
        if site.kind == "RepConv":
            conv_bn(f"{site.path}.rbr_dense.0", f"{site.path}.rbr_dense.1", out, inp)
            conv_bn(f"{site.path}.rbr_1x1.0", f"{site.path}.rbr_1x1.1", out, inp)
            for t in _BN_TENSORS:  # the identity branch normalizes the input channels (merged with the output)
                plan[f"{site.path}.rbr_identity.{t}"] = (inp,)
        else:
            conv_bn(f"{site.path}.conv", f"{site.path}.bn", out, inp)
    for head in space.head_inputs:
        inp = segment_indices(space, head.inputs, keep)
        plan[f"{head.conv_path}.weight"] = (None, inp)
        if head.implicit_path:
            plan[f"{head.implicit_path}.implicit"] = (None, inp)
    return plan


@torch.no_grad()
def prune_model(model: YOLOv7, space: PruningSpace, selection: ChannelSelection) -> YOLOv7:
    """A physically smaller copy of ``model`` keeping ``selection``'s channels (``model`` is not modified).

    Args:
        model: the unfused model ``space`` was built from.
        space: its pruning space.
        selection: kept channels per unit (and re-fitted weights), e.g. from a criterion.
    """
    if len(selection.keep) != len(space):
        raise ValueError(f"selection has {len(selection.keep)} units, the space {len(space)}")
    arch = space.pruned_architecture(selection.widths)
    pruned = YOLOv7(arch, model.names, initialize=False)
    state = model.state_dict()
    state.update({k: v.to(state[k].dtype) for k, v in selection.weights.items()})
    plan = slicing_plan(space, selection)
    new_state = {}
    for name, tensor in state.items():
        for dim, idx in enumerate(plan.get(name, ())):
            if idx is not None:
                tensor = tensor.index_select(dim, idx.to(tensor.device))
        new_state[name] = tensor.clone()
    pruned.load_state_dict(new_state, strict=True)
    pruned.train(model.training)
    reference = next(model.parameters())
    return pruned.to(device=reference.device, dtype=reference.dtype)

