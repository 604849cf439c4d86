"""What every ``amc-<verb>`` command shares: the Hydra entry point, one-line user errors, the run directory lock.

Command-line plumbing only: reading a config (:mod:`amc.config`), building what it names (:mod:`amc.factory`)
and printing (:mod:`amc.console`) live in the library, which never imports :mod:`amc.cli`.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import conf
from amc.cli.preflight import command_name, preflight
from amc.config import config_number, run_dir
from amc.console import ProgressSettings, configure_progress
from amc.errors import AmcError, ConfigError
from amc.resume import ResumeRule
from amc.runlock import lock_run_dir

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
        command = command_name(config_name)

        @functools.wraps(task)
        def guarded(cfg: DictConfig) -> Any:
            try:
                lock_run_dir(run_dir(), command)  # already held when preflight locked it: nothing to do
                configure_progress_lines(cfg)
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


def configure_progress_lines(cfg: DictConfig) -> None:
    """How often long loops write plain progress lines (``progress_interval_s``, ``progress_heartbeat_s`` of
    ``conf/base.yaml``); a command whose config lacks them keeps the defaults of :mod:`amc.console`."""
    interval = config_number(cfg, "progress_interval_s", float, 0.0, optional=True)
    heartbeat = config_number(cfg, "progress_heartbeat_s", float, 0.0, optional=True)
    default = ProgressSettings()
    configure_progress(default.interval_s if interval is None else interval,
                       default.heartbeat_s if heartbeat is None else heartbeat)


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
    root = Path(conf.__file__).parent
    return {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in sorted(root.iterdir())
            if d.is_dir() and d.name not in ("hydra", "__pycache__")}


def launcher_options() -> list[str]:
    """The Hydra launchers amc ships (``hydra/launcher=<name>`` with ``-m``), besides Hydra's own ``basic``."""
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
