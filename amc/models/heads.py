"""YOLOv7 detection heads: Detect, IDetect (implicit layers) and IAuxDetect (implicit + auxiliary heads).

Outputs follow the official contract exactly: in training mode the list of raw per-level maps
``(batch, anchors, ny, nx, 5 + nc)`` (IAuxDetect: lead levels, then auxiliary levels); in eval mode the tuple
``(decoded predictions (batch, N, xywh + obj + classes), raw lead maps)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from amc.models.modules import ImplicitA, ImplicitM


class Detect(nn.Module):
    """Plain YOLO head: one 1x1 convolution per level, then box decoding against the anchors.

    Args:
        nc: number of classes.
        anchors: per level, flat ``[w0, h0, w1, h1, ...]`` anchor sizes in pixels.
        ch: input widths, one per level (IAuxDetect: lead levels then auxiliary levels).
        strides: downsampling factor of each level.
    """

    def __init__(self, nc: int, anchors: list[list[float]], ch: list[int], strides: list[float]) -> None:
        super().__init__()
        self.nc, self.no = nc, nc + 5
        self.nl, self.na = len(anchors), len(anchors[0]) // 2
        pixels = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        area = [a[0] * a[1] for a in (anchors[0][:2], anchors[-1][-2:])]  # first and last anchor
        if (area[1] - area[0]) * (strides[-1] - strides[0]) < 0:  # sizes must grow with the stride
            pixels = pixels.flip(0)  # as the official build's check_anchor_order does
        stride = torch.tensor(strides, dtype=torch.float32)
        # Buffers as in official checkpoints: anchors in units of their level's stride, and in pixels.
        self.register_buffer("anchors", pixels / stride.view(-1, 1, 1))
        self.register_buffer("anchor_grid", pixels.clone().view(self.nl, 1, -1, 1, 1, 2))
        self.register_buffer("stride", stride, persistent=False)
        self.level_strides = [float(x) for x in strides]  # host copy: usable without a device sync
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch[: self.nl])
        self.grid: list[torch.Tensor] = [torch.zeros(1)] * self.nl
        self.folded = False  # True once implicit layers are folded into ``m`` (IDetect, IAuxDetect)

    def level(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Raw output of lead level ``i`` before reshaping."""
        return self.m[i](x)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        x = list(x)
        z = []
        for i in range(self.nl):
            x[i] = self._split(self.level(i, x[i]))
            if not self.training:
                z.append(self.decode(i, x[i]))
        self.auxiliary(x)
        return x if self.training else (torch.cat(z, 1), x[: self.nl])

    def auxiliary(self, x: list[torch.Tensor]) -> None:
        """Hook for heads with extra training-only outputs (IAuxDetect)."""

    def _split(self, p: torch.Tensor) -> torch.Tensor:
        bs, _, ny, nx = p.shape  # (bs, na * no, ny, nx) -> (bs, na, ny, nx, no)
        return p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()

    def decode(self, i: int, p: torch.Tensor) -> torch.Tensor:
        """Boxes in pixels (centre x, y, width, height), objectness and class scores of level ``i``."""
        bs, _, ny, nx, _ = p.shape
        if self.grid[i].shape[2:4] != p.shape[2:4] or self.grid[i].device != p.device:
            self.grid[i] = self.make_grid(nx, ny).to(p.device)
        y = p.sigmoid()
        y[..., 0:2] = (y[..., 0:2] * 2.0 - 0.5 + self.grid[i]) * self.stride[i]
        y[..., 2:4] = (y[..., 2:4] * 2) ** 2 * self.anchor_grid[i]
        return y.view(bs, -1, self.no)

    @staticmethod
    def make_grid(nx: int, ny: int) -> torch.Tensor:
        yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        return torch.stack((xv, yv), 2).view((1, 1, ny, nx, 2)).float()

    def initialize_biases(self) -> None:
        """Prior objectness (about 8 objects per 640 image) and class probabilities for a fresh model."""
        for convs in self.output_convs():
            for conv, s in zip(convs, self.level_strides):
                b = conv.bias.detach().view(self.na, -1)
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:] += math.log(0.6 / (self.nc - 0.99))

    def output_convs(self) -> list[nn.ModuleList]:
        return [self.m]

    def fuse(self) -> None:
        """Nothing to fold in a plain head."""


class IDetect(Detect):
    """Head with YOLOR implicit layers: ``im * conv(x + ia)``; :meth:`fuse` folds both into the conv."""

    def __init__(self, nc: int, anchors: list[list[float]], ch: list[int], strides: list[float]) -> None:
        super().__init__(nc, anchors, ch, strides)
        self.ia = nn.ModuleList(ImplicitA(c) for c in ch[: self.nl])
        self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in ch[: self.nl])

    def level(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.folded:
            return self.m[i](x)
        return self.im[i](self.m[i](self.ia[i](x)))

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold ImplicitA into the bias (``b += W @ ia``) and ImplicitM into weight and bias (scale rows).

        The implicit parameters stay in the module, unused, as in the official fused model, so parameter
        counts and state_dict keys of fused models match the official ones.
        """
        if self.folded:
            return
        for conv, ia, im in zip(self.m, self.ia, self.im):
            w = conv.weight.view(conv.out_channels, -1)
            conv.bias += (w @ ia.implicit.view(-1, 1)).view(-1)
            scale = im.implicit.view(-1)
            conv.bias *= scale
            conv.weight *= scale.view(-1, 1, 1, 1)
        self.folded = True


class IAuxDetect(IDetect):
    """IDetect on the lead levels plus plain auxiliary heads (``m2``) on extra inputs, used in training only.

    In eval mode the auxiliary heads are skipped: they never contribute to the predictions.
    """

    def __init__(self, nc: int, anchors: list[list[float]], ch: list[int], strides: list[float]) -> None:
        super().__init__(nc, anchors, ch, strides)
        self.m2 = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch[self.nl:])
        for name in ("ia", "im"):  # official registration order is m, m2, ia, im: keep state_dicts in step
            self._modules[name] = self._modules.pop(name)

    def auxiliary(self, x: list[torch.Tensor]) -> None:
        if self.training:
            for i in range(self.nl):
                x[self.nl + i] = self._split(self.m2[i](x[self.nl + i]))

    def output_convs(self) -> list[nn.ModuleList]:
        return [self.m, self.m2]


HEADS: dict[str, type[Detect]] = {"Detect": Detect, "IDetect": IDetect, "IAuxDetect": IAuxDetect}
