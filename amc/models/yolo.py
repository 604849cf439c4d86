"""The YOLOv7 network, built from an :class:`~amc.models.arch.Architecture`.

The layers sit in ``self.model`` (an ``nn.Sequential``) at their cfg index, so parameter names are the
official ones (``model.0.conv.weight`` ... ``model.77.ia.0.implicit``) and official state_dicts load with
``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from amc.models import modules as M
from amc.models.arch import HEAD_MODULES, Architecture, LayerSpec, output_channels
from amc.models.flops import ModelCost, count_architecture
from amc.models.heads import HEADS, Detect

Output = list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]


def build_layer(layer: LayerSpec, c_in: list[int], arch: Architecture, strides: list[float]) -> nn.Module:
    """Instantiate one layer given its input widths (and, for the head, the level strides).

    A repeated layer (``args['n']`` > 1) is an ``nn.Sequential`` of copies, each reading the previous one.
    """
    n = int(layer.args.get("n", 1))
    if n > 1:
        c2 = output_channels(layer, c_in)
        return nn.Sequential(*(_build_one(layer, c_in if j == 0 else [c2], arch, strides) for j in range(n)))
    return _build_one(layer, c_in, arch, strides)


def _build_one(layer: LayerSpec, c_in: list[int], arch: Architecture, strides: list[float]) -> nn.Module:
    a, c1 = layer.args, c_in[0]
    if layer.module == "Conv":
        return M.Conv(c1, a["c2"], a["k"], a["s"], a.get("p"), a.get("g", 1), a.get("act", "SiLU"))
    if layer.module == "RepConv":
        return M.RepConv(c1, a["c2"], a.get("s", 1), a.get("act", "SiLU"), bool(a.get("identity", False)))
    if layer.module == "DownC":
        return M.DownC(c1, a["cv1"], a["cv2"], a["cv3"], a.get("k", 2))
    if layer.module == "SPPCSPC":
        return M.SPPCSPC(c1, *(a[f"cv{j}"] for j in range(1, 8)), k=a.get("k", (5, 9, 13)))
    if layer.module == "MP":
        return M.MP(a.get("k", 2))
    if layer.module == "SP":
        return M.SP(a.get("k", 3), a.get("s", 1))
    if layer.module == "ReOrg":
        return M.ReOrg()
    if layer.module == "Concat":
        return M.Concat(a.get("d", 1))
    if layer.module == "Shortcut":
        return M.Shortcut()
    if layer.module == "Upsample":
        return nn.Upsample(None, a["scale_factor"], a.get("mode", "nearest"))
    if layer.module in HEAD_MODULES:
        return HEADS[layer.module](arch.nc, arch.anchors, c_in, strides)
    raise ValueError(f"unknown module {layer.module!r}")


class YOLOv7(nn.Module):
    """A YOLOv7 detector (any official cfg, or a pruned variant with irregular widths).

    Args:
        arch: the architecture; kept as ``self.arch`` and saved with the weights.
        names: class names (defaults to ``'0'``, ``'1'`` ...).
        initialize: give a fresh model the official bias priors of the head (skip when loading weights).

    ``forward`` returns what the official model returns: raw per-level maps in training mode, and
    ``(predictions, raw lead maps)`` in eval mode.
    """

    def __init__(self, arch: Architecture, names: list[str] | None = None, initialize: bool = True) -> None:
        super().__init__()
        self.arch = arch
        self.names = list(names) if names is not None else [str(i) for i in range(arch.nc)]
        if len(self.names) != arch.nc:
            raise ValueError(f"{len(self.names)} class names for a model of {arch.nc} classes")
        channels, strides = arch.channels(), arch.head_strides()
        layers, self.sources, self.multi_input = [], [], []
        for i, layer in enumerate(arch.layers):
            srcs = layer.sources(i)
            c_in = [arch.ch if j < 0 else channels[j] for j in srcs]
            layers.append(build_layer(layer, c_in, arch, strides))
            self.sources.append(srcs)
            self.multi_input.append(isinstance(layer.from_, list))
        self.model = nn.Sequential(*layers)
        # Outputs that a later layer reads out of order; the others are dropped as soon as consumed.
        self.save = sorted({j for i, s in enumerate(self.sources) for j in s if j >= 0 and j != i - 1})
        if initialize:
            self.head.initialize_biases()

    @property
    def head(self) -> Detect:
        return self.model[-1]  # type: ignore[return-value]

    @property
    def nc(self) -> int:
        return self.arch.nc

    @property
    def stride(self) -> torch.Tensor:
        return self.head.stride

    @property
    def fused(self) -> bool:
        """True once :meth:`fuse` has folded BatchNorm, RepConv branches and implicit layers."""
        return any(getattr(m, "fused", False) for m in self.modules() if isinstance(m, (M.Conv, M.RepConv)))

    def cost(self, img_size: int | tuple[int, int] = 640) -> ModelCost:
        """Parameters and FLOPs per layer at ``img_size`` (counted on the architecture, fused or not)."""
        return count_architecture(self.arch, img_size, fused=self.fused)

    def forward(self, x: torch.Tensor) -> Output:
        saved: dict[int, torch.Tensor] = {}
        image = x
        for i, (layer, srcs) in enumerate(zip(self.model, self.sources)):
            inputs = [x if j == i - 1 else image if j < 0 else saved[j] for j in srcs]
            x = layer(inputs if self.multi_input[i] else inputs[0])
            if i in self.save:
                saved[i] = x
        return x

    @torch.no_grad()
    def fuse(self) -> "YOLOv7":
        """Fold every BatchNorm into its convolution, re-parameterize RepConv, fold implicit layers (in place).

        The fused model gives the same eval-mode outputs (to float rounding) and is what ONNX export and
        latency measurements use. Returns ``self``.
        """
        for m in self.modules():
            if isinstance(m, (M.Conv, M.RepConv, Detect)):
                m.fuse()
        return self
