"""Knowledge distillation from an unpruned YOLOv7 (the teacher) into its pruned copy (the student).

A pruned model keeps the teacher's layers, strides, anchors and head outputs; only widths differ. Two terms,
added to the YOLOv7 loss by :class:`DistillationLoss`:

* **Output level** (:func:`output_distillation`), objectness-scaled distillation as proposed for YOLO by
  Mehta & Ozturk ("Object detection at 200 frames per second", ECCV workshops 2018): on every lead map,

  - objectness: the binary KL divergence from the teacher's to the student's objectness probability, averaged
    over every anchor of every cell (so the student learns where the teacher sees *no* object too);
  - classes: the binary KL of each class probability, averaged over classes, and
  - boxes: the squared difference of the decoded box parameters (YOLOv7's ``2 sigmoid - 0.5`` centre offsets in
    cells and ``(2 sigmoid)^2`` sizes in anchors: scale-free across levels), averaged over the 4 coordinates,

  both weighted per anchor by the teacher's objectness probability: the anchors that match an object for the
  teacher dominate, background anchors (whose class and box outputs are noise) hardly count. Probabilities are
  taken at a temperature ``T`` (logits divided by ``T``, KL terms multiplied by ``T^2`` as Hinton et al. do,
  so their gradients keep their scale). The levels are averaged. A KL (not a BCE against soft targets) is 0
  when the student equals the teacher.

* **Feature level** (:func:`feature_distillation`), FitNets-style hints (Romero et al., ICLR 2015) on chosen
  layers (default: the layers the detection head reads, the last neck features): a learned 1x1 convolution
  per layer (:class:`FeatureAdapters`) maps the student's pruned width to the teacher's, and the squared error
  to the teacher's feature map is divided by the teacher map's mean square (a relative error, comparable
  between layers of different scales), averaged over the layers. The adapters can start at the least-squares
  fit of the teacher's features on the student's (:meth:`FeatureAdapters.fit_`), so the first gradients
  already point at what the student cannot reproduce linearly.

The teacher runs frozen, in eval mode (its BatchNorm statistics are not touched); its raw lead maps in eval mode
are exactly its training-mode maps. Student features are recorded by forward hooks while the student runs in
training mode (so the EMA copy and evaluations, in eval mode, record nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from amc.errors import ConfigError
from amc.models.yolo import YOLOv7

__all__ = ["DistillationLoss", "FeatureAdapters", "check_teacher", "collect_features", "feature_distillation",
           "feature_layers", "output_distillation"]

DISTILL_LOSS_NAMES = ("box", "obj", "cls", "kd_out", "kd_feat", "total")


# --------------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------------
def check_teacher(student: YOLOv7, teacher: YOLOv7) -> None:
    """A teacher must be the student's architecture before pruning: same layers, wiring, classes and anchors.

    Raises:
        ConfigError: naming the first difference.
    """
    s, t = student.arch, teacher.arch
    if len(s.layers) != len(t.layers):
        raise ConfigError(f"the teacher has {len(t.layers)} layers, the pruned model {len(s.layers)}: the teacher "
                          f"must be the unpruned model the pruned one was made from (teacher.path=...)")
    for i, (a, b) in enumerate(zip(s.layers, t.layers)):
        if a.module != b.module or a.from_ != b.from_:
            raise ConfigError(f"layer {i} of the teacher is {b.module} from {b.from_}, of the pruned model {a.module} "
                              f"from {a.from_}: the teacher must be the unpruned model the pruned one was made from")
    if s.nc != t.nc:
        raise ConfigError(f"the teacher predicts {t.nc} classes, the pruned model {s.nc}: distillation needs the "
                          f"same classes")
    if student.head.anchors.shape != teacher.head.anchors.shape or not torch.allclose(
            student.head.anchors.float().cpu(), teacher.head.anchors.float().cpu()):
        raise ConfigError("the teacher's anchors differ from the pruned model's: distillation needs the same anchors")


def feature_layers(model: YOLOv7, layers: Sequence[int] | None = None) -> list[int]:
    """The layer indices whose outputs are distilled: ``layers`` checked, or by default those the head reads.

    Raises:
        ConfigError: an index that is not an integer, out of range, the head itself, or given twice.
    """
    n = len(model.arch.layers)
    if layers is None:
        head = model.arch.layers[-1]
        return sorted(set(head.sources(n - 1)))
    out: list[int] = []
    for x in layers:
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < n - 1:
            raise ConfigError(f"kd.feature_layers: {x!r} is not a layer index in [0, {n - 2}] (the head, layer "
                              f"{n - 1}, is distilled by kd.output_weight)")
        if x in out:
            raise ConfigError(f"kd.feature_layers: layer {x} is listed twice")
        out.append(x)
    return out


# --------------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------------
def _record(store: dict[int, torch.Tensor], index: int, only_training: bool):  # noqa: ANN202
    """A forward hook storing a layer's output (a plain closure: a deep copy of the model shares it, harmlessly)."""

    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        if module.training or not only_training:
            store[index] = output

    return hook


@torch.no_grad()
def collect_features(model: YOLOv7, layers: Sequence[int], images: torch.Tensor) -> dict[int, torch.Tensor]:
    """The outputs of ``layers`` for ``images`` (the model runs as it is, train or eval mode, without gradients)."""
    store: dict[int, torch.Tensor] = {}
    handles = [model.model[i].register_forward_hook(_record(store, i, only_training=False)) for i in layers]
    try:
        model(images)
    finally:
        for h in handles:
            h.remove()
    return store


class FeatureAdapters(nn.Module):
    """One 1x1 convolution (with bias) per distilled layer, from the student's width to the teacher's.

    Args:
        layers: layer indices.
        student_widths, teacher_widths: output channels of those layers in the student and the teacher.
    """

    def __init__(self, layers: Sequence[int], student_widths: Sequence[int], teacher_widths: Sequence[int]) -> None:
        super().__init__()
        self.layers = [int(i) for i in layers]
        self.adapters = nn.ModuleDict({str(i): nn.Conv2d(int(cs), int(ct), 1, bias=True)
                                       for i, cs, ct in zip(self.layers, student_widths, teacher_widths)})

    @classmethod
    def between(cls, student: YOLOv7, teacher: YOLOv7, layers: Sequence[int]) -> "FeatureAdapters":
        """Adapters for ``layers`` from the student's widths to the teacher's (read from their architectures)."""
        cs, ct = student.arch.channels(), teacher.arch.channels()
        return cls(layers, [cs[i] for i in layers], [ct[i] for i in layers])

    def forward(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return self.adapters[str(index)](x)

    @torch.no_grad()
    def fit_(self, student_features: dict[int, torch.Tensor], teacher_features: dict[int, torch.Tensor],
             ridge: float = 1e-3) -> dict[int, float]:
        """Set every adapter to the ridge least-squares map from the student's features to the teacher's.

        Solves ``min_W,b |W x + b - y|^2 + ridge * mean(diag(X^T X)) |W|^2`` over all pixels (in float64).

        Returns:
            Per layer, the relative error left (``mean (Wx + b - y)^2 / mean y^2``) after the fit.
        """
        left: dict[int, float] = {}
        for i in self.layers:
            conv = self.adapters[str(i)]
            x = student_features[i].detach().double().permute(0, 2, 3, 1).reshape(-1, conv.in_channels)
            y = teacher_features[i].detach().double().permute(0, 2, 3, 1).reshape(-1, conv.out_channels)
            xa = torch.cat([x, torch.ones_like(x[:, :1])], 1)
            gram = xa.T @ xa
            reg = ridge * float(torch.diagonal(gram)[:-1].mean().clamp_min(1e-12))
            penalty = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device) * reg
            penalty[-1, -1] = 0.0  # the bias is not shrunk
            solution = torch.linalg.solve(gram + penalty, xa.T @ y)  # (cs + 1, ct)
            conv.weight.copy_(solution[:-1].T.reshape(conv.weight.shape).to(conv.weight))
            conv.bias.copy_(solution[-1].to(conv.bias))
            residual = xa @ solution - y
            left[i] = float(residual.pow(2).mean() / y.pow(2).mean().clamp_min(1e-12))
        return left


# --------------------------------------------------------------------------------------------------------
# The terms
# --------------------------------------------------------------------------------------------------------
def _binary_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(Bernoulli(sigmoid(t)) || Bernoulli(sigmoid(s))), stable for any logits."""
    p = torch.sigmoid(teacher_logits)
    log_pt, log_qt = F.logsigmoid(teacher_logits), F.logsigmoid(-teacher_logits)
    log_ps, log_qs = F.logsigmoid(student_logits), F.logsigmoid(-student_logits)
    return p * (log_pt - log_ps) + (1.0 - p) * (log_qt - log_qs)


def _decoded_box(raw: torch.Tensor) -> torch.Tensor:
    """YOLOv7's box parameters: centre offsets in cells and sizes in anchors, from raw ``(..., 4)`` outputs."""
    y = raw.sigmoid()
    return torch.cat((y[..., :2] * 2.0 - 0.5, (y[..., 2:4] * 2.0) ** 2), -1)


def output_distillation(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor],
                        temperature: float = 1.0) -> torch.Tensor:
    """Objectness-scaled output distillation (see the module docstring), averaged over the levels.

    Args:
        student_maps, teacher_maps: raw lead maps ``(bs, na, ny, nx, 5 + nc)`` per level, same shapes.
        temperature: divides every objectness and class logit (KL terms are multiplied by its square).

    Returns:
        A scalar (float32); 0 when the maps are equal.
    """
    if len(student_maps) != len(teacher_maps):
        raise ValueError(f"{len(student_maps)} student maps but {len(teacher_maps)} teacher maps")
    t2 = temperature * temperature
    total = student_maps[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_maps, teacher_maps):
        if s.shape != t.shape:
            raise ValueError(f"student map {tuple(s.shape)} and teacher map {tuple(t.shape)} differ")
        s, t = s.float(), t.detach().float()
        obj = _binary_kl(t[..., 4] / temperature, s[..., 4] / temperature).mean() * t2
        weight = torch.sigmoid(t[..., 4])
        norm = weight.sum().clamp_min(1e-6)
        box = ((_decoded_box(s[..., :4]) - _decoded_box(t[..., :4])) ** 2).mean(-1)
        level = obj + (weight * box).sum() / norm
        if s.shape[-1] > 6:  # more than one class (a single-class model's class output is not trained)
            cls = _binary_kl(t[..., 5:] / temperature, s[..., 5:] / temperature).mean(-1)
            level = level + (weight * cls).sum() / norm * t2
        total = total + level
    return total / len(student_maps)


def feature_distillation(student_features: dict[int, torch.Tensor], teacher_features: dict[int, torch.Tensor],
                         adapters: FeatureAdapters) -> torch.Tensor:
    """Mean over ``adapters.layers`` of ``mean (adapter(student) - teacher)^2 / mean teacher^2``."""
    total = None
    for i in adapters.layers:
        if i not in student_features or i not in teacher_features:
            raise RuntimeError(f"no recorded feature of layer {i}: the student must run in training mode")
        t = teacher_features[i].detach().float()
        s = adapters(i, student_features[i]).float()
        term = F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-12)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("feature distillation needs at least one layer")
    return total / len(adapters.layers)


# --------------------------------------------------------------------------------------------------------
# The criterion
# --------------------------------------------------------------------------------------------------------
class DistillationLoss:
    """The YOLOv7 loss plus output- and feature-level distillation from a frozen teacher (a Trainer criterion).

    Args:
        base: the student's YOLOv7 loss (:class:`~amc.train.loss.YOLOv7Loss`).
        student: the pruned model being trained (hooks are registered on its feature layers).
        teacher: the unpruned model (frozen and put in eval mode here).
        output_weight: weight of :func:`output_distillation` (0: off).
        feature_weight: weight of :func:`feature_distillation` (0: off).
        temperature: of the output term.
        layers: layers of the feature term (default: the head's inputs, see :func:`feature_layers`).

    ``adapters`` (a :class:`FeatureAdapters`, or None without the feature term) must be trained with the
    student: pass it as the Trainer's ``extra``. Calling it returns ``(loss * batch size, items)`` with items
    ``[box, obj, cls, kd_out, kd_feat, total]``, the KD items already weighted (``total`` is their sum).
    """

    loss_names = DISTILL_LOSS_NAMES

    def __init__(self, base, student: YOLOv7, teacher: YOLOv7, output_weight: float = 1.0,  # noqa: ANN001
                 feature_weight: float = 1.0, temperature: float = 1.0, layers: Sequence[int] | None = None) -> None:
        if output_weight < 0 or feature_weight < 0:
            raise ConfigError(f"kd weights must be >= 0, got output {output_weight} and feature {feature_weight}")
        if not temperature > 0:
            raise ConfigError(f"kd.temperature must be > 0, got {temperature}")
        check_teacher(student, teacher)
        self.base, self.teacher = base, teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.output_weight, self.feature_weight = float(output_weight), float(feature_weight)
        self.temperature = float(temperature)
        self.nl = int(student.head.nl)
        self.layers = feature_layers(student, layers) if self.feature_weight > 0 else []
        if self.feature_weight > 0 and not self.layers:
            raise ConfigError("kd.feature_weight > 0 needs at least one layer in kd.feature_layers (null: the "
                              "layers the head reads)")
        self.adapters = FeatureAdapters.between(student, teacher, self.layers) if self.layers else None
        self._student_features: dict[int, torch.Tensor] = {}
        self._teacher_features: dict[int, torch.Tensor] = {}
        self._handles = [student.model[i].register_forward_hook(_record(self._student_features, i, True))
                         for i in self.layers]
        self._handles += [teacher.model[i].register_forward_hook(_record(self._teacher_features, i, False))
                          for i in self.layers]

    @property
    def enabled(self) -> bool:
        return self.output_weight > 0 or self.feature_weight > 0

    def close(self) -> None:
        """Remove the forward hooks (the models are left as they were)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def terms(self, preds: Sequence[torch.Tensor], images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unweighted ``(output term, feature term)`` for the student's ``preds`` on ``images``."""
        zero = preds[0].new_zeros((), dtype=torch.float32)
        if not self.enabled:
            return zero, zero
        if next(self.teacher.parameters()).device != images.device:
            self.teacher.to(images.device)
        self._teacher_features.clear()
        with torch.no_grad():
            out = self.teacher(images)
        teacher_maps = out[1] if isinstance(out, tuple) else out[: self.nl]
        kd_out = output_distillation(preds[: self.nl], teacher_maps, self.temperature) \
            if self.output_weight > 0 else zero
        kd_feat = zero
        if self.adapters is not None:
            kd_feat = feature_distillation(self._student_features, self._teacher_features, self.adapters)
            self._student_features.clear()
            self._teacher_features.clear()
        return kd_out, kd_feat

    def __call__(self, preds: Sequence[torch.Tensor], targets: torch.Tensor,
                 images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, items = self.base(preds, targets, images)
        kd_out, kd_feat = self.terms(preds, images)
        kd_out, kd_feat = self.output_weight * kd_out, self.feature_weight * kd_feat
        extra = kd_out + kd_feat
        bs = preds[0].shape[0]
        items = torch.cat([items[:3].float(), torch.stack([kd_out, kd_feat]).detach().float().to(items.device),
                           (items[3].float() + extra.detach().to(items.device)).reshape(1)])
        return loss + extra * bs, items
