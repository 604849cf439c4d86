"""Channel-selection criteria: once a policy fixes how many channels each unit keeps, which ones stay.

A criterion is prepared once per model (:meth:`Criterion.prepare`: scores, sampled features) and then asked
for a :class:`~amc.pruning.selection.ChannelSelection` per policy (:meth:`Criterion.select`), which both the
physical slicer (:func:`~amc.pruning.physical.prune_model`) and the search's channel masks
(:class:`~amc.pruning.masks.ChannelMasks`) consume. Criteria are looked up by name (:data:`CRITERIA`,
:func:`make_criterion`) so configs and the command line can pick one:

==========  ==========  ====================================================================================
name        needs data  keeps the channels with the highest ...
==========  ==========  ====================================================================================
``l1``      no          L1 norm of the filters writing the channel, summed over every producer of the unit
``l2``      no          L2 norm of those filters (all producers together)
``bn``      no          sum of ``|gamma|`` of the producers' BatchNorms
``random``  no          seeded random score (a baseline; nested: keeping more never drops a kept channel)
``taylor``  yes         first-order Taylor estimate of the detection-loss change when the channel is removed
``ls``      yes         contribution to the consumers' outputs on sampled features; the consumers are then
                        re-fitted by least squares on the kept channels (AMC / He et al. channel pruning)
==========  ==========  ====================================================================================

A *producer* of a unit is every block writing its channels (``unit.producers``: several after a Shortcut,
the convolution of a Conv block, both convolution branches of a RepConv). A *consumer* is every convolution
reading them: a conv site whose input segments hold one of the unit's slots, or a detection-head output
convolution.

Example::

    from amc.factory import make_criterion      # the pruning engine's make_criterion, with the detection loss

    criterion = make_criterion("taylor", batches=8)
    criterion.prepare(model, space, batches=loader)          # (images 0-1 NCHW, targets (n, 6)) batches
    selection = criterion.select(space.kept_channels(ratios))
    pruned = prune_model(model, space, selection)
"""

from __future__ import annotations

import inspect
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amc.errors import ConfigError
from amc.registry import make_registered, option_names
from amc.models.heads import IDetect
from amc.models.yolo import YOLOv7
from amc.pruning.selection import ChannelSelection, segment_indices, top_channels
from amc.pruning.space import ConvSite, PruningSpace, Segment

__all__ = ["CRITERIA", "BatchNormCriterion", "Criterion", "L1Criterion", "L2Criterion", "LeastSquaresCriterion",
           "RandomCriterion", "ScoreCriterion", "TaylorCriterion", "make_criterion", "producer_layers",
           "unit_sites"]

LossFactory = Callable[[nn.Module, Mapping[str, Any], bool, int], Callable[..., tuple[Tensor, Any]]]
"""``loss(model, hyp, ota, img_size) -> loss_fn``: the detection loss of ``model`` for ``hyp`` (unscaled gains) at
``img_size``, called as ``loss_fn(preds, targets, images) -> (loss, items)`` (:func:`amc.train.loss.detection_loss`)."""

Batch = tuple[Tensor, Tensor]
"""``(images (B, 3, H, W) float in [0, 1], targets (n, 6) [image, class, cx, cy, w, h] normalized)``, as
:class:`~amc.data.loaders.TrainSet` with its ``collate`` gives them."""

#: Loss gains of the official ``hyp.scratch.p5.yaml`` (the Taylor criterion's default; rescaled per model
#: with :func:`~amc.train.loss.scale_hyp` like the official ``train.py`` does).
DEFAULT_LOSS_HYP: dict[str, float] = {"box": 0.05, "cls": 0.3, "cls_pw": 1.0, "obj": 0.7, "obj_pw": 1.0,
                                      "anchor_t": 4.0, "fl_gamma": 0.0, "label_smoothing": 0.0}


# ------------------------------------------------------------------------------------------------ helpers
def unit_sites(space: PruningSpace) -> list[list[ConvSite]]:
    """Per unit (space order), the conv sites writing its channels."""
    out: list[list[ConvSite]] = [[] for _ in space.units]
    for site in space.sites:
        u = space.slot_unit.get(site.slot, -1)
        if u >= 0:
            out[u].append(site)
    return out


def producer_layers(model: nn.Module, site: ConvSite) -> list[tuple[nn.Conv2d | None, nn.BatchNorm2d]]:
    """The (convolution, BatchNorm) pairs of one producer whose channel ``c`` is the unit's channel ``c``.

    A Conv block gives its ``conv``/``bn``; a RepConv its 3x3 and 1x1 branches and, when it has one, its
    identity BatchNorm (no convolution): the identity branch normalizes the input channels, which are the
    same unit as the output channels (the space merges them), so its ``gamma`` scales the unit's channels too.
    """
    module = model.get_submodule(site.path)
    if site.kind == "RepConv":
        pairs: list[tuple[nn.Conv2d | None, nn.BatchNorm2d]] = [
            (module.rbr_dense[0], module.rbr_dense[1]), (module.rbr_1x1[0], module.rbr_1x1[1])]
        if module.rbr_identity is not None:
            pairs.append((None, module.rbr_identity))
        return pairs
    return [(module.conv, module.bn)]


def _check_prepared_model(model: nn.Module, space: PruningSpace) -> None:
    if getattr(model, "fused", False):
        raise ConfigError("this model is fused (BatchNorm folded); criteria need the unfused model its space "
                          "was built from")
    if model.arch is not space.arch and model.arch.to_dict() != space.arch.to_dict():
        raise ConfigError("the pruning space was built for a different architecture than this model")


class _ModelState:
    """Saves what a data pass may change (module modes, buffers, ``requires_grad``) and puts it back."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes = [(m, m.training) for m in model.modules()]
        # BatchNorm running statistics move in every training-mode forward: keep a copy to restore.
        self.buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        self.requires_grad = [(p, p.requires_grad) for p in model.parameters()]

    @torch.no_grad()
    def restore(self) -> None:
        for m, training in self.modes:
            m.training = training
        for name, b in self.model.named_buffers():
            if name in self.buffers:
                b.copy_(self.buffers[name])
        for p, flag in self.requires_grad:
            p.requires_grad_(flag)


def _take_batches(batches: Iterable[Batch] | None, n: int, criterion: str) -> Iterable[Batch]:
    if batches is None:
        raise ConfigError(f"pruning criterion {criterion!r} needs data: pass batches of (images, targets)")
    return itertools.islice(iter(batches), n)


# ------------------------------------------------------------------------------------------------ base
class Criterion(ABC):
    """Decides which channels of every unit a policy keeps.

    Subclasses set :attr:`name` (the registry key) and :attr:`needs_data`, and implement :meth:`_prepare`
    and :meth:`_select`; the public methods check their arguments around them.
    """

    name: ClassVar[str]
    """Registry key (``make_criterion(name)``)."""
    needs_data: ClassVar[bool] = False
    """Whether :meth:`prepare` needs batches of training data."""

    def __init__(self) -> None:
        self.space: PruningSpace | None = None

    @property
    def prepared(self) -> bool:
        return self.space is not None

    def prepare(self, model: YOLOv7, space: PruningSpace, batches: Iterable[Batch] | None = None) -> None:
        """One-time work for ``model``: channel scores, sampled features ...

        Args:
            model: the unfused, unpruned model ``space`` was built from (without active channel masks).
                It is left as it was: weights, BatchNorm statistics, train/eval modes.
            space: its pruning space.
            batches: ``(images, targets)`` batches (see :data:`Batch`) on any device; only criteria with
                :attr:`needs_data` read them (at most their ``batches`` option of them).

        Raises:
            ConfigError: a fused model, or no data for a criterion that needs it.
        """
        _check_prepared_model(model, space)
        if self.needs_data and batches is None:
            raise ConfigError(f"pruning criterion {self.name!r} needs data: pass batches of (images, targets)")
        self._prepare(model, space, batches)
        self.space = space

    def select(self, kept: Sequence[int] | np.ndarray) -> ChannelSelection:
        """The channels each unit keeps when unit ``u`` keeps ``kept[u]`` of them (e.g. ``space.kept_channels``).

        Returns a selection with exactly ``kept[u]`` sorted, distinct indices per unit, plus any re-fitted
        weights (full-size tensors keyed by parameter name).
        """
        if self.space is None:
            raise RuntimeError(f"criterion {self.name!r}: call prepare(model, space) before select()")
        counts = [int(k) for k in np.asarray(kept).reshape(-1)]
        if len(counts) != len(self.space):
            raise ValueError(f"kept has {len(counts)} counts, the space {len(self.space)} units")
        for unit, k in zip(self.space.units, counts):
            if not 0 <= k <= unit.channels:
                raise ValueError(f"unit {unit.name} has {unit.channels} channels, cannot keep {k}")
        return self._select(counts)

    @abstractmethod
    def _prepare(self, model: YOLOv7, space: PruningSpace, batches: Iterable[Batch] | None) -> None:
        """Compute whatever :meth:`_select` needs; must not keep references into the live weights."""

    @abstractmethod
    def _select(self, kept: list[int]) -> ChannelSelection:
        """The selection for checked ``kept`` counts."""

    def __repr__(self) -> str:
        params = inspect.signature(type(self).__init__).parameters
        opts = ", ".join(f"{k}={getattr(self, k)!r}" for k in params if k != "self" and hasattr(self, k))
        return f"{type(self).__name__}({opts})"


class ScoreCriterion(Criterion):
    """A criterion that scores every channel once and keeps the highest scores (ties: lower index).

    :meth:`select` is then a sort per unit (microseconds to milliseconds), as the search needs per episode;
    selections are nested: keeping more channels never drops one kept at a smaller count.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scores: list[Tensor] = []
        """Per unit, one score per channel (CPU, float64), set by :meth:`prepare`."""

    def _prepare(self, model: YOLOv7, space: PruningSpace, batches: Iterable[Batch] | None) -> None:
        scores = self.compute_scores(model, space, batches)
        self.scores = [s.detach().to("cpu", torch.float64) for s in scores]
        for unit, s in zip(space.units, self.scores):
            assert s.shape == (unit.channels,), (unit.name, tuple(s.shape))

    @abstractmethod
    def compute_scores(self, model: YOLOv7, space: PruningSpace, batches: Iterable[Batch] | None) -> list[Tensor]:
        """Per unit, a ``(channels,)`` importance (higher = keep)."""

    def _select(self, kept: list[int]) -> ChannelSelection:
        return ChannelSelection(top_channels(self.scores, kept))


# ------------------------------------------------------------------------------------------------ magnitude
class _MagnitudeCriterion(ScoreCriterion):
    p: ClassVar[int]

    @torch.no_grad()
    def compute_scores(self, model: YOLOv7, space: PruningSpace, batches: Iterable[Batch] | None) -> list[Tensor]:
        out = []
        for sites in unit_sites(space):
            total = 0.0
            for site in sites:
                for conv, _ in producer_layers(model, site):
                    if conv is not None:  # the identity branch of a RepConv has no filter
                        total = total + conv.weight.detach().double().abs().pow(self.p).flatten(1).sum(1)
            # Sum of |w|^p over every weight writing the channel, then the p-th root: for l1 the sum of the
            # producers' L1 norms, for l2 the L2 norm of all their filters stacked.
            out.append(torch.as_tensor(total).pow(1.0 / self.p).cpu())
        return out


class L1Criterion(_MagnitudeCriterion):
    """Keeps the channels whose filters have the largest L1 norm, summed over every producer of the unit
    (RepConv: its 3x3 and 1x1 branches). Li et al., *Pruning Filters for Efficient ConvNets* (2017)."""

    name = "l1"
    p = 1


class L2Criterion(_MagnitudeCriterion):
    """Keeps the channels whose filters have the largest L2 norm, ``sqrt(sum |w|^2)`` over all the weights of
    every producer writing the channel (RepConv: 3x3 and 1x1 branches)."""

    name = "l2"
    p = 2


class BatchNormCriterion(ScoreCriterion):
    """Keeps the channels with the largest ``|gamma|``, summed over the BatchNorms of the unit's producers
    (RepConv: dense, 1x1 and identity BatchNorms). Liu et al., *Network Slimming* (2017): a BatchNorm scale
    near zero means the channel's normalized output barely reaches the activation."""

    name = "bn"

    @torch.no_grad()
    def compute_scores(self, model: YOLOv7, space: PruningSpace, batches: Iterable[Batch] | None) -> list[Tensor]:
        out = []
        for sites in unit_sites(space):
            gammas = [bn.weight.detach().double().abs().cpu()
                      for site in sites for _, bn in producer_layers(model, site)]
            out.append(torch.stack(gammas).sum(0))
        return out


class RandomCriterion(ScoreCriterion):
    """Keeps random channels: a fixed random score per channel drawn from ``seed`` at :meth:`prepare`.

    Args:
        seed: the same seed gives the same selections, on any machine (a CPU generator draws the scores).
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)

    def compute_scores(self, model: YOLOv7, space: PruningSpace, batches: Iterable[Batch] | None) -> list[Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        return [torch.rand(u.channels, generator=g, dtype=torch.float64) for u in space.units]


# ------------------------------------------------------------------------------------------------ taylor
class TaylorCriterion(ScoreCriterion):
    """First-order Taylor importance of each channel for the detection loss (Molchanov et al., *Importance
    Estimation for Neural Network Pruning*, CVPR 2019).

    For each batch, ``t_c = sum(w * dL/dw)`` over every parameter of channel ``c`` in the unit's producers
    (filter rows of the convolutions, ``gamma`` and ``beta`` of the BatchNorms; RepConv: all branches) is
    the first-order change of the loss when those parameters are set to zero, which removes the channel
    (activation(0) = 0). The score is the mean over batches of ``t_c ** 2``. The signed sum per channel is
    used rather than a sum of per-weight ``|w * g|``, because the terms of one channel cancel: under
    training-mode BatchNorm the filter terms sum to ~0 (the output is invariant to the filter's scale), and
    only the BatchNorm terms carry the estimate.

    The loss is ``loss(model, hyp, ota, img_size)``, called once on the first batch: the workflows pass
    :func:`amc.train.loss.detection_loss` (:class:`~amc.train.loss.YOLOv7Loss`; :func:`amc.factory.make_criterion`
    does), evaluated with the model in training mode (BatchNorm on batch statistics, as when the gradients are
    used for training). The pruning engine itself imports no training code. With ``ota=False`` (default, faster) the
    plain assignment is used and an IAuxDetect model's auxiliary maps are left out, so channels that only
    feed the auxiliary heads (unused at inference) score 0. The model is restored afterwards: weights,
    BatchNorm running statistics, ``.grad`` (gradients are taken with ``torch.autograd.grad`` and never
    stored in ``.grad``), ``requires_grad`` flags and every module's train/eval mode.

    Args:
        batches: how many of the given batches to use.
        hyp: loss gains overriding :data:`DEFAULT_LOSS_HYP` (an official hyp file may be passed whole);
            rescaled to the model and image size with :func:`~amc.train.loss.scale_hyp`.
        ota: SimOTA assignment (with the auxiliary maps of an IAuxDetect model) instead of the plain one.
        loss: ``(model, hyp, ota, img_size) -> loss_fn`` with ``loss_fn(preds, targets, images) -> (loss, items)``
            (:data:`LossFactory`); required by :meth:`prepare`.
    """

    name = "taylor"
    needs_data = True

    def __init__(self, batches: int = 16, hyp: Mapping[str, Any] | None = None, ota: bool = False,
                 loss: LossFactory | None = None) -> None:
        super().__init__()
        if int(batches) < 1:
            raise ConfigError(f"criterion 'taylor' needs batches >= 1, got {batches}")
        self.batches, self.ota, self.loss = int(batches), bool(ota), loss
        self.hyp = {**DEFAULT_LOSS_HYP, **{k: v for k, v in (hyp or {}).items() if k in DEFAULT_LOSS_HYP}}

    def compute_scores(self, model: YOLOv7, space: PruningSpace, batches: Iterable[Batch] | None) -> list[Tensor]:
        if self.loss is None:
            raise ConfigError("criterion 'taylor' scores channels by the detection loss: build it with "
                              "amc.factory.make_criterion, or pass loss=amc.train.loss.detection_loss")
        # The parameters of every unit (dim 0 = its channels), deduplicated for one autograd call.
        per_unit: list[list[Tensor]] = []
        params: dict[int, Tensor] = {}
        for sites in unit_sites(space):
            tensors = []
            for site in sites:
                for conv, bn in producer_layers(model, site):
                    tensors += ([conv.weight] if conv is not None else []) + [bn.weight, bn.bias]
            per_unit.append(tensors)
            params.update({id(t): t for t in tensors})
        needed = list(params.values())
        device = next(model.parameters()).device
        state = _ModelState(model)
        sums = [torch.zeros(u.channels, dtype=torch.float64, device=device) for u in space.units]
        count, loss_fn = 0, None
        try:
            model.train()
            for p in needed:
                p.requires_grad_(True)
            for images, targets in _take_batches(batches, self.batches, self.name):
                images = images.to(device, torch.float32)
                if loss_fn is None:
                    loss_fn = self.loss(model, self.hyp, self.ota, int(images.shape[2]))
                preds = model(images)
                if not self.ota:
                    preds = preds[: model.head.nl]  # plain assignment has no auxiliary rule
                loss, _ = loss_fn(preds, targets.to(device), images)
                grads = dict(zip(map(id, needed), torch.autograd.grad(loss, needed, allow_unused=True)))
                with torch.no_grad():
                    for u, tensors in enumerate(per_unit):
                        t = torch.zeros(space.units[u].channels, dtype=torch.float64, device=device)
                        for w in tensors:
                            g = grads[id(w)]
                            if g is not None:
                                t += (w.detach() * g).double().reshape(len(t), -1).sum(1)
                        sums[u] += t.square()
                count += 1
        finally:
            state.restore()
        if count == 0:
            raise ConfigError("criterion 'taylor' got no batches")
        return [s / count for s in sums]


# ------------------------------------------------------------------------------------------------ least squares
@dataclass
class _Consumer:
    """A convolution reading pruned units, with the input statistics its least-squares re-fit needs.

    ``target`` is the weight whose output is reconstructed, as ``(out, in * kh * kw)``: the convolution of a
    Conv block (pre-BatchNorm output), the BatchNorm-scaled sum of a RepConv's 3x3 and 1x1 kernels, or a
    head convolution (its bias is refitted too).
    """

    path: str
    kind: str  # "conv", "repconv", "head"
    inputs: tuple[Segment, ...]
    in_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    target: Tensor  # (O, D)
    row_scale: Tensor  # (O,) output scale that makes rows comparable across consumers (selection only)
    extra: dict[str, Tensor]  # what the write-back needs (BatchNorm scales, biases, original branches)
    mean: Tensor | None = None  # (D,) input mean
    cov: Tensor | None = None  # (D, D) input covariance
    cross: Tensor | None = None  # (D, O) cov @ target.T

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]


class _Moments:
    """Running mean and covariance of sample rows, accumulated around a shift (the first batch's mean) so that
    float32 sums keep their precision."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: Tensor | None = None
        self.sum: Tensor | None = None
        self.outer: Tensor | None = None

    def add(self, rows: Tensor) -> None:
        rows = rows.float()
        if self.shift is None:
            self.shift = rows.mean(0)
            self.sum = torch.zeros_like(self.shift)
            self.outer = rows.new_zeros(rows.shape[1], rows.shape[1])
        r = rows - self.shift
        self.sum += r.sum(0)
        self.outer.addmm_(r.T, r)
        self.n += len(rows)

    def finish(self) -> tuple[Tensor, Tensor]:
        m = self.sum / self.n
        cov = self.outer / self.n - torch.outer(m, m)
        return self.shift + m, cov


def _sample_rows(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], n: int,
                 g: torch.Generator) -> Tensor:
    """``n`` random rows of the im2col matrix of ``x`` (B, C, H, W): the inputs of ``n`` output positions of a
    convolution, as ``(n, C * kh * kw)`` in the layout of ``weight.flatten(1)``."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    b_, c_, h_, w_ = x.shape
    ho, wo = (h_ + 2 * ph - kh) // sh + 1, (w_ + 2 * pw - kw) // sw + 1
    total = b_ * ho * wo
    idx = torch.randperm(total, generator=g)[: min(n, total)].to(x.device)
    b, r = idx // (ho * wo), idx % (ho * wo)
    i, j = r // wo * sh, r % wo * sw
    if kh == kw == 1 and ph == pw == 0:
        return x[b, :, i, j]
    xp = F.pad(x, (pw, pw, ph, ph))
    rows = i[:, None] + torch.arange(kh, device=x.device)
    cols = j[:, None] + torch.arange(kw, device=x.device)
    patches = xp[b[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (n, kh, kw, C)
    return patches.permute(0, 3, 1, 2).reshape(len(idx), c_ * kh * kw)


def _bn_scale(bn: nn.BatchNorm2d) -> Tensor:
    """Eval-mode scale ``gamma / sqrt(var + eps)`` of a BatchNorm."""
    return (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()


class LeastSquaresCriterion(Criterion):
    """Feature-reconstruction channel pruning with least-squares re-fit of the consumers (AMC's criterion;
    He et al., *Channel Pruning for Accelerating Very Deep Neural Networks*, ICCV 2017).

    :meth:`prepare` runs the unpruned model (eval mode) on the batches and, for every consumer convolution of
    a unit, samples ``samples`` output positions and keeps the mean and covariance of the inputs those
    positions read (im2col rows for k x k kernels; for a head convolution the input is ``x + ia``, what it
    actually reads). From them:

    * **selection**: channel ``c`` of a unit scores the energy of its contribution to every consumer's output,
      ``sum_o s_o^2 W[o, c] Cov_cc W[o, c]^T``, summed over consumers (and over every place a consumer reads
      the channel, e.g. the four pooled copies in SPPCSPC). ``s_o`` puts outputs in post-BatchNorm units
      (``gamma / sqrt(var + eps)``; the head's ImplicitM scale), so consumers of different scales compare.
      The covariance (not the raw second moment) is used because a channel's mean is recovered by the bias
      re-fit below. Channels are ranked once: select is a sort plus the re-fit;
    * **re-fit**: every consumer reading at least one removed channel gets new weights on its kept inputs by
      ridge least squares, reconstructing its original (pre-BatchNorm) convolution output on the samples,
      with an intercept: the constant part goes into the consumer's BatchNorm ``beta`` (scaled by the
      eval-mode BatchNorm scale) or the head convolution's bias. A consumer reading several units (a Concat)
      is re-fitted once with all its kept inputs.

    RepConv consumers are re-fitted consistently in eval mode: the target is the BatchNorm-scaled sum of the
    3x3 and 1x1 branches (the kernel the fused block would have); the 1x1 branch is kept (restricted to the
    kept inputs) and the whole correction goes into the 3x3 branch (divided by its BatchNorm scale; rows whose
    dense BatchNorm scale is ~0 are left as they were) and the dense BatchNorm's ``beta``. The identity branch
    reads only kept channels (its input unit is its output unit), so it needs no re-fit.

    The re-fitted weights are returned in :attr:`ChannelSelection.weights` as full-size tensors (zeros at the
    removed inputs). Honest limits:

    * inputs are those of the **unpruned** model (collected once), not of the already-pruned earlier layers as
      in He et al.'s sequential procedure, so errors of earlier layers are not compensated downstream;
    * channels are ranked by their individual energy (no LASSO or greedy search over correlated channels);
    * the bias and RepConv corrections use eval-mode BatchNorm statistics: exact for inference, and only a
      starting point once fine-tuning re-estimates the statistics;
    * memory: one ``D x D`` float32 covariance per consumer (``D`` = input channels x kernel taps):
      ~0.13 GB for yolov7-tiny, ~1 GB for yolov7, ~4.8 GB for yolov7-e6e, on the model's device. With fewer
      samples than ``D`` the ridge term keeps the systems well posed; raise ``samples`` for large models.

    Args:
        samples: sampled positions per consumer (rows of the least-squares problems).
        batches: how many of the given batches to read; each gives ``ceil(samples / batches)`` positions.
        ridge: Tikhonov weight, relative to the mean input variance of the kept columns.
        seed: seed of the position sampling.
    """

    name = "ls"
    needs_data = True

    def __init__(self, samples: int = 2048, batches: int = 8, ridge: float = 1e-3, seed: int = 0) -> None:
        super().__init__()
        if int(samples) < 1 or int(batches) < 1 or not float(ridge) >= 0:
            raise ConfigError(f"criterion 'ls' needs samples >= 1, batches >= 1 and ridge >= 0, got {samples}, "
                              f"{batches}, {ridge}")
        self.samples, self.batches, self.ridge, self.seed = int(samples), int(batches), float(ridge), int(seed)
        self.scores: list[Tensor] = []
        self.consumers: list[_Consumer] = []

    # ---------------------------------------------------------------- prepare
    @torch.no_grad()
    def _consumers(self, model: YOLOv7, space: PruningSpace) -> list[_Consumer]:
        """Every convolution reading at least one unit, with copies of the weights its re-fit starts from."""
        out = []

        def reads_unit(segments: Sequence[Segment]) -> bool:
            return any(space.slot_unit.get(slot, -1) >= 0 for slot, _ in segments)

        for site in space.sites:
            if not reads_unit(site.inputs):
                continue
            module = model.get_submodule(site.path)
            if site.kind == "RepConv":
                dense, bn_d = module.rbr_dense[0], module.rbr_dense[1]
                one, bn_1 = module.rbr_1x1[0], module.rbr_1x1[1]
                s_d, s_1 = _bn_scale(bn_d), _bn_scale(bn_1)
                one_3x3 = F.pad(one.weight.detach(), [1, 1, 1, 1])
                target = (s_d.view(-1, 1, 1, 1) * dense.weight + s_1.view(-1, 1, 1, 1) * one_3x3).flatten(1)
                extra = {"s_d": s_d, "s_1": s_1, "dense": dense.weight.detach().clone(), "one_3x3": one_3x3,
                         "beta": bn_d.bias.detach().clone()}
                conv, kind, scale = dense, "repconv", torch.ones_like(s_d)
            else:
                conv, bn = module.conv, module.bn
                target = conv.weight.detach().flatten(1).clone()
                scale = _bn_scale(bn)
                extra = {"scale": scale, "beta": bn.bias.detach().clone()}
                kind = "conv"
            out.append(_Consumer(site.path, kind, site.inputs, site.in_channels, conv.kernel_size, conv.stride,
                                 conv.padding, target.float(), scale.float(), extra))
        head = model.head
        for j, h in enumerate(space.head_inputs):
            if not reads_unit(h.inputs):
                continue
            conv = model.get_submodule(h.conv_path)
            scale = torch.ones(conv.out_channels, device=conv.weight.device)
            if isinstance(head, IDetect) and j < head.nl:
                scale = head.im[j].implicit.detach().view(-1).clone()
            out.append(_Consumer(h.conv_path, "head", h.inputs, conv.in_channels, conv.kernel_size, conv.stride,
                                 conv.padding, conv.weight.detach().flatten(1).float().clone(), scale.float(),
                                 {"bias": conv.bias.detach().clone()}))
        return out

    def _prepare(self, model: YOLOv7, space: PruningSpace, batches: Iterable[Batch] | None) -> None:
        consumers = self._consumers(model, space)
        moments = [_Moments() for _ in consumers]
        g = torch.Generator().manual_seed(self.seed)
        per_batch = math.ceil(self.samples / self.batches)

        def record(k: int, x: Tensor) -> None:
            c = consumers[k]
            moments[k].add(_sample_rows(x.detach(), c.kernel, c.stride, c.padding, per_batch, g))

        def site_hook(k: int):
            return lambda module, args: record(k, args[0])

        head_ids = {c.path: k for k, c in enumerate(consumers) if c.kind == "head"}
        head = model.head

        def head_hook(module: nn.Module, args: tuple) -> None:
            for j, h in enumerate(space.head_inputs):
                k = head_ids.get(h.conv_path)
                if k is not None:
                    x = args[0][j]
                    if h.implicit_path is not None:  # the output convolution reads x + ia
                        x = model.get_submodule(h.implicit_path)(x)
                    record(k, x)

        handles = [head.register_forward_pre_hook(head_hook)]
        for k, c in enumerate(consumers):
            if c.kind == "conv":
                handles.append(model.get_submodule(f"{c.path}.conv").register_forward_pre_hook(site_hook(k)))
            elif c.kind == "repconv":
                handles.append(model.get_submodule(c.path).register_forward_pre_hook(site_hook(k)))
        device = next(model.parameters()).device
        state = _ModelState(model)
        count = 0
        try:
            model.eval()  # inference features: BatchNorm on running statistics, as the pruned model will run
            with torch.no_grad():
                for images, _ in _take_batches(batches, self.batches, self.name):
                    model(images.to(device, torch.float32))
                    count += 1
        finally:
            for handle in handles:
                handle.remove()
            state.restore()
        if count == 0:
            raise ConfigError("criterion 'ls' got no batches")

        scores = [torch.zeros(u.channels, dtype=torch.float64) for u in space.units]
        for c, mom in zip(consumers, moments):
            c.mean, c.cov = mom.finish()
            c.cross = c.cov @ c.target.T
            # Energy of each input channel's contribution: sum_o s_o^2 a_oc^T Cov_cc a_oc over its taps.
            taps = c.taps
            a = (c.target * c.row_scale[:, None]).view(len(c.target), c.in_channels, taps)
            blocks = torch.diagonal(c.cov.view(c.in_channels, taps, c.in_channels, taps), dim1=0, dim2=2)
            energy = torch.einsum("oca,abc,ocb->c", a, blocks, a).double().cpu()
            offset = 0
            for slot, width in c.inputs:
                u = space.slot_unit.get(slot, -1)
                if u >= 0:
                    scores[u] += energy[offset: offset + width]
                offset += width
        self.scores, self.consumers = scores, consumers

    # ---------------------------------------------------------------- select
    def _select(self, kept: list[int]) -> ChannelSelection:
        keep = top_channels(self.scores, kept)
        weights: dict[str, Tensor] = {}
        for c in self.consumers:
            kept_in = segment_indices(self.space, c.inputs, keep)
            if len(kept_in) == c.in_channels:
                continue  # reads no removed channel: unchanged
            weights.update(self._refit(c, kept_in))
        return ChannelSelection(keep, weights)

    @torch.no_grad()
    def _refit(self, c: _Consumer, kept_in: Tensor) -> dict[str, Tensor]:
        device = c.cov.device
        taps = c.taps
        cols = (kept_in.to(device)[:, None] * taps + torch.arange(taps, device=device)).reshape(-1)
        out_ch = len(c.target)
        # Ridge least squares on centred inputs: (Cov_KK + lam I) Z = Cov_K: target^T, then the intercept
        # mean @ target^T - mean_K @ Z restores the constant part the removed channels carried.
        a = c.cov[cols][:, cols].double()
        rhs = c.cross[cols].double()
        lam = self.ridge * float(torch.diagonal(a).mean()) + 1e-12
        a.diagonal().add_(lam)
        chol, info = torch.linalg.cholesky_ex(a)
        z = torch.cholesky_solve(rhs, chol) if int(info) == 0 else torch.linalg.lstsq(a, rhs).solution
        mean = c.mean.double()
        shift = mean @ c.target.double().T - mean[cols] @ z  # (O,)
        fitted = z.T  # (O, K * taps), in the target's units
        full = torch.zeros(out_ch, c.in_channels * taps, dtype=torch.float64, device=device)
        shape = (out_ch, c.in_channels, *c.kernel)
        x = c.extra
        if c.kind == "conv":
            full[:, cols] = fitted
            beta = x["beta"].double() + shift * x["scale"].double()
            return {f"{c.path}.conv.weight": full.view(shape).float(), f"{c.path}.bn.bias": beta.float()}
        if c.kind == "head":
            full[:, cols] = fitted
            bias = x["bias"].double() + shift
            return {f"{c.path}.weight": full.view(shape).float(), f"{c.path}.bias": bias.float()}
        # RepConv: keep the 1x1 branch, put the correction into the 3x3 branch and its BatchNorm's beta.
        s_d, s_1 = x["s_d"].double(), x["s_1"].double()
        one = x["one_3x3"].flatten(1).double()[:, cols]
        dense_old = x["dense"].flatten(1).double()[:, cols]
        usable = s_d.abs() > 1e-8 * max(float(s_d.abs().max()), 1e-30)
        dense_new = torch.where(usable[:, None], (fitted - s_1[:, None] * one) / torch.where(usable, s_d, 1.0)[:, None],
                                dense_old)
        full[:, cols] = dense_new
        beta = x["beta"].double() + torch.where(usable, shift, 0.0)
        return {f"{c.path}.rbr_dense.0.weight": full.view(shape).float(), f"{c.path}.rbr_dense.1.bias": beta.float()}


# ------------------------------------------------------------------------------------------------ registry
CRITERIA: dict[str, type[Criterion]] = {cls.name: cls for cls in (
    L1Criterion, L2Criterion, BatchNormCriterion, RandomCriterion, TaylorCriterion, LeastSquaresCriterion)}
"""Every criterion by name."""


def make_criterion(name: str, seed: int | None = None, **options: Any) -> Criterion:
    """A new criterion by registry name, with its options (e.g. ``make_criterion("random", seed=3)``).

    Args:
        name: a key of :data:`CRITERIA`.
        seed: the run's seed, passed on only to criteria that draw random numbers (``random``, ``ls``), so a
            command can seed whichever criterion the user picked; an explicit ``seed`` option works the same.
        options: the criterion's own options.

    Raises:
        ConfigError: an unknown name or option (the message lists the valid ones).
    """
    cls = CRITERIA.get(str(name))
    if seed is not None and cls is not None and "seed" in option_names(cls):
        options.setdefault("seed", int(seed))
    return make_registered(CRITERIA, name, "pruning criterion", **options)
