"""Proxy mAP of a pruning policy: masked model, adaptive BatchNorm, a fixed val subset at reduced resolution.

Scoring a policy must be fast (the search runs hundreds of episodes) and must rank policies the way their
real accuracy does. Following EagleEye, BatchNorm statistics are re-estimated on a few training batches
after pruning ("adaptive BN"): without it an un-fine-tuned pruned detector keeps statistics of channels
that no longer feed it and scores near zero, whatever its quality.

Everything is prepared once in :class:`ProxyEvaluator`: the val subset decoded and letterboxed on the device,
the BN calibration batches on the device, the ground truth indexed and the unpruned BatchNorm state saved.
An episode then only runs: slice the pruned model (or set the masks) -> BN passes -> val passes -> NMS -> mAP.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from amc.config import plain
from amc.data.datasets import DetectionDataset
from amc.data.loaders import EvalSet, sample_batches
from amc.errors import ConfigError
from amc.eval.evaluator import MAP_BACKENDS, DetectionEvaluator, EvalSettings, check_classes
from amc.models.yolo import YOLOv7
from amc.pruning.masks import ChannelMasks
from amc.pruning.physical import prune_model
from amc.pruning.selection import ChannelSelection
from amc.pruning.space import PruningSpace
from amc.reward.recovery import RecoverySettings, ShortRecovery


@dataclass
class ProxySettings:
    """How a policy is scored (``conf/proxy/default.yaml`` holds the same defaults, with comments).

    Attributes:
        val_images: size of the fixed val subset (drawn with ``seed``; None = the whole split).
        img_size: letterbox size (long side) of the val images; smaller is faster.
        batch_size: val images per forward pass.
        adaptive_bn: re-estimate BatchNorm statistics after pruning.
        bn_batches, bn_batch_size, bn_img_size: the training batches that re-estimate them.
        bn_augment: draw those batches with the training augmentation (mosaic ...), the distribution the
            trained statistics came from; plain letterboxed images shift the statistics of the unpruned model.
        path: ``physical`` (slice a smaller model per episode) or ``masked`` (channel masks on the full model).
            Same mAP; ``amc-bench bench=pruning`` measured slicing to pay for itself within one 640 px image
            (yolov7-tiny: 31 ms to slice, 41 ms saved per image at 50% FLOPs), so physical is the default.
        seed: picks the val subset and the BN images.
        eval: NMS settings of the proxy (see the comment on the field).
        map_backend: how mAP is computed: ``fast`` (:class:`~amc.eval.fastmap.FastCocoMap`, COCOeval's
            numbers exactly, ~40x faster: 8 ms instead of 0.33 s for 200 demo images) or ``cocoeval``
            (pycocotools itself).
        recover_steps, recover_lr, recover_temperature, recover_img_size: distillation steps between adaptive BN and scoring
            (:mod:`amc.reward.recovery`; 0 = none). For harsh budgets, where mAP before fine-tuning does not
            predict mAP after it.
    """

    val_images: int | None = 200
    img_size: int = 256
    batch_size: int = 32
    adaptive_bn: bool = True
    bn_batches: int = 4
    bn_batch_size: int = 32
    bn_img_size: int = 256
    bn_augment: bool = True
    path: str = "physical"
    seed: int = 0
    # NMS: confidence 0.01 and 100 boxes per image instead of the official 0.001 / 300 halve the episode
    # (fewer boxes through NMS and COCOeval) and rank as well: rho 0.993 against full-val mAP, 0.888 against
    # fine-tuned mAP (official settings: 1.000 / 0.874), `amc-bench bench=fidelity` on the demo.
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(conf_thres=0.01, max_det=100))
    map_backend: str = "fast"
    recover_steps: int = 0
    recover_lr: float = 0.01
    recover_temperature: float = 1.0
    recover_img_size: int | None = None

    def __post_init__(self) -> None:
        if self.val_images is not None and self.val_images < 1:
            raise ConfigError(f"proxy.val_images must be >= 1 or null, got {self.val_images}")
        for key in ("img_size", "batch_size", "bn_img_size", "bn_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"proxy.{key} must be >= 1, got {getattr(self, key)}")
        if self.map_backend not in MAP_BACKENDS:
            raise ConfigError(f"proxy.map_backend must be one of {', '.join(MAP_BACKENDS)}, got {self.map_backend!r}")
        if self.path not in ("physical", "masked"):
            raise ConfigError(f"proxy.path must be physical or masked, got {self.path!r}")
        if self.adaptive_bn and self.bn_batches < 1:
            raise ConfigError(f"proxy.bn_batches must be >= 1 with adaptive_bn, got {self.bn_batches}")
        _ = self.recovery  # checks the recover_* values
        if self.recover_steps > 0 and not self.adaptive_bn:
            raise ConfigError("proxy.recover_steps trains on the adaptive-BN batches: set proxy.adaptive_bn=true")
        if self.recover_steps > 0 and self.path != "physical":
            raise ConfigError("proxy.recover_steps trains the pruned copy: it needs proxy.path=physical "
                              "(masks would train the original model)")

    @property
    def recovery(self) -> RecoverySettings:
        """The ``recover_*`` fields as :class:`~amc.reward.recovery.RecoverySettings`."""
        return RecoverySettings(self.recover_steps, self.recover_lr, self.recover_temperature, self.recover_img_size)


@dataclass
class ProxyResult:
    """Proxy mAP of one policy and where the time went."""

    map50_95: float
    map50: float
    images: int
    bn_s: float  # adaptive-BN forward passes
    eval_s: float  # val forward passes + NMS
    total_s: float  # everything, including masks and mAP
    recover_s: float = 0.0  # distillation steps (proxy.recover_steps)
    recover_loss: float = float("nan")  # their mean distillation loss over the last pass through the batches

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Replace every BatchNorm's running statistics by their plain average over ``batches`` (adaptive BN).

    Only the BatchNorm layers run in training mode (cumulative average, ``momentum=None``); the rest of the
    model, the head included, stays in eval mode. Leaves the model in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        for images in batches:
            model(images)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
            bn.eval()


class ProxyEvaluator:
    """Scores channel selections of one model by proxy mAP (the search's per-episode evaluation).

    Args:
        model: the unfused model being pruned; it is used in place (masked), and restored after each call.
        space: its pruning space.
        val: the split policies are scored on (a subset of ``settings.val_images`` is drawn once): the search
            split (held out from the split results are reported on; ``search_split`` of the data config).
        train: the training split the BN batches come from (None: no adaptive BN).
        settings: see :class:`ProxySettings`.
        device: where everything runs.
        cache_dir: where the decoded val subset is cached between runs (None: no disk cache).
    """

    def __init__(self, model: YOLOv7, space: PruningSpace, val: DetectionDataset,
                 train: DetectionDataset | None, settings: ProxySettings | None = None,
                 device: torch.device | str = "cpu", cache_dir: str | None = None) -> None:
        self.settings = s = settings or ProxySettings()
        self.device = torch.device(device)
        check_classes(model, val)
        if s.adaptive_bn and (train is None or len(train) == 0):
            raise ConfigError("adaptive BN needs training images: give a train split or set proxy.adaptive_bn=false")
        self.model = model.to(self.device).eval()
        self.space = space
        subset = val.subset(s.val_images, s.seed)
        #: the files of the images policies are scored on (recorded, so a report can show it never scores them)
        self.image_files = [str(r.path) for r in subset.images]
        eval_set = EvalSet(subset, s.img_size, s.batch_size, stride=int(model.stride.max()), progress=False,
                           cache_path=cache_dir).to(self.device)
        self.evaluator = DetectionEvaluator(subset, eval_set, s.eval, self.device, map_backend=s.map_backend)
        self.bn_batches: list[torch.Tensor] = []
        if s.adaptive_bn:
            batches = sample_batches(train, s.bn_batches, s.bn_batch_size, s.bn_img_size, seed=s.seed,
                                     augment=s.bn_augment)
            self.bn_batches = [images.to(self.device) for images, _ in batches]
        self.masks = ChannelMasks(self.model, space) if s.path == "masked" else None
        self.recovery = ShortRecovery(self.model, self.bn_batches, s.recovery)
        # The unpruned BatchNorm state, restored after every episode (adaptive BN overwrites it), as (live buffer,
        # saved copy) pairs: copying them back directly costs well under a millisecond, load_state_dict's walk
        # over every module several.
        self._bn_state = [(v, v.clone()) for k, v in self.model.state_dict(keep_vars=True).items()
                          if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]

    @property
    def num_images(self) -> int:
        return self.evaluator.eval_set.num_images

    def __call__(self, selection: ChannelSelection | None) -> ProxyResult:
        """Proxy mAP of the model pruned to ``selection`` (None: the unpruned model)."""
        start = time.perf_counter()
        try:
            model = self.model
            if self.masks is not None:
                self.masks.apply(selection) if selection is not None else self.masks.reset()
            elif selection is not None:
                model = prune_model(self.model, self.space, selection)  # a new, smaller model
            bn_s = recover_s = 0.0
            recover_loss = float("nan")
            if self.settings.adaptive_bn:
                bn_s = self._recalibrate(model)
            if self.recovery.enabled and selection is not None:
                # Train from sane statistics, then re-estimate them for the trained weights.
                t0 = time.perf_counter()
                recover_loss = self.recovery(model)
                self._sync()
                recover_s = time.perf_counter() - t0
                bn_s += self._recalibrate(model)
            result = self.evaluator(model)
        finally:
            self.restore()
        return ProxyResult(result.map50_95, result.map50, result.images, bn_s, result.inference_s,
                           time.perf_counter() - start, recover_s, recover_loss)

    def _recalibrate(self, model: nn.Module) -> float:
        """Adaptive BN on the calibration batches; returns the seconds it took."""
        t0 = time.perf_counter()
        recalibrate_batch_norm(model, self.bn_batches)
        self._sync()
        return time.perf_counter() - t0

    def restore(self) -> None:
        """The unpruned model again: all channels, original weights and BatchNorm statistics."""
        if self.masks is not None:
            self.masks.reset()
        with torch.no_grad():
            for live, saved in self._bn_state:
                live.copy_(saved)

    def close(self) -> None:
        """Remove the masks' hooks; the model is as it was given."""
        self.restore()
        if self.masks is not None:
            self.masks.remove()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def proxy_settings(overrides: Any = None) -> ProxySettings:
    """:class:`ProxySettings` with ``overrides`` (a mapping or config node, e.g. the search's ``evaluator.proxy``;
    unknown keys are an error; ``eval`` may be a mapping of :class:`~amc.eval.evaluator.EvalSettings`)."""
    values = dict(plain(overrides) or {})
    known = {f.name for f in fields(ProxySettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown proxy setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
    if isinstance(values.get("eval"), dict):
        values["eval"] = EvalSettings(**values["eval"])
    return ProxySettings(**values)
