"""Box-format helpers shared by training (the loss) and evaluation (NMS)."""

from __future__ import annotations

import torch


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Centre-size boxes ``(..., 4)`` [cx, cy, w, h] to corner boxes [x1, y1, x2, y2], as a new tensor.

    The arithmetic (``cx -/+ w / 2``) is the official one, so converted boxes are bit-identical to it.
    """
    xy, half = boxes[..., 0:2], boxes[..., 2:4] / 2
    return torch.cat((xy - half, xy + half), dim=-1)
