"""The pruning space of a YOLOv7 model: its prunable channel groups ("units") in forward order.

A *slot* is one explicit width of the :class:`~amc.models.arch.Architecture` (``(layer, 'c2')`` of a Conv or
RepConv, ``(layer, 'cvK')`` inside DownC / SPPCSPC). Every layer's output is a list of *segments* (slot,
channels): a Concat lays its inputs' segments side by side, a DownC its ``cv2`` and ``cv3``, a ReOrg four
copies of its input. Slots whose channels must be removed together are merged with a union-find:

* the inputs of a Shortcut (the sum needs equal channels, position by position);
* a RepConv with an identity branch (its input and output channels are added);

and slots that cannot change are fixed: the image, repeated layers, grouped convolutions (and their inputs).
Detection-head outputs are no slots at all, so they always stay intact; head inputs and their implicit
layers (``ia``) are consumers and shrink with the units they read.

Each remaining class is a :class:`PruningUnit`. The same graph gives the exact cost of any policy as a
quadratic form in the kept widths (the counter of :mod:`amc.models.flops` run once on symbolic widths), so a
policy is costed in microseconds, and tells the physical slicer and the channel masks which tensor
dimensions each unit owns. ``tests/test_depgraph.py`` checks the partition against Torch-Pruning's DepGraph
(channel by channel) on every official cfg.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from amc.errors import ConfigError
from amc.models.arch import HEAD_MODULES, WIDTH_KEYS, Architecture
from amc.models.flops import HasGflops, count_architecture

Slot = tuple[int, str]  # (layer index, width key)
Segment = tuple[Slot, int]  # (slot, channels)
IMAGE: Slot = (-1, "image")


@dataclass(frozen=True)
class ConvSite:
    """A convolution block (amc ``Conv`` or ``RepConv`` module) whose output channels are one slot.

    Attributes:
        path: module path in the model, e.g. ``model.12`` or ``model.51.cv3``.
        kind: ``Conv``, ``RepConv``, or ``DownC.cvK`` / ``SPPCSPC.cvK`` for inner blocks.
        slot: the slot its output channels belong to.
        inputs: segments of its input channels, in order.
        kernel, stride: of its (main) convolution.
        in_hw, out_hw: feature-map sizes at the space's image size.
    """

    path: str
    kind: str
    slot: Slot
    inputs: tuple[Segment, ...]
    kernel: int
    stride: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def in_channels(self) -> int:
        return sum(c for _, c in self.inputs)


@dataclass(frozen=True)
class HeadInput:
    """One input of the detection head: a 1x1 output convolution (and implicit layer) reading segments."""

    conv_path: str
    implicit_path: str | None
    inputs: tuple[Segment, ...]


@dataclass(frozen=True)
class PruningUnit(HasGflops):
    """A group of channels removed together, described as AMC's state embedding needs.

    Attributes:
        index: position in forward order.
        name: module path of its first producer (stable across runs; policy files key on it).
        kind: module kind of that producer (``Conv``, ``RepConv``, ``SPPCSPC.cv5`` ...).
        channels: width in the unpruned model.
        in_channels, kernel, stride: of the first producer.
        feature_hw: output feature-map size of the first producer at the space's image size.
        macs, params: cost that depends on this unit (total minus the cost with the unit at width 0):
            its producers plus its share of every consumer (unfused convention).
        producers: module paths of every block writing these channels (more than one after a Shortcut).
    """

    index: int
    name: str
    kind: str
    channels: int
    in_channels: int
    kernel: int
    stride: int
    feature_hw: tuple[int, int]
    macs: int
    params: int
    producers: tuple[str, ...]


@dataclass(frozen=True)
class ChannelRounding:
    """How a sparsity ratio becomes a kept channel count.

    Attributes:
        multiple: kept channels are rounded to a multiple of this (8 keeps GPU kernels efficient).
        min_channels: never keep fewer than this (nor more than the unit has).
        max_ratio: the largest sparsity ratio a policy may ask for.
    """

    multiple: int = 8
    min_channels: int = 8
    max_ratio: float = 0.9

    def __post_init__(self) -> None:
        if self.multiple < 1 or self.min_channels < 1:
            raise ConfigError(f"rounding needs multiple >= 1 and min_channels >= 1, got {self.multiple}, "
                              f"{self.min_channels}")
        if not 0.0 <= self.max_ratio < 1.0:
            raise ConfigError(f"max_ratio must be in [0, 1), got {self.max_ratio}")


class _Quad:
    """An integer polynomial of degree <= 2 in the unit widths (the counter runs on these)."""

    __slots__ = ("terms",)

    def __init__(self, terms: dict[tuple[int, ...], int]) -> None:
        self.terms = terms

    def __add__(self, other: "_Quad | int") -> "_Quad":
        terms = dict(self.terms)
        for key, value in (other.terms if isinstance(other, _Quad) else {(): int(other)}).items():
            terms[key] = terms.get(key, 0) + value
        return _Quad(terms)

    __radd__ = __add__

    def __mul__(self, other: "_Quad | int") -> "_Quad":
        if not isinstance(other, _Quad):
            return _Quad({key: value * int(other) for key, value in self.terms.items()})
        terms: dict[tuple[int, ...], int] = {}
        for k1, v1 in self.terms.items():
            for k2, v2 in other.terms.items():
                key = tuple(sorted(k1 + k2))
                if len(key) > 2:
                    raise TypeError("cost is not quadratic in the widths")
                terms[key] = terms.get(key, 0) + v1 * v2
        return _Quad(terms)

    __rmul__ = __mul__

    def __floordiv__(self, other: int) -> "_Quad":
        if other != 1:  # grouped convolutions are fixed slots, so only ungrouped ones reach here
            raise TypeError("symbolic width divided by a group count")
        return self


class QuadraticCost:
    """``c + l.w + sum q_k w_i w_j``: exact integer params or MACs of the model as a function of unit widths."""

    def __init__(self, poly: _Quad | int, n_units: int) -> None:
        terms = poly.terms if isinstance(poly, _Quad) else {(): int(poly)}
        self.constant = int(terms.get((), 0))
        self.linear = np.zeros(n_units, dtype=np.int64)
        pairs = [(k, v) for k, v in terms.items() if len(k) == 2 and v]
        for key, value in terms.items():
            if len(key) == 1:
                self.linear[key[0]] += value
        self.rows = np.array([k[0] for k, _ in pairs], dtype=np.int64)
        self.cols = np.array([k[1] for k, _ in pairs], dtype=np.int64)
        self.coefs = np.array([v for _, v in pairs], dtype=np.int64)

    def __call__(self, widths: np.ndarray) -> int:
        w = np.asarray(widths, dtype=np.int64)
        return int(self.constant + self.linear @ w + (self.coefs * w[self.rows] * w[self.cols]).sum())


@dataclass(frozen=True)
class PolicyCost(HasGflops):
    """Cost of a policy (whole model, one image): parameters and multiply-accumulates."""

    params: int
    macs: int


@dataclass
class PruningSpace:
    """The prunable units of one architecture, their dependencies and the exact cost of any policy.

    Build it with :meth:`from_architecture` or :meth:`from_model`. Policies are sequences of sparsity ratios in
    unit order (or ``{unit name: ratio}`` mappings, see :meth:`ratios_from_mapping`).
    """

    arch: Architecture
    img_size: tuple[int, int]
    rounding: ChannelRounding
    units: list[PruningUnit]
    sites: list[ConvSite]
    head_inputs: list[HeadInput]
    slot_unit: dict[Slot, int]  # unit index of every slot; -1 = fixed
    slot_width: dict[Slot, int]
    _cost_forms: dict[tuple[str, bool], QuadraticCost] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model, img_size: int | tuple[int, int] = 640,
                   rounding: ChannelRounding | None = None) -> "PruningSpace":
        """The space of an (unfused) :class:`~amc.models.yolo.YOLOv7`."""
        if getattr(model, "fused", False):
            raise ConfigError("this model is fused (BatchNorm folded); prune the unfused model and fuse afterwards")
        return cls.from_architecture(model.arch, img_size, rounding)

    @classmethod
    def from_architecture(cls, arch: Architecture, img_size: int | tuple[int, int] = 640,
                          rounding: ChannelRounding | None = None) -> "PruningSpace":
        hw = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
        graph = _ChannelGraph(arch, hw)
        classes = graph.classes()
        order: list[int] = []  # class roots in forward order of their first producer
        for site in graph.sites:
            root = graph.find(site.slot)
            if root not in graph.fixed_roots and root not in order:
                order.append(root)
        root_unit = {root: u for u, root in enumerate(order)}
        slot_unit = {slot: root_unit.get(graph.find(slot), -1) for slot in graph.width}
        space = cls(arch=arch, img_size=hw, rounding=rounding or ChannelRounding(), units=[], sites=graph.sites,
                    head_inputs=graph.head_inputs, slot_unit=slot_unit, slot_width=dict(graph.width))
        full = space.full_widths
        for u, root in enumerate(order):
            members = [s for s in graph.sites if graph.find(s.slot) == root]
            first = members[0]
            zero = full.copy()
            zero[u] = 0
            space.units.append(PruningUnit(
                index=u, name=first.path, kind=first.kind, channels=graph.width[first.slot],
                in_channels=first.in_channels, kernel=first.kernel, stride=first.stride,
                feature_hw=first.out_hw,
                macs=space._form("macs", False)(full) - space._form("macs", False)(zero),
                params=space._form("params", False)(full) - space._form("params", False)(zero),
                producers=tuple(s.path for s in members)))
            assert len({graph.width[s] for s in classes[root]}) == 1, "merged slots of unequal width"
        return space

    # ------------------------------------------------------------------ policies -> widths
    def __len__(self) -> int:
        return len(self.units)

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.units]

    @property
    def n_units(self) -> int:
        return 1 + max(self.slot_unit.values(), default=-1)

    @property
    def full_widths(self) -> np.ndarray:
        """Channels of every unit in the unpruned model."""
        widths = np.zeros(self.n_units, dtype=np.int64)
        for slot, u in self.slot_unit.items():
            if u >= 0:
                widths[u] = self.slot_width[slot]
        return widths

    @property
    def fingerprint(self) -> str:
        """Identifies the architecture a policy was made for (hash of its layers, widths, classes, anchors)."""
        text = json.dumps(self.arch.to_dict(), sort_keys=True, default=str)
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def check_ratios(self, ratios: Sequence[float], partial: bool = False) -> np.ndarray:
        """``ratios`` as an array after checking its length and range; raises :class:`ConfigError`."""
        r = np.asarray(ratios, dtype=np.float64).reshape(-1)
        n = self.n_units
        if (len(r) > n) if partial else (len(r) != n):
            raise ConfigError(f"a policy for this model has {n} ratios, got {len(r)}")
        bad = np.flatnonzero(~np.isfinite(r) | (r < 0) | (r > self.rounding.max_ratio + 1e-9))
        if len(bad):
            i = int(bad[0])
            raise ConfigError(f"ratio of unit {self.units[i].name} is {r[i]}, outside [0, {self.rounding.max_ratio}] "
                              f"(raise pruning.max_ratio or lower the ratio)")
        return r

    def kept_channels(self, ratios: Sequence[float]) -> np.ndarray:
        """Channels each unit keeps under ``ratios`` (sparsities), rounded as :attr:`rounding` says."""
        r = self.check_ratios(ratios)
        return self.round_widths(self.full_widths * (1.0 - r))

    def round_widths(self, target: np.ndarray, full: np.ndarray | None = None) -> np.ndarray:
        """Channel counts ``target`` (per unit, or for the first ``len(full)`` units) rounded as :attr:`rounding` says."""
        full = self.full_widths if full is None else full
        m = self.rounding.multiple
        target = np.asarray(target, dtype=np.float64)
        kept = np.floor(target / m + 0.5) * m
        # The full width is always a valid choice, also when the multiple does not divide it (ratio 0 keeps all).
        kept = np.where(np.abs(full - target) <= np.abs(kept - target), full, kept)
        return np.clip(kept, np.minimum(full, self.rounding.min_channels), full).astype(np.int64)

    @property
    def min_widths(self) -> np.ndarray:
        """The narrowest each unit may become (at ``max_ratio``)."""
        return self.round_widths(self.full_widths * (1.0 - self.rounding.max_ratio))

    def ratios_from_mapping(self, mapping: dict[str, float]) -> np.ndarray:
        """A ``{unit name: ratio}`` mapping (every unit named exactly once) as a ratio array."""
        unknown = sorted(set(mapping) - set(self.names))
        if unknown:
            raise ConfigError(f"policy names unit {unknown[0]!r}, which this model does not have "
                              f"(a policy for a different model?)")
        missing = [name for name in self.names if name not in mapping]
        if missing:
            raise ConfigError(f"policy has no ratio for unit {missing[0]!r} ({len(missing)} missing)")
        return self.check_ratios([float(mapping[name]) for name in self.names])

    # ------------------------------------------------------------------ cost
    def _form(self, what: str, fused: bool) -> QuadraticCost:
        key = (what, fused)
        if key not in self._cost_forms:
            symbolic = self.pruned_architecture(None)
            cost = count_architecture(symbolic, self.img_size, fused=fused)
            self._cost_forms[("params", fused)] = QuadraticCost(cost.params, self.n_units)
            self._cost_forms[("macs", fused)] = QuadraticCost(cost.macs, self.n_units)
        return self._cost_forms[key]

    def cost(self, widths: Sequence[int] | np.ndarray, fused: bool = False) -> PolicyCost:
        """Exact params and MACs of the model with these unit widths (equal to counting the pruned model)."""
        w = np.asarray(widths, dtype=np.int64)
        return PolicyCost(self._form("params", fused)(w), self._form("macs", fused)(w))

    def policy_cost(self, ratios: Sequence[float], fused: bool = False) -> PolicyCost:
        return self.cost(self.kept_channels(ratios), fused)

    def min_cost(self, ratios_so_far: Sequence[float] = (), fused: bool = False) -> PolicyCost:
        """The cheapest model reachable once the first ``len(ratios_so_far)`` units are decided."""
        r = self.check_ratios(ratios_so_far, partial=True)
        widths = self.min_widths
        head = self.full_widths[: len(r)]
        widths[: len(r)] = self.round_widths(head * (1.0 - r), head)
        return self.cost(widths, fused)

    @property
    def full_cost(self) -> PolicyCost:
        return self.cost(self.full_widths)

    # ------------------------------------------------------------------ pruned architecture
    def pruned_architecture(self, widths: Sequence[int] | np.ndarray | None) -> Architecture:
        """The architecture with every unit at ``widths`` (``None``: symbolic widths, for the cost forms)."""
        arch = self.arch.copy()
        for (layer, key), u in self.slot_unit.items():
            if layer < 0 or u < 0:
                continue
            arch.layers[layer].args[key] = _Quad({(u,): 1}) if widths is None else int(widths[u])
        return arch

    def width_of(self, slot: Slot, widths: Sequence[int] | np.ndarray) -> int:
        u = self.slot_unit.get(slot, -1)
        return self.slot_width[slot] if u < 0 else int(widths[u])


class _ChannelGraph:
    """Walks an architecture once, recording slots, segments, conv sites and merge constraints."""

    def __init__(self, arch: Architecture, hw: tuple[int, int]) -> None:
        self.parent: dict[Slot, Slot] = {}
        self.width: dict[Slot, int] = {IMAGE: arch.ch}
        self.fixed: set[Slot] = {IMAGE}
        self.sites: list[ConvSite] = []
        self.head_inputs: list[HeadInput] = []
        costs = count_architecture(arch, hw).layers
        sizes = [c.out_hw for c in costs]
        outs: list[list[Segment]] = []
        for i, layer in enumerate(arch.layers):
            srcs = layer.sources(i)
            ins = [[(IMAGE, arch.ch)] if j < 0 else outs[j] for j in srcs]
            in_hw = [hw if j < 0 else sizes[j] for j in srcs]
            outs.append(self._layer(arch, i, ins, in_hw[0], sizes[i]))
        self.fixed_roots = {self.find(s) for s in self.fixed}

    # union-find
    def find(self, slot: Slot) -> Slot:
        self.parent.setdefault(slot, slot)
        while self.parent[slot] != slot:
            self.parent[slot] = self.parent[self.parent[slot]]
            slot = self.parent[slot]
        return slot

    def union(self, a: Slot, b: Slot) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def classes(self) -> dict[Slot, list[Slot]]:
        out: dict[Slot, list[Slot]] = {}
        for slot in self.width:
            out.setdefault(self.find(slot), []).append(slot)
        return out

    def _slot(self, i: int, key: str, width: int) -> Slot:
        slot = (i, key)
        self.width[slot] = width
        self.find(slot)
        return slot

    def _site(self, path: str, kind: str, slot: Slot, inputs: list[Segment], k: int, s: int,
              in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        self.sites.append(ConvSite(path, kind, slot, tuple(inputs), k, s, in_hw, out_hw))

    def _layer(self, arch: Architecture, i: int, ins: list[list[Segment]], in_hw: tuple[int, int],
               out_hw: tuple[int, int]) -> list[Segment]:
        layer, p = arch.layers[i], f"model.{i}"
        m, a = layer.module, layer.args
        if m in WIDTH_KEYS and int(a.get("n", 1)) > 1 or (m == "Conv" and int(a.get("g", 1)) != 1):
            # Repeated copies share one width and grouped convs tie channels to groups: leave them as they are.
            slots = [self._slot(i, key, a[key]) for key in WIDTH_KEYS[m]]
            self.fixed.update(slots + [slot for slot, _ in ins[0]])
            return [(slots[-1], a[WIDTH_KEYS[m][-1]])]
        if m == "Conv":
            slot = self._slot(i, "c2", a["c2"])
            self._site(p, "Conv", slot, ins[0], a["k"], a["s"], in_hw, out_hw)
            return [(slot, a["c2"])]
        if m == "RepConv":
            slot = self._slot(i, "c2", a["c2"])
            self._site(p, "RepConv", slot, ins[0], 3, a.get("s", 1), in_hw, out_hw)
            if a.get("identity"):  # input and output channels are summed position by position
                self._merge([ins[0], [(slot, a["c2"])]])
            return [(slot, a["c2"])]
        if m == "DownC":
            cv1, cv2, cv3 = (self._slot(i, f"cv{j}", a[f"cv{j}"]) for j in (1, 2, 3))
            self._site(f"{p}.cv1", "DownC.cv1", cv1, ins[0], 1, 1, in_hw, in_hw)
            self._site(f"{p}.cv2", "DownC.cv2", cv2, [(cv1, a["cv1"])], 3, a.get("k", 2), in_hw, out_hw)
            self._site(f"{p}.cv3", "DownC.cv3", cv3, ins[0], 1, 1, out_hw, out_hw)
            return [(cv2, a["cv2"]), (cv3, a["cv3"])]
        if m == "SPPCSPC":
            cv = {j: self._slot(i, f"cv{j}", a[f"cv{j}"]) for j in range(1, 8)}
            seg = {j: [(cv[j], a[f"cv{j}"])] for j in range(1, 8)}
            n_pool = len(a.get("k", (5, 9, 13)))
            for j, inputs, k in ((1, ins[0], 1), (3, seg[1], 3), (4, seg[3], 1), (5, seg[4] * (n_pool + 1), 1),
                                 (6, seg[5], 3), (2, ins[0], 1), (7, seg[6] + seg[2], 1)):
                self._site(f"{p}.cv{j}", f"SPPCSPC.cv{j}", cv[j], inputs, k, 1, in_hw, out_hw)
            return seg[7]
        if m == "Concat":
            return [seg for segs in ins for seg in segs]
        if m == "ReOrg":
            return ins[0] * 4
        if m == "Shortcut":
            self._merge(ins)
            return ins[0]
        if m in HEAD_MODULES:
            nl = len(arch.anchors)
            for j, segs in enumerate(ins):
                conv = f"{p}.m.{j}" if j < nl else f"{p}.m2.{j - nl}"
                implicit = f"{p}.ia.{j}" if m != "Detect" and j < nl else None
                self.head_inputs.append(HeadInput(conv, implicit, tuple(segs)))
            return []
        return ins[0]  # MP, SP, Upsample

    def _merge(self, inputs: list[list[Segment]]) -> None:
        """Channels of ``inputs`` are combined element-wise: merge their slots, or fix them if layouts differ."""
        first = inputs[0]
        if all([c for _, c in segs] == [c for _, c in first] for segs in inputs):
            for segs in inputs[1:]:
                for (a, _), (b, _) in zip(first, segs):
                    self.union(a, b)
        else:  # e.g. a concat added to a single conv: no shared segmentation, keep all widths
            self.fixed.update(slot for segs in inputs for slot, _ in segs)
