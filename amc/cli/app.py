"""What every ``amc-<verb>`` command shares: the Hydra entry point, user errors, the run directory, tables."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from amc.errors import AmcError, ConfigError

if TYPE_CHECKING:
    from amc.resume import ResumeRule

console = Console()

#: Hydra finds the configs in the ``conf`` package, from a source checkout and from an installed wheel alike.
CONFIG_PATH = "pkg://conf"


def _run_dir_or(resume: object, default: str) -> str:
    """``hydra.run.dir`` of commands that can resume: the resumed run's folder, else the usual new one."""
    return str(resume) if resume not in (None, "", "None", "null") else default


# ``${amc_run_dir:${resume},<default>}`` in a command's config (conf/search.yaml): a resumed search writes into the
# run directory it continues, not into a new one.
if not OmegaConf.has_resolver("amc_run_dir"):
    OmegaConf.register_new_resolver("amc_run_dir", _run_dir_or)


def amc_app(config_name: str, resume: ResumeRule | None = None
            ) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Turn ``task(cfg)`` into a Hydra command; an :class:`AmcError` ends it with one line and exit code 2.

    Before Hydra starts, :func:`amc.cli.preflight.preflight` answers ``--help``, refuses unknown keys and bad
    ``resume=`` command lines in one line, and locks the run directory; a job whose folder it could not lock
    first (a multirun job) locks it when it starts, before the task runs. ``resume`` is the command's
    :class:`~amc.resume.ResumeRule` when it can continue a run (``resume=<run dir>``).
    """

    def wrap(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        from amc.cli.preflight import command_name

        command = command_name(config_name)

        @functools.wraps(task)
        def guarded(cfg: DictConfig) -> Any:
            from amc.runlock import lock_run_dir

            try:
                lock_run_dir(run_dir(), command)  # already held when preflight locked it: nothing to do
                return task(cfg)
            except AmcError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                sys.exit(130)

        hydra_main = hydra.main(config_path=CONFIG_PATH, config_name=config_name, version_base="1.3")(guarded)

        @functools.wraps(task)
        def entry() -> Any:
            from amc.cli.preflight import preflight

            args = sys.argv[1:]
            try:
                problem = unknown_group_option(args) or unwritable_output_dir(args)
                if problem:
                    raise ConfigError(problem)
                description = getattr(sys.modules.get(task.__module__), "__doc__", None)
                groups = {**config_groups(), "hydra/launcher": launcher_options()}
                # what Hydra must also be told: the run directory preflight locked, no .hydra/ rewrite on resume
                sys.argv[1:] = [*args, *preflight(config_name, guarded, args, groups, resume, description)]
            except AmcError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
            return hydra_main()

        return entry

    return wrap


def unwritable_output_dir(args: Sequence[str]) -> str | None:
    """A one-line message when the run (or sweep) directory given on the command line cannot be created.

    Hydra creates it before a command starts and would answer with a traceback; the closest existing folder
    on the path must be a folder this user may write to.
    """
    for arg in args:
        key, _, value = arg.partition("=")
        if key.lstrip("+") not in ("hydra.run.dir", "hydra.sweep.dir") or not value or "${" in value:
            continue
        path = Path(value).absolute()
        while not path.exists() and path != path.parent:
            path = path.parent
        if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
            return (f"{key.lstrip('+')}={value} cannot be created ({path} is not a writable folder): "
                    f"choose another {key.lstrip('+')}")
    return None


def config_groups() -> dict[str, list[str]]:
    """amc's own config groups (folders of ``conf/``, Hydra's aside) and their options."""
    import conf

    root = Path(conf.__file__).parent
    return {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in sorted(root.iterdir())
            if d.is_dir() and d.name not in ("hydra", "__pycache__")}


def launcher_options() -> list[str]:
    """The Hydra launchers amc ships (``hydra/launcher=<name>`` with ``-m``), besides Hydra's own ``basic``."""
    import conf

    return sorted(p.stem for p in (Path(conf.__file__).parent / "hydra" / "launcher").glob("*.yaml"))


def unknown_group_option(args: Sequence[str]) -> str | None:
    """A one-line message for the first ``group=option`` argument naming an option that does not exist, else None.

    Hydra itself answers an unknown option with a multi-line listing; a command should say in one line what to fix.
    Sweeps (``budget=flops,params``) are checked option by option.
    """
    groups = config_groups()
    for arg in args:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in groups or not value or value.startswith("${") or "(" in value:
            continue
        for option in value.split(","):
            if option not in groups[key]:
                return f"{key}={option} is not an option of {key}: choose one of {', '.join(groups[key])}"
    return None


def run_dir() -> Path:
    """The Hydra run directory of the current command (``hydra.run.dir``)."""
    return Path(HydraConfig.get().runtime.output_dir)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> None:
    """Print a table; columns from ``numeric_from`` on are right-aligned."""
    table = Table(title=title, title_justify="left")
    # The first column names the rows: never shortened, even when a narrow console squeezes the table.
    first_width = max([len(str(columns[0]))] + [len(str(row[0])) for row in rows]) if columns else 0
    for i, c in enumerate(columns):
        table.add_column(c, justify="right" if i >= numeric_from else "left",
                         min_width=first_width if i == 0 else None, no_wrap=i == 0)
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


def rounding_from_config(node: DictConfig):  # noqa: ANN201 (keeps torch out of this module's imports)
    """The ``pruning:`` group (multiple, min_channels, max_ratio) as a :class:`ChannelRounding`."""
    from amc.pruning.space import ChannelRounding

    return ChannelRounding(config_number(node, "multiple", int, 1, prefix="pruning."),
                           config_number(node, "min_channels", int, 1, prefix="pruning."),
                           config_number(node, "max_ratio", float, 0.0, prefix="pruning."))
