"""A search's run directory: its files, the state the runner keeps across a resume, and reading a run back.

A run directory holds everything a search produces and everything it needs to continue:

* ``search_config.yaml``: the resolved config the search started with (a resume reads it back);
* ``best_policy.yaml``: the policy the search exports so far (its ``export_rule``: by default the best reward),
  rewritten atomically whenever the pick changes;
* ``checkpoint/``: agent state (weights, optimizers, replay buffer, noise, RNG) and search state (episode
  counter, best episode, :class:`SearchState`), replaced as a whole after every ``checkpoint_every`` episodes
  (:func:`amc.atomic.atomic_dir`);
* ``tensorboard/`` and ``episodes.jsonl``: the curves and the per-episode log (:mod:`amc.search.tracking`);
* at the end ``model/`` (the best policy's physically pruned model, amc format), ``results.json`` and
  ``metrics.json`` (:mod:`amc.search.report`).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from amc.config import compose_config
from amc.errors import ConfigError
# defined beside the resume rules (no torch there); readers import them from here too
from amc.search.resume import CHECKPOINT_DIR, CONFIG_FILE, RESULT_NEUTRAL, RUN_MARKER  # noqa: F401

BEST_POLICY_FILE = "best_policy.yaml"
COST_KEYS = ("flops_ratio", "params_ratio", "latency_ratio")


def check_writable(run_dir: Path) -> None:
    """Fail early, in one line, when the run directory cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to the run directory {run_dir} ({e.strerror or e}): "
                          f"choose another one with hydra.run.dir=DIR") from None


def load_resume_config(run_dir: Path) -> DictConfig:
    """The config a search in ``run_dir`` started with; refuses folders that are not amc-search runs."""
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise ConfigError(f"resume={run_dir}: no such directory (give the run directory of an amc-search)")
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        data = None
    if not isinstance(data, dict) or data.get(RUN_MARKER) != 1:
        raise ConfigError(f"resume={run_dir} is not an amc-search run directory (no valid {CONFIG_FILE} in it)")
    cfg = OmegaConf.create(data["config"])
    cfg.resume = str(run_dir)
    _add_new_settings(cfg)
    return cfg


#: Settings amc-search gained after runs already existed whose defaults reproduce what those runs did: a run
#: recorded without one resumes with its default. ``worker_devices: null`` places workers as before it existed.
NEW_SETTINGS_WITH_OLD_BEHAVIOUR = (*RESULT_NEUTRAL, "worker_devices")
_ABSENT = object()


def _add_new_settings(cfg: DictConfig) -> None:
    """Give a run started by an earlier amc the settings it lacks that change nothing it did (their defaults).

    Any other setting a run lacks stays absent (the runner then names it), since its default might change what
    the remaining episodes do.
    """
    missing = [key for key in NEW_SETTINGS_WITH_OLD_BEHAVIOUR
               if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT]
    if not missing:
        return
    defaults = compose_config("search", [], "amc-search's defaults")
    for key in missing:
        OmegaConf.update(cfg, key, OmegaConf.select(defaults, key), force_add=True)


@dataclass
class SearchState:
    """What the runner itself must remember across a resume (the agent saves its own state).

    Episodes are numbered from 1 everywhere a user reads them: on screen, in ``episodes.jsonl``,
    ``best_policy.yaml``, ``results.json`` / ``metrics.json`` and as TensorBoard steps. ``first_episode`` is the
    number of a run's first episode: 1, or 0 in the checkpoint of a run started before the numbers were unified
    (its files are renumbered when it is resumed, see :meth:`amc.search.runner.SearchRunner._build`).
    """

    episodes_done: int = 0
    best_reward: float = -math.inf
    best_episode: int = -1  # the best episode's number (from 1); -1: none yet
    best_ratios: list[float] | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    penalized: int = 0
    search_s: float = 0.0
    first_episode: int = 1
    # the episodes the export rule may still pick (amc.search.pick.candidates): number, reward, proxy mAP, phase,
    # ratios and costs of each
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["best_reward"] = None if not math.isfinite(self.best_reward) else self.best_reward
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchState":
        d = dict(d)
        d["best_reward"] = -math.inf if d.get("best_reward") is None else float(d["best_reward"])
        d.setdefault("first_episode", 0)  # a checkpoint written before episode numbers started at 1
        if "candidates" not in d and d.get("best_ratios") is not None:
            # a checkpoint written before the export rules: its runs export by reward, and its best episode is the
            # only one that rule may still pick
            metrics = d.get("best_metrics") or {}
            d["candidates"] = [{"episode": d["best_episode"], "reward": d["best_reward"],
                                "map50_95": metrics.get("map50_95"), "phase": "", "ratios": d["best_ratios"],
                                **{k: metrics.get(k) for k in COST_KEYS}}]
        return cls(**d)
