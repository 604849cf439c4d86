"""Reading amc's Hydra configs: checked numbers, image sizes, the search split, plain values, composing a config.

Every workflow reads its config through these helpers (the commands in :mod:`amc.cli` only parse the command
line and hand the composed config over), so a typo is a one-line :class:`~amc.errors.ConfigError` before any
work, whichever entry point (command, bench, script, test) started the run. No torch here: the commands import
this module before ``--help`` is answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from amc.errors import AmcError, ConfigError

#: The package holding amc's configs (``conf/``), from a source checkout and from an installed wheel alike.
CONFIG_MODULE = "conf"


def plain(node: Any) -> Any:
    """A config node as plain Python (dicts, lists, scalars; interpolations resolved); anything else as it is."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


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


def parse_img_size(value: object) -> tuple[int, int]:
    """``640`` or ``[height, width]`` -> (height, width), refusing non-positive sizes."""
    size = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value, value]
    try:
        h, w = (int(x) for x in size)
    except (TypeError, ValueError):
        raise ConfigError(f"img_size must be an int or [height, width], got {value!r}") from None
    if len(size) != 2 or h <= 0 or w <= 0:
        raise ConfigError(f"img_size must be positive: an int or [height, width], got {value!r}")
    return h, w


def search_split(data_cfg: DictConfig) -> str:
    """The split a search scores its policies on (held out from the results): ``data.search_split``, else
    ``data.train_split`` (the proxy then draws a fixed subset of the training images). Never ``data.split``,
    the split amc-eval, bench=compare and bench=fidelity report on: a search that selects on the images its
    result is reported on overstates that result."""
    name = data_cfg.get("search_split") or data_cfg.get("train_split") or "train"
    if str(name) == str(data_cfg.split):
        raise ConfigError(f"data.search_split={name} is also data.split, the split results are reported on: a "
                          f"search must score its policies on other images (name another split, or null for a "
                          f"fixed subset of data.train_split)")
    return str(name)


def compose_config(config_name: str, overrides: Sequence[str], error: str) -> DictConfig:
    """``conf/<config_name>.yaml`` composed with ``overrides`` by Hydra, as the command line would compose it.

    Inside a running Hydra app (``amc-bench``) Hydra is already initialized on amc's configs; elsewhere (tests,
    scripts) it is initialized on the ``conf`` package for the call.

    Raises:
        ConfigError: Hydra refuses an override: ``"<error>: <Hydra's first line>"``.
    """
    try:
        if GlobalHydra.instance().is_initialized():
            return compose(config_name=config_name, overrides=list(overrides))
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{error}: {first}") from None


def run_dir() -> Path:
    """The Hydra run directory of the current command (``hydra.run.dir``)."""
    return Path(HydraConfig.get().runtime.output_dir)


def output_dir(out_dir: str | Path | None) -> Path:
    """``out_dir`` when given, else the Hydra run directory of the current command (a workflow called from
    plain Python names its folder; one started by a command writes into the command's run directory)."""
    return Path(out_dir) if out_dir is not None else run_dir()
