"""Analytic parameter and FLOP counts of a YOLOv7 architecture, per layer, at any input size.

No model is built and no tensor is run: costs follow from the widths in the
:class:`~amc.models.arch.Architecture`, so pruning policies can be costed at every search step.

Convention (that of the official ``model_info``, which runs ``thop``): GFLOPs = 2 x multiply-accumulates,
where a convolution costs ``out_elements x in_channels / groups x k x k`` (its bias is free), a BatchNorm
``4 x elements`` (thop's affine normalisation), a nearest upsample ``out_elements``, and activations,
max-pools, concatenations, sums and implicit layers nothing. Until fused, the auxiliary heads of
IAuxDetect count too (the official eval forward runs them); a fused model skips them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from amc.models.arch import HEAD_MODULES, Architecture, LayerSpec

BN_MACS_PER_ELEMENT = 4


class HasGflops:
    """Mixin: ``gflops`` (2 x MACs / 1e9, the thop convention) of anything with a ``macs`` count."""

    macs: int

    @property
    def gflops(self) -> float:
        return 2 * self.macs / 1e9


@dataclass
class LayerCost(HasGflops):
    """Cost of one layer at a given input size."""

    index: int
    module: str
    c_in: int
    c_out: int
    out_hw: tuple[int, int]
    params: int
    macs: int


@dataclass
class ModelCost:
    """Per-layer and total cost of an architecture at ``img_size`` (height, width)."""

    layers: list[LayerCost]
    img_size: tuple[int, int]
    fused: bool

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def gflops(self) -> float:
        return 2 * self.macs / 1e9

    def to_dict(self) -> dict:
        return {"params": self.params, "gflops": self.gflops, "img_size": list(self.img_size), "fused": self.fused,
                "layers": [{**asdict(c), "gflops": c.gflops} for c in self.layers]}


class _Tally:
    """Accumulates params and MACs of the operations of one layer."""

    def __init__(self, fused: bool) -> None:
        self.fused, self.params, self.macs = fused, 0, 0

    def conv(self, c1: int, c2: int, k: int, s: int, p: int, hw: tuple[int, int], g: int = 1,
             bias: bool = False) -> tuple[int, int]:
        ho, wo = ((x + 2 * p - k) // s + 1 for x in hw)
        self.params += c2 * (c1 // g) * k * k + (c2 if bias else 0)
        self.macs += c2 * ho * wo * (c1 // g) * k * k
        return ho, wo

    def bn(self, c: int, hw: tuple[int, int]) -> None:
        self.params += 2 * c
        self.macs += BN_MACS_PER_ELEMENT * c * hw[0] * hw[1]

    def conv_bn(self, c1: int, c2: int, k: int, s: int, hw: tuple[int, int], p: int | None = None,
                g: int = 1) -> tuple[int, int]:
        """An amc/official ``Conv`` block; fused it is one biased convolution."""
        out = self.conv(c1, c2, k, s, k // 2 if p is None else p, hw, g, bias=self.fused)
        if not self.fused:
            self.bn(c2, out)
        return out


def _pool(hw: tuple[int, int], k: int, s: int, p: int) -> tuple[int, int]:
    return tuple((x + 2 * p - k) // s + 1 for x in hw)  # type: ignore[return-value]


def _layer_cost(layer: LayerSpec, c_in: list[int], hw_in: list[tuple[int, int]], arch: Architecture,
                t: _Tally) -> tuple[int, int]:
    """Adds one layer's operations to ``t``; returns its output (height, width)."""
    a, c1, hw = layer.args, c_in[0], hw_in[0]
    m = layer.module
    if m == "Conv":
        return t.conv_bn(c1, a["c2"], a["k"], a["s"], hw, a.get("p"), a.get("g", 1))
    if m == "RepConv":
        s = a.get("s", 1)
        if t.fused:
            return t.conv(c1, a["c2"], 3, s, 1, hw, bias=True)
        out = t.conv(c1, a["c2"], 3, s, 1, hw)
        t.bn(a["c2"], out)
        t.conv(c1, a["c2"], 1, s, 0, hw)
        t.bn(a["c2"], out)
        if a.get("identity"):
            t.bn(c1, out)
        return out
    if m == "DownC":
        k = a.get("k", 2)
        t.conv_bn(c1, a["cv1"], 1, 1, hw)
        out = t.conv_bn(a["cv1"], a["cv2"], 3, k, hw)
        t.conv_bn(c1, a["cv3"], 1, 1, _pool(hw, k, k, 0))
        return out
    if m == "SPPCSPC":
        ks = a.get("k", (5, 9, 13))
        t.conv_bn(c1, a["cv1"], 1, 1, hw)
        t.conv_bn(c1, a["cv2"], 1, 1, hw)
        t.conv_bn(a["cv1"], a["cv3"], 3, 1, hw)
        t.conv_bn(a["cv3"], a["cv4"], 1, 1, hw)
        t.conv_bn((len(ks) + 1) * a["cv4"], a["cv5"], 1, 1, hw)
        t.conv_bn(a["cv5"], a["cv6"], 3, 1, hw)
        return t.conv_bn(a["cv6"] + a["cv2"], a["cv7"], 1, 1, hw)
    if m == "MP":
        return _pool(hw, a.get("k", 2), a.get("k", 2), 0)
    if m == "SP":
        return _pool(hw, a.get("k", 3), a.get("s", 1), a.get("k", 3) // 2)
    if m == "ReOrg":
        return ((hw[0] + 1) // 2, (hw[1] + 1) // 2)
    if m == "Upsample":
        f = a["scale_factor"]
        out = (int(hw[0] * f), int(hw[1] * f))
        t.macs += c1 * out[0] * out[1]
        return out
    if m in HEAD_MODULES:
        nl, no = len(arch.anchors), (arch.nc + 5) * (len(arch.anchors[0]) // 2)
        aux = m == "IAuxDetect" and not t.fused
        for i, (c, size) in enumerate(zip(c_in, hw_in)):
            if i < nl or aux:
                t.conv(c, no, 1, 1, 0, size, bias=True)
            elif m == "IAuxDetect":  # auxiliary heads: parameters stay in a fused model, compute does not
                t.params += no * c + no
        if m in ("IDetect", "IAuxDetect"):  # implicit layers: parameters, no counted compute
            t.params += sum(c_in[:nl]) + nl * no
        return (0, 0)
    return hw  # Concat, Shortcut: same size as their inputs


def count_architecture(arch: Architecture, img_size: int | tuple[int, int] = 640, fused: bool = False) -> ModelCost:
    """Parameters and FLOPs of every layer of ``arch`` for one image of ``img_size`` (int = square).

    Args:
        arch: the architecture to cost.
        img_size: input height and width in pixels.
        fused: cost the deployed form (BatchNorm folded, RepConv re-parameterized, no auxiliary compute).
    """
    hw0 = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
    channels = arch.channels()
    sizes: list[tuple[int, int]] = []
    costs: list[LayerCost] = []
    for i, layer in enumerate(arch.layers):
        srcs = layer.sources(i)
        c_in = [arch.ch if j < 0 else channels[j] for j in srcs]
        hw_in = [hw0 if j < 0 else sizes[j] for j in srcs]
        t = _Tally(fused)
        out = _layer_cost(layer, c_in, hw_in, arch, t)
        for _ in range(int(layer.args.get("n", 1)) - 1):  # chained copies read the previous copy's output
            out = _layer_cost(layer, [channels[i]], [out], arch, t)
        sizes.append(out)
        costs.append(LayerCost(i, layer.module, sum(c_in), channels[i], out, t.params, t.macs))
    return ModelCost(costs, hw0, fused)
