"""What an ``amc-*`` command checks before Hydra starts: ``--help``, the command line's keys, ``resume=``, the lock.

Hydra, left alone, answers a mistyped key with four or five lines and exit code 1, accepts ``+episodez=6``
silently, creates the run directory and writes its ``.hydra/`` files before the command's own code runs (so a
refused command has already changed the disk), and its ``--help`` says nothing of what the command does. So
:func:`preflight` composes the command line's config itself, with Hydra's compose API and the same overrides,
and:

* ``--help``: prints the command's description (its module docstring), the config groups it uses with their
  options, and how to see and change its settings (:func:`command_help`);
* ends a parse error, an unknown key, or an added top-level key nothing reads, in one ``error:`` line
  (exit code 2) that names the closest valid key (:func:`difflib.get_close_matches` over the composed
  config's keys);
* checks a ``resume=`` against the run's recorded config (:func:`amc.resume.check_resume`), or refuses a new
  run into a folder holding one (:func:`amc.resume.check_new_run`), writing nothing either way;
* locks the run directory (:mod:`amc.runlock`) and pins ``hydra.run.dir`` to the folder it locked (the default
  folder is named by the clock, which Hydra would read again a moment later); a resume also sets
  ``hydra.output_subdir=null``: the run's ``.hydra/`` keeps recording how it was started, instead of being
  overwritten with the defaults of a command line that only says ``resume=DIR``.

Multirun jobs (``-m``) and commands given Hydra's own config flags (``--config-dir`` ...) are only checked for
their keys here (the first job's overrides); each job locks its folder when it starts
(:func:`amc.cli.app.amc_app`).
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from amc.errors import AmcError, ConfigError
from amc.resume import ResumeRule, check_new_run, check_resume, show
from amc.runlock import Holder, RunDirLocked, lock_run_dir, locked_by_other

#: Top-level keys a command accepts as ``+KEY=VALUE`` although its config does not have them: none today.
#: (Nested additions such as ``+report.<label>=PATH`` of amc-eval or ``+bench.proxy_variants.<name>=...`` are
#: documented extension points of their parent node and always accepted.) An added top-level key is otherwise
#: refused: nothing reads it, and it is almost always a typo of an existing key.
TOP_LEVEL_EXTENSIONS: frozenset[str] = frozenset()

#: Values of ``resume`` that mean "no resume" (the ``amc_run_dir`` resolver of conf/*.yaml reads them alike).
NO_RESUME = (None, "", "None", "null")


def command_name(config_name: str) -> str:
    """What the user typed: ``amc-search`` for the ``search`` config (``make_demo`` is a script)."""
    return "python scripts/make_demo.py" if config_name == "make_demo" else f"amc-{config_name}"


def job_name(task: Callable[..., Any], config_name: str) -> str:
    """The job name Hydra gives ``task`` (it names the default run directory ``outputs/<job name>/...``)."""
    try:
        from hydra._internal.utils import detect_calling_file_or_module_from_task_function, detect_task_name

        return detect_task_name(*detect_calling_file_or_module_from_task_function(task))
    except Exception:  # noqa: BLE001 (Hydra internals moved: the commands' jobs are named after their configs)
        return config_name


def _compose(config_name: str, job: str, overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="conf", version_base="1.3", job_name=job):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)


def _keys(node: Any, prefix: str = "") -> Iterable[str]:
    """Every dotted key of plain nested dicts and lists (parents included)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        key = f"{prefix}{k}"
        yield key
        yield from _keys(v, f"{key}.")


def config_keys(cfg: DictConfig) -> set[str]:
    """The composed config's keys, ``hydra.*`` included (values left unresolved: ``???`` keys count too)."""
    return set(_keys(OmegaConf.to_container(cfg, resolve=False)))


def closest(key: str, keys: Iterable[str]) -> str | None:
    """The valid key closest to a mistyped one, or None when none is close."""
    pool = [k for k in keys if not re.search(r"\.\d+(\.|$)", k)]  # list positions are nobody's typo
    if not key.startswith("hydra"):
        pool = [k for k in pool if not k.startswith("hydra")]
    found = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
    if not found and "." in key:  # a typo in the last part only: compare it with its siblings' names
        parent, leaf = key.rsplit(".", 1)
        siblings = [k.rsplit(".", 1)[1] for k in pool if k.startswith(f"{parent}.") and k.count(".") == key.count(".")]
        leaves = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
        found = [f"{parent}.{leaves[0]}"] if leaves else []
    return found[0] if found else None


def _unknown_key(command: str, override: Any, keys: set[str]) -> str:
    """A one-line message for an override naming a key the config does not have, with the closest valid key."""
    key = str(override.key_or_group)
    guess = closest(key, keys)
    value = override.input_line.split("=", 1)[1] if "=" in override.input_line else None
    prefix = "~" if override.is_delete() else ""
    hint = f": did you mean {prefix}{guess}{'' if value is None else '=' + value}?" if guess else ""
    return (f"{override.input_line}: {command} has no setting {key}{hint} "
            f"({command} --cfg job lists every setting)")


def parse_overrides(raw: Sequence[str]) -> list[Any]:
    """The command line's Hydra overrides, parsed; a malformed one is a one-line error naming it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for arg in raw:  # one at a time: the error names the argument at fault
        try:
            parser.parse_overrides([arg])
        except HydraException as e:
            detail, *rest = str(e).strip().splitlines() or [""]
            see = next((m.group(0) for m in map(re.compile(r"https?://\S+").search, rest) if m), None)
            raise ConfigError(f"{arg}: not a valid override ({detail.strip()}); write key=value, +key=value "
                              f"or ~key" + (f", see {see}" if see else "")) from None
    return parser.parse_overrides(list(raw))


def _first_job(overrides: Sequence[Any], raw: Sequence[str]) -> list[str]:
    """A sweep's first job's overrides (``budget.flops=0.3,0.5`` -> ``budget.flops=0.3``): its keys are checked."""
    if not any(o.is_sweep_override() for o in overrides):
        return list(raw)
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return list(BasicSweeper.split_arguments(list(overrides), None)[0][0])


def _is_group(key: str, groups: Iterable[str]) -> bool:
    return key in groups or "/" in key


def compose_checked(config_name: str, job: str, command: str, overrides: Sequence[Any], raw: Sequence[str],
                    groups: Sequence[str]) -> DictConfig:
    """The config the command line composes; unknown keys and Hydra's refusals end in one line.

    A sweep (``-m budget.flops=0.3,0.5``) composes its first job; messages quote the command line's own words.
    """
    from hydra.errors import HydraException

    job_overrides = parse_overrides(_first_job(overrides, raw))
    asked = {str(o.key_or_group): o for o in overrides}  # what the user wrote, per key
    base: DictConfig | None = None

    def base_keys() -> set[str]:
        # the config with the command line's group choices only: the keys the other overrides may name
        nonlocal base
        if base is None:
            base = _compose(config_name, job, [o.input_line for o in job_overrides
                                               if _is_group(str(o.key_or_group), groups) and not o.is_delete()])
        return config_keys(base)

    try:
        cfg = _compose(config_name, job, [o.input_line for o in job_overrides])
    except HydraException as e:
        try:
            keys = base_keys()
        except HydraException:
            keys = set()
        for o in job_overrides:
            key, shown = str(o.key_or_group), asked.get(str(o.key_or_group), o)
            if _is_group(key, groups) or not keys:
                continue
            if (o.is_delete() or not (o.is_add() or o.is_force_add())) and key not in keys:
                raise ConfigError(_unknown_key(command, shown, keys)) from None
            if o.is_add() and key in keys:
                raise ConfigError(f"{shown.input_line}: {key} is already a setting of {command}: "
                                  f"write {shown.input_line[1:]} to change it") from None
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        raise ConfigError("; ".join(lines) or type(e).__name__) from None
    for o in job_overrides:  # Hydra adds unknown keys silently: a top-level one is refused (nothing reads it)
        key, shown = str(o.key_or_group), asked.get(str(o.key_or_group), o)
        if not (o.is_add() or o.is_force_add()) or "." in key or _is_group(key, groups) or key == "hydra" \
                or key in TOP_LEVEL_EXTENSIONS:
            continue
        if o.is_force_add() and key in base_keys():
            continue  # ++key=value on an existing key is a plain change
        keys = base_keys() if base is not None else config_keys(cfg) - {key}
        guess = closest(key, keys)
        value = shown.input_line.split("=", 1)[1]
        raise ConfigError(f"{shown.input_line}: {command} has no setting {key}, and nothing would read an added "
                          f"one" + (f": did you mean {guess}={value}?" if guess else f" ({command} --cfg job lists "
                                                                                   f"every setting)"))
    return cfg


def _doc_text(doc: str) -> str:
    """A module docstring as terminal text (reST's ````code```` and ``::`` dropped)."""
    text = inspect.cleandoc(doc).replace("``", "`").replace("`", "")
    return re.sub(r"::$", ":", text, flags=re.M)


def command_help(command: str, description: str | None, cfg: DictConfig | None, groups: dict[str, list[str]]) -> str:
    """``--help``: what the command does, the config groups it uses (and their options), how to set things."""
    lines = [_doc_text(description) if description else command, ""]
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices) if cfg is not None else {}
    used = {k: v for k, v in choices.items() if "@" not in k and not k.startswith("hydra/") and k in groups}
    if used:
        lines.append("Config groups (group=option; * marks the default):")
        width = max(len(g) for g in used)
        for group, default in used.items():
            options = ", ".join(f"{o}*" if o == default else o for o in groups[group])
            lines.extend(textwrap.wrap(options, 100, initial_indent=f"  {group:<{width}}  ",
                                       subsequent_indent=" " * (width + 4), break_on_hyphens=False))
        lines.append("")
    launchers = groups.get("hydra/launcher", [])
    scalars = {k: v for k, v in (OmegaConf.to_container(cfg, resolve=False).items() if cfg is not None else ())
               if k not in ("hydra", "resume") and isinstance(v, (bool, int, float, str))}
    example = next(iter(scalars.items()), None)
    sweep = "seed=0,1,2" if "seed" in scalars else "key=a,b"
    folder = f"outputs/{cfg.hydra.job.name}/<date>_<time>" if cfg is not None else "outputs/..."
    lines += textwrap.wrap(
        f"Settings: `{command} --cfg job` prints every setting with its value; change one with key=value"
        + (f" (e.g. {example[0]}={show(example[1])})" if example else "")
        + f", run several with -m and comma-separated values (e.g. -m {sweep}"
        + (f"; hydra/launcher={'|'.join(launchers)} runs them through submitit" if launchers else "")
        + f"). Results go to the run directory hydra.run.dir=DIR (default {folder}), which one command at a "
          f"time may use. Errors end in one line starting with 'error:' (exit code 2). Hydra's own flags: "
          f"{command} --hydra-help.", 100, break_on_hyphens=False)
    return "\n".join(lines)


def preflight(config_name: str, task: Callable[..., Any], argv: Sequence[str], groups: dict[str, list[str]],
              resume_rule: ResumeRule | None = None, description: str | None = None) -> list[str]:
    """Check a command line before Hydra runs it; returns overrides to append for Hydra (see the module doc).

    Raises :class:`ConfigError` (one line, exit code 2 at the caller) for everything it refuses; ``--help``
    prints the command's help and exits 0.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.errors import HydraException

    command = command_name(config_name)
    args = get_args_parser().parse_args(list(argv))  # a malformed flag: argparse's usage and exit code 2, as Hydra
    job = job_name(task, config_name)
    if args.help:
        try:
            cfg = _compose(config_name, job, [])
        except HydraException:
            cfg = None
        print(command_help(command, description, cfg, groups))
        sys.exit(0)
    if (args.hydra_help or args.shell_completion or args.info is not None or args.experimental_rerun
            or args.config_path or args.config_name or args.config_dir):
        return []  # Hydra's own business, or a config this pre-check would not compose alike
    overrides = parse_overrides(args.overrides)
    cfg = compose_checked(config_name, job, command, overrides, args.overrides, list(groups))
    if args.cfg or args.multirun:
        return []  # nothing runs, or each job locks its own folder when it starts
    run_dir = Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
    resume = cfg.get("resume") if resume_rule is not None else None
    resuming = resume not in NO_RESUME
    folder = Path(str(resume)) if resuming else run_dir

    def in_use(holder: Holder) -> AmcError:
        if resuming:  # the folder's own run is still going: that is what the user needs to hear
            return ConfigError(f"resume={resume}: that run is still going ({holder.describe()}): wait for it to end")
        return RunDirLocked(folder, holder)

    holder = locked_by_other(folder)  # first: a run going on in the folder explains any other refusal
    if holder is not None:
        raise in_use(holder)
    if resuming:
        check_resume(resume_rule, cfg, overrides, list(groups))  # reads only
    elif resume_rule is not None:
        check_new_run(resume_rule, run_dir)
    try:
        lock_run_dir(folder, command)
    except RunDirLocked as e:  # taken between the look and the lock
        raise in_use(e.holder) from None
    extra = []
    if not any(str(o.key_or_group) == "hydra.run.dir" for o in overrides):
        pinned = _override_value(str(OmegaConf.select(cfg, "hydra.run.dir")))
        if pinned is not None:
            extra.append(f"hydra.run.dir={pinned}")
    if resuming:
        extra.append("hydra.output_subdir=null")
    return extra


def _override_value(text: str) -> str | None:
    """``text`` written as a Hydra override value (quoted when needed), or None when it cannot be written safely."""
    if re.fullmatch(r"[\w./:+-]+", text):
        return text
    if not any(c in text for c in "'\\$"):
        return f"'{text}'"
    return None  # the folder is then locked from inside the job, once Hydra has named it
