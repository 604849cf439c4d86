"""Fine-grained (unstructured) pruning: per-layer sparsity by weight magnitude, applied as zeroed weights.

Unlike channel pruning, fine-grained pruning keeps every tensor's shape and sets individual weights to
zero: a layer at sparsity ``r`` has its ``round(r x numel)`` smallest-magnitude weights zeroed. The
architecture does not change, so the gain is counted, not measured: :func:`nonzero_cost` counts
parameters and FLOPs in **non-zero** weights, under the convention of :mod:`amc.models.flops` (that of
the official ``model_info`` / thop), so a dense model costs exactly what
:func:`~amc.models.flops.count_architecture` says and every zeroed weight saves its parameter and one
multiply-accumulate per output position.

Which convolutions may be sparsified is given by :func:`finegrained_layers`: every ``nn.Conv2d`` of the
network except the detection head's output convolutions (``model.<last>.m.*`` and, for IAuxDetect,
``m2.*``), which stay intact because each of their output channels is one box coordinate, objectness or
class score of one anchor.

Fused and unfused models are both accepted. The layer names follow the model's current form (a fused
RepConv is ``model.102.rbr_reparam`` instead of ``model.102.rbr_dense.0`` and ``model.102.rbr_1x1.0``).
Zeros survive fusing a ``Conv`` block (BatchNorm folding scales whole output channels), but not
re-parameterizing a RepConv, whose 3x3, 1x1 and identity branches are summed into one kernel; to deploy a
sparse RepConv model, fuse first and sparsify the fused model.

Example::

    from amc.models import load_model
    from amc.pruning.finegrained import apply_finegrained, nonzero_cost

    model, _ = load_model("yolov7-tiny.yaml")
    report = apply_finegrained(model, 0.5)          # or {"model.0.conv": 0.2, "model.2.conv": 0.7, ...}
    print(report.sparsity, nonzero_cost(model, 640).gflops)
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from numbers import Real

import torch
from torch import nn

from amc.errors import ConfigError
from amc.models.flops import BN_MACS_PER_ELEMENT, LayerCost, ModelCost, count_architecture
from amc.models.heads import IAuxDetect
from amc.models.yolo import YOLOv7

__all__ = ["ConvCost", "FinegrainedReport", "LayerSparsity", "NonzeroCost", "apply_finegrained",
           "finegrained_layers", "nonzero_cost", "sparsity_report"]


@dataclass(frozen=True)
class LayerSparsity:
    """Zeros in the weight of one sparsifiable convolution.

    Attributes:
        name: module path of the convolution (``model.0.conv``).
        numel: number of weights.
        zeros: number of weights equal to zero.
    """

    name: str
    numel: int
    zeros: int

    @property
    def sparsity(self) -> float:
        """Fraction of the weights that are zero."""
        return self.zeros / self.numel if self.numel else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "sparsity": self.sparsity}


@dataclass
class FinegrainedReport:
    """Sparsity of every sparsifiable convolution of a model, and of all of them together.

    The totals cover the layers of :func:`finegrained_layers` only (the head outputs, BatchNorm, biases
    and implicit layers are never sparsified); :func:`nonzero_cost` gives the model-wide count.
    """

    layers: list[LayerSparsity]

    @property
    def numel(self) -> int:
        """Number of sparsifiable weights."""
        return sum(layer.numel for layer in self.layers)

    @property
    def zeros(self) -> int:
        """Number of those weights that are zero."""
        return sum(layer.zeros for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """Fraction of the sparsifiable weights that are zero."""
        return self.zeros / self.numel if self.numel else 0.0

    def by_name(self) -> dict[str, LayerSparsity]:
        """The rows keyed by layer name."""
        return {layer.name: layer for layer in self.layers}

    def to_dict(self) -> dict:
        return {"numel": self.numel, "zeros": self.zeros, "sparsity": self.sparsity,
                "layers": [layer.to_dict() for layer in self.layers]}


@dataclass(frozen=True)
class ConvCost:
    """Non-zero cost of one convolution (any ``nn.Conv2d`` of the model, head outputs included).

    Attributes:
        name: module path of the convolution.
        index: cfg layer the convolution belongs to.
        numel: number of weights.
        nonzero: number of non-zero weights.
        out_hw: output height and width (for an auxiliary head: that of its input, which it keeps).
        macs: ``nonzero x out_h x out_w`` if its compute counts, else 0 (auxiliary heads of a fused model).
    """

    name: str
    index: int
    numel: int
    nonzero: int
    out_hw: tuple[int, int]
    macs: int


@dataclass
class NonzeroCost(ModelCost):
    """A :class:`~amc.models.flops.ModelCost` counted in non-zero weights, plus one row per convolution.

    ``layers`` are per cfg layer, as in :func:`~amc.models.flops.count_architecture` (same ``index``,
    ``module``, widths and output size), with ``params`` and ``macs`` counting non-zero convolution weights
    only; on a dense model both are equal to the analytic counts.
    """

    convs: list[ConvCost] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "convs": [asdict(c) for c in self.convs]}


def _check_model(model: nn.Module) -> YOLOv7:
    if not isinstance(model, YOLOv7):
        raise TypeError(f"fine-grained pruning needs an amc YOLOv7 model, got {type(model).__name__}")
    return model


def _sparsifiable(model: YOLOv7) -> list[tuple[str, nn.Conv2d]]:
    head = set(map(id, model.head.modules()))  # the head holds only its output convolutions
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in head]


def finegrained_layers(model: YOLOv7) -> list[str]:
    """Names of the convolutions whose weights may be sparsified, in module registration (forward) order.

    Every ``nn.Conv2d`` except the detection head's output convolutions, in the model's current form:
    ``model.0.conv``, ``model.51.cv3.conv``, ``model.102.rbr_dense.0`` and ``model.102.rbr_1x1.0`` unfused,
    ``model.102.rbr_reparam`` fused (yolov7).

    Raises:
        TypeError: ``model`` is not an amc :class:`~amc.models.yolo.YOLOv7`.
    """
    return [name for name, _ in _sparsifiable(_check_model(model))]


def _zeros(weight: torch.Tensor) -> int:
    return weight.numel() - int(torch.count_nonzero(weight))


def sparsity_report(model: YOLOv7) -> FinegrainedReport:
    """The current number of zero weights in every layer of :func:`finegrained_layers`."""
    return FinegrainedReport([LayerSparsity(name, m.weight.numel(), _zeros(m.weight))
                              for name, m in _sparsifiable(_check_model(model))])


def _validated(model: YOLOv7, sparsity: Mapping[str, float] | float) -> dict[str, float]:
    """The ratio of every layer to prune, or a :class:`ConfigError` naming the first bad entry."""
    names = finegrained_layers(model)

    def ratio(value: object, where: str) -> float:
        # bool is a Real, but ``True`` as a sparsity is a mistake, not 1.0.
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ConfigError(f"fine-grained sparsity{where}: {value!r} is not a number (give a ratio in [0, 1))")
        r = float(value)
        if not (0.0 <= r < 1.0):  # also rejects NaN
            raise ConfigError(f"fine-grained sparsity{where}: {value!r} is out of range (give a ratio in [0, 1))")
        return r

    if not isinstance(sparsity, Mapping):
        r = ratio(sparsity, "")
        return {name: r for name in names}
    known = set(names)
    out = {}
    for key, value in sparsity.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"fine-grained sparsity: {key!r} is not a sparsifiable layer of this model "
                              f"({hint}see finegrained_layers(model); head outputs stay intact)")
        out[key] = ratio(value, f" of {key!r}")
    return out


@torch.no_grad()
def _zero_smallest(weight: torch.Tensor, k: int) -> None:
    """Zero the ``k`` weights of smallest magnitude, ties going to the lower flat (row-major) index."""
    if k <= 0:
        return
    # The same choice as the first k of a stable sort of |w|, found in linear time (a sort of a large
    # layer is ~8x slower on CPU): every weight below the k-th smallest magnitude, then the lowest-index
    # weights equal to it. topk would be faster still but picks among ties arbitrarily. Indices are in
    # logical (row-major) order, so the choice does not depend on the memory layout.
    magnitude = weight.detach().abs().reshape(-1)
    if k >= magnitude.numel():
        weight.zero_()
        return
    threshold = magnitude.kthvalue(k).values
    mask = magnitude < threshold
    missing = k - int(mask.sum())
    mask[torch.nonzero(magnitude == threshold).view(-1)[:missing]] = True
    weight.masked_fill_(mask.view(weight.shape), 0)


@torch.no_grad()
def apply_finegrained(model: YOLOv7, sparsity: Mapping[str, float] | float) -> FinegrainedReport:
    """Zero the smallest-magnitude weights of the given layers, in place.

    Each listed layer gets its ``round(ratio x numel)`` weights of smallest ``|w|`` set to zero (Python's
    ``round``; equal magnitudes are taken in flat-index order, so the result is deterministic). Weights
    that are already zero are the smallest, so they count toward the target; nothing is ever un-zeroed,
    so re-applying a lower ratio leaves a layer as it is. Layers not listed are left alone.

    Args:
        model: the model to sparsify (fused or not; see :func:`finegrained_layers` for the names).
        sparsity: one ratio in [0, 1) for every layer of :func:`finegrained_layers`, or a mapping from
            some of those names to their ratio.

    Returns:
        The :func:`sparsity_report` of the model afterwards.

    Raises:
        ConfigError: an unknown or non-sparsifiable layer name, or a ratio that is not a number in
            [0, 1); raised before any weight is modified.
        TypeError: ``model`` is not an amc :class:`~amc.models.yolo.YOLOv7`.
    """
    ratios = _validated(_check_model(model), sparsity)  # every entry checked before the first write
    modules = dict(_sparsifiable(model))
    for name, r in ratios.items():
        weight = modules[name].weight
        _zero_smallest(weight, round(r * weight.numel()))
    return sparsity_report(model)


def _meta_twin(model: YOLOv7) -> YOLOv7:
    """A copy of ``model`` with every tensor on the meta device: same modules and names, no data copied.

    Running it gives every tensor's shape at no compute and without touching the model's own state
    (mode, cached grids), whatever its form (fused, partly fused) or device.
    """
    memo: dict[int, object] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def nonzero_cost(model: YOLOv7, img_size: int | tuple[int, int] = 640) -> NonzeroCost:
    """Parameters and FLOPs of ``model`` counting non-zero convolution weights only, at ``img_size``.

    The convention is that of :mod:`amc.models.flops`, with each convolution's weight count replaced by
    its non-zero count: a convolution costs ``non-zero weights x out_h x out_w`` multiply-accumulates,
    its bias is a parameter but free; BatchNorm costs ``4 x elements`` and ``2 x channels`` parameters,
    a nearest upsample ``out elements``; implicit layers cost their parameters only; the auxiliary heads
    of IAuxDetect count their compute in an unfused model and only their parameters in a fused one.
    Biases, BatchNorm and implicit parameters are always counted, zero or not: they are per-channel and
    never sparsified. GFLOPs = 2 x MACs.

    Output sizes come from one eval-mode forward pass of a zero image through a meta-device copy of the
    model (no arithmetic is done, and ``model`` is not modified).

    Args:
        model: the model (fused or not).
        img_size: input height and width in pixels (int = square).

    Raises:
        TypeError: ``model`` is not an amc :class:`~amc.models.yolo.YOLOv7`.
    """
    model = _check_model(model)
    hw0 = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
    fused = model.fused
    twin = _meta_twin(model).eval()
    names = {id(m): name for name, m in twin.named_modules()}
    conv_hw: dict[str, tuple[int, int]] = {}
    macs_by_layer = [0] * len(model.model)

    def layer_of(name: str) -> int:
        return int(name.split(".")[1])  # every module sits under ``model.<index>``

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        name = names[id(m)]
        if isinstance(m, nn.Conv2d):
            conv_hw[name] = (out.shape[-2], out.shape[-1])  # MACs need the non-zero count: added below
        elif isinstance(m, nn.BatchNorm2d):
            macs_by_layer[layer_of(name)] += BN_MACS_PER_ELEMENT * out.numel()
        elif isinstance(m, nn.Upsample):
            macs_by_layer[layer_of(name)] += out.numel()

    head_inputs: list[tuple[int, int]] = []

    def head_hook(m: nn.Module, inputs: tuple) -> None:
        head_inputs.extend((x.shape[-2], x.shape[-1]) for x in inputs[0])

    handles = [m.register_forward_hook(hook) for m in twin.modules()
               if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Upsample))]
    handles.append(twin.head.register_forward_pre_hook(head_hook))
    try:
        with torch.no_grad():
            twin(torch.zeros(1, model.arch.ch, *hw0, device="meta"))
    finally:
        for h in handles:
            h.remove()

    head = model.head
    aux = list(head.m2) if isinstance(head, IAuxDetect) else []
    aux_ids = {id(m): i for i, m in enumerate(aux)}
    params_by_layer = [0] * len(model.model)
    convs: list[ConvCost] = []
    for name, m in model.named_modules():
        direct = sum(p.numel() for p in m.parameters(recurse=False))
        if not direct:
            continue
        index = layer_of(name)
        if not isinstance(m, nn.Conv2d):  # BatchNorm, implicit layers: counted whole
            params_by_layer[index] += direct
            continue
        nonzero = int(torch.count_nonzero(m.weight))
        params_by_layer[index] += direct - m.weight.numel() + nonzero
        if id(m) in aux_ids:  # eval mode skips the auxiliary heads; their input size is their output size
            hw = head_inputs[head.nl + aux_ids[id(m)]]
            counted = not fused  # the official measure runs them until the model is fused
        elif name in conv_hw:
            hw, counted = conv_hw[name], True
        else:
            raise RuntimeError(f"nonzero_cost: convolution {name} did not run in the forward pass")
        macs = nonzero * hw[0] * hw[1] if counted else 0
        macs_by_layer[index] += macs
        convs.append(ConvCost(name, index, m.weight.numel(), nonzero, (int(hw[0]), int(hw[1])), macs))

    dense = count_architecture(model.arch, hw0, fused=fused)  # widths and output sizes of every layer
    layers = [LayerCost(c.index, c.module, c.c_in, c.c_out, c.out_hw, params_by_layer[i], macs_by_layer[i])
              for i, c in enumerate(dense.layers)]
    return NonzeroCost(layers, hw0, fused, convs)
