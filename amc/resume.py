"""``resume=<run dir>``: a run continues with its own settings; what may change is listed, the rest is refused.

A command that can resume (``amc-search``, ``amc-finetune``) describes its runs with a :class:`ResumeRule`: the
file in which a run records the config it started with, and the settings a resume may change. The CLI checks
a ``resume=`` command line against the run's recorded config *before* Hydra starts (:func:`check_resume`), so
a refused resume writes nothing (Hydra would otherwise create a mistyped folder, or overwrite the ``.hydra/``
files of whatever folder it was given). A setting asked on the command line that differs from the run's is
refused, naming the key and both values, unless the rule lists it as mutable: silently continuing with the
old value while the command line says otherwise is how results get mislabelled.

An accepted resume applies the mutable settings to the run's config (:func:`resume_changes`,
:func:`apply_changes`) and records them in the run's config file (:func:`record_changes`), so that a later
resume, and whoever reads the folder, sees the settings the run really used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from amc.atomic import atomic_write_text
from amc.errors import ConfigError

_ABSENT = object()

#: Settings every command has (conf/base.yaml) that change only what is shown while it runs, never a result: any
#: resume may change them (a run started in a terminal may be continued in a Slurm job, and the reverse).
DISPLAY_ONLY: dict[str, str] = {
    "progress": "display only",
    "progress_interval_s": "how often progress lines are printed; display only",
    "progress_heartbeat_s": "how often a long step prints that it is alive; display only",
}


@dataclass(frozen=True)
class ResumeRule:
    """How a command's runs are resumed.

    Args:
        command: the command's name in messages (``amc-search``).
        config_file: the file, in the run directory, holding ``{marker: 1, "config": <the resolved config>}``.
        marker: the key of ``config_file`` that marks a folder as a run of this command.
        mutable: the settings a resume may change, each with why it may (shown nowhere; it documents the
            choice next to the list).
        required: other entries a run directory of this command always has.
        check_changes: called with the run directory and the changes asked (key -> new value); returns a
            one-line problem, or None when the changes can apply (e.g. ``episodes`` not below those played).
    """

    command: str
    config_file: str
    marker: str
    mutable: Mapping[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    check_changes: Callable[[Path, dict[str, Any]], str | None] | None = None


def read_run_config(rule: ResumeRule, run_dir: str | Path) -> dict[str, Any]:
    """The config a run in ``run_dir`` started with (plain data); refuses folders that are not such runs."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise ConfigError(f"resume={run_dir}: no such directory (give the run directory of an {rule.command})")
    path = folder / rule.config_file
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        data = None
    if (not isinstance(data, dict) or data.get(rule.marker) != 1 or not isinstance(data.get("config"), dict)
            or not all((folder / entry).exists() for entry in rule.required)):
        needed = " and ".join([rule.config_file] + [f"{e}/" for e in rule.required])
        raise ConfigError(f"resume={run_dir} is not an {rule.command} run directory (no valid {needed} in it)")
    return data["config"]


def check_new_run(rule: ResumeRule, run_dir: str | Path) -> None:
    """Refuse a new run into a folder that already holds a run of this command (it would mix two runs)."""
    if (Path(run_dir) / rule.config_file).exists():
        raise ConfigError(f"{run_dir} already holds an {rule.command} run: continue it with resume={run_dir} "
                          f"or choose another hydra.run.dir")


def show(value: Any) -> str:
    """A setting's value as a command line would write it (``0.7``, ``random``, ``[0.0, 0.8]``, ``null``)."""
    if value is _ABSENT:
        return "not set"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _plain(node: Any) -> Any:
    if OmegaConf.is_config(node):
        try:
            return OmegaConf.to_container(node, resolve=True)
        except Exception:  # noqa: BLE001 (an interpolation only Hydra's job can resolve: compare it as written)
            return OmegaConf.to_container(node, resolve=False)
    return node


def _select(node: Any, key: str) -> Any:
    """``key`` (dotted) of a config or of plain nested dicts, or ``_ABSENT``."""
    if OmegaConf.is_config(node):
        try:
            return _plain(OmegaConf.select(node, key, default=_ABSENT, throw_on_missing=False))
        except Exception:  # noqa: BLE001 (an unresolvable interpolation: compare it as written)
            return OmegaConf.select(node, key, default=_ABSENT, throw_on_resolution_failure=False)
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _ABSENT
    return node


def differences(had: Any, asked: Any, key: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every leaf (dotted key, value in ``had``, value in ``asked``) where two plain settings differ: ``had``'s keys
    in order, then the keys only ``asked`` has; a side without the key gives ``_ABSENT`` (:func:`show`: "not set").
    """
    if isinstance(had, dict) and isinstance(asked, dict):
        for k in list(had) + [k for k in asked if k not in had]:
            yield from differences(had.get(k, _ABSENT), asked.get(k, _ABSENT), f"{key}.{k}" if key else str(k))
        return
    same = had == asked and type(had) is type(asked) or (
        isinstance(had, (int, float)) and isinstance(asked, (int, float))
        and not isinstance(had, bool) and not isinstance(asked, bool) and had == asked)
    if not same:
        yield key, had, asked


def _override_key(override: Any) -> str:
    """The config key a parsed Hydra override sets (``budget.flops``, ``agent``, ``hydra/launcher``)."""
    return str(override.key_or_group)


def check_resume(rule: ResumeRule, cfg: DictConfig, overrides: Sequence[Any], groups: Sequence[str]) -> Path:
    """Refuse (one-line :class:`ConfigError`) a ``resume=`` command line the run cannot continue with.

    Args:
        rule: the command's resume rule.
        cfg: the config the command line composes (with its ``hydra`` node: ``hydra.run.dir``).
        overrides: the command line's parsed Hydra overrides.
        groups: the command's config groups (``agent=random`` compares the whole ``agent`` node).

    Returns the run directory. Reads only: nothing is created or written, whatever the outcome.
    """
    resume = str(cfg.resume)
    folder = Path(resume)
    saved = read_run_config(rule, folder)
    run_dir = OmegaConf.select(cfg, "hydra.run.dir", default=None)
    if run_dir is not None and Path(str(run_dir)).resolve() != folder.resolve():
        raise ConfigError(f"resume={resume} continues the run in its own folder: drop hydra.run.dir={run_dir}")
    changes: dict[str, Any] = {}
    for o in overrides:
        key = _override_key(o)
        if key == "resume" or key.startswith("hydra.") or key == "hydra" or "/" in key:
            continue  # where and how Hydra runs the job, not what the run computes
        if o.is_delete():
            raise ConfigError(f"resume={resume}: ~{key} would delete a setting of that run; a resume continues "
                              f"the run with its own settings: drop ~{key}")
        asked = _select(cfg, key)
        if key in rule.mutable:
            changes[key] = asked
            continue
        had = _select(saved, key)
        diff = next(differences(had, asked, key), None)
        if diff is not None:
            leaf, had_leaf, asked_leaf = diff
            which = f" ({o.input_line})" if key in groups or leaf != key else ""
            may = ", ".join(rule.mutable) or "nothing"
            raise ConfigError(f"resume={resume}: {leaf} is {show(had_leaf)} in that run, {show(asked_leaf)} "
                              f"asked{which}; a resume continues the run with its own settings (only {may} may "
                              f"change): drop {o.input_line}, or start a new run")
    if changes and rule.check_changes is not None:
        problem = rule.check_changes(folder, changes)
        if problem:
            raise ConfigError(f"resume={resume}: {problem}")
    return folder


def task_overrides() -> list[str]:
    """The running Hydra job's command-line overrides (none when the command was called without Hydra)."""
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # HydraConfig not set: a direct call (tests, benches)
        return []


def resume_changes(rule: ResumeRule, cfg: DictConfig, task_overrides: Sequence[str]) -> dict[str, Any]:
    """The mutable settings the command line of a resume sets (key -> value), read from the composed ``cfg``."""
    changes = {}
    for o in OverridesParser.create().parse_overrides(list(task_overrides)):
        key = _override_key(o)
        if key in rule.mutable and not o.is_delete():
            changes[key] = _select(cfg, key)
    return changes


def apply_changes(saved: DictConfig, changes: Mapping[str, Any]) -> DictConfig:
    """The run's config with the (already checked) mutable settings of a resume applied."""
    for key, value in changes.items():
        OmegaConf.update(saved, key, value, merge=False, force_add=True)
    return saved


def record_changes(rule: ResumeRule, run_dir: str | Path, changes: Mapping[str, Any]) -> None:
    """Write a resume's changes into the run's config file (and ``.hydra/config.yaml``), atomically.

    A later resume then continues with them (a search extended to 60 episodes stays a 60-episode search),
    and the folder tells what the run used. Settings equal to the recorded ones rewrite nothing.
    """
    folder = Path(run_dir)
    for path, config_of in ((folder / rule.config_file, lambda d: d.get("config")),
                            (folder / ".hydra" / "config.yaml", lambda d: d)):
        if not changes or not path.is_file():
            continue
        data = yaml.safe_load(path.read_text())
        config = config_of(data) if isinstance(data, dict) else None
        if not isinstance(config, dict):
            continue
        changed = False
        for key, value in changes.items():
            *parents, leaf = key.split(".")
            node = config
            for part in parents:
                node = node.setdefault(part, {})
            if node.get(leaf, _ABSENT) != value:
                node[leaf], changed = value, True
        if changed:
            atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
