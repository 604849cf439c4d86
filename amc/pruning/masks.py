"""The search's fast path: channel masks on the unpruned model instead of rebuilding a network per policy.

Each block that produces a unit's channels gets a forward hook that multiplies its output (after the
activation) by the unit's 0/1 mask; each detection-head input gets a pre-hook masking what the output
convolution reads (after the implicit addition, which would otherwise leak through). Removed channels are
then exactly zero wherever they are read, so the outputs equal those of the physically pruned model
(``tests/test_pruning_physical.py``). Applying a policy only rewrites the masks: no allocation, no rebuild.
"""

from __future__ import annotations

import torch
from torch import nn

from amc.models.yolo import YOLOv7
from amc.pruning.selection import ChannelSelection, segment_mask
from amc.pruning.space import PruningSpace


class ChannelMasks:
    """Masks the pruned channels of ``model`` in place (hooks stay until :meth:`remove`).

    Args:
        model: the unfused model the space was built from; it keeps its full shapes.
        space: its pruning space.
    """

    def __init__(self, model: YOLOv7, space: PruningSpace) -> None:
        if getattr(model, "_amc_channel_masks", None) is not None:
            raise RuntimeError("this model already has channel masks; remove() them before masking it again")
        self.model, self.space = model, space
        model._amc_channel_masks = self
        device = next(model.parameters()).device
        self.unit_masks = [torch.ones(1, u.channels, 1, 1, device=device) for u in space.units]
        self.head_masks = [torch.ones(1, sum(c for _, c in h.inputs), 1, 1, device=device)
                           for h in space.head_inputs]
        self._originals: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self._handles = []
        for site in space.sites:
            u = space.slot_unit[site.slot]
            if u >= 0:
                self._handles.append(modules[site.path].register_forward_hook(self._output_hook(self.unit_masks[u])))
        for head, mask in zip(space.head_inputs, self.head_masks):
            self._handles.append(modules[head.conv_path].register_forward_pre_hook(self._input_hook(mask)))

    @staticmethod
    def _output_hook(mask: torch.Tensor):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            # follow the activation's dtype and device (fp16 inference, a model moved after masking)
            return output * mask.to(device=output.device, dtype=output.dtype)
        return hook

    @staticmethod
    def _input_hook(mask: torch.Tensor):
        def hook(module: nn.Module, args: tuple) -> tuple:
            return (args[0] * mask.to(device=args[0].device, dtype=args[0].dtype),)
        return hook

    @torch.no_grad()
    def apply(self, selection: ChannelSelection) -> None:
        """Mask everything ``selection`` removes (and load its re-fitted weights, restoring earlier ones)."""
        self.restore_weights()
        for mask, keep in zip(self.unit_masks, selection.keep):
            mask.zero_()
            mask[0, keep.to(mask.device), 0, 0] = 1.0
        for mask, head in zip(self.head_masks, self.space.head_inputs):
            mask.copy_(segment_mask(self.space, head.inputs, selection.keep).view_as(mask))
        if selection.weights:
            params = dict(self.model.named_parameters())
            for name, value in selection.weights.items():
                self._originals[name] = params[name].detach().clone()
                params[name].copy_(value)

    @torch.no_grad()
    def restore_weights(self) -> None:
        """Put back any weights a previous selection replaced."""
        params = dict(self.model.named_parameters())
        for name, value in self._originals.items():
            params[name].copy_(value)
        self._originals.clear()

    def reset(self) -> None:
        """The unpruned model again (all channels on, original weights)."""
        self.restore_weights()
        for mask in self.unit_masks + self.head_masks:
            mask.fill_(1.0)

    def remove(self) -> None:
        """Detach the hooks and restore the weights; the model is as before."""
        self.reset()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.model._amc_channel_masks = None
