"""Which channels a policy keeps: the output of a criterion, consumed by the physical slicer and the masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from amc.pruning.space import PruningSpace, Segment


@dataclass
class ChannelSelection:
    """The channels each unit keeps, plus any weights a criterion re-fitted.

    Attributes:
        keep: per unit (in space order), the sorted indices of the kept channels.
        weights: parameter name -> new full-size value (same shape as in the unpruned model); e.g. the
            least-squares criterion re-fits the convolutions that read pruned channels. Entries for removed
            channels are never read, so both the slicer and the masks give the same model.
    """

    keep: list[torch.Tensor]
    weights: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def widths(self) -> list[int]:
        return [len(k) for k in self.keep]


def top_channels(scores: Sequence[torch.Tensor], kept: Sequence[int]) -> list[torch.Tensor]:
    """Per unit, the indices (sorted) of the ``kept[u]`` highest scores; ties go to the lower index."""
    out = []
    for s, k in zip(scores, kept):
        s = s.detach().double().cpu()
        order = torch.argsort(-s, stable=True)  # stable: equal scores keep the earlier channel
        out.append(torch.sort(order[: int(k)]).values)
    return out


def segment_indices(space: PruningSpace, segments: Sequence[Segment], keep: Sequence[torch.Tensor]) -> torch.Tensor:
    """Indices, in the unpruned layout, of the channels of ``segments`` that survive ``keep``."""
    parts, offset = [], 0
    for slot, channels in segments:
        u = space.slot_unit.get(slot, -1)
        idx = torch.arange(channels) if u < 0 else keep[u].to(torch.long)
        parts.append(idx + offset)
        offset += channels
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def segment_mask(space: PruningSpace, segments: Sequence[Segment], keep: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 0/1 vector over the unpruned channels of ``segments``: 1 where the channel survives ``keep``."""
    total = sum(c for _, c in segments)
    mask = torch.zeros(total)
    mask[segment_indices(space, segments, keep)] = 1.0
    return mask
