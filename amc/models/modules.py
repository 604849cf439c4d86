"""The building blocks of the official YOLOv7 cfgs, with every width explicit.

Attribute names (``conv``, ``bn``, ``rbr_dense``, ``cv1`` ...) equal the official ones, so an official
state_dict loads into these modules with ``strict=True``. Unlike the official classes, each block takes its
inner widths as arguments (a pruned SPPCSPC has seven independent widths) and fuses itself in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from amc.models.arch import activation_slope

#: BatchNorm settings of every official model (set by the official ``initialize_weights``).
BN_EPS, BN_MOMENTUM = 1e-3, 0.03


def make_activation(act: str) -> nn.Module:
    """The module for a canonical activation string from :func:`amc.models.arch.parse_activation`."""
    if act.startswith("LeakyReLU("):
        return nn.LeakyReLU(activation_slope(act), inplace=True)
    simple = {"SiLU": nn.SiLU, "ReLU": nn.ReLU, "ReLU6": nn.ReLU6, "Hardswish": nn.Hardswish, "Mish": nn.Mish,
              "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "Identity": nn.Identity}
    return simple[act]()


def batch_norm(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


def autopad(k: int, p: int | None = None) -> int:
    """'Same' padding for odd kernels unless given."""
    return k // 2 if p is None else p


@torch.no_grad()
def fold_batch_norm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of a convolution followed by ``bn`` (in eval mode) as one convolution."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b = bn.bias - bn.running_mean * scale
    if bias is not None:
        b = b + bias * scale
    return w, b


def conv_with_bias(template: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A biased copy of ``template``'s geometry holding the given (fused) weight and bias."""
    conv = nn.Conv2d(template.in_channels, template.out_channels, template.kernel_size, template.stride,
                     template.padding, groups=template.groups, bias=True).to(weight.device, weight.dtype)
    conv.weight.data.copy_(weight)
    conv.bias.data.copy_(bias)
    return conv


class Conv(nn.Module):
    """Convolution -> BatchNorm -> activation (BatchNorm folded into the convolution after :meth:`fuse`)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 act: str = "SiLU") -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn: nn.Module = batch_norm(c2)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @property
    def fused(self) -> bool:
        return not isinstance(self.bn, nn.BatchNorm2d)

    def fuse(self) -> None:
        if self.fused:
            return
        w, b = fold_batch_norm(self.conv.weight, self.conv.bias, self.bn)
        self.conv = conv_with_bias(self.conv, w, b)
        self.bn = nn.Identity()  # no parameters: the state_dict matches the official fused Conv


class RepConv(nn.Module):
    """RepVGG block: 3x3+BN, 1x1+BN and (when shapes allow) an identity BN, summed; one 3x3 conv when fused.

    ``identity`` is explicit because a pruned block may end up with equal in/out widths by chance, which
    must not add an identity branch the trained weights never had.
    """

    def __init__(self, c1: int, c2: int, s: int = 1, act: str = "SiLU", identity: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels = c1, c2
        self.act = make_activation(act)
        if identity and (c1 != c2 or s != 1):
            raise ValueError(f"RepConv identity branch needs equal widths and stride 1, got {c1}->{c2}, s={s}")
        self.rbr_identity = batch_norm(c1) if identity else None
        self.rbr_dense = nn.Sequential(nn.Conv2d(c1, c2, 3, s, 1, bias=False), batch_norm(c2))
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(c1, c2, 1, s, 0, bias=False), batch_norm(c2))
        self.rbr_reparam: nn.Conv2d | None = None

    @property
    def fused(self) -> bool:
        return self.rbr_reparam is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rbr_reparam is not None:
            return self.act(self.rbr_reparam(x))
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return self.act(self.rbr_dense(x) + self.rbr_1x1(x) + id_out)

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single 3x3 kernel and bias equal to the sum of the three branches."""
        w, b = fold_batch_norm(self.rbr_dense[0].weight, None, self.rbr_dense[1])
        w1, b1 = fold_batch_norm(self.rbr_1x1[0].weight, None, self.rbr_1x1[1])
        w = w + F.pad(w1, [1, 1, 1, 1])
        b = b + b1
        if self.rbr_identity is not None:
            eye = torch.zeros_like(w)
            eye[torch.arange(self.in_channels), torch.arange(self.in_channels), 1, 1] = 1.0
            wi, bi = fold_batch_norm(eye, None, self.rbr_identity)
            w, b = w + wi, b + bi
        return w, b

    def fuse(self) -> None:
        if self.fused:
            return
        w, b = self.equivalent_kernel_bias()
        self.rbr_reparam = conv_with_bias(self.rbr_dense[0], w, b)
        # The official fused block drops the branches; so do we, so state_dicts stay interchangeable.
        self.rbr_dense = self.rbr_1x1 = self.rbr_identity = None


class DownC(nn.Module):
    """Downsampling by a strided 3x3 branch and a max-pool branch, concatenated (``cv2`` then ``cv3``)."""

    def __init__(self, c1: int, cv1: int, cv2: int, cv3: int, k: int = 2) -> None:
        super().__init__()
        self.cv1 = Conv(c1, cv1, 1, 1)
        self.cv2 = Conv(cv1, cv2, 3, k)
        self.cv3 = Conv(c1, cv3, 1, 1)
        self.mp = nn.MaxPool2d(kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.cv2(self.cv1(x)), self.cv3(self.mp(x))), dim=1)


class SPPCSPC(nn.Module):
    """Spatial pyramid pooling in a cross-stage-partial block; ``cvN`` are the seven inner widths."""

    def __init__(self, c1: int, cv1: int, cv2: int, cv3: int, cv4: int, cv5: int, cv6: int, cv7: int,
                 k: tuple[int, ...] | list[int] = (5, 9, 13)) -> None:
        super().__init__()
        self.cv1 = Conv(c1, cv1, 1, 1)
        self.cv2 = Conv(c1, cv2, 1, 1)
        self.cv3 = Conv(cv1, cv3, 3, 1)
        self.cv4 = Conv(cv3, cv4, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)
        self.cv5 = Conv((len(k) + 1) * cv4, cv5, 1, 1)
        self.cv6 = Conv(cv5, cv6, 3, 1)
        self.cv7 = Conv(cv6 + cv2, cv7, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        return self.cv7(torch.cat((y1, self.cv2(x)), dim=1))


class MP(nn.Module):
    """Max-pool with stride equal to its kernel (halves the feature map)."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class SP(nn.Module):
    """Size-preserving max-pool (the pyramid pools of yolov7-tiny)."""

    def __init__(self, k: int = 3, s: int = 1) -> None:
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=s, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class ReOrg(nn.Module):
    """Space-to-depth: (b, c, h, w) -> (b, 4c, h/2, w/2), in the official channel order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


class Concat(nn.Module):
    """Concatenation of several layers' outputs along channels."""

    def __init__(self, d: int = 1) -> None:
        super().__init__()
        self.d = d

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class Shortcut(nn.Module):
    """Sum of two layers' outputs (the residuals of yolov7-e6e)."""

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return x[0] + x[1]


class ImplicitA(nn.Module):
    """Learned per-channel offset added to the head input (YOLOR implicit knowledge)."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=0.0, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit + x


class ImplicitM(nn.Module):
    """Learned per-channel scale applied to the head output (YOLOR implicit knowledge)."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=1.0, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit * x
