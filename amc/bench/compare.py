"""``amc-bench bench=compare``: the search against the baselines at equal budgets (issue 11, item 1).

For every budget x method x seed (a *cell*) the bench finds a policy and scores it three ways:

* **policy**: ``ddpg`` and ``random`` run the search ``amc-search`` runs (``conf/search.yaml`` composed with the
  bench's overrides, :class:`~amc.search.runner.SearchRunner` in ``cells/<budget>/<method>/seed<k>/search``) and
  keep its best policy; ``uniform`` (:func:`~amc.pruning.baselines.uniform_policy`, channels by the search's
  criterion) and ``global_magnitude`` (:func:`~amc.pruning.baselines.global_magnitude_policy`, channels by its own
  global ranking) are computed;
* **proxy mAP**: the search's own evaluator, built from the same config (a search reports its best episode's);
* **full-val mAP**: the physically pruned model after adaptive BN on the val split, amc-eval's protocol
  (:class:`~amc.eval.evaluator.DetectionEvaluator`, COCOeval, official NMS settings);
* **fine-tuned mAP**: the same model after the same short fine-tune for every method
  (:func:`amc.bench.common.finetune_pruned`, seeded by the cell's seed), scored like the full-val mAP.

Each cell is written atomically to ``cells/<budget>/<method>/seed<k>.json`` as soon as it is done; a rerun in the
same directory (``bench.resume=<dir>`` or the same ``hydra.run.dir``) reads finished cells back and resumes an
interrupted search from its checkpoint. At the end: means and sample standard deviations over seeds, a terminal
table, ``results.md``, ``results.json`` and two plots (``map_vs_flops.svg``, ``reward_curves.svg``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from amc.atomic import atomic_write_json, atomic_write_text
from amc.bench.common import finetune_pruned
from amc.bench.compare_stats import (METRICS, best_so_far, cell_machines, episodes_to_95, judge_seed, paired,
                                     read_episodes, search_failed, summarize, wins)
from amc.config import compose_config, config_number, output_dir, plain, search_split
from amc.console import (ProgressLog, console, fmt_interval, fmt_mean_std, fmt_number, is_terminal, log_line,
                         print_table)
from amc.data.loaders import EvalSet, TrainSet, sample_batches
from amc.device import select_device
from amc.errors import AmcError, ConfigError
from amc.eval.evaluator import DetectionEvaluator, EvalSettings, check_classes
from amc.factory import load_data_from_config, load_model_from_config, rounding_from_config
from amc.plots import line_svg, scatter_svg
from amc.pruning.baselines import global_magnitude_policy, ratios_for_widths, uniform_policy
from amc.pruning.budget import Budget, BudgetEnforcer, global_threshold_widths
from amc.pruning.physical import prune_model
from amc.pruning.selection import ChannelSelection, top_channels
from amc.pruning.space import PruningSpace
from amc.resume import differences, show
from amc.reward.latency_table import LatencyTable
from amc.reward.proxy import proxy_settings, recalibrate_batch_norm
from amc.search.pick import pick
from amc.search.resume import RESULT_NEUTRAL
from amc.search.rundir import CONFIG_FILE, load_resume_config
from amc.search.runner import SearchRunner
from amc.search.settings import SearchSettings
from amc.search.setup import SearchSetup

METHODS = ("ddpg", "random", "uniform", "global_magnitude")
"""Every method the bench knows, in table order."""
SEARCH_METHODS = ("ddpg", "random")
"""The methods that run a search (the others compute one policy)."""
LATER_SETTINGS: dict[str, Any] = {"spend_budget": False, "agent.imitate_best": 0.0, "export_rule": "reward"}
"""Search settings added after benches had run, each with the value that does what those benches did: left out of
a cell's fingerprint at that value, so that cells computed before the setting existed still read back."""
SEARCH_ONLY_LATER = ("spend_budget", "agent.imitate_best", "export_rule")
"""Later settings only a search uses (the environment's wall, the DDPG actor's loss): always left out of a baseline
cell's fingerprint, whatever their default, so that a new default does not disown the baselines' cells. (The rest of
a baseline's agent settings stay in its fingerprint, as they were when the first benches ran.)"""
CELLS_DIR = "cells"
SUBSET_SEED = 0  # draws the val / train subsets of bench.full and bench.finetune (the same for every seed)


# ---------------------------------------------------------------------------------------------- budgets
@dataclass(frozen=True)
class CompareBudget:
    """One budget of the bench.

    Attributes:
        metric: ``flops`` or ``latency`` (what the searches' environment keeps within the budget).
        fraction: the share of the unpruned model's metric a policy may keep.
    """

    metric: str
    fraction: float

    @property
    def key(self) -> str:
        """Its key in ``results.json``: ``"0.5"`` for a FLOPs budget, ``"latency:0.5"`` for a latency one."""
        return f"{self.fraction:g}" if self.metric == "flops" else f"{self.metric}:{self.fraction:g}"

    @property
    def dirname(self) -> str:
        """Its folder under ``cells/`` (no colon: portable file names)."""
        return f"{self.metric}-{self.fraction:g}"


def parse_budgets(b: DictConfig) -> list[CompareBudget]:
    """``bench.budgets`` (FLOPs) and ``bench.latency_budgets`` as :class:`CompareBudget` objects, checked.

    Raises:
        ConfigError: not numbers in (0, 1], repeated, or none at all.
    """
    budgets = []
    for name, metric in (("budgets", "flops"), ("latency_budgets", "latency")):
        values = b.get(name) or []
        if not OmegaConf.is_list(values) and not isinstance(values, (list, tuple)):
            raise ConfigError(f"bench.{name} must be a list of fractions, got {values!r}")
        for v in values:
            try:
                fraction = float(v)
            except (TypeError, ValueError):
                fraction = float("nan")
            if isinstance(v, bool) or not 0.0 < fraction <= 1.0:
                raise ConfigError(f"bench.{name}: a budget is the fraction of the unpruned model's {metric} to "
                                  f"keep, in (0, 1]; got {v!r}")
            budgets.append(CompareBudget(metric, fraction))
    if not budgets:
        raise ConfigError("bench.budgets and bench.latency_budgets are both empty: nothing to compare")
    if len({x.key for x in budgets}) != len(budgets):
        raise ConfigError(f"bench.budgets: each budget once, got {[x.key for x in budgets]}")
    return budgets


# ---------------------------------------------------------------------------------------------- configs
def _strings(node: Any, name: str) -> list[str]:
    values = node if node is not None else []
    if not OmegaConf.is_list(values) and not isinstance(values, (list, tuple)):
        raise ConfigError(f"{name} must be a list of overrides like [key=value], got {values!r}")
    return [str(v) for v in values]


def _number(node: Any, key: str, kind: type = int, low: float | None = None, optional: bool = False,
            prefix: str = "") -> Any:
    """:func:`amc.config.config_number`, its one-line :class:`AmcError` raised as a :class:`ConfigError`."""
    try:
        return config_number(node, key, kind, low, optional=optional, prefix=prefix)
    except AmcError as e:
        raise ConfigError(str(e)) from None


def _fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able settings: a resumed cell must come from the same settings."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cell_judges(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A finished cell's short fine-tunes (``seed``, ``map``, ``machine`` each, judgement 0 first); a cell from before
    ``bench.finetune.judge_seeds`` holds one, its ``map_finetuned`` with the cell's seed; [] when none ran."""
    if record.get("judges"):
        return [dict(j) for j in record["judges"]]
    if record.get("map_finetuned") is None:
        return []
    return [{"seed": record.get("seed"), "map": record["map_finetuned"], "machine": record.get("machine")}]


def _judged_mean(judges: list[dict[str, Any]], count: int) -> float | None:
    """The mean mAP of the first ``count`` judgements (None without any)."""
    return float(np.mean([j["map"] for j in judges[:count]])) if judges else None


def _get_dotted(tree: dict[str, Any], key: str) -> Any:
    """The value at ``a.b.c`` in nested dicts (None when a part is missing)."""
    for part in key.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree


def _pop_dotted(tree: dict[str, Any], key: str) -> None:
    """Remove ``a.b.c`` from nested dicts (nothing when a part is missing)."""
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.get(part)
        if not isinstance(tree, dict):
            return
    tree.pop(leaf, None)


def _without_export_rule(settings: dict[str, Any]) -> dict[str, Any]:
    """A cell's result settings but its search's ``export_rule`` (which episode it exports, not which it plays)."""
    search = {k: v for k, v in settings.get("search", {}).items() if k != "export_rule"}
    return {**settings, "search": search}


def _changed_settings(recorded: Any, current: dict[str, Any], shown: int = 4) -> str:
    """`` (key: A there, B here; ...)`` for the settings a cell was computed with that differ from this run's
    (compared and written as a refused ``resume=`` names them, :func:`amc.resume.differences`).

    Empty when the cell does not record its settings (cells written before they did).
    """
    if not isinstance(recorded, dict):
        return ""
    diffs = [f"{key}: {show(old)} there, {show(new)} here" for key, old, new in differences(recorded, current)]
    more = f"; and {len(diffs) - shown} more" if len(diffs) > shown else ""
    return f" ({'; '.join(diffs[:shown])}{more})" if diffs else ""


# ---------------------------------------------------------------------------------------------- the bench
class CompareBench:
    """The comparison in one run directory (new or resumed); :meth:`run` does everything.

    Args:
        cfg: the ``amc-bench`` config (``cfg.bench`` = ``conf/bench/compare.yaml``, ``cfg.seed`` the first seed).
        out_dir: the run directory (``bench.resume`` when set, else this).

    Every setting is read and every budget checked against the model in the constructor, before any search.
    """

    def __init__(self, cfg: DictConfig, out_dir: Path) -> None:
        b = cfg.bench
        self.b = b
        resume = b.get("resume")
        self.out = Path(str(resume)) if resume not in (None, "") else Path(out_dir)
        if resume not in (None, "") and not self.out.is_dir():
            raise ConfigError(f"bench.resume={resume}: no such directory (give the run dir of a bench=compare)")
        self.budgets = parse_budgets(b)
        methods = [str(m) for m in (b.get("methods") or [])]
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods or len(set(methods)) != len(methods):
            raise ConfigError(f"bench.methods must be distinct names among {', '.join(METHODS)}, got {methods}")
        self.methods = [m for m in METHODS if m in methods]  # table order
        first_seed = _number(cfg, "seed", int)
        self.seeds = [first_seed + k for k in range(_number(b, "seeds", int, 1, prefix="bench."))]
        self.episodes = _number(b, "episodes", int, 1, prefix="bench.")
        self.margin = _number(b, "wins_margin", float, 0.0, prefix="bench.")
        self.finetune_epochs = _number(b.finetune, "epochs", int, 0, prefix="bench.finetune.")
        self.judge_seeds = _number(b.finetune, "judge_seeds", int, 1, optional=True, prefix="bench.finetune.") or 1
        _number(b.full, "bn_batches", int, 0, prefix="bench.full.")
        _number(b.full, "val_images", int, 1, optional=True, prefix="bench.full.")
        _number(b.finetune, "train_images", int, 1, optional=True, prefix="bench.finetune.")
        s = b.search
        self.config_name = str(s.get("config") or "search")
        self.overrides = _strings(s.get("overrides"), "bench.search.overrides")
        self.agent_overrides = {m: _strings((s.get("agents") or {}).get(m), f"bench.search.agents.{m}")
                                for m in SEARCH_METHODS}
        self.latency_runs = _number(s, "latency_runs", int, 0, prefix="bench.search.")
        self.table_path = self.out / "latency_table.json"
        self._check()

    @classmethod
    def of_run(cls, run_dir: Path, budget: str, seeds: Sequence[int], methods: Sequence[str],
               overrides: Sequence[str] = ()) -> CompareBench:
        """The bench=compare of a finished (or running) run directory with the shipped defaults (and ``overrides``:
        amc-bench overrides the run was made with), restricted to these cells: what the scripts that revisit its
        cells (fine-tune them, re-score them) read them through."""
        overrides = ["bench=compare", f"bench.resume={run_dir}", f"bench.budgets=[{budget}]",
                     f"bench.seeds={max(seeds) + 1}", "seed=0", f"bench.methods=[{','.join(methods)}]", *overrides]
        cfg = compose_config("bench", overrides, f"bench=compare does not compose with {overrides}")
        return cls(cfg, Path(run_dir))

    # ------------------------------------------------------------------ configs
    def search_cfg(self, budget: CompareBudget, method: str, seed: int) -> DictConfig:
        """The composed search config of one cell (for a baseline: the config its evaluator is built from)."""
        overrides = [f"budget={budget.metric}", f"budget.{budget.metric}={budget.fraction!r}",
                     f"episodes={self.episodes}", f"seed={seed}", f"final.latency_runs={self.latency_runs}",
                     f"progress={'true' if bool(self.b.search.get('progress', True)) else 'false'}"]
        if budget.metric == "latency":  # one table for every latency search (measured once, same device)
            overrides.append(f"budget.table={self.table_path}")
        overrides += self.agent_overrides.get(method, [])
        overrides += self.overrides
        return compose_config(self.config_name, overrides,
                              f"bench.search: the search config does not compose with {list(overrides)}")

    def _check(self) -> None:
        """Compose every cell's config and check every budget on the model, before any work.

        Raises:
            ConfigError: an override that does not compose, a bad search setting, or a budget the model cannot
                reach with the searches' ratio bounds (one line, naming the budget).
        """
        self.cfgs: dict[tuple[str, str, int], DictConfig] = {}
        for budget in self.budgets:
            for method in self.methods:
                for seed in self.seeds:
                    cfg = self.search_cfg(budget, method, seed)
                    SearchSettings.from_config(cfg)  # a bad search setting fails here, in one line
                    self.cfgs[(budget.key, method, seed)] = cfg
        if "ddpg" in self.methods:
            warmup = self.cfgs[(self.budgets[0].key, "ddpg", self.seeds[0])].agent.get("warmup")
            if warmup is not None and int(warmup) >= self.episodes:
                console.print(f"[yellow]warning: the ddpg agent's warm-up ({warmup} episodes) is not shorter than "
                              f"bench.episodes={self.episodes}: it never learns and is one more random search; set "
                              f"e.g. bench.search.agents.ddpg='[agent=ddpg-demo,agent.warmup=N]'[/yellow]")
        cfg0 = next(iter(self.cfgs.values()))
        self.base_cfg = cfg0
        settings = SearchSettings.from_config(cfg0)
        model, _, self.source = load_model_from_config(cfg0.model)
        self.model = model.eval()
        self.space = PruningSpace.from_model(self.model, settings.img_size, rounding_from_config(cfg0.pruning))
        searching = any(m in SEARCH_METHODS for m in self.methods)
        # the searches cannot go past their action bounds; the baselines only past pruning.max_ratio
        upper = settings.ratio_bounds[1] if searching else float(self.space.rounding.max_ratio)
        self.latency_table = self._latency_table(cfg0) if any(x.metric == "latency" for x in self.budgets) else None
        for budget in self.budgets:
            try:
                BudgetEnforcer(self.space, Budget(budget.metric, budget.fraction), self.latency_table,
                               upper=min(upper, float(self.space.rounding.max_ratio)))
            except ConfigError as e:
                raise ConfigError(f"bench budget {budget.key}: {e}") from None

    def _latency_table(self, cfg: DictConfig):  # noqa: ANN202
        """The latency table every latency search shares, loaded or measured now (the budget check needs it)."""
        lat_cfg = self.cfgs[next(k for k in self.cfgs if k[0].startswith("latency:"))]
        console.print(f"latency lookup table for the latency budgets: {self.table_path}")
        return LatencyTable.load_or_build(self.table_path, self.model, self.space,
                                          backend=str(lat_cfg.device.latency_backend),
                                          threads=int(lat_cfg.device.threads) or None,
                                          device=select_device(str(lat_cfg.device.name)),
                                          grid=int(lat_cfg.budget.get("grid", 4)),
                                          runs=int(lat_cfg.budget.get("runs", 8)))

    # ------------------------------------------------------------------ evaluation shared by the cells
    def _prepare_scoring(self) -> None:
        """The full-val evaluator, its BN batches and the fine-tune training set (built once for every cell)."""
        cfg, f, ft = self.base_cfg, self.b.full, self.b.finetune
        threads = int(cfg.device.get("threads") or 0)
        if threads:
            torch.set_num_threads(threads)
        self.device = select_device(str(cfg.device.name))
        self.img_size = int(f.img_size) if f.get("img_size") is not None else int(cfg.data.img_size)
        val = load_data_from_config(cfg.data, str(cfg.data.split))
        train = load_data_from_config(cfg.data, str(cfg.data.get("train_split") or "train"))
        # Subsets drawn with a fixed seed, not the first search seed: a bench split into processes per seed
        # (bench.seeds=1 seed=k, one run dir) scores every cell on the same images as one bench with all seeds.
        full_set = val.subset(f.get("val_images"), SUBSET_SEED) if f.get("val_images") else val
        self.protocol = self._protocol(cfg, full_set)
        check_classes(self.model, full_set)
        stride = max(32, int(self.model.stride.max()))
        settings = EvalSettings(conf_thres=float(f.conf_thres), iou_thres=float(f.iou_thres), max_det=int(f.max_det),
                                multi_label=bool(f.multi_label))
        eval_set = EvalSet(full_set, self.img_size, int(f.batch_size), stride, pad=0.5, progress=False)
        self.full_evaluator = DetectionEvaluator(full_set, eval_set.to(self.device), settings, self.device)
        self.full_images = len(full_set)
        self.bn_batches = [x.to(self.device) for x, _ in sample_batches(
            train, int(f.bn_batches), int(f.bn_batch_size), self.img_size, seed=int(f.bn_seed),
            augment=bool(f.bn_augment))] if int(f.bn_batches) > 0 else []
        self.hyp = plain(ft.hyp)
        self.train_set = None
        if self.finetune_epochs > 0:
            self.train_set = TrainSet(train.subset(ft.get("train_images"), SUBSET_SEED), img_size=self.img_size,
                                      augment=bool(ft.augment), hyp=self.hyp, seed=SUBSET_SEED)

    def _ensure_scoring(self) -> None:
        """The scoring of :meth:`_prepare_scoring`, built on first use (a resumed bench may judge before its loop)."""
        if not hasattr(self, "full_evaluator"):
            self._prepare_scoring()

    def _protocol(self, cfg: DictConfig, report_set) -> dict[str, Any]:  # noqa: ANN001 (a DetectionDataset)
        """Which images the searches score policies on and which ones every result is reported on: held out.

        The search images are those the proxy draws (the same split, subset size and seed as
        :class:`~amc.reward.proxy.ProxyEvaluator`; each cell checks its evaluator's against them). A bench whose
        two sets share an image is refused: it would select policies on the images it reports.
        """

        split = search_split(cfg.data)
        proxy = proxy_settings(cfg.evaluator.get("proxy")) if str(cfg.evaluator.name) == "proxy" else None
        searched = load_data_from_config(cfg.data, split)
        if proxy is not None:
            searched = searched.subset(proxy.val_images, proxy.seed)
        search_files = [str(r.path) for r in searched.images]
        report_files = [str(r.path) for r in report_set.images]
        overlap = set(map(os.path.realpath, search_files)) & set(map(os.path.realpath, report_files))
        if overlap:
            raise ConfigError(f"the searches would score policies on {len(overlap)} of the images results are "
                              f"reported on (data.search_split={split}, data.split={cfg.data.split}): name "
                              f"disjoint splits")
        root = os.path.commonpath(search_files + report_files) if search_files and report_files else ""
        return {"search_split": split, "report_split": str(cfg.data.split), "root": root,
                "search_images": [os.path.relpath(f, root) for f in search_files],
                "report_images": [os.path.relpath(f, root) for f in report_files],
                "search_digest": _files_digest(search_files), "overlap_images": len(overlap),
                "scored_by_proxy": proxy is not None}

    def _score(self, pruned, seed: int) -> tuple[float, float | None, list[dict[str, Any]]]:  # noqa: ANN001
        """Full-val mAP after adaptive BN, the mean mAP after the short fine-tunes (``None`` when they are skipped)
        and each fine-tune's judgement (:meth:`_judgements`)."""
        pruned = self._recalibrated(pruned)
        full = self.full_evaluator(pruned).map50_95
        judges = self._judgements(pruned, seed, 0, self.judge_seeds)
        return full, _judged_mean(judges, self.judge_seeds), judges

    def _score_into(self, record: dict[str, Any], pruned, seed: int) -> None:  # noqa: ANN001
        """:meth:`_score` a cell's pruned model into its ``record``: ``map_full``, ``map_finetuned``, ``judges`` (any
        former judgements replaced) and ``score_s``."""
        self._ensure_scoring()
        t0 = time.perf_counter()
        record["map_full"], record["map_finetuned"], judges = self._score(pruned, seed)
        record["score_s"] = time.perf_counter() - t0
        record.pop("judges", None)
        if judges:
            record["judges"] = judges

    def _recalibrated(self, pruned):  # noqa: ANN001, ANN202
        """A pruned model on the bench's device with its BatchNorm statistics re-estimated (adaptive BN)."""
        pruned = pruned.to(self.device)
        if self.bn_batches:
            recalibrate_batch_norm(pruned, self.bn_batches)
        return pruned

    def _judgements(self, pruned, seed: int, first: int, stop: int) -> list[dict[str, Any]]:  # noqa: ANN001
        """The short fine-tunes r = first .. stop - 1 of a recalibrated pruned model of a cell of ``seed``: each its
        fine-tune seed (:func:`~amc.bench.compare_stats.judge_seed`), full-val mAP and machine; [] when fine-tunes
        are skipped."""
        if self.train_set is None:
            return []
        out = []
        for r in range(first, stop):
            tune_seed = judge_seed(seed, r)
            self.train_set.seed = tune_seed  # the augmentation stream: seed k fine-tunes alike for every method
            tuned = finetune_pruned(pruned, self.train_set, self.hyp, self.b.finetune, tune_seed, self.device)
            out.append({"seed": tune_seed, "map": self.full_evaluator(tuned).map50_95,
                        "machine": _machine(self.device)})
        return out

    def _unpruned(self) -> dict[str, Any]:
        """Full-val mAP of the unpruned model (as amc-eval scores it), kept in the run dir for resumes."""
        path = self.out / "unpruned.json"
        if path.is_file():
            return json.loads(path.read_text())
        record = {"map_full": self.full_evaluator(self.model.to(self.device)).map50_95, "images": self.full_images}
        atomic_write_json(path, record)
        return record

    # ------------------------------------------------------------------ one cell
    def cell_path(self, budget: CompareBudget, method: str, seed: int) -> Path:
        """Where a finished cell's record lives."""
        return self.out / CELLS_DIR / budget.dirname / method / f"seed{seed}.json"

    def _result_settings(self, cfg: DictConfig, method: str = "ddpg") -> dict[str, Any]:
        """The settings a cell's result depends on: its search's config, the full-val scoring and the fine-tune.

        Left out, so that a bench continued by a later amc (or with another display) still reads its cells back:
        what a search shows, saves or reports at its end (:data:`amc.search.resume.RESULT_NEUTRAL`, the settings
        a search resume may change too), and for FLOPs and params budgets where it ran (``device``,
        ``worker_devices``): a bench started on a CPU may be finished on a GPU, seed by seed; each cell records
        its machine, and the results say how far a re-run elsewhere moves a cell. A latency budget is measured on
        its device: there the device is a setting. The :data:`LATER_SETTINGS` are left out at their old value, and
        the :data:`SEARCH_ONLY_LATER` always for the baselines (``method`` not a search: their policies never step
        the environment's wall nor train an actor).
        """
        search = plain(cfg)
        for key in [*RESULT_NEUTRAL, "resume"]:
            _pop_dotted(search, key)
        for key, old in LATER_SETTINGS.items():
            if _get_dotted(search, key) == old:
                _pop_dotted(search, key)
        if method not in SEARCH_METHODS:
            for key in SEARCH_ONLY_LATER:
                _pop_dotted(search, key)
        if search.get("budget", {}).get("metric") != "latency":
            search.pop("device", None)
            search.pop("worker_devices", None)
        finetune = plain(self.b.finetune)
        finetune.pop("judge_seeds", None)  # how many judgements are averaged: each cell keeps its own (_rejudge)
        return {"search": search, "full": plain(self.b.full), "finetune": finetune}

    def _cell_fingerprint(self, cfg: DictConfig, method: str = "ddpg") -> str:
        return _fingerprint(self._result_settings(cfg, method))

    def _run_cell(self, budget: CompareBudget, method: str, seed: int) -> dict[str, Any]:
        cfg = self.cfgs[(budget.key, method, seed)]
        cell_dir = self.cell_path(budget, method, seed).with_suffix("")
        if method in SEARCH_METHODS:
            record, setup, selection = self._search_cell(cfg, cell_dir / "search")
        else:
            record, setup, selection = self._baseline_cell(cfg, cell_dir, budget, method)

        space = setup.space
        files = getattr(setup.evaluate, "image_files", None)
        if files is not None and _files_digest(files) != self.protocol["search_digest"]:
            raise RuntimeError(f"internal error: {method} seed {seed} scored its policies on other images than the "
                               f"bench's protocol records")
        record.update(self._costs(space, selection))
        self._score_into(record, prune_model(setup.model, space, selection), seed)
        settings = self._result_settings(cfg, method)
        record.update(budget=budget.key, method=method, seed=seed, fingerprint=_fingerprint(settings),
                      settings=settings,
                      machine=_machine(self.device),
                      kept=[int(w) for w in selection.widths])
        return record

    def _costs(self, space: PruningSpace, selection: ChannelSelection) -> dict[str, float | None]:
        """The FLOPs and (with a latency table) latency a policy keeps, as shares of the unpruned model's."""
        latency = (float(self.latency_table.estimate(selection.widths) / self.latency_table.estimate(space.full_widths))
                   if self.latency_table is not None else None)
        return {"flops_ratio": space.cost(selection.widths).macs / space.full_cost.macs, "latency_ratio": latency}

    def _search_cell(self, cfg: DictConfig, search_dir: Path):  # noqa: ANN202
        """Run (or resume, or read back) the cell's search; its best policy's channels, as the search exports them."""

        if (search_dir / CONFIG_FILE).is_file():  # an interrupted bench: continue the search where it stopped
            cfg = load_resume_config(search_dir)
        runner = SearchRunner(cfg, search_dir)
        results = runner.run()
        ratios = np.asarray(runner.state.best_ratios, dtype=np.float64)
        selection = runner.criterion.select(runner.space.kept_channels(ratios))
        maps = [json.loads(line).get("map50_95") for line in (search_dir / "episodes.jsonl").read_text().splitlines()
                if line.strip()]
        record = {"map_proxy": results["best_map_proxy"], "wall_s": results["search_s"],
                  "setup_s": results.get("setup_s"), "episodes": results["episodes"],
                  "best_episode": results["best_episode"], "episodes_to_95": episodes_to_95(maps),
                  "curve": best_so_far(maps), "ratios": [float(r) for r in ratios], "search_dir": str(search_dir)}
        return record, runner, selection

    def _baseline_cell(self, cfg: DictConfig, cell_dir: Path, budget: CompareBudget, method: str):  # noqa: ANN202
        """A baseline's policy, scored by the evaluator the search of the same config would use."""

        setup = SearchSetup(cfg, cell_dir)
        # the search's own building path (the parallel workers use it too): model, space, criterion, evaluator
        setup.build_env()
        try:
            t0 = time.perf_counter()
            ratios, selection = self._baseline_selection(setup, budget, method)
            wall_s = time.perf_counter() - t0
            map_proxy = self._proxy_map(setup, ratios, selection)
        finally:
            _close_evaluator(setup)  # the proxy leaves the model as it found it (no masks) for the full-val scoring
        record = {"map_proxy": map_proxy, "wall_s": wall_s, "episodes_to_95": None, "curve": None,
                  "ratios": [float(r) for r in ratios]}
        return record, setup, selection

    def _baseline_selection(self, setup: SearchSetup, budget: CompareBudget, method: str):  # noqa: ANN202
        """A baseline's ratios and channels on ``setup``'s model (uniform: by the search's criterion; global
        magnitude: by its own scores)."""
        space = setup.space
        if method == "uniform":
            if budget.metric == "flops":
                ratios = uniform_policy(space, budget.fraction).ratios
            else:  # the smallest constant ratio under the latency budget, as the search's environment finds it
                ratios = np.full(len(space), setup.env.unwrapped.uniform_ratio())
            return ratios, setup.criterion.select(space.kept_channels(ratios))
        if budget.metric == "flops":
            found = global_magnitude_policy(setup.model, space, budget.fraction)
            kept, scores = found.kept, found.scores
        else:
            scores = global_magnitude_policy(setup.model, space, 1.0).scores
            kept = _global_kept_within(space, scores, lambda w: setup.latency_table.estimate(w), budget.fraction)
        # the global ranking removes its lowest-scoring channels: its own scores pick them
        return ratios_for_widths(space, np.asarray(kept)), ChannelSelection(top_channels(scores, kept))

    def budget(self, key: str) -> CompareBudget:
        """This bench's budget with this key (``"0.5"``, ``"latency-0.5"``); a ConfigError for any other."""
        found = next((b for b in self.budgets if b.key == key), None)
        if found is None:
            raise ConfigError(f"no budget {key} in this bench (its budgets: {', '.join(b.key for b in self.budgets)})")
        return found

    def finished_record(self, budget: CompareBudget, method: str, seed: int,
                        all_judged: bool = True) -> dict[str, Any] | None:
        """A finished cell's record, None when it has not finished; a ConfigError when it was computed with other
        settings than this bench's. ``all_judged``: a cell judged fewer times than ``bench.finetune.judge_seeds``
        counts as unfinished (the bench judges it again first); False (the scripts that revisit a finished cell's
        policy): it is read as it is, ``map_finetuned`` the mean of the judgements it has."""
        path = self.cell_path(budget, method, seed)
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        cfg = self.cfgs[(budget.key, method, seed)]
        if record.get("fingerprint") != self._cell_fingerprint(cfg, method):
            changed = _changed_settings(record.get("settings"), self._result_settings(cfg, method))
            raise ConfigError(f"{path} was computed with other settings than this run's{changed}: resume "
                              f"with the same settings, or choose a new run directory")
        if self.finetune_epochs > 0:
            judges = cell_judges(record)
            if all_judged and len(judges) < self.judge_seeds:
                return None  # judged fewer times than this bench asks: run() judges it again first (_rejudge)
            record["map_finetuned"] = _judged_mean(judges, self.judge_seeds)
        return record

    def _rejudge(self, budget: CompareBudget, method: str, seed: int) -> None:
        """A finished cell of this bench judged fewer times than ``bench.finetune.judge_seeds``: its policy, rebuilt
        with the channels it was scored with (:meth:`cell_selection`, no search replayed), gets the missing short
        fine-tunes here, on this machine. Every judgement stays in the record (``judges``, in seed order), its
        ``map_finetuned`` the mean of the first ``judge_seeds``. Any other cell is left for :meth:`finished_record`."""
        path = self.cell_path(budget, method, seed)
        if self.finetune_epochs == 0 or not path.is_file():
            return
        record = json.loads(path.read_text())
        cfg = self.cfgs[(budget.key, method, seed)]
        judges = cell_judges(record)
        if len(judges) >= self.judge_seeds or record.get("fingerprint") != self._cell_fingerprint(cfg, method):
            return
        self._ensure_scoring()
        with tempfile.TemporaryDirectory() as work:
            pruned = self._recalibrated(self._rebuilt(budget, method, record, Path(work))[0])
        judges += self._judgements(pruned, seed, len(judges), self.judge_seeds)
        record.update(judges=judges, map_finetuned=_judged_mean(judges, self.judge_seeds))
        atomic_write_json(path, record)
        console.print(f"{path}: judged by {len(judges)} fine-tune seeds, mean {record['map_finetuned']:.4f} "
                      f"({', '.join(format(j['map'], '.4f') for j in judges)})")

    def episode_log(self, budget: CompareBudget, method: str, seed: int) -> Path:
        """A search cell's episode log (:func:`~amc.bench.compare_stats.read_episodes` reads it, gzipped or not)."""
        return self.cell_path(budget, method, seed).with_suffix("") / "search" / "episodes.jsonl"

    def _reexport(self, budget: CompareBudget, method: str, seed: int) -> None:
        """A finished search cell whose settings differ from this run's in ``export_rule`` alone: its search played
        the same episodes this run's would, so the cell is exported again from its episode log by this run's rule
        (the picked policy judged here, on this machine, when it is another episode than the cell's), the former
        export kept in the record under ``re_exported``. Any other cell is left for :meth:`finished_record`."""
        path = self.cell_path(budget, method, seed)
        if method not in SEARCH_METHODS or not path.is_file():
            return
        record = json.loads(path.read_text())
        cfg = self.cfgs[(budget.key, method, seed)]
        current = self._result_settings(cfg, method)
        if record.get("fingerprint") == _fingerprint(current) or not isinstance(record.get("settings"), dict) \
                or _fingerprint(_without_export_rule(record["settings"])) != _fingerprint(_without_export_rule(current)):
            return
        episodes = read_episodes(self.episode_log(budget, method, seed))
        if not episodes:
            raise ConfigError(f"{path} exported with another export_rule and keeps no episode log to pick from again: "
                              f"resume with its export_rule, or choose a new run directory")
        rule = SearchSettings.from_config(cfg).export_rule
        chosen = pick(episodes, rule)
        before = {k: record.get(k) for k in ("best_episode", "map_proxy", "map_full", "map_finetuned", "judges",
                                             "ratios", "machine", "settings")}
        if chosen["episode"] != record.get("best_episode"):
            with tempfile.TemporaryDirectory() as work:
                setup = SearchSetup(cfg, Path(work))
                setup.build_env()
                try:
                    ratios = np.asarray(chosen["ratios"], dtype=np.float64)
                    selection = setup.criterion.select(setup.space.kept_channels(ratios))
                    record.update(self._costs(setup.space, selection))
                    self._score_into(record, prune_model(setup.model, setup.space, selection), seed)
                finally:
                    _close_evaluator(setup)
            record.update(best_episode=chosen["episode"], map_proxy=chosen["map50_95"],
                          ratios=[float(r) for r in ratios], kept=[int(w) for w in selection.widths],
                          machine=_machine(self.device))
        record.update(fingerprint=_fingerprint(current), settings=current,
                      re_exported={"export_rule": rule, "before": before})
        atomic_write_json(path, record)
        console.print(f"{path}: re-exported by export_rule={rule}: episode {record['best_episode']} "
                      f"(was {before['best_episode']})")

    def cell_model(self, budget: CompareBudget, method: str, seed: int, work_dir: Path):  # noqa: ANN201
        """A finished cell's pruned model, rebuilt with the channels it was scored with, its base model's source and
        the cell's record.

        The searches' policies are their recorded ratios through the search's criterion; the baselines are
        recomputed (they are deterministic). Raises a ConfigError when the cell is not one of this bench's or has not
        finished, was computed with other settings, or the rebuilt widths differ from the recorded ones.
        """
        if method not in self.methods or seed not in self.seeds:
            raise ConfigError(f"no cell budget {budget.key}, {method}, seed {seed} in this bench's settings")
        record = self.finished_record(budget, method, seed, all_judged=False)
        path = self.cell_path(budget, method, seed)
        if record is None:
            raise ConfigError(f"{path}: this cell has not finished")
        pruned, source = self._rebuilt(budget, method, record, work_dir)
        return pruned, source, record

    def _rebuilt(self, budget: CompareBudget, method: str, record: dict[str, Any], work_dir: Path):  # noqa: ANN202
        """The pruned model of the cell ``record`` (:meth:`cell_selection` on a setup built in ``work_dir``) and its
        base model's source."""
        setup = SearchSetup(self.cfgs[(budget.key, method, record["seed"])], work_dir)
        setup.build_env()
        try:
            selection = self.cell_selection(setup, budget, method, record)
        finally:
            _close_evaluator(setup)
        return prune_model(setup.model, setup.space, selection), setup.source

    def cell_selection(self, setup: SearchSetup, budget: CompareBudget, method: str,
                       record: dict[str, Any]) -> ChannelSelection:
        """The channels a finished cell (``record``) kept, rebuilt on ``setup`` (a built search setup of this bench's
        model): the searches' recorded ratios through ``setup``'s criterion, the baselines recomputed (they are
        deterministic). A ConfigError when the rebuilt widths differ from the recorded ones."""
        if method in SEARCH_METHODS:
            selection = setup.criterion.select(setup.space.kept_channels(np.asarray(record["ratios"])))
        else:
            selection = self._baseline_selection(setup, budget, method)[1]
        widths = [int(w) for w in selection.widths]
        if widths != record["kept"]:
            raise ConfigError(f"{self.cell_path(budget, method, record['seed'])}: the rebuilt policy keeps "
                              f"{widths}, the cell recorded {record['kept']}")
        return selection

    def judge(self, setup: SearchSetup, selection: ChannelSelection, seed: int) -> tuple[float, float | None]:
        """Any policy of ``setup``'s model scored as this bench scores a cell of ``seed``: full-val mAP after adaptive
        BN, and after the short fine-tune with that seed's augmentation stream (``None`` when it is skipped)."""
        self._ensure_scoring()
        full, tuned, _ = self._score(prune_model(setup.model, setup.space, selection), seed)
        return full, tuned

    def judgement(self, setup: SearchSetup, selection: ChannelSelection, seed: int, r: int) -> dict[str, Any]:
        """Judgement ``r`` alone of any policy of ``setup``'s model, as this bench makes it for a cell of ``seed``
        (adaptive BN, one short fine-tune with seed :func:`~amc.bench.compare_stats.judge_seed`): ``seed``, ``map``
        and ``machine``, as a cell's ``judges`` hold them; a ConfigError when this bench skips the fine-tune."""
        self._ensure_scoring()
        if self.train_set is None:
            raise ConfigError("bench.finetune.epochs is 0: this bench judges no policy by a fine-tune")
        pruned = self._recalibrated(prune_model(setup.model, setup.space, selection))
        return self._judgements(pruned, seed, r, r + 1)[0]

    @staticmethod
    def _proxy_map(setup, ratios: np.ndarray, selection) -> float:  # noqa: ANN001
        """The proxy mAP of a policy with these channels, by the evaluator the search uses."""
        proxy = getattr(setup.evaluate, "proxy", None)
        if proxy is not None:  # the proxy evaluator: score exactly these channels
            return float(proxy(selection).map50_95)
        return float(setup.evaluate(ratios).map50_95)  # the stub prices widths only

    # ------------------------------------------------------------------ the whole bench
    def run(self) -> dict[str, Any]:
        """Every cell (finished ones read back), then the aggregates, tables, plots and ``results.json``."""
        started = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        todo = [(b, m, s) for b in self.budgets for m in self.methods for s in self.seeds]
        done: dict[tuple[str, str, int], dict[str, Any]] = {}
        report_only = bool(self.b.get("report_only", False))
        for budget, method, seed in todo:
            self._reexport(budget, method, seed)
            if not report_only:  # it runs nothing, so it judges nothing again either
                self._rejudge(budget, method, seed)
            record = self.finished_record(budget, method, seed)
            if record is not None:
                done[(budget.key, method, seed)] = record
        console.print(f"bench=compare in {self.out}: {len(self.budgets)} budgets x {len(self.methods)} methods x "
                      f"{len(self.seeds)} seeds = {len(todo)} cells, {len(done)} already finished")
        if report_only:
            return self._report_finished(done)
        self._prepare_scoring()
        unpruned = self._unpruned()
        # one line per cell (each takes minutes), on the console and in the job log; ETA from this run's cells
        cells_log = ProgressLog("bench=compare cell", len(todo), start=len(done), interval_s=0, echo=True)
        for i, (budget, method, seed) in enumerate(todo, 1):
            label = f"cell {i}/{len(todo)}: budget {budget.key}, {method}, seed {seed}"
            if (budget.key, method, seed) in done:
                console.print(f"[dim]{label}: finished earlier, read back[/dim]")
                continue
            if is_terminal():
                console.rule(label)
            log_line(f"--- {label}", echo=not is_terminal())  # a rule would be the log console's 1000 columns
            t0 = time.perf_counter()
            record = self._run_cell(budget, method, seed)
            record["cell_s"] = time.perf_counter() - t0
            atomic_write_json(self.cell_path(budget, method, seed), record)  # kept before anything else can fail
            done[(budget.key, method, seed)] = record
            cells_log.update(len(done), f"budget {budget.key}, {method}, seed {seed}: proxy "
                             f"{fmt_number(record['map_proxy'])}, full {fmt_number(record['map_full'])}, fine-tuned "
                             f"{fmt_number(record['map_finetuned'])}, FLOPs kept {record['flops_ratio']:.1%}")
        cells: dict[str, dict[str, list[dict[str, Any]]]] = {
            b.key: {m: [done[(b.key, m, s)] for s in self.seeds] for m in self.methods} for b in self.budgets}
        return self._results(cells, unpruned, started)

    def _results(self, cells: dict[str, dict[str, list[dict[str, Any]]]], unpruned: dict[str, Any],
                 started: float) -> dict[str, Any]:
        """Aggregates, paired per-seed differences, failed DDPG seeds; writes the tables, plots and results.json."""
        summary = summarize(cells)
        failed: dict[str, list[int]] = {}
        for budget in self.budgets:
            if budget.key not in cells:
                continue
            failed[budget.key] = [r["seed"] for r in cells[budget.key].get("ddpg", [])
                                  if search_failed(read_episodes(self.episode_log(budget, "ddpg", r["seed"])),
                                                   exported=r.get("best_episode"))]
        results = {"budgets": summary, "wins": wins(summary, self.margin),
                   "paired": {"map_finetuned": paired(cells, "map_finetuned"), "map_full": paired(cells, "map_full")},
                   "ddpg_failed_seeds": failed, "cell_machines": cell_machines(cells),
                   "unpruned": unpruned, "settings": self._settings(),
                   "wall_s": time.perf_counter() - started}
        self._report(results, cells)
        return results

    def _report_finished(self, done: dict[tuple[str, str, int], dict[str, Any]]) -> dict[str, Any]:
        """bench.report_only: the tables of the seeds whose every method has finished (per budget), running nothing
        (a long bench reported while it runs, or from the cells a results folder keeps)."""
        started = time.perf_counter()
        cells: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for b in self.budgets:
            seeds = [s for s in self.seeds if all((b.key, m, s) in done for m in self.methods)]
            if seeds:
                cells[b.key] = {m: [done[(b.key, m, s)] for s in seeds] for m in self.methods}
        if not cells:
            raise ConfigError(f"bench.report_only: no seed has all of {', '.join(self.methods)} finished in {self.out}")
        self.seeds_reported = {k: [r["seed"] for r in next(iter(v.values()))] for k, v in cells.items()}
        self._prepare_scoring()
        return self._results(cells, self._unpruned(), started)

    def _settings(self) -> dict[str, Any]:
        return {"model": self.source, "units": len(self.space), "methods": self.methods, "seeds": self.seeds,
                "episodes": self.episodes, "budgets": [b.key for b in self.budgets], "wins_margin": self.margin,
                "search_config": self.config_name, "search_overrides": self.overrides,
                "agent_overrides": self.agent_overrides, "full": plain(self.b.full),
                "full_images": self.full_images, "finetune": plain(self.b.finetune), "device": str(self.device),
                "protocol": self.protocol, "machine": _machine(self.device)}

    # ------------------------------------------------------------------ outputs
    def _report(self, results: dict[str, Any], cells: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
        summary = results["budgets"]
        columns = ["budget", "method", "FLOPs kept", "proxy mAP", "full-val mAP", "fine-tuned mAP", "wall s",
                   "episodes to 95%"]
        rows = [[key, method, fmt_number(a["flops_ratio"], pct=True),
                 fmt_mean_std(a["map_proxy"], a["map_proxy_std"]), fmt_mean_std(a["map_full"], a["map_full_std"]),
                 fmt_mean_std(a["map_finetuned"], a["map_finetuned_std"]),
                 fmt_number(a["wall_s"], 1), fmt_number(a["episodes_to_95"], 1)]
                for key, methods in summary.items() for method, a in methods.items()]
        counts = sorted({len(a["seeds"]) for methods in summary.values() for a in methods.values()})
        title = (f"{self.source}: mAP@0.5:0.95, mean ± std over {'/'.join(map(str, counts))} seeds ({self.episodes} episodes per "
                 f"search; full val = {self.full_images} images; fine-tune "
                 f"{self.finetune_epochs or 'skipped'}{' epoch(s)' if self.finetune_epochs else ''})")
        print_table(title, columns, rows, numeric_from=2)
        checks = ("beats_uniform_by_margin", "beats_random", "beats_global_magnitude", "all")
        win_columns = ["budget", "judged on", "ddpg mAP", f">= uniform + {self.margin:g}", ">= random", ">= global",
                       "all"]
        win_rows = [[key, label, fmt_number(w[field]["ddpg"]), *(_yes(w[field][c]) for c in checks)]
                    for key, w in results["wins"].items()
                    for label, field in (("fine-tuned mAP", "finetuned"), ("proxy mAP", "proxy"))]
        print_table("does ddpg win? (means over seeds)", win_columns, win_rows, numeric_from=2)

        md = [f"# bench=compare: {self.source}", "", title, "", *_md_table(columns, rows), "",
              f"Unpruned full-val mAP: {fmt_number(results['unpruned']['map_full'])}.", "",
              "ddpg wins (means over seeds):", "", *_md_table(win_columns, win_rows)]
        pair_columns = ["budget", "ddpg - ", "mean", "95% CI (bootstrap)", "seeds won / tied / lost", "sign test p"]
        pair_rows = [[key, other, fmt_number(p["mean"], sign=True), fmt_interval(p["ci95"]),
                      f"{p['wins']} / {p['ties']} / {p['losses']}", f"{p['sign_p']:.3f}"]
                     for key, others in results["paired"]["map_finetuned"].items() for other, p in others.items()]
        print_table("ddpg - other, fine-tuned mAP, paired by seed", pair_columns, pair_rows, numeric_from=2)
        failed = results["ddpg_failed_seeds"]
        md += ["", "ddpg - other, fine-tuned mAP, paired by seed:", "", *_md_table(pair_columns, pair_rows)]
        md += ["", "Failed ddpg seeds (best policy a warm-up draw, or last 15 episodes no better than the warm-up): "
               + "; ".join(f"{k}: {v or 'none'}" for k, v in failed.items()) + "."]
        seed_columns, seed_rows = self._per_seed_rows(summary)
        md += ["", "Per seed: fine-tuned mAP of each method's policy (a search's episodes to 95% of its best proxy mAP "
               "in brackets):", "", *_md_table(seed_columns, seed_rows)]
        atomic_write_text(self.out / "results.md", "\n".join(md) + "\n")

        results["plots"] = {"map_vs_flops": str(self._map_vs_flops(cells)),
                            "reward_curves": str(self._reward_curves(cells))}
        path = atomic_write_json(self.out / "results.json", results)
        console.print(f"results written to {path}, {self.out / 'results.md'}; plots {self.out / 'map_vs_flops.svg'}, "
                      f"{self.out / 'reward_curves.svg'}")

    def _per_seed_rows(self, summary: dict[str, dict[str, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
        """The per-seed table of ``results.md``: one row per (budget, seed), each method's fine-tuned mAP (with a
        search's episodes to 95% in brackets) and DDPG - random search on that seed."""
        columns = ["budget", "seed", *self.methods]
        compared = "ddpg" in self.methods and "random" in self.methods
        if compared:
            columns.append("ddpg - random")
        rows = []
        for key, methods in summary.items():
            by_seed = {m: {r["seed"]: r for r in a["per_seed"]} for m, a in methods.items()}
            for seed in sorted({s for records in by_seed.values() for s in records}):
                row = [key, str(seed)]
                for method in self.methods:
                    record = by_seed.get(method, {}).get(seed)
                    value = fmt_number(record["map_finetuned"] if record else None, 4)
                    if record and record.get("episodes_to_95") is not None:
                        value += f" ({record['episodes_to_95']})"
                    row.append(value)
                if compared:
                    ddpg, rand = by_seed.get("ddpg", {}).get(seed), by_seed.get("random", {}).get(seed)
                    both = ddpg and rand and ddpg["map_finetuned"] is not None and rand["map_finetuned"] is not None
                    row.append(fmt_number(ddpg["map_finetuned"] - rand["map_finetuned"], 4, sign=True) if both
                               else fmt_number(None))
                rows.append(row)
        return columns, rows

    def _map_vs_flops(self, cells: dict[str, dict[str, list[dict[str, Any]]]]) -> Path:

        metric = "map_finetuned" if self.finetune_epochs > 0 else "map_full"
        points = [(m, r["flops_ratio"], r[metric]) for methods in cells.values() for m, recs in methods.items()
                  for r in recs]
        x = [p[1] for p in points]
        # scatter_svg shares one x list between its series: each method's y is NaN (not drawn) at the others' points
        series = {m: [p[2] if p[0] == m else float("nan") for p in points] for m in self.methods}
        svg = scatter_svg(x, series, title=f"{'fine-tuned' if self.finetune_epochs else 'full-val'} mAP@0.5:0.95 vs "
                                           f"FLOPs kept, one point per seed",
                          x_label="FLOPs kept (fraction of the unpruned model)", y_label="mAP@0.5:0.95",
                          diagonal=False)  # mAP against FLOPs: no y = x guide
        return atomic_write_text(self.out / "map_vs_flops.svg", svg)

    def _reward_curves(self, cells: dict[str, dict[str, list[dict[str, Any]]]]) -> Path:

        series = {}
        for key, methods in cells.items():
            for method in SEARCH_METHODS:
                curves = [r["curve"] for r in methods.get(method, []) if r.get("curve")]
                if not curves:
                    continue
                n = min(len(c) for c in curves)
                mean = [statistics.fmean(c[i] for c in curves) if all(c[i] is not None for c in curves)
                        else float("nan") for i in range(n)]
                series[f"{method} @ {key}"] = (list(range(1, n + 1)), mean)
        svg = line_svg(series, title=f"best-so-far proxy mAP@0.5:0.95 per episode, mean over the seeds",
                       x_label="episode", y_label="best proxy mAP so far")
        return atomic_write_text(self.out / "reward_curves.svg", svg)


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], text_columns: int = 2) -> list[str]:
    """A markdown table's lines: the header, the separator (the first ``text_columns`` left-aligned, the numbers
    right-aligned) and one line per row."""
    return ["| " + " | ".join(columns) + " |",
            "|" + "|".join(["---"] * text_columns + ["---:"] * (len(columns) - text_columns)) + "|",
            *("| " + " | ".join(str(x) for x in row) + " |" for row in rows)]


def _close_evaluator(setup: SearchSetup) -> None:
    """Release a setup's evaluator (the proxy's masks and BN state), if it holds any."""
    close = getattr(setup.evaluate, "close", None)
    if close is not None:
        close()


def _global_kept_within(space, scores: Sequence[Any], cost, fraction: float) -> np.ndarray:  # noqa: ANN001
    """Kept widths of the global magnitude ranking at the lowest threshold whose ``cost(widths)`` fits the budget.

    The FLOPs version is :func:`~amc.pruning.baselines.global_magnitude_policy`; this one thresholds the same
    scores against another cost (a latency table's estimate), with the same solver
    (:func:`~amc.pruning.budget.global_threshold_widths`).
    """
    limit = fraction * cost(space.full_widths)
    kept, _ = global_threshold_widths(space, scores, lambda widths: cost(widths) <= limit,
                                      f"latency budget {fraction:g} is out of reach of the global magnitude ranking")
    return kept


def _files_digest(files: Sequence[str]) -> str:
    """A short digest of a set of image files (their real paths, sorted): equal sets, equal digests."""
    return hashlib.sha256("\n".join(sorted(map(os.path.realpath, files))).encode()).hexdigest()[:16]


def _machine(device: Any) -> dict[str, Any]:
    """What the cells ran on: a re-run elsewhere moves a cell by run-to-run floating-point differences."""
    return {"torch": torch.__version__, "device": str(device), "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else None}


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def compare_bench(cfg: DictConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run ``bench=compare`` (see the module docstring) and return ``results.json``'s content.

    Args:
        cfg: the ``amc-bench`` config (``cfg.bench`` = ``conf/bench/compare.yaml``, ``cfg.seed`` the first seed).
        out_dir: the run directory (default: ``bench.resume`` if set, else the Hydra run directory).
    """
    if out_dir is None and cfg.bench.get("resume") in (None, ""):
        out_dir = output_dir(None)
    return CompareBench(cfg, Path(out_dir) if out_dir is not None else Path(str(cfg.bench.resume))).run()
