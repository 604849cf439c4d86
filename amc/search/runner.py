"""The search: set up from the config (:mod:`amc.search.setup`), play the episodes (here), report at the end
(:mod:`amc.search.report`), in one run directory (:mod:`amc.search.rundir`).

A search killed at any moment (even ``kill -9``) continues with ``amc-search resume=<run dir>`` from its last
checkpoint: the agent replays nothing it has learned, the episode counter and the TensorBoard steps go on, and
no file written before the kill is lost (each is replaced only by a complete newer version).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import DictConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from agents import SearchAgent, agent_from_config
from amc.atomic import atomic_dir, atomic_write_text, complete_dir
from amc.config import plain
from amc.console import ProgressLog, console, is_terminal
from amc.errors import ConfigError
from amc.pruning.policy import Policy
from amc.search.parallel import make_search_vec_env
from amc.search.report import final_report, max_latency_spread
from amc.search.pick import candidates, pick
from amc.search.rundir import (BEST_POLICY_FILE, CHECKPOINT_DIR, CONFIG_FILE, COST_KEYS, RUN_MARKER, SearchState,
                               check_writable, load_resume_config)
from amc.search.setup import SearchSetup
from amc.search.tracking import SearchLog

__all__ = ["SearchRunner", "load_resume_config"]

CANDIDATE_KEYS = ("episode", "reward", "map50_95", "phase", "ratios", *COST_KEYS)
"""What the runner keeps of an episode the export rule may pick (:func:`amc.search.pick.candidates`)."""


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
        max_latency_spread(cfg)  # the end-of-search knob checked now: a typo never surfaces after the episodes
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
                for candidate in self.state.candidates:
                    candidate["episode"] += 1
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
        # A terminal gets the live bar; a file or pipe (nohup, Slurm .out) one plain line per episode instead,
        # which rich cannot give (it draws its bar once, at the end). The lines reach the job log either way.
        progress = Progress(TextColumn("episodes"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("best reward {task.fields[best]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console, disable=not (s.progress and is_terminal()))
        self._episode_log = ProgressLog("episode", s.episodes, start=first, echo=s.progress and not is_terminal())
        self._checkpointed = first
        vec_env = None
        try:
            if s.workers > 1 and first < s.episodes:
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
            return final_report(self, self.state, self.log, self.setup_s, self.workers_setup_s)
        finally:
            if vec_env is not None:
                vec_env.close()
            self.log.close()
            close = getattr(self.evaluate, "close", None)
            if close is not None:
                close()

    def _best_text(self) -> str:
        return "-" if self.state.best_episode < 0 else f"{self.state.best_reward:.4f} (ep {self.state.best_episode})"

    def _episode_text(self, record: dict[str, Any]) -> str:
        """An episode's progress line: its reward, the best so far, what it kept of the model."""
        parts = [f"reward {record['reward']:.4f}" + (" (penalized)" if record["penalized"] else ""),
                 f"best {self._best_text()}"]
        budget = self.settings.budget_metric  # FLOPs always; the budget's own metric too when it is another
        for metric in ("flops",) if budget == "flops" else ("flops", budget):
            if record.get(f"{metric}_ratio") is not None:
                parts.append(f"{'FLOPs' if metric == 'flops' else metric} kept {record[f'{metric}_ratio']:.1%}")
        if record.get("map50_95") is not None:
            parts.append(f"proxy mAP {record['map50_95']:.4f}")
        return " | ".join(parts)

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
        if not report.penalized:
            st.candidates = candidates([*st.candidates, {k: record[k] for k in CANDIDATE_KEYS}])
            chosen = pick(st.candidates, self.settings.export_rule)
            if chosen["episode"] != st.best_episode or chosen["reward"] != st.best_reward:
                self._export(chosen)
        # the best reward so far whatever the export rule (the curve of TensorBoard's search/best_reward): the kept
        # candidates hold the best rewards
        record["best_reward"] = max((float(c["reward"]) for c in st.candidates), default=None)
        self.log.episode(record, dict(report.metrics))
        st.episodes_done = int(report.episode) + 1
        st.search_s = time.perf_counter() - self._started
        # mid-batch the agent has already learned from the batch's later episodes: only its last report is a
        # state a resumed run continues exactly from
        if getattr(report, "last_in_batch", True):
            self._checkpoint()
        self._progress.update(self._task, completed=st.episodes_done, best=self._best_text())
        self._episode_log.update(number, self._episode_text(record))
        if self.after_episode is not None:
            self.after_episode(report)

    def _export(self, chosen: dict[str, Any]) -> None:
        """Make the episode ``chosen`` (a candidate record) the search's export: state, best_policy.yaml, curves."""
        self._set_export(chosen)
        self._write_best_policy()
        self.log.best_policy(self.state.best_episode, np.asarray(self.state.best_ratios), self.state.best_reward)

    def _set_export(self, chosen: dict[str, Any]) -> None:
        st = self.state
        st.best_reward, st.best_episode = float(chosen["reward"]), int(chosen["episode"])
        st.best_ratios = [float(r) for r in chosen["ratios"]]
        st.best_metrics = {"map50_95": chosen.get("map50_95"), "phase": chosen.get("phase", ""),
                           **{k: chosen.get(k) for k in COST_KEYS}}

    def _write_best_policy(self) -> None:
        st = self.state
        policy = Policy.from_ratios(self.space, st.best_ratios, method="search", criterion=self.criterion_name,
                                    source=self.source, budget={self.settings.budget_metric: self.settings.budget_fraction},
                                    metrics={"reward": st.best_reward, "episode": st.best_episode,
                                             "map50_95_proxy": st.best_metrics.get("map50_95"),
                                             "agent": str(self.cfg.agent.name), "seed": self.settings.seed,
                                             "phase": st.best_metrics.get("phase", ""),
                                             "export_rule": self.settings.export_rule})
        policy.save(self.run_dir / BEST_POLICY_FILE)

    def _adopt_exported_best(self) -> None:
        """On resume: a policy exported after the last checkpoint (the kill came between the two) stays a candidate
        of the export rule, so a resumed search never exports worse than what it had already exported."""
        path = self.run_dir / BEST_POLICY_FILE
        if not path.is_file():
            return
        policy = Policy.load(path)
        reward, episode = policy.metrics.get("reward"), int(policy.metrics.get("episode", -1))
        if self._zero_based and episode >= 0:  # written by a run that numbered episodes from 0 (SearchState)
            episode += 1
        st = self.state
        if reward is None or episode <= st.episodes_done:  # an episode the checkpoint holds: already a candidate
            return
        exported = {"episode": episode, "reward": float(reward), "map50_95": policy.metrics.get("map50_95_proxy"),
                    "phase": str(policy.metrics.get("phase", "")),
                    "ratios": [float(r) for r in policy.ratios_for(self.space)],
                    "flops_ratio": policy.cost.get("flops_ratio"), "params_ratio": policy.cost.get("params_ratio"),
                    "latency_ratio": None}
        st.candidates = candidates([*st.candidates, exported])
        self._set_export(pick(st.candidates, self.settings.export_rule))
        self._write_best_policy()

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
