"""Fake quantization of an amc model where the deployed INT8 graph quantizes, with ``torch.ao.quantization``.

``amc-export int8=true`` hands the fused float graph to ONNX Runtime's static quantizer (:mod:`amc.export.quantize`):
every convolution's weights become int8 with one symmetric scale per output channel, and every activation tensor
of the quantized part gets one affine uint8 (or int8) scale: the input image, each convolution's output, each
activation's output (LeakyReLU, the Sigmoid and Mul of SiLU; a ReLU is folded into its convolution's range), each
concatenation and sum. Max pooling, nearest upsampling and slicing keep their input's scale. The detection
head's convolutions stay in float by default (``keep_head``), and the box decoding always does.

:func:`prepare_qat` makes a copy of a model that rounds exactly there, with PyTorch's own quantization
modules: ``torch.ao.nn.intrinsic.qat.ConvBn2d`` and ``torch.ao.nn.qat.Conv2d`` (weights through a per-channel
``FakeQuantize``) and ``FakeQuantize`` modules on the activations, attached as eager-mode ``torch.ao.quantization`` does (an ``activation_post_process`` child and
a forward hook), all built from one ``torch.ao.quantization.QConfig`` (:func:`qconfig`):

* weights: ``MovingAveragePerChannelMinMaxObserver`` with averaging constant 1, symmetric int8 in [-127, 127]
  (ONNX Runtime's range; [-64, 64] with ``reduce_range``): the scale is ``max |w| / 127`` of the current weights
  of each output channel, which is what ONNX Runtime computes from the weights it is given;
* activations: ``MovingAverageMinMaxObserver`` (affine uint8 in [0, 255], or int8 in [-128, 127]), ranges that
  follow the training batches with the moving average ``averaging_constant`` (ONNX Runtime's MinMax calibration
  uses the same formula for scale and zero point). They are observed in training mode only
  (:class:`ActivationFakeQuantize`): evaluating the model, or its EMA copy, never fits them to the evaluation
  images.

BatchNorm stays during training, with its folding simulated as ``torch.ao`` does it
(``torch.ao.nn.intrinsic.qat.ConvBn2d``: the weights are fake-quantized as folded with the running statistics,
the batch statistics still normalize): training a model with its BatchNorm folded away costs the demo 0.005
mAP@0.5:0.95 over two epochs, fake quantization or not. RepConv branches and implicit layers are folded first (as
the export folds them), and a model that is already fused trains as it is. :func:`deploy_form` folds the
BatchNorms into the convolutions (``torch.ao.nn.qat.Conv2d``, the same quantizers): what is saved, evaluated the
same way, and exported.

A QAT model is saved (:func:`save_qat_model`) as an amc model folder whose ``weights.safetensors`` holds the
float weights (any amc command loads it as a plain fused model) plus ``quantization.safetensors`` with every
quantizer's state (scales, zero points, observed ranges) and the scheme under ``quantization:`` in
``architecture.yaml``: tensors and plain metadata, nothing pickled. :func:`load_qat_model` rebuilds it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.ao.nn import intrinsic as nni
from torch.ao.nn import qat as nnqat
from torch.ao.nn.intrinsic import qat as nniqat
from torch.ao.quantization import (FakeQuantize, FakeQuantizeBase, MovingAverageMinMaxObserver,
                                   MovingAveragePerChannelMinMaxObserver, QConfig)

from amc.atomic import atomic_dir
from amc.errors import CheckpointError, ConfigError
from amc.export.quantize import ACTIVATION_TYPES
from amc.models import modules as M
from amc.models.arch import Architecture, read_yaml
from amc.models.flops import count_architecture
from amc.models.heads import Detect
from amc.models.io import (ARCH_FILE, MAX_PARAMETERS_PER_WEIGHT, WEIGHTS_FILE, load_model, resolve_path,
                          save_model)
from amc.models.yolo import YOLOv7

#: The ``quantization.format`` of a QAT model folder's ``architecture.yaml``.
QAT_FORMAT = "amc-qat/1"
#: The quantizers' state in a QAT model folder (beside ``weights.safetensors``).
QUANT_FILE = "quantization.safetensors"


@dataclass(frozen=True)
class QuantScheme:
    """What is quantized and how: ``amc-export``'s ``quantize.*`` settings, which a QAT model trains for.

    Attributes:
        per_channel: one weight scale per output channel (else one per tensor).
        activation_type: ``QUInt8`` (affine uint8, ONNX Runtime's x86 default) or ``QInt8`` activations.
        keep_head: the detection head's convolutions stay in float (as ``amc-export``'s ``quantize.keep_head``).
        reduce_range: 7-bit weights ([-64, 64]), for x86 CPUs without VNNI.
        averaging_constant: how fast the activation ranges follow the training batches (the observers' moving
            average; ``torch.ao``'s default 0.01).
    """

    per_channel: bool = True
    activation_type: str = "QUInt8"
    keep_head: bool = True
    reduce_range: bool = False
    averaging_constant: float = 0.01

    def __post_init__(self) -> None:
        for name in ("per_channel", "keep_head", "reduce_range"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"quantization {name} must be true or false, got {getattr(self, name)!r}")
        if self.activation_type not in ACTIVATION_TYPES:
            raise ConfigError(f"quantization activation_type must be one of {', '.join(ACTIVATION_TYPES)}, got "
                              f"{self.activation_type!r}")
        value = self.averaging_constant
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
            raise ConfigError(f"quantization averaging_constant must be in (0, 1], got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "quantization") -> "QuantScheme":
        """The scheme a dict describes; one-line :class:`CheckpointError` naming ``source`` when it cannot."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: the quantization scheme must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"format", "batch_norm"})
        if unknown:
            raise CheckpointError(f"{source}: unknown quantization setting(s) {', '.join(map(str, unknown))}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except ConfigError as e:
            raise CheckpointError(f"{source}: {e}") from None


# ----------------------------------------------------------------------------------------------- quantizers


class ActivationFakeQuantize(FakeQuantize):
    """``torch.ao.quantization.FakeQuantize`` whose observer only learns in training mode.

    In eval mode the scale and zero point are those of the range observed so far (in an EMA copy of the model:
    the averaged range), so that evaluating a model never fits its quantization to the evaluation images.
    """

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if self.training or self.observer_enabled[0] == 0:
            return super().forward(X)
        self.sync_qparams()
        if self.fake_quant_enabled[0] == 0:
            return X
        return torch.fake_quantize_per_tensor_affine(X, self.scale, self.zero_point, self.quant_min, self.quant_max)

    @torch.no_grad()
    def sync_qparams(self) -> None:
        """Scale and zero point from the observed range (nothing to do before the first observation)."""
        observer = self.activation_post_process
        if observer.min_val.numel() == 0 or not bool(torch.isfinite(observer.min_val).all()):
            return
        scale, zero_point = self.calculate_qparams()
        self.scale.resize_(scale.shape).copy_(scale)
        self.zero_point.resize_(zero_point.shape).copy_(zero_point)


class SharedFakeQuantize(nn.Module):
    """Fake quantization with another quantizer's scale and zero point (``torch.fake_quantize_per_tensor_affine``).

    For the output of an operation that ONNX Runtime keeps on its input's int8 grid (max pooling, nearest
    upsampling): numerically nothing changes for an input already on that grid, but the exported graph then
    quantizes the output as ONNX Runtime's own quantizer does, so that the next operation runs on int8. It holds
    no state of its own: the source belongs to the module that owns it.
    """

    def __init__(self, source: FakeQuantize) -> None:
        super().__init__()
        self._source = (source,)  # a tuple, not a child: its state is saved once, by its owner

    @property
    def source(self) -> FakeQuantize:
        return self._source[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.source
        if s.fake_quant_enabled[0] == 0:
            return x
        return torch.fake_quantize_per_tensor_affine(x, s.scale, s.zero_point, s.quant_min, s.quant_max)


class QuantSiLU(nn.Module):
    """SiLU as the exported graph computes it, ``x * sigmoid(x)``, with the Sigmoid's and the product's outputs
    fake-quantized (ONNX Runtime quantizes both nodes)."""

    def __init__(self, config: QConfig) -> None:
        super().__init__()
        self.sigmoid_quant = config.activation()
        self.activation_post_process = config.activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation_post_process(x * self.sigmoid_quant(torch.sigmoid(x)))


def qconfig(scheme: QuantScheme) -> QConfig:
    """The ``torch.ao.quantization.QConfig`` of a scheme (see the module docstring)."""
    if scheme.activation_type == "QUInt8":
        act_dtype, act_min, act_max = torch.quint8, 0, 255
    else:
        act_dtype, act_min, act_max = torch.qint8, -128, 127
    activation = ActivationFakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver, quant_min=act_min, quant_max=act_max, dtype=act_dtype,
        qscheme=torch.per_tensor_affine, averaging_constant=float(scheme.averaging_constant))
    limit = 64 if scheme.reduce_range else 127
    if scheme.per_channel:
        weight = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-limit,
                                        quant_max=limit, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                        ch_axis=0, averaging_constant=1.0)
    else:
        weight = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=-limit, quant_max=limit,
                                        dtype=torch.qint8, qscheme=torch.per_tensor_symmetric,
                                        averaging_constant=1.0)
    return QConfig(activation=activation, weight=weight)


# ----------------------------------------------------------------------------------------------- preparing


def _quantize_output(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the module's output through its ``activation_post_process`` (as eager-mode ``torch.ao``)."""
    return module.activation_post_process(output)


def _quantize_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook of the model: the input image through ``input_quant``."""
    return (module.input_quant(args[0]), *args[1:])


def _own(module: nn.Module, config: QConfig) -> FakeQuantize:
    """Fake-quantize ``module``'s output with a quantizer of its own; returns that quantizer."""
    module.activation_post_process = config.activation()
    module.register_forward_hook(_quantize_output)
    return module.activation_post_process


def _shared(module: nn.Module, source: FakeQuantize) -> FakeQuantize:
    """Fake-quantize ``module``'s output on ``source``'s grid (its input's); returns ``source``."""
    module.activation_post_process = SharedFakeQuantize(source)
    module.register_forward_hook(_quantize_output)
    return source


def _qat_conv(conv: nn.Conv2d, config: QConfig) -> nnqat.Conv2d:
    """``torch.ao.nn.qat.Conv2d.from_float``: the same convolution with fake-quantized weights."""
    conv.qconfig = config
    qconv = nnqat.Conv2d.from_float(conv)
    del conv.qconfig
    qconv.qconfig = None  # the QConfig's factories are not state
    return qconv


def _qat_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, config: QConfig) -> nniqat.ConvBn2d:
    """``torch.ao.nn.intrinsic.qat.ConvBn2d.from_float``: the convolution and its BatchNorm, trained with the
    folding simulated (the weights fake-quantized as folded with the running statistics)."""
    fused = nni.ConvBn2d(conv, bn)
    fused.qconfig = config
    qconv = nniqat.ConvBn2d.from_float(fused)
    qconv.qconfig = None
    # A zero BatchNorm weight would divide by zero in the one-pass approximation: torch's two-pass path then
    qconv._enable_slow_path_for_better_numerical_stability = bool((bn.weight == 0).any())
    return qconv


def _conv_block(block: nn.Module, attr: str, config: QConfig, where: str) -> FakeQuantize:
    """A Conv / fused RepConv (``attr``: its convolution) with its activation; returns its output's quantizer."""
    bn = getattr(block, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):  # an unfused Conv: its BatchNorm trains on, folded for the quantizer
        block.conv, block.bn = _qat_conv_bn(block.conv, bn, config), nn.Identity()
    else:
        setattr(block, attr, _qat_conv(getattr(block, attr), config))
    conv, act = getattr(block, attr), block.act
    if isinstance(act, nn.LeakyReLU):
        _own(conv, config)
        return _own(act, config)
    if isinstance(act, nn.ReLU):  # ONNX Runtime folds a ReLU into the range of its convolution's output
        return _own(act, config)
    if isinstance(act, nn.Identity):
        return _own(conv, config)
    if isinstance(act, nn.SiLU):
        _own(conv, config)
        block.act = QuantSiLU(config)
        return block.act.activation_post_process
    raise ConfigError(f"quantization-aware training cannot quantize {where}: activation {type(act).__name__} is not "
                      f"supported (LeakyReLU, ReLU, SiLU or none)")


class _QuantSPPCSPC(M.SPPCSPC):
    """SPPCSPC with its two inner concatenations fake-quantized (``cat_quant``); otherwise its own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(self.cat_quant[0](torch.cat([x1] + [m(x1) for m in self.m], 1))))
        return self.cv7(self.cat_quant[1](torch.cat((y1, self.cv2(x)), dim=1)))


def _layer(layer: nn.Module, inputs: list[FakeQuantize], config: QConfig, where: str) -> FakeQuantize:
    """Fake-quantize one layer (``inputs``: the quantizers of what it reads); returns its output's quantizer."""
    if isinstance(layer, nn.Sequential):  # a repeated layer: each copy reads the previous one
        out = inputs
        for sub in layer:
            out = [_layer(sub, out, config, where)]
        return out[0]
    if isinstance(layer, M.Conv):
        return _conv_block(layer, "conv", config, where)
    if isinstance(layer, M.RepConv):
        return _conv_block(layer, "rbr_reparam", config, where)
    if isinstance(layer, (M.MP, M.SP)):
        return _shared(layer.m, inputs[0])
    if isinstance(layer, nn.Upsample):
        if layer.mode != "nearest":
            raise ConfigError(f"quantization-aware training cannot quantize {where}: {layer.mode} upsampling (nearest "
                              f"only)")
        return _shared(layer, inputs[0])
    if isinstance(layer, (M.Concat, M.Shortcut, M.ReOrg)):
        return _own(layer, config)
    if isinstance(layer, M.DownC):
        for name in ("cv1", "cv2", "cv3"):
            _conv_block(getattr(layer, name), "conv", config, where)
        _shared(layer.mp, inputs[0])
        return _own(layer, config)  # its output is the concatenation
    if isinstance(layer, M.SPPCSPC):
        for name in ("cv1", "cv2", "cv3", "cv4", "cv5", "cv6", "cv7"):
            out = _conv_block(getattr(layer, name), "conv", config, where)
            if name == "cv4":
                for pool in layer.m:
                    _shared(pool, out)
        layer.cat_quant = nn.ModuleList([config.activation(), config.activation()])
        layer.__class__ = _QuantSPPCSPC
        return out  # cv7's
    raise ConfigError(f"quantization-aware training cannot quantize {where}: {type(layer).__name__} layers are not "
                      f"supported")


def prepare_qat(model: YOLOv7, scheme: QuantScheme | None = None) -> YOLOv7:
    """A copy of ``model`` with fake quantization where ``amc-export int8=true`` quantizes (module docstring).

    The copy is in the mode ``model`` is in and on its device; ``model`` is left as it is. Its RepConv blocks and
    implicit layers are folded; a Conv's BatchNorm trains on inside a ``ConvBn2d`` (an already fused model has
    none). Weight scales follow the (folded) weights at every forward pass; activation ranges start unobserved:
    :func:`calibrate` them before training.

    Raises:
        ConfigError: a layer or activation the INT8 export cannot quantize the same way.
    """
    scheme = scheme or QuantScheme()
    config = qconfig(scheme)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    qat = copy.deepcopy(model).float()
    for m in list(qat.modules()):
        if isinstance(m, (M.RepConv, Detect)):  # folded as the export folds them (a Conv's BatchNorm: below)
            m.fuse()
    qat.input_quant = config.activation()
    qat.register_forward_pre_hook(_quantize_input)
    out: dict[int, FakeQuantize] = {}
    for i, (layer, sources) in enumerate(zip(qat.model, qat.sources)):
        if isinstance(layer, Detect):
            if not scheme.keep_head:
                for k, conv in enumerate(layer.m):
                    layer.m[k] = _qat_conv(conv, config)
                    _own(layer.m[k], config)
            continue
        out[i] = _layer(layer, [qat.input_quant if j < 0 else out[j] for j in sources], config, f"layer {i}")
    qat.qat_scheme = scheme
    return qat.to(device).train(model.training)


def is_qat(model: nn.Module) -> bool:
    """Whether ``model`` was made by :func:`prepare_qat`."""
    return isinstance(getattr(model, "qat_scheme", None), QuantScheme)


def scheme_of(model: nn.Module) -> QuantScheme:
    """The scheme a QAT model was prepared with; :class:`ConfigError` for any other model."""
    if not is_qat(model):
        raise ConfigError("not a quantization-aware model (make one with amc.quant.prepare_qat)")
    return model.qat_scheme


@torch.no_grad()
def calibrate(model: YOLOv7, batches: Iterable[torch.Tensor]) -> int:
    """Start the activation ranges on ``batches`` (float images in [0, 1]); returns how many batches were seen.

    Each range becomes the mean over the batches of each batch's minimum and maximum (the observers' moving
    average with weight 1/n for the n-th batch); training then moves it at ``averaging_constant``.
    """
    scheme_of(model)
    observers = [q.activation_post_process for q in model.modules() if isinstance(q, ActivationFakeQuantize)]
    constants = [o.averaging_constant for o in observers]
    was_training = model.training
    device = next(model.parameters()).device
    model.train()  # observers learn in training mode
    for m in model.modules():  # ... but the BatchNorm statistics are the model's: normalize with them, unchanged
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    n = 0
    try:
        for n, images in enumerate(batches, 1):
            for o in observers:
                o.averaging_constant = 1.0 / n
            model(images.to(device).float())
    finally:
        for o, c in zip(observers, constants):
            o.averaging_constant = c
        model.train(was_training)
    sync_qparams(model)
    return n


@torch.no_grad()
def sync_qparams(model: nn.Module) -> None:
    """Every scale and zero point from its observer: activations from their observed ranges, weights from the
    current weights (what is evaluated and exported is then what is stored)."""
    for m in model.modules():
        if isinstance(m, ActivationFakeQuantize):
            m.sync_qparams()
        elif isinstance(m, nnqat.Conv2d) and m.weight_fake_quant.observer_enabled[0] == 1:
            m.weight_fake_quant(m.weight.detach())
        elif isinstance(m, nniqat.ConvBn2d) and m.weight_fake_quant.observer_enabled[0] == 1:
            m.weight_fake_quant(_fold(m)[0])


def fake_quantizers(model: nn.Module) -> dict[str, FakeQuantizeBase]:
    """The model's quantizers by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FakeQuantizeBase)}


def split_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the float model's state, the quantizers' state) of a QAT model's ``state_dict``."""
    prefixes = tuple(f"{name}." for name in fake_quantizers(model))
    weights, quant = {}, {}
    for key, value in model.state_dict().items():
        (quant if key.startswith(prefixes) else weights)[key] = value
    return weights, quant


@torch.no_grad()
def _fold(cb: nniqat.ConvBn2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of a ConvBn2d's convolution with its BatchNorm folded in (running statistics)."""
    return M.fold_batch_norm(cb.weight.detach(), None if cb.bias is None else cb.bias.detach(), cb.bn)


def deploy_form(model: YOLOv7) -> YOLOv7:
    """A copy of a QAT model with every ``ConvBn2d`` folded into a ``torch.ao.nn.qat.Conv2d`` (folded weights and
    bias, the same quantizers): the fused model the INT8 graph is exported from. In eval mode it computes what the
    model computes (the BatchNorm with its running statistics). A model without ``ConvBn2d`` is copied as it is."""
    scheme = scheme_of(model)
    m = copy.deepcopy(model)
    for block in list(m.modules()):
        cb = getattr(block, "conv", None)
        if not isinstance(block, M.Conv) or not isinstance(cb, nniqat.ConvBn2d):
            continue
        weight, bias = _fold(cb)
        conv = nnqat.Conv2d(cb.in_channels, cb.out_channels, cb.kernel_size, cb.stride, cb.padding, cb.dilation,
                            cb.groups, bias=True, qconfig=qconfig(scheme)).to(weight.device)
        conv.qconfig = None
        conv.weight.data.copy_(weight)
        conv.bias.data.copy_(bias)
        conv.weight_fake_quant = cb.weight_fake_quant  # the same quantizer: its scales are the folded weights'
        if hasattr(cb, "activation_post_process"):
            conv.activation_post_process = cb.activation_post_process  # shared quantizers keep pointing at it
            conv.register_forward_hook(_quantize_output)
        conv.train(cb.training)
        block.conv = conv
    return m


def float_model(model: YOLOv7) -> YOLOv7:
    """The fused float model with a QAT model's weights (what the QAT model computes without fake quantization)."""
    scheme_of(model)
    plain = YOLOv7(model.arch, model.names, initialize=False).fuse()
    weights, _ = split_state(deploy_form(model))
    plain.load_state_dict({k: v.detach().float().cpu() for k, v in weights.items()}, strict=True)
    return plain.train(model.training)


# ----------------------------------------------------------------------------------------------- saving, loading


def save_qat_model(model: YOLOv7, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Save a QAT model as an amc model folder plus its quantizers' state (module docstring), atomically.

    ``extra``: more readable metadata for ``architecture.yaml`` (as :func:`amc.models.save_model`).
    """
    scheme = scheme_of(model)
    sync_qparams(model)
    model = deploy_form(model)
    sync_qparams(model)
    _, quant = split_state(model)
    target = Path(path)
    meta = {**(extra or {}), "quantization": {"format": QAT_FORMAT, **scheme.to_dict()}}
    with atomic_dir(target) as tmp:
        inner = save_model(float_model(model), tmp / "model", extra=meta)
        for f in inner.iterdir():
            os.replace(f, tmp / f.name)
        inner.rmdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in quant.items()}, str(tmp / QUANT_FILE),
                  metadata={"format": QAT_FORMAT})
    return target


def qat_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``quantization:`` entry of an amc model folder's ``architecture.yaml``, None for any other model."""
    try:
        p = resolve_path(path)
    except CheckpointError:
        return None
    folder = p if p.is_dir() else p.parent
    if not (folder / ARCH_FILE).is_file():
        return None
    try:
        meta = read_yaml(folder / ARCH_FILE)
    except (ConfigError, CheckpointError, OSError):
        return None
    found = meta.get("quantization") if isinstance(meta, dict) else None
    return found if isinstance(found, dict) else None


def is_qat_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a model folder written by a quantization-aware fine-tune."""
    return qat_metadata(path) is not None


def load_qat_model(path: str | os.PathLike[str]) -> tuple[YOLOv7, list[str]]:
    """A QAT model saved by :func:`save_qat_model`, in eval mode on the CPU, and its class names.

    Also reads a folder the training loop wrote from a QAT model during a quantization-aware fine-tune
    (:func:`amc.models.save_model` of the whole model: the quantizers' state inside ``weights.safetensors``).

    Raises:
        CheckpointError: not a QAT model folder; its quantizers' state missing, unreadable or not this model's.
    """
    meta = qat_metadata(path)
    if meta is None:
        raise CheckpointError(f"{path}: not a quantization-aware model (no quantization entry in its {ARCH_FILE})")
    p = resolve_path(path)
    folder = p if p.is_dir() else p.parent
    if meta.get("format") != QAT_FORMAT:
        raise CheckpointError(f"{folder / ARCH_FILE}: quantization format {meta.get('format')!r}, this amc reads "
                              f"{QAT_FORMAT!r}")
    scheme = QuantScheme.from_dict(meta, f"{folder / ARCH_FILE}")
    file = folder / QUANT_FILE
    if file.is_file():
        plain, names = load_model(folder)  # the float model, with every check of an amc model
        state = _read(file)
        if not plain.fused:
            raise CheckpointError(f"{folder}: a quantization-aware model is saved fused, this one is not")
    else:  # the training loop's copy: build the model from its architecture, read everything from the weights
        plain, names, state = _training_copy(folder, fused=not meta.get("batch_norm", False))
        if not plain.fused and not meta.get("batch_norm", False):
            raise CheckpointError(f"{folder}: a quantization-aware model is saved fused, this one is not")
    model = prepare_qat(plain, scheme).eval()
    weights, own = split_state(model)
    source = str(file if file.is_file() else folder / WEIGHTS_FILE)
    if not file.is_file():  # the training loop's copy holds both: split it the model's way
        missing = sorted(set(weights) - set(state))
        if missing:
            raise CheckpointError(f"{source}: weights do not fit the architecture ({len(missing)} missing, e.g. "
                                  f"{missing[0]})")
        weights, state = {k: state[k] for k in weights}, {k: v for k, v in state.items() if k not in weights}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"{len(missing)} missing, e.g. {missing[0]}" if missing else f"{len(unexpected)} unexpected, " \
                                                                           f"e.g. {unexpected[0]}"
        raise CheckpointError(f"{source}: the quantizers do not fit the model ({what})")
    try:
        model.load_state_dict({**weights, **state}, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source}: the tensors do not fit the model ({str(e).splitlines()[0]})") from None
    _check_quantizers(model, source)
    return model, names


def _read(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


def _training_copy(folder: Path, fused: bool) -> tuple[YOLOv7, list[str], dict[str, torch.Tensor]]:
    """The float model an amc folder's architecture describes (fused, or with its BatchNorms for a model that
    trained with them: ``quantization.batch_norm``), its names, and every tensor of its weights."""
    meta = read_yaml(folder / ARCH_FILE)
    if not isinstance(meta, dict) or "architecture" not in meta:
        raise CheckpointError(f"{folder / ARCH_FILE}: not an amc model description (no 'architecture' key)")
    arch = Architecture.from_dict(meta["architecture"], source=str(folder / ARCH_FILE))
    state = _read(folder / WEIGHTS_FILE)
    held = sum(t.numel() for t in state.values())
    if count_architecture(arch, 64).params > MAX_PARAMETERS_PER_WEIGHT * held:
        raise CheckpointError(f"{folder / ARCH_FILE} declares more parameters than {WEIGHTS_FILE} holds: the "
                              f"architecture does not describe these weights")
    names = meta.get("names")
    model = YOLOv7(arch, names if isinstance(names, list) and len(names) == arch.nc else None, initialize=False)
    if fused:
        model.fuse()
    return model.eval(), model.names, state


def _check_quantizers(model: nn.Module, source: str) -> None:
    """Refuse loaded quantizer state of the wrong size or with a non-finite or non-positive scale."""
    for name, fq in fake_quantizers(model).items():
        channels = None
        if fq.is_per_channel:
            owner = model.get_submodule(name.rsplit(".", 1)[0])
            channels = owner.weight.shape[0]
        expected = channels or 1
        if fq.scale.numel() != expected or fq.zero_point.numel() != expected:
            raise CheckpointError(f"{source}: {name} holds {fq.scale.numel()} scale(s), the model needs {expected}")
        if not bool(torch.isfinite(fq.scale).all()) or bool((fq.scale <= 0).any()):
            raise CheckpointError(f"{source}: {name} has a non-finite or non-positive scale")
        low, high = fq.quant_min, fq.quant_max
        if bool((fq.zero_point < low).any()) or bool((fq.zero_point > high).any()):
            raise CheckpointError(f"{source}: {name} has a zero point outside [{low}, {high}]")
