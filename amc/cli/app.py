"""What every ``amc-<verb>`` command shares: the Hydra entry point, user errors, the run directory, tables."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from amc.errors import AmcError

console = Console()

#: Hydra finds the configs in the ``conf`` package, from a source checkout and from an installed wheel alike.
CONFIG_PATH = "pkg://conf"


def amc_app(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Turn ``task(cfg)`` into a Hydra command; an :class:`AmcError` ends it with one line and exit code 2."""

    def wrap(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def guarded(cfg: DictConfig) -> Any:
            try:
                return task(cfg)
            except AmcError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                sys.exit(130)

        return hydra.main(config_path=CONFIG_PATH, config_name=config_name, version_base="1.3")(guarded)

    return wrap


def run_dir() -> Path:
    """The Hydra run directory of the current command (``hydra.run.dir``)."""
    return Path(HydraConfig.get().runtime.output_dir)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> None:
    """Print a table; columns from ``numeric_from`` on are right-aligned."""
    table = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        table.add_column(c, justify="right" if i >= numeric_from else "left")
    for row in rows:
        table.add_row(*(str(x) for x in row))
    console.print(table)


def model_source(model_cfg: DictConfig) -> str:
    """What the ``model`` config group designates: the user's ``model.path``, else the packaged model."""
    from amc.models.io import packaged

    if model_cfg.get("path"):
        return str(model_cfg.path)
    name = model_cfg.get("packaged")
    if name:
        found = packaged(str(name))
        if found is None:
            raise AmcError(f"model.packaged={name} is not shipped with this amc installation")
        return str(found)
    raise AmcError("no model given: set model=<name> or model.path=FILE")


def load_model_from_config(model_cfg: DictConfig):  # noqa: ANN201 (keeps torch out of this module's imports)
    """Load the model that the ``model`` config group describes (see ``conf/model/*.yaml``).

    Returns ``(model, class names, source path)``.
    """
    from amc.models import load_model

    source = model_source(model_cfg)
    model, names = load_model(source, nc=model_cfg.get("nc"), width_multiple=model_cfg.get("width_multiple"),
                              depth_multiple=model_cfg.get("depth_multiple"))
    return model, names, source


def load_data_from_config(data_cfg: DictConfig, split: str | None = None):  # noqa: ANN201
    """Load a split of the dataset that the ``data`` config group describes (see ``conf/data/*.yaml``)."""
    from omegaconf import OmegaConf

    from amc.data.datasets import load_dataset

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


def config_number(node: DictConfig, key: str, kind: type = int, low: float | None = None, high: float | None = None,
                  optional: bool = False, prefix: str = "") -> Any:
    """``node[key]`` as an ``int`` or ``float`` in ``[low, high]``; anything else is a one-line user error.

    Commands read every number this way before doing any work, so a typo never surfaces as a traceback
    halfway through a run.
    """
    value = node.get(key)
    name = f"{prefix}{key}"
    if value is None and optional:
        return None
    try:
        if isinstance(value, bool) or value is None:
            raise ValueError
        number = kind(value)
        if kind is int and number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise AmcError(f"{name} must be {'an integer' if kind is int else 'a number'}"
                       f"{' or null' if optional else ''}, got {value!r}") from None
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]"
        raise AmcError(f"{name} must be {bounds}, got {number}")
    return number


def rounding_from_config(node: DictConfig):  # noqa: ANN201 (keeps torch out of this module's imports)
    """The ``pruning:`` group (multiple, min_channels, max_ratio) as a :class:`ChannelRounding`."""
    from amc.pruning.space import ChannelRounding

    return ChannelRounding(config_number(node, "multiple", int, 1, prefix="pruning."),
                           config_number(node, "min_channels", int, 1, prefix="pruning."),
                           config_number(node, "max_ratio", float, 0.0, prefix="pruning."))
