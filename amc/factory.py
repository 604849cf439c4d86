"""The components a config names, built the same way for every workflow: the model (``model`` group), a data
split (``data`` group), the channel rounding (``pruning`` group) and a channel criterion.

This is where the layers below meet: :func:`make_criterion` hands the training code's detection loss to the
pruning engine's criteria that need one (``taylor``), so the pruning engine itself imports no training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from amc.config import config_number
from amc.data.datasets import DetectionDataset, load_dataset
from amc.errors import AmcError, ConfigError
from amc.models import load_model
from amc.models.io import packaged
from amc.models.yolo import YOLOv7
from amc.pruning.criteria import CRITERIA, Criterion
from amc.pruning.criteria import make_criterion as _make_criterion
from amc.pruning.space import ChannelRounding
from amc.registry import option_names
from amc.train.loss import detection_loss


def model_source(model_cfg: DictConfig) -> str:
    """What the ``model`` config group designates: the user's ``model.path``, else the packaged model."""
    if model_cfg.get("path"):
        return str(model_cfg.path)
    name = model_cfg.get("packaged")
    if name:
        found = packaged(str(name))
        if found is None:
            raise AmcError(f"model.packaged={name} is not shipped with this amc installation")
        return str(found)
    raise AmcError("no model given: set model=<name> or model.path=FILE")


def load_model_from_config(model_cfg: DictConfig) -> tuple[YOLOv7, list[str], str]:
    """Load the model that the ``model`` config group describes (see ``conf/model/*.yaml``).

    Returns ``(model, class names, source path)``.
    """
    source = model_source(model_cfg)
    model, names = load_model(source, nc=model_cfg.get("nc"), width_multiple=model_cfg.get("width_multiple"),
                              depth_multiple=model_cfg.get("depth_multiple"))
    return model, names, source


def load_data_from_config(data_cfg: DictConfig, split: str | None = None) -> DetectionDataset:
    """Load a split of the dataset that the ``data`` config group describes (see ``conf/data/*.yaml``)."""
    split = split or str(data_cfg.split)
    kind = str(data_cfg.kind)
    if kind != "demo" and OmegaConf.is_missing(data_cfg, "path"):
        raise AmcError(f"data={kind} needs data.path=... (see conf/data/{kind}.yaml)")
    path = data_cfg.get("path")
    if kind != "coco":
        return load_dataset(kind, path, split)
    root = Path(str(path))
    annotations = data_cfg.get("annotations") or root / "annotations" / f"instances_{split}.json"
    images = data_cfg.get("images")
    if not images:
        candidates = [root / "images" / split, root / split]
        images = next((c for c in candidates if c.is_dir()), candidates[0])
    return load_dataset("coco", annotations, split, images_dir=images)


def rounding_from_config(node: DictConfig) -> ChannelRounding:
    """The ``pruning:`` group (multiple, min_channels, max_ratio) as a :class:`ChannelRounding`."""
    return ChannelRounding(config_number(node, "multiple", int, 1, prefix="pruning."),
                           config_number(node, "min_channels", int, 1, prefix="pruning."),
                           config_number(node, "max_ratio", float, 0.0, prefix="pruning."))


def make_criterion(name: str, seed: int | None = None, **options: Any) -> Criterion:
    """:func:`amc.pruning.criteria.make_criterion` with the detection loss
    (:func:`amc.train.loss.detection_loss`) given to the criteria that score channels by it (``taylor``).

    Raises:
        ConfigError: an unknown name or option (the message lists the valid ones); ``loss`` is not an option.
    """
    cls = CRITERIA.get(str(name))
    if cls is not None and "loss" in option_names(cls):
        if "loss" in options:
            raise ConfigError(f"pruning criterion {name!r}: its loss is the detection loss, not an option")
        options["loss"] = detection_loss
    return _make_criterion(name, seed, **options)
