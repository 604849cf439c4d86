"""The search: build model, data, evaluator, environment and agent from the config, play the episodes, export.

A run directory holds everything a search produces and everything it needs to continue:

* ``search_config.yaml``: the resolved config the search started with (a resume reads it back);
* ``best_policy.yaml``: the best policy so far, rewritten atomically whenever a better episode appears;
* ``checkpoint/``: agent state (weights, optimizers, replay buffer, noise, RNG) and search state (episode
  counter, best episode), replaced as a whole after every ``checkpoint_every`` episodes (:func:`amc.atomic.atomic_dir`);
* ``tensorboard/`` and ``episodes.jsonl``: the curves and the per-episode log;
* at the end ``model/`` (the best policy's physically pruned model, amc format), ``results.json`` and
  ``metrics.json``.

A search killed at any moment (even ``kill -9``) continues with ``amc-search resume=<run dir>`` from its last
checkpoint: the agent replays nothing it has learned, the episode counter and the TensorBoard steps go on, and
no file written before the kill is lost (each is replaced only by a complete newer version).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from amc.atomic import atomic_dir, atomic_write_json, atomic_write_text, complete_dir
from amc.config import config_number, parse_img_size, plain, search_split
from amc.console import console, print_table
from amc.factory import load_data_from_config, load_model_from_config, make_criterion, rounding_from_config
from amc.errors import ConfigError
# defined beside the resume rules (no torch there); readers import them from here too
from amc.search.resume import CHECKPOINT_DIR, CONFIG_FILE, RUN_MARKER  # noqa: F401

BEST_POLICY_FILE = "best_policy.yaml"


# ---------------------------------------------------------------------------------------------- run directory
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
    return cfg


@dataclass
class SearchState:
    """What the runner itself must remember across a resume (the agent saves its own state).

    Episodes are numbered from 1 everywhere a user reads them: on screen, in ``episodes.jsonl``,
    ``best_policy.yaml``, ``results.json`` / ``metrics.json`` and as TensorBoard steps. ``first_episode`` is the
    number of a run's first episode: 1, or 0 in the checkpoint of a run started before the numbers were unified
    (its files are renumbered when it is resumed, see :meth:`SearchRunner._build`).
    """

    episodes_done: int = 0
    best_reward: float = -math.inf
    best_episode: int = -1  # the best episode's number (from 1); -1: none yet
    best_ratios: list[float] | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    penalized: int = 0
    search_s: float = 0.0
    first_episode: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["best_reward"] = None if not math.isfinite(self.best_reward) else self.best_reward
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchState":
        d = dict(d)
        d["best_reward"] = -math.inf if d.get("best_reward") is None else float(d["best_reward"])
        d.setdefault("first_episode", 0)  # a checkpoint written before episode numbers started at 1
        return cls(**d)


# ---------------------------------------------------------------------------------------------- settings
@dataclass
class SearchSettings:
    """The search config, read and checked before any work (a typo never surfaces mid-search)."""

    episodes: int
    seed: int
    img_size: tuple[int, int]
    ratio_bounds: tuple[float, float]
    budget_metric: str
    budget_fraction: float
    checkpoint_every: int
    final_latency_runs: int
    final_latency_rounds: int
    export_model: bool
    progress: bool
    workers: int = 1
    action_mode: str = "absolute"

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "SearchSettings":
        episodes = config_number(cfg, "episodes", int, 1)
        seed = config_number(cfg, "seed", int)
        img_size = parse_img_size(cfg.img_size if cfg.get("img_size") is not None else cfg.data.img_size)
        bounds = list(cfg.ratio_bounds) if OmegaConf.is_list(cfg.get("ratio_bounds")) else None
        if bounds is None or len(bounds) != 2:
            raise ConfigError(f"ratio_bounds must be [low, high] sparsities, got {cfg.get('ratio_bounds')!r}")
        lo, hi = (float(b) for b in bounds)
        if not 0.0 <= lo < hi <= 1.0:
            raise ConfigError(f"ratio_bounds must satisfy 0 <= low < high <= 1, got [{lo}, {hi}]")
        metric = str(cfg.budget.get("metric"))
        if metric not in ("flops", "params", "latency"):
            raise ConfigError(f"budget.metric must be flops, params or latency, got {metric!r}")
        fraction = config_number(cfg.budget, metric, float, prefix="budget.")
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"budget.{metric} is the fraction of the unpruned model's {metric} to keep, "
                              f"in (0, 1]; got {fraction}")
        workers = cfg.get("workers", 1)  # absent in the configs of runs started before the knob: one worker
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers must be a whole number >= 1 (environments evaluating in parallel), "
                              f"got {workers!r}")
        # absent in the configs of runs started before the knob: AMC's absolute actions, as they ran
        action_mode = str(cfg.get("action_mode", "absolute"))
        if action_mode not in ("absolute", "centred", "relative"):
            raise ConfigError(f"action_mode must be absolute, centred or relative, got {action_mode!r}")
        final = cfg.final
        return cls(episodes=episodes, seed=seed, img_size=img_size, ratio_bounds=(lo, hi), budget_metric=metric,
                   budget_fraction=fraction,
                   checkpoint_every=config_number(cfg, "checkpoint_every", int, 1),
                   final_latency_runs=config_number(final, "latency_runs", int, 0, prefix="final."),
                   final_latency_rounds=config_number(final, "latency_rounds", int, 1, prefix="final."),
                   export_model=bool(final.export_model), progress=bool(cfg.get("progress", True)),
                   workers=workers, action_mode=action_mode)


# ---------------------------------------------------------------------------------------------- environment
class SearchSetup:
    """Model, pruning space, evaluator and environment of a search, built from its config.

    The runner builds one; with ``workers > 1`` every worker process of :mod:`amc.search.parallel` builds its
    own from the same config (its own model copy and evaluator), seeded alike, so an episode's outcome does not
    depend on which process evaluated it.

    Args:
        cfg: the composed ``conf/search.yaml``.
        run_dir: the run directory (a latency table is read from, or written to, it).
        worker: ``(rank, workers)`` in a worker process: no console notes, and ``device.threads: 0`` means the
            machine's cores divided among the workers; ``cuda`` spreads the workers over the visible GPUs.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, worker: tuple[int, int] | None = None) -> None:
        self.cfg, self.run_dir, self.worker = cfg, Path(run_dir), worker
        self.settings = SearchSettings.from_config(cfg)

    def _note(self, message: str) -> None:
        if self.worker is None:  # N workers printing the same set-up lines would only repeat the main process
            console.print(message)

    def build_env(self) -> None:
        """Build the model, pruning space, evaluator and environment of the config (``self.env``, ``self.space``, ...)."""
        from amc.pruning.space import PruningSpace
        from amc.reward.functions import reward_from_config
        from amc.pruning.budget import Budget
        from envs.pruning_env import PruningEnv

        cfg, s = self.cfg, self.settings
        self.device = self._device()
        reward = reward_from_config(cfg.reward)
        criterion_name = str(cfg.evaluator.get("criterion") or "l1")
        criterion = make_criterion(criterion_name, seed=s.seed, **(plain(cfg.evaluator.get("criterion_options")) or {}))
        rounding = rounding_from_config(cfg.pruning)
        torch.manual_seed(s.seed)
        np.random.seed(s.seed)

        self.model, names, self.source = load_model_from_config(cfg.model)
        self.model.eval()
        self.space = PruningSpace.from_model(self.model, s.img_size, rounding)
        if s.ratio_bounds[1] > rounding.max_ratio + 1e-12:
            raise ConfigError(f"ratio_bounds high {s.ratio_bounds[1]} is above pruning.max_ratio "
                              f"{rounding.max_ratio}: lower it or raise pruning.max_ratio")
        self.latency_table = None
        if s.budget_metric == "latency" or reward.needs_latency:
            self.latency_table = self._latency_table()
        self.budget = Budget(s.budget_metric, s.budget_fraction)
        self.criterion = criterion
        self.evaluate = self._evaluator()
        if reward.needs_recovery and not getattr(self.evaluate, "reports_recover_loss", False):
            raise ConfigError(f"reward={reward.name} scores the loss left after the proxy's recovery steps: "
                              f"set evaluator.proxy.recover_steps > 0 (e.g. 30)")
        self.criterion_name = criterion.name
        self.env = PruningEnv(self.space, self.evaluate, reward, self.budget, ratio_bounds=s.ratio_bounds,
                              latency_table=self.latency_table, action_mode=s.action_mode)
        self.env.reset(seed=s.seed)

    def _device(self) -> torch.device:
        from amc.device import select_device

        d = self.cfg.device
        threads = config_number(d, "threads", int, 0, prefix="device.")
        name = str(d.name)
        if self.worker is not None:
            from amc.search.parallel import worker_device, worker_threads

            threads = worker_threads(threads, self.worker[1])
            name = worker_device(name, self.worker[0])
        if threads:
            torch.set_num_threads(threads)
        return select_device(name)

    def _latency_table(self):  # noqa: ANN202
        from amc.eval.latency_table import LatencyTable

        b = self.cfg.budget
        path = Path(str(b.table)) if b.get("table") else self.run_dir / "latency_table.json"
        threads = int(self.cfg.device.threads) or None
        self._note(f"latency lookup table: {path} ({self.cfg.device.latency_backend})")
        return LatencyTable.load_or_build(path, self.model, self.space, backend=str(self.cfg.device.latency_backend),
                                          threads=threads, device=self.device, grid=int(b.get("grid", 4)),
                                          runs=int(b.get("runs", 8)))

    def _evaluator(self):  # noqa: ANN202
        """The episode evaluator (ratios -> EpisodeOutcome) the config names; prepares the channel criterion."""
        ev = self.cfg.evaluator
        criterion = self.criterion
        name = str(ev.get("name"))
        if name == "stub":
            from envs.stub import StubEvaluator

            if criterion.needs_data:
                raise ConfigError(f"evaluator=stub reads no data: use a data-free criterion (l1, l2, bn, random), "
                                  f"not {criterion.name}")
            criterion.prepare(self.model, self.space)
            return StubEvaluator(self.space, latency_table=self.latency_table)
        if name != "proxy":
            raise ConfigError(f"evaluator.name must be proxy or stub, got {name!r}")
        from amc.reward.benchmarks import proxy_settings
        from amc.reward.proxy import ProxyEvaluator
        from amc.search.evaluation import ProxyPolicyEvaluator

        settings = proxy_settings(ev.get("proxy"))
        # held out: policies are scored on the search split, results are reported on data.split (val)
        self.search_split = search_split(self.cfg.data)
        val = load_data_from_config(self.cfg.data, self.search_split)
        train = load_data_from_config(self.cfg.data, str(self.cfg.data.get("train_split") or "train")) \
            if settings.adaptive_bn else None
        batches = None
        if criterion.needs_data:
            from amc.data.loaders import sample_batches

            batches = sample_batches(train or val, 4, 8, settings.img_size, seed=self.settings.seed)
        criterion.prepare(self.model, self.space, batches)
        cache = None
        if bool(ev.get("cache", True)):
            from amc.data.datasets import cache_dir

            cache = str(cache_dir())
        self._note(f"preparing the proxy evaluator: {settings.val_images} images of the {self.search_split} split "
                   f"at {settings.img_size} px, "
                   f"{settings.bn_batches}x{settings.bn_batch_size} BN images, on {self.device}")
        proxy = ProxyEvaluator(self.model, self.space, val, train, settings, self.device, cache_dir=cache)
        return ProxyPolicyEvaluator(self.space, proxy, criterion, self.latency_table)


# ---------------------------------------------------------------------------------------------- runner
class SearchRunner(SearchSetup):
    """One search in one run directory (new or resumed).

    With ``workers: N > 1`` the episodes run N at a time in N worker processes (:mod:`amc.search.parallel`),
    started by :meth:`run`; the model and evaluator built here then serve the final comparison and export.

    Args:
        cfg: the composed ``conf/search.yaml`` (for a resume: the run's own config, see :func:`load_resume_config`).
        run_dir: where everything is written.
        after_episode: called with each episode's report once the runner has logged and checkpointed it (a
            benchmark's probe, e.g. ``amc-bench bench=memory``'s memory sampler).
    """

    def __init__(self, cfg: DictConfig, run_dir: Path,
                 after_episode: Callable[[Any], None] | None = None) -> None:
        started = time.perf_counter()
        super().__init__(cfg, run_dir)
        self.after_episode = after_episode
        self.resuming = bool(cfg.get("resume"))
        check_writable(self.run_dir)
        if not self.resuming and (self.run_dir / CONFIG_FILE).exists():
            raise ConfigError(f"{self.run_dir} already holds a search: continue it with resume={self.run_dir} "
                              f"or choose another hydra.run.dir")
        self.state = SearchState()
        self._build()
        self.setup_s = time.perf_counter() - started
        self.workers_setup_s = 0.0

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        from agents import SearchAgent, agent_from_config

        self.build_env()
        cfg, s = self.cfg, self.settings
        checkpoint = complete_dir(self.run_dir / CHECKPOINT_DIR) if self.resuming else None
        self._zero_based = False  # resuming a run whose files number episodes from 0 (see SearchState)
        if checkpoint is not None:
            self.agent = SearchAgent.load(checkpoint / "agent", self.env)
            self.state = SearchState.from_dict(json.loads((checkpoint / "state.json").read_text()))
            self._zero_based = self.state.first_episode == 0
            if self._zero_based:  # a run started when files numbered episodes from 0: number them from 1 on
                self.state.first_episode = 1
                if self.state.best_episode >= 0:
                    self.state.best_episode += 1
            self._adopt_exported_best()
            if self._zero_based:  # renumber the files that hold episode numbers (episodes.jsonl: SearchLog)
                if self.state.best_ratios is not None:
                    self._write_best_policy()
                atomic_write_text(checkpoint / "state.json", json.dumps(self.state.to_dict(), indent=2))
        else:
            self.agent = agent_from_config(plain(cfg.agent), self.env, s.seed)
        if not self.resuming:
            atomic_write_text(self.run_dir / CONFIG_FILE, yaml.safe_dump(
                {RUN_MARKER: 1, "config": plain(cfg)}, sort_keys=False))

    # ------------------------------------------------------------------ the episodes
    def run(self) -> dict[str, Any]:
        """Play the remaining episodes, then export and report; returns ``results.json``'s content."""
        from amc.search.tracking import SearchLog

        s = self.settings
        first = self.state.episodes_done
        if self.resuming and first < s.episodes:
            console.print(f"resuming {self.run_dir} at episode {first + 1} of {s.episodes}")
        elif self.resuming:
            console.print(f"resuming {self.run_dir}: all {s.episodes} episodes were played, redoing the final "
                          f"stage (a resume with episodes=N plays more)")
        self.log = SearchLog(self.run_dir, first, resuming=self.resuming, zero_based=self._zero_based)
        console.print(f"search: {len(self.space)} units, budget {s.budget_metric} <= {s.budget_fraction:g}, "
                      f"agent {self.cfg.agent.name}, reward {self.cfg.reward.name}, {s.episodes} episodes")
        progress = Progress(TextColumn("episodes"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("best reward {task.fields[best]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console, disable=not s.progress)
        self._checkpointed = first
        vec_env = None
        try:
            if s.workers > 1 and first < s.episodes:
                from amc.search.parallel import make_search_vec_env

                console.print(f"starting {s.workers} worker processes (one model copy and evaluator each)")
                started = time.perf_counter()
                vec_env = make_search_vec_env(self.cfg, self.run_dir, s.workers)
                self.workers_setup_s = time.perf_counter() - started
            # the search time counts the episodes only, not the one-off set-up of the workers
            self._started = time.perf_counter() - self.state.search_s
            with progress:
                self._task = progress.add_task("search", total=s.episodes, completed=first, best=self._best_text())
                self._progress = progress
                if vec_env is None:
                    self.agent.run(s.episodes, on_episode=self._on_episode)
                else:
                    self.agent.run_batched(vec_env, s.episodes, on_episode=self._on_episode)
            self._checkpoint(force=True)
            return self._finish()
        finally:
            if vec_env is not None:
                vec_env.close()
            self.log.close()
            close = getattr(self.evaluate, "close", None)
            if close is not None:
                close()

    def _best_text(self) -> str:
        return "-" if self.state.best_episode < 0 else f"{self.state.best_reward:.4f} (ep {self.state.best_episode})"

    def _on_episode(self, report) -> None:  # noqa: ANN001 (agents.base.EpisodeReport)
        info = report.info
        outcome, cost = info.get("outcome"), info.get("cost", {})
        number = int(report.episode) + 1  # the agent counts from 0; files and screen number episodes from 1
        record = {"episode": number, "reward": float(report.reward), "penalized": bool(report.penalized),
                  "map50_95": None if outcome is None else float(outcome.map50_95),
                  "recover_loss": None if outcome is None or outcome.recover_loss is None
                  else float(outcome.recover_loss),
                  "flops_ratio": cost.get("flops_ratio"), "params_ratio": cost.get("params_ratio"),
                  "latency_ratio": cost.get("latency_ratio"), "phase": report.phase,
                  "seconds": float(report.seconds), "ratios": [float(r) for r in report.ratios]}
        st = self.state
        st.penalized += int(report.penalized)
        if not report.penalized and report.reward > st.best_reward:
            st.best_reward, st.best_episode = float(report.reward), number
            st.best_ratios = [float(r) for r in report.ratios]
            st.best_metrics = {k: record[k] for k in ("map50_95", "flops_ratio", "params_ratio", "latency_ratio")}
            self._write_best_policy()
            self.log.best_policy(st.best_episode, np.asarray(st.best_ratios), st.best_reward)
        record["best_reward"] = st.best_reward if math.isfinite(st.best_reward) else None
        self.log.episode(record, dict(report.metrics))
        st.episodes_done = int(report.episode) + 1
        st.search_s = time.perf_counter() - self._started
        # mid-batch the agent has already learned from the batch's later episodes: only its last report is a
        # state a resumed run continues exactly from
        if getattr(report, "last_in_batch", True):
            self._checkpoint()
        self._progress.update(self._task, completed=st.episodes_done, best=self._best_text())
        if self.after_episode is not None:
            self.after_episode(report)

    def _write_best_policy(self) -> None:
        from amc.pruning.policy import Policy

        st = self.state
        policy = Policy.from_ratios(self.space, st.best_ratios, method="search", criterion=self.criterion_name,
                                    source=self.source, budget={self.settings.budget_metric: self.settings.budget_fraction},
                                    metrics={"reward": st.best_reward, "episode": st.best_episode,
                                             "map50_95_proxy": st.best_metrics.get("map50_95"),
                                             "agent": str(self.cfg.agent.name), "seed": self.settings.seed})
        policy.save(self.run_dir / BEST_POLICY_FILE)

    def _adopt_exported_best(self) -> None:
        """On resume: a best policy exported after the last checkpoint is kept (never replaced by a worse one)."""
        from amc.pruning.policy import Policy

        path = self.run_dir / BEST_POLICY_FILE
        if not path.is_file():
            return
        policy = Policy.load(path)
        reward = policy.metrics.get("reward")
        if reward is not None and float(reward) > self.state.best_reward:
            st = self.state
            episode = int(policy.metrics.get("episode", -1))
            if self._zero_based and episode >= 0:  # written by a run that numbered episodes from 0 (SearchState)
                episode += 1
            st.best_reward, st.best_episode = float(reward), episode
            st.best_ratios = [float(r) for r in policy.ratios_for(self.space)]
            st.best_metrics = {"map50_95": policy.metrics.get("map50_95_proxy"),
                               "flops_ratio": policy.cost.get("flops_ratio"),
                               "params_ratio": policy.cost.get("params_ratio"), "latency_ratio": None}

    def _checkpoint(self, force: bool = False) -> None:
        """Agent and search state, replaced as a whole (a kill leaves the previous complete checkpoint)."""
        every = self.settings.checkpoint_every
        # every `every` episodes; with batches, at the first batch end at or past each multiple (in the serial
        # loop, exactly at the multiples)
        if not force and self.state.episodes_done // every <= self._checkpointed // every:
            return
        self._checkpointed = self.state.episodes_done
        self.log.flush()
        with atomic_dir(self.run_dir / CHECKPOINT_DIR) as tmp:
            self.agent.save(tmp / "agent")
            (tmp / "state.json").write_text(json.dumps(self.state.to_dict(), indent=2))

    # ------------------------------------------------------------------ the end
    def _finish(self) -> dict[str, Any]:
        from amc.reward.functions import reward_from_config
        from amc.search.evaluation import policy_outcome

        s, st = self.settings, self.state
        if st.best_ratios is None:
            raise ConfigError("every episode was penalized (non-finite mAP or cost): no policy to export; "
                              "see episodes.jsonl")
        best = np.asarray(st.best_ratios)
        env = self.env.unwrapped
        uniform = np.full(len(self.space), env.uniform_ratio())
        console.print(f"scoring uniform pruning at the same budget (ratio {uniform[0]:.4f}) with the same evaluator")
        uniform_outcome = self.evaluate(uniform)
        uniform_reward = reward_from_config(self.cfg.reward)(uniform_outcome)
        unpruned_map = self.evaluate.unpruned_map() if hasattr(self.evaluate, "unpruned_map") else None
        best_fig = policy_outcome(self.space, best, float("nan"), self.latency_table)
        uni_fig = uniform_outcome

        models: dict[str, Any] = {}
        if s.export_model or s.final_latency_runs:
            models["best"] = self._pruned(best)
            if s.final_latency_runs:
                models["uniform"] = self._pruned(uniform)
        if s.export_model:
            from amc.models.io import save_model

            save_model(models["best"], self.run_dir / "model",
                       extra={"pruned_from": self.source, "policy": BEST_POLICY_FILE})
        latency = self._final_latency(models) if s.final_latency_runs else {}

        full = best_fig.full_flops, best_fig.full_params
        rows = {
            "original": {"map50_95_proxy": unpruned_map, "params": full[1], "gflops": full[0] / 1e9,
                         "latency_ms": latency.get("original")},
            "uniform": {"map50_95_proxy": uniform_outcome.map50_95, "params": uni_fig.params,
                        "gflops": uni_fig.flops / 1e9, "latency_ms": latency.get("uniform"),
                        "reward": uniform_reward.value},
            "best": {"map50_95_proxy": st.best_metrics.get("map50_95"), "params": best_fig.params,
                     "gflops": best_fig.flops / 1e9, "latency_ms": latency.get("best"), "reward": st.best_reward},
        }
        results = {
            "best_reward": st.best_reward, "best_map_proxy": st.best_metrics.get("map50_95"),
            "best_episode": st.best_episode, "uniform_map_proxy": uniform_outcome.map50_95,
            "uniform_reward": uniform_reward.value, "unpruned_map_proxy": unpruned_map,
            "flops_ratio": best_fig.flops / best_fig.full_flops, "params_ratio": best_fig.params / best_fig.full_params,
            "latency_ratio_estimated": (best_fig.latency_ms / best_fig.full_latency_ms
                                        if best_fig.latency_ms is not None else None),
            "episodes": st.episodes_done, "penalized_episodes": st.penalized, "search_s": st.search_s,
            "workers": s.workers, "setup_s": self.setup_s, "workers_setup_s": self.workers_setup_s,
            "budget": {s.budget_metric: s.budget_fraction}, "agent": str(self.cfg.agent.name),
            "reward": str(self.cfg.reward.name), "evaluator": str(self.cfg.evaluator.name), "seed": s.seed,
            "units": len(self.space), "img_size": list(s.img_size), "model": self.source, "device": str(self.device),
            "summary": rows, "best_policy": str(self.run_dir / BEST_POLICY_FILE),
            # held out: the split (and how many of its images) policies were scored on, never data.split's
            "protocol": {"search_split": getattr(self, "search_split", None), "report_split": str(self.cfg.data.split),
                         "search_images": len(getattr(self.evaluate, "image_files", []))},
            "model_dir": str(self.run_dir / "model") if s.export_model else None,
        }
        atomic_write_json(self.run_dir / "results.json", results)
        atomic_write_json(self.run_dir / "metrics.json", results)
        self.log.hparams({"agent": str(self.cfg.agent.name), "reward": str(self.cfg.reward.name),
                          "budget_metric": s.budget_metric, "budget": s.budget_fraction, "seed": s.seed,
                          "episodes": st.episodes_done, "evaluator": str(self.cfg.evaluator.name)},
                         {"best_reward": st.best_reward, "best_map_proxy": st.best_metrics.get("map50_95"),
                          "uniform_map_proxy": uniform_outcome.map50_95, "flops_ratio": results["flops_ratio"]})
        self.log.flush()
        from amc.search.tracking import reward_curves_svg

        atomic_write_text(self.run_dir / "reward_curves.svg", reward_curves_svg(
            self.run_dir, f"{self.cfg.agent.name} search, {s.budget_metric} budget {s.budget_fraction:g}: reward per "
                          f"episode (from the TensorBoard events)",
            {"uniform pruning: reward": uniform_reward.value, "uniform pruning: proxy mAP": uniform_outcome.map50_95}))
        self._print_summary(rows)
        console.print(f"best policy (episode {st.best_episode}): {self.run_dir / BEST_POLICY_FILE}; "
                      f"results.json{', pruned model in model/' if s.export_model else ''} in {self.run_dir}")
        return results

    def _pruned(self, ratios: np.ndarray):  # noqa: ANN202
        """The physically pruned model of ``ratios`` (channels by the search's criterion), cost-checked."""
        from amc.pruning.physical import prune_model

        selection = self.criterion.select(self.space.kept_channels(ratios))
        pruned = prune_model(self.model, self.space, selection)
        counted, analytic = pruned.cost(self.space.img_size), self.space.cost(selection.widths)
        if (counted.params, counted.macs) != (analytic.params, analytic.macs):
            raise RuntimeError("pruned model cost differs from the policy's analytic cost: please report this bug")
        return pruned.eval()

    def _final_latency(self, models: dict[str, Any]) -> dict[str, float]:
        import copy

        from amc.eval.latency import compare_latency

        s = self.settings
        timed = {"original": copy.deepcopy(self.model).fuse(), **{k: copy.deepcopy(m).fuse() for k, m in models.items()}}
        threads = int(self.cfg.device.threads) or None
        console.print(f"timing the original, uniform and best models ({self.cfg.device.latency_backend}, "
                      f"{s.final_latency_runs} runs x {s.final_latency_rounds} rounds, interleaved)")
        measured = compare_latency(timed, s.img_size, backend=str(self.cfg.device.latency_backend), threads=threads,
                                   runs=s.final_latency_runs, rounds=s.final_latency_rounds, device=self.device)
        return {k: v.median_ms for k, v in measured.items()}

    def _print_summary(self, rows: dict[str, dict[str, Any]]) -> None:
        base = rows["original"]

        def fmt(v: Any, pattern: str) -> str:
            return "-" if v is None else format(v, pattern)

        table = []
        for name, r in rows.items():
            table.append([name, fmt(r["map50_95_proxy"], ".4f"), f"{r['params'] / 1e6:.3f}M",
                          f"{r['params'] / base['params']:.1%}", f"{r['gflops']:.3f}", f"{r['gflops'] / base['gflops']:.1%}",
                          fmt(r["latency_ms"], ".2f"),
                          "-" if r["latency_ms"] is None or base["latency_ms"] is None
                          else f"{base['latency_ms'] / r['latency_ms']:.2f}x"])
        s = self.settings
        print_table(f"{self.source}: {self.cfg.agent.name} search, {s.budget_metric} budget {s.budget_fraction:g}, "
                    f"{self.state.episodes_done} episodes (mAP: proxy mAP@0.5:0.95 before fine-tuning)",
                    ["model", "mAP proxy", "params", "of orig.", "GFLOPs", "of orig.", "ms", "speed-up"], table)
        if self.settings.final_latency_runs:
            console.print(f"ms: median latency, {self.cfg.device.latency_backend}, batch 1, "
                          f"{s.img_size[0]}x{s.img_size[1]}")
