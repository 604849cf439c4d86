"""From a policy (ratios) to a physically smaller model: kept counts -> channels (criterion) -> slicing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from amc.models.yolo import YOLOv7
from amc.pruning.criteria import Criterion, make_criterion
from amc.pruning.physical import prune_model
from amc.pruning.selection import ChannelSelection
from amc.pruning.space import PruningSpace


def select_channels(model: YOLOv7, space: PruningSpace, ratios: Sequence[float], criterion: Criterion | str = "l1",
                    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None) -> ChannelSelection:
    """The channels ``criterion`` keeps in every unit under ``ratios`` (validated against ``space`` first)."""
    kept = space.kept_channels(ratios)
    crit = make_criterion(criterion) if isinstance(criterion, str) else criterion
    crit.prepare(model, space, batches)
    return crit.select([int(k) for k in kept])


def apply_policy(model: YOLOv7, space: PruningSpace, ratios: Sequence[float], criterion: Criterion | str = "l1",
                 batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[YOLOv7, ChannelSelection]:
    """A physically pruned copy of ``model`` and the selection that made it.

    The pruned model's counted cost is checked against the analytic cost of the policy, so a mismatch between
    the pruning space and the network can never go unnoticed.
    """
    selection = select_channels(model, space, ratios, criterion, batches)
    pruned = prune_model(model, space, selection)
    counted, analytic = pruned.cost(space.img_size), space.cost(selection.widths)
    if (counted.params, counted.macs) != (analytic.params, analytic.macs):
        raise RuntimeError(f"pruned model costs {counted.params} params / {counted.macs} MACs but the policy "
                           f"was costed at {analytic.params} / {analytic.macs}: please report this bug")
    return pruned, selection
