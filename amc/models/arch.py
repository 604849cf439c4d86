"""YOLOv7 architectures as data: official cfg files in, explicit per-layer channel counts out.

An official cfg (``nc``, ``depth_multiple``, ``width_multiple``, ``anchors``, ``backbone``/``head`` rows of
``[from, number, module, args]``) describes widths *before* scaling, and its composite modules (DownC,
SPPCSPC) derive their inner widths from the outer ones. A pruned model has irregular widths everywhere, so
amc resolves every cfg into an :class:`Architecture`: one :class:`LayerSpec` per layer whose ``args`` state
each output width explicitly. Models are built from architectures only, and amc's model format stores the
architecture as a readable YAML file beside the safetensors weights.

Cfg strings are never ``eval``-ed: activations, ``None``, ``nc`` and ``anchors`` are recognised by a small
parser, and anything else is a clear :class:`~amc.errors.ConfigError`.
"""

from __future__ import annotations

import ast
import copy
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from amc.errors import ConfigError

#: Module names of the official YOLOv7 family cfgs that amc builds.
CONV_MODULES = ("Conv", "RepConv", "DownC", "SPPCSPC")
HEAD_MODULES = ("Detect", "IDetect", "IAuxDetect")
#: The explicit output widths of each module with learned channels (what pruning edits).
WIDTH_KEYS: dict[str, tuple[str, ...]] = {"Conv": ("c2",), "RepConv": ("c2",), "DownC": ("cv1", "cv2", "cv3"),
                                          "SPPCSPC": tuple(f"cv{j}" for j in range(1, 8))}
OTHER_MODULES = ("MP", "SP", "ReOrg", "Concat", "Shortcut", "Upsample")
KNOWN_MODULES = CONV_MODULES + HEAD_MODULES + OTHER_MODULES
#: Modules a cfg row may repeat (``number`` > 1, scaled by ``depth_multiple``): copies are chained, each
#: taking the previous copy's output, as the official ``nn.Sequential`` of copies does.
REPEATABLE_MODULES = ("Conv", "MP", "SP")

#: Activations a cfg may name (``nn.LeakyReLU(0.1)``, ``nn.SiLU()``, ...). ``True`` means SiLU, as officially.
ACTIVATIONS = ("SiLU", "LeakyReLU", "ReLU", "ReLU6", "Hardswish", "Mish", "Sigmoid", "Tanh", "Identity")
_ACT_PATTERN = re.compile(r"^\s*(?:torch\.)?(?:nn\.)?(\w+)\s*\((.*)\)\s*$")

ARCH_FORMAT = "amc-yolov7-arch/1"

# Bounds on every size a cfg or architecture file declares, checked before any module is built: believed, a
# width of 10^9 has torch allocate hundreds of GB, and a kernel, stride, repeat count or upsampling factor in the
# thousands as much. Each bound is far above any YOLOv7 (widest layer 1280 channels, kernels up to 13 (SPP
# pools), 2x upsampling, 80 classes, 3 anchors per level, multipliers 0.25 to 1.25 across the YOLO family),
# so no real model comes near one; the model's total size is bounded separately (amc.models.io).
#: Channels of any layer, and input image channels.
MAX_CHANNELS = 65536
#: ``width_multiple`` and ``depth_multiple`` lie in (0, MAX_MULTIPLE].
MAX_MULTIPLE = 16.0
#: Class count: 1 to MAX_CLASSES.
MAX_CLASSES = 100_000
#: Kernel sizes, paddings, strides, pooling windows and upsampling factors.
MAX_KERNEL = 64
#: Copies of a repeated layer (a cfg row's ``number``, and ``number x depth_multiple``).
MAX_REPEATS = 64
#: Anchors per detection level.
MAX_ANCHORS = 64


@dataclass
class LayerSpec:
    """One layer: where its input comes from, which module it is and its explicit arguments.

    Attributes:
        from_: input layer index (``-1`` = previous, negative = relative, else absolute) or a list of them.
        module: one of :data:`KNOWN_MODULES`.
        args: explicit keyword arguments; every output width is stated (see :func:`output_channels`).
    """

    from_: int | list[int]
    module: str
    args: dict[str, Any] = field(default_factory=dict)

    def sources(self, index: int) -> list[int]:
        """Absolute indices of the layers this layer reads (``-1`` for the network input)."""
        refs = self.from_ if isinstance(self.from_, list) else [self.from_]
        return [index + f if f < 0 else f for f in refs]


@dataclass
class Architecture:
    """A YOLOv7 network with every width explicit: the unit that pruning edits and amc's format stores.

    Attributes:
        nc: number of classes.
        anchors: anchors per detection level, in pixels, as flat ``[w0, h0, w1, h1, ...]`` lists.
        layers: the layers in forward order; the last one is the detection head.
        ch: input image channels.
    """

    nc: int
    anchors: list[list[float]]
    layers: list[LayerSpec]
    ch: int = 3

    @property
    def head(self) -> LayerSpec:
        return self.layers[-1]

    def channels(self) -> list[int]:
        """Output channels of every layer (the head reports 0)."""
        out: list[int] = []
        for i, layer in enumerate(self.layers):
            ins = [self.ch if j < 0 else out[j] for j in layer.sources(i)]
            out.append(output_channels(layer, ins))
        return out

    def strides(self) -> list[Fraction]:
        """Downsampling factor of every layer's output relative to the input image."""
        out: list[Fraction] = []
        for i, layer in enumerate(self.layers):
            ins = [Fraction(1) if j < 0 else out[j] for j in layer.sources(i)]
            out.append(ins[0] * layer_stride(layer))
        return out

    def head_strides(self) -> list[float]:
        """Strides of the detection levels (the lead heads of IAuxDetect)."""
        strides = self.strides()
        srcs = self.head.sources(len(self.layers) - 1)[: len(self.anchors)]
        return [float(strides[j]) for j in srcs]

    def to_dict(self) -> dict[str, Any]:
        """The readable form written to ``architecture.yaml`` (rows ``[from, module, args]``)."""
        return {
            "format": ARCH_FORMAT,
            "nc": self.nc,
            "ch": self.ch,
            "anchors": [list(a) for a in self.anchors],
            "layers": [[layer.from_, layer.module, dict(layer.args)] for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "architecture") -> "Architecture":
        """Inverse of :meth:`to_dict`, validating every row."""
        if not isinstance(data, dict) or data.get("format") != ARCH_FORMAT:
            raise ConfigError(f"{source}: not an amc architecture (expected 'format: {ARCH_FORMAT}')")
        try:
            layers = [LayerSpec(from_=row[0], module=str(row[1]), args=dict(row[2])) for row in data["layers"]]
            arch = cls(nc=int(data["nc"]), anchors=[list(map(float, a)) for a in data["anchors"]],
                       layers=layers, ch=int(data.get("ch", 3)))
            validate(arch, source)
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as e:
            raise ConfigError(f"{source}: malformed amc architecture ({type(e).__name__}: {e})") from None
        return arch

    def copy(self) -> "Architecture":
        return copy.deepcopy(self)


def output_channels(layer: LayerSpec, c_in: list[int]) -> int:
    """Output width of ``layer`` given the widths of its inputs."""
    m, a = layer.module, layer.args
    # Widths are used as given (validated ints): the pruning space runs this with symbolic widths.
    if m in ("Conv", "RepConv"):
        return a["c2"]
    if m == "DownC":
        return a["cv2"] + a["cv3"]
    if m == "SPPCSPC":
        return a["cv7"]
    if m == "Concat":
        return sum(c_in)
    if m == "ReOrg":
        return 4 * c_in[0]
    if m in HEAD_MODULES:
        return 0
    return c_in[0]  # MP, SP, Shortcut, Upsample keep the width of their (first) input


def layer_stride(layer: LayerSpec) -> Fraction:
    """How much a layer downsamples its input (a Fraction: Upsample gives 1/2); repeats compound."""
    m, a = layer.module, layer.args
    if m in ("Conv", "RepConv", "SP"):
        step = Fraction(int(a.get("s", 1)))
    elif m in ("DownC", "MP"):
        step = Fraction(int(a.get("k", 2)))
    elif m == "ReOrg":
        step = Fraction(2)
    elif m == "Upsample":
        step = 1 / Fraction(str(a["scale_factor"]))
    else:
        step = Fraction(1)
    return step ** int(a.get("n", 1))


def make_divisible(x: float, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is >= ``x`` (the official width rounding)."""
    return math.ceil(x / divisor) * divisor


def parse_activation(value: Any, where: str) -> str:
    """Canonical activation string from a cfg argument (``True`` -> ``'SiLU'``, ``False`` -> ``'Identity'``)."""
    if value is True or value in ("True", "true"):
        return "SiLU"
    if value is False or value is None or value in ("False", "false", "None"):
        return "Identity"
    match = _ACT_PATTERN.match(str(value))
    if not match or match.group(1) not in ACTIVATIONS:
        raise ConfigError(f"{where}: unknown activation {value!r} (known: {', '.join(ACTIVATIONS)})")
    name, inner = match.group(1), match.group(2).strip()
    if name == "LeakyReLU":
        slope = 0.01
        if inner:
            try:
                slope = float(ast.literal_eval(inner.split("=")[-1].split(",")[0].strip()))
            except (ValueError, SyntaxError):
                raise ConfigError(f"{where}: cannot read the slope of {value!r}") from None
        return f"LeakyReLU({slope})"
    return name


def activation_slope(act: str) -> float:
    """Negative slope of a canonical ``'LeakyReLU(x)'`` string."""
    return float(act[len("LeakyReLU("):-1])


def _literal(value: Any, nc: int, anchors: Any) -> Any:
    """Resolve one cfg argument as the official parser would, without ``eval``."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text == "nc":
        return nc
    if text == "anchors":
        return anchors
    if text == "None":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, RecursionError):  # RecursionError: a hostile "[[[[...]]]]"
        return text  # e.g. 'nearest', or an activation expression handled by its module


def _resolve_row(i: int, row: Any, d: dict[str, Any], ch: list[int], where: str) -> tuple[LayerSpec, int]:
    """Turn one official ``[from, number, module, args]`` row into a LayerSpec and its output width."""
    if not isinstance(row, (list, tuple)) or len(row) != 4:
        raise ConfigError(f"{where}: layer {i} must be [from, number, module, args], got {row!r}")
    f, n, name, args = row
    if not (isinstance(f, int) or (isinstance(f, list) and f and all(isinstance(x, int) for x in f))):
        raise ConfigError(f"{where}: layer {i} has an invalid 'from' {f!r} (an int or a list of ints)")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_REPEATS:
        raise ConfigError(f"{where}: layer {i} has an invalid repeat number {n!r} (an int from 1 to {MAX_REPEATS})")
    if not isinstance(args, list):
        raise ConfigError(f"{where}: layer {i} args must be a list, got {args!r}")
    module = str(name).removeprefix("nn.")
    if module not in KNOWN_MODULES:
        raise ConfigError(f"{where}: layer {i} uses unknown module {name!r} (amc knows {', '.join(KNOWN_MODULES)})")
    refs = f if isinstance(f, list) else [f]
    for ref in refs:
        j = i + ref if ref < 0 else ref
        if not -1 <= j < i:
            raise ConfigError(f"{where}: layer {i} reads from {ref}, which is not an earlier layer")
    c_in = [ch[ref] for ref in refs]  # before layer 0 ch is [input channels], so ch[-1] is the image
    nc, gw = int(d["nc"]), float(d.get("width_multiple", 1.0))
    anchors = d["anchors"]
    na = len(anchors[0]) // 2 if isinstance(anchors, list) else int(anchors)
    a = [_literal(x, nc, anchors) for x in args]
    repeats = max(round(n * float(d.get("depth_multiple", 1.0))), 1) if n > 1 else n
    if repeats > 1 and module not in REPEATABLE_MODULES + ("DownC", "SPPCSPC"):
        raise ConfigError(f"{where}: layer {i}: repeating {module} (number={n}) is not supported by amc "
                          f"(only {', '.join(REPEATABLE_MODULES)} repeat)")
    try:
        spec = _module_args(module, a, c_in, nc, na, gw)
    except (IndexError, TypeError, ValueError, OverflowError) as e:  # OverflowError: int(inf), 1e400 * gw
        raise ConfigError(f"{where}: layer {i} ({name}) has malformed args {args!r}: {e}") from None
    if repeats > 1 and module in REPEATABLE_MODULES:  # DownC and SPPCSPC take n as an unused argument
        spec["n"] = repeats
    layer = LayerSpec(from_=f, module=module, args=spec)
    return layer, output_channels(layer, c_in)


def _module_args(module: str, a: list[Any], c_in: list[int], nc: int, na: int, gw: float) -> dict[str, Any]:
    """Explicit args of one module from its official positional args (widths scaled by ``gw``)."""
    def width(c: int) -> int:
        c = int(c)
        return c if c == na * (nc + 5) else make_divisible(c * gw, 8)

    if module == "Conv":  # c2, k=1, s=1, p=None, g=1, act=True
        k, s = (list(a) + [1, 1])[1:3]
        p = a[3] if len(a) > 3 else None
        g = a[4] if len(a) > 4 else 1
        return {"c2": width(a[0]), "k": int(k), "s": int(s), "p": p, "g": int(g),
                "act": parse_activation(a[5] if len(a) > 5 else True, "Conv")}
    if module == "RepConv":  # c2, k=3, s=1, p=None, g=1, act=True
        c2, s = width(a[0]), int(a[2]) if len(a) > 2 else 1
        k = int(a[1]) if len(a) > 1 else 3
        if k != 3 or (len(a) > 3 and a[3] not in (None, 1)) or (len(a) > 4 and a[4] != 1):
            raise ValueError("RepConv needs k=3, p=None or 1 and g=1")
        return {"c2": c2, "s": s, "act": parse_activation(a[5] if len(a) > 5 else True, "RepConv"),
                "identity": c2 == c_in[0] and s == 1}
    if module == "DownC":  # c2, (n), k=2; inner widths as officially: cv1 keeps c1, cv2 and cv3 take c2/2
        c2 = width(a[0])
        return {"cv1": c_in[0], "cv2": c2 // 2, "cv3": c2 // 2, "k": int(a[2]) if len(a) > 2 else 2}
    if module == "SPPCSPC":  # c2, (n), shortcut, g, e=0.5, k=(5, 9, 13)
        c2 = width(a[0])
        e = float(a[4]) if len(a) > 4 else 0.5
        k = [int(x) for x in (a[5] if len(a) > 5 else (5, 9, 13))]
        c_ = int(2 * c2 * e)
        return {**{f"cv{j}": c_ for j in range(1, 7)}, "cv7": c2, "k": k}
    if module == "MP":
        return {"k": int(a[0]) if a else 2}
    if module == "SP":
        return {"k": int(a[0]) if a else 3, "s": int(a[1]) if len(a) > 1 else 1}
    if module == "Upsample":  # size, scale_factor, mode
        return {"scale_factor": a[1], "mode": str(a[2]) if len(a) > 2 else "nearest"}
    if module == "Concat":
        return {"d": int(a[0]) if a else 1}
    if module in HEAD_MODULES:
        return {}  # nc and anchors live on the Architecture
    return {}  # ReOrg, Shortcut


def parse_cfg(cfg: dict[str, Any], source: str = "cfg", nc: int | None = None) -> Architecture:
    """Resolve an official YOLOv7 cfg dict into an :class:`Architecture` (``width/depth_multiple`` applied).

    Args:
        cfg: the parsed YAML of an official cfg (or the ``yaml`` attribute of an official checkpoint).
        source: file name used in error messages.
        nc: overrides the cfg's class count, as the official ``Model(cfg, nc=...)`` does.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: a YOLOv7 cfg must be a mapping, got {type(cfg).__name__}")
    for key in ("nc", "anchors", "backbone", "head"):
        if key not in cfg:
            raise ConfigError(f"{source}: missing '{key}' (is this a YOLOv7 cfg?)")
    d = dict(cfg)
    if nc is not None:
        d["nc"] = nc
    # Checked first: every width and repeat count below is scaled by these.
    d["nc"] = _bounded(d["nc"], "'nc'", 1, MAX_CLASSES, source, integer=True)
    for key in ("width_multiple", "depth_multiple"):
        d[key] = _bounded(d.get(key, 1.0), f"'{key}'", 0, MAX_MULTIPLE, source, open_low=True)
    if "ch" in d:
        d["ch"] = _bounded(d["ch"], "'ch'", 1, MAX_CHANNELS, source, integer=True)
    anchors = d["anchors"]
    if isinstance(anchors, int):
        raise ConfigError(f"{source}: anchors given as a count need autoanchor, which amc does not run; list them")
    if not (isinstance(anchors, list) and anchors and all(isinstance(r, list) and len(r) % 2 == 0 for r in anchors)):
        raise ConfigError(f"{source}: 'anchors' must be a list of [w, h, w, h, ...] rows")
    rows = list(d["backbone"] or []) + list(d["head"] or [])
    ch = [int(d.get("ch", 3))]
    layers: list[LayerSpec] = []
    for i, row in enumerate(rows):
        layer, c2 = _resolve_row(i, row, d, ch, source)
        layers.append(layer)
        if i == 0:
            ch = []  # the official index space: ch[j] is layer j's width from here on
        ch.append(c2)
    try:
        pixels = [[float(x) for x in r] for r in anchors]
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: 'anchors' must hold numbers (anchor sizes in pixels)") from None
    arch = Architecture(nc=int(d["nc"]), anchors=pixels, layers=layers, ch=int(d.get("ch", 3)))
    validate(arch, source)
    return arch


def _bounded(value: Any, what: str, low: float, high: float, source: str, integer: bool = False,
             open_low: bool = False) -> Any:
    """``value`` as an int (``integer``) or float within ``[low, high]`` (``(low, high]`` if ``open_low``).

    ``what`` names the value in the error (``'nc'``, ``layer 3 (Conv) 'k'``). Numeric strings count (YAML 1.1
    reads ``1e5`` as a string); booleans, NaN and anything else do not.
    """
    kind = "an integer" if integer else "a number"
    bounds = f"{'(' if open_low else '['}{low:g}, {high:g}]"
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number: int | float = value if isinstance(value, int) else float(value)  # an int of any size stays exact
        if integer and isinstance(number, float):
            if not number.is_integer():  # also inf and NaN
                raise ValueError
            number = int(number)
    except ValueError:
        raise ConfigError(f"{source}: {what} must be {kind} in {bounds}, got {value!r}") from None
    if not (low < number if open_low else low <= number) or not number <= high:  # NaN fails both
        raise ConfigError(f"{source}: {what} must be {kind} in {bounds}, got {value!r}")
    return number


#: Integer arguments per module and their bounds (``n``: repeats, any module; see :func:`_check_sizes`).
_INT_ARGS: dict[str, dict[str, tuple[int, int]]] = {
    "Conv": {"k": (1, MAX_KERNEL), "s": (1, MAX_KERNEL), "g": (1, MAX_CHANNELS)},
    "RepConv": {"s": (1, MAX_KERNEL)},
    "DownC": {"k": (1, MAX_KERNEL)},
    "MP": {"k": (1, MAX_KERNEL)},
    "SP": {"k": (1, MAX_KERNEL), "s": (1, MAX_KERNEL)},
}


def _check_sizes(arch: Architecture, source: str) -> None:
    """Every size ``arch`` declares within the bounds above (before anything is computed from them)."""
    _bounded(arch.nc, "'nc'", 1, MAX_CLASSES, source, integer=True)
    _bounded(arch.ch, "'ch'", 1, MAX_CHANNELS, source, integer=True)
    lengths = {len(row) for row in arch.anchors}
    if len(lengths) != 1 or not 2 <= lengths.pop() <= 2 * MAX_ANCHORS:
        raise ConfigError(f"{source}: every anchor row must list the same number (1 to {MAX_ANCHORS}) of w, h pairs")
    bad = next((x for row in arch.anchors for x in row if not (math.isfinite(x) and x > 0)), None)
    if bad is not None:
        raise ConfigError(f"{source}: anchors must be positive sizes in pixels, got {bad}")
    for i, layer in enumerate(arch.layers):
        where, a = f"layer {i} ({layer.module})", layer.args
        for key in WIDTH_KEYS.get(layer.module, ()):
            value = a.get(key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{source}: {where} needs an integer '{key}', got {value!r}")
            _bounded(value, f"{where} '{key}'", 1, MAX_CHANNELS, source, integer=True)
        bounds = {**_INT_ARGS.get(layer.module, {}), "n": (1, MAX_REPEATS)}
        for key, (low, high) in bounds.items():
            if key in a or (layer.module == "Conv" and key in ("k", "s")):  # Conv states k and s; others default
                _bounded(a.get(key), f"{where} '{key}'", low, high, source, integer=True)
        if layer.module == "Conv" and a.get("p") is not None:
            _bounded(a["p"], f"{where} 'p'", 0, MAX_KERNEL, source, integer=True)
        if layer.module == "SPPCSPC":
            kernels = a.get("k", (5, 9, 13))
            if not isinstance(kernels, (list, tuple)) or not kernels:
                raise ConfigError(f"{source}: {where} needs a list of pooling sizes 'k', got {kernels!r}")
            for k in kernels:
                _bounded(k, f"{where} 'k'", 1, MAX_KERNEL, source, integer=True)
        if layer.module == "Upsample":
            _bounded(a.get("scale_factor"), f"{where} 'scale_factor'", 0, MAX_KERNEL, source, open_low=True)


def validate(arch: Architecture, source: str) -> None:
    """Check an architecture: sizes within bounds, known modules, earlier inputs, matching shapes, a head last."""
    _check_sizes(arch, source)
    if not arch.layers or arch.head.module not in HEAD_MODULES:
        raise ConfigError(f"{source}: the last layer must be a detection head ({', '.join(HEAD_MODULES)})")
    nl = len(arch.anchors)
    for i, layer in enumerate(arch.layers):
        if layer.module not in KNOWN_MODULES:
            raise ConfigError(f"{source}: layer {i} uses unknown module {layer.module!r}")
        if layer.module in HEAD_MODULES and i != len(arch.layers) - 1:
            raise ConfigError(f"{source}: layer {i}: a detection head must be the last layer")
        for j in layer.sources(i):
            if not -1 <= j < i:
                raise ConfigError(f"{source}: layer {i} reads from layer {j}, which is not an earlier layer")
    head = arch.head
    n_in = len(head.sources(len(arch.layers) - 1))
    expected = 2 * nl if head.module == "IAuxDetect" else nl
    if n_in != expected:
        raise ConfigError(f"{source}: {head.module} reads {n_in} layers but there are {nl} anchor rows "
                          f"(expected {expected} inputs)")
    channels = arch.channels()
    for i, layer in enumerate(arch.layers):
        ins = [arch.ch if j < 0 else channels[j] for j in layer.sources(i)]
        if layer.module == "RepConv" and layer.args.get("identity") and (
                ins[0] != channels[i] or layer.args.get("s", 1) != 1):
            raise ConfigError(f"{source}: layer {i}: a RepConv identity branch needs stride 1 and equal widths, "
                              f"got {ins[0]} -> {channels[i]}")
        if layer.module == "Shortcut" and len(set(ins)) != 1:
            raise ConfigError(f"{source}: layer {i} adds tensors of different widths {ins}")
        if any(c <= 0 for c in ins) or (layer.module not in HEAD_MODULES and channels[i] <= 0):
            raise ConfigError(f"{source}: layer {i} ({layer.module}) has an empty channel dimension")
        g = layer.args.get("g", 1) if layer.module == "Conv" else 1
        if ins[0] % g or channels[i] % g:  # torch refuses such a convolution, with a traceback
            raise ConfigError(f"{source}: layer {i} (Conv) has {g} groups, which do not divide its widths "
                              f"{ins[0]} -> {channels[i]}")


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file with a clear error for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: file not found")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:  # PyYAML recurses per nesting level: a hostile "[[[[...]]]]"
        raise ConfigError(f"{p}: YAML nested too deeply to be a model description") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (expected YAML)") from None


def load_cfg(path: str | Path, nc: int | None = None) -> Architecture:
    """Read and resolve an official YOLOv7 cfg file."""
    return parse_cfg(read_yaml(path), source=str(path), nc=nc)
