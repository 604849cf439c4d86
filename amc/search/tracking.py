"""TensorBoard curves and a JSON-lines episode log of a search, in its run directory.

Every episode adds, at step = its number (episodes are numbered from 1 on screen and in every file): its reward,
the best reward so far, its proxy mAP, its FLOPs / params / latency ratios and the agent's figures (losses,
exploration sigma, reward baseline). When a better policy appears its per-unit ratios are drawn as a bar chart
(an image, so TensorBoard's slider walks through the successive best policies). The run's hyper-parameters go to
TensorBoard's HParams tab at the end, so the curves of several runs (a multirun sweep, seeds) compare side by
side in one ``tensorboard --logdir``.

Resuming: the writer is opened with ``purge_step`` = the first episode still to play, so points logged after
the last checkpoint by a killed run are discarded instead of appearing twice; the episode log is cut back the
same way. Runs started before episodes were numbered from 1 wrote ``episodes.jsonl`` from 0: their log is
renumbered when they are resumed (their earlier TensorBoard points keep their steps), and
:func:`read_episode_log` reads either kind numbered from 1.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.tensorboard import SummaryWriter

from amc.plots import line_svg

TENSORBOARD_DIR = "tensorboard"
EPISODE_LOG = "episodes.jsonl"


def ratio_chart(ratios: np.ndarray, title: str, width: int = 720, height: int = 240) -> np.ndarray:
    """A bar chart (HWC uint8 RGB) of per-unit ratios in [0, 1], units in forward order."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 36, width - 8, 22, height - 18
    draw.text((left, 4), title, fill="black")
    for frac in (0.0, 0.5, 1.0):  # axis ticks
        y = bottom - frac * (bottom - top)
        draw.line([(left - 4, y), (right, y)], fill=(220, 220, 220))
        draw.text((4, y - 6), f"{frac:.1f}", fill="black")
    n = max(len(ratios), 1)
    bar = (right - left) / n
    for i, r in enumerate(np.clip(ratios, 0.0, 1.0)):
        x0 = left + i * bar
        draw.rectangle([x0 + 0.15 * bar, bottom - r * (bottom - top), x0 + 0.85 * bar, bottom], fill=(52, 101, 164))
    draw.text((left, bottom + 3), f"unit 1 .. {len(ratios)} (forward order); bar = sparsity ratio", fill="black")
    return np.asarray(image)


def zero_based(records: list[dict[str, Any]]) -> bool:
    """Whether an episode log was written when episodes were numbered from 0 (its first record is episode 0)."""
    return bool(records) and records[0].get("episode") == 0


def read_episode_log(path: Path) -> list[dict[str, Any]]:
    """The records of an ``episodes.jsonl``, episodes numbered from 1 (older logs, numbered from 0, renumbered)."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if zero_based(records):
        for r in records:
            r["episode"] += 1
    return records


class SearchLog:
    """Writes a search's TensorBoard events and ``episodes.jsonl`` under ``run_dir``.

    Args:
        run_dir: the search's run directory.
        episodes_done: the episodes played before this process (it logs episode ``episodes_done + 1`` first).
        resuming: a resumed run: events and log lines of episodes after ``episodes_done`` are discarded.
        zero_based: the run's TensorBoard steps so far number episodes from 0 (a run started before episodes
            were numbered from 1): its points from step ``episodes_done`` on are the ones to discard.
    """

    def __init__(self, run_dir: Path, episodes_done: int = 0, resuming: bool = False, zero_based: bool = False) -> None:
        self.run_dir = Path(run_dir)
        # resuming (even from episode 1, when the kill came before the first checkpoint): drop later points
        purge = episodes_done + 1 if episodes_done and not zero_based else episodes_done
        self.writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=purge if resuming else None)
        self.episode_log = self.run_dir / EPISODE_LOG
        self._truncate_log(episodes_done)

    def _truncate_log(self, episodes_done: int) -> None:
        """Keep the first ``episodes_done`` logged episodes only (later ones were played after the checkpoint a
        killed run resumes from); a log numbered from 0 is renumbered from 1."""
        if not self.episode_log.exists():
            return
        records = []
        for line in self.episode_log.read_text().splitlines():
            try:
                record = json.loads(line)
                if not isinstance(record["episode"], int):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                break  # a line cut by the kill: everything after it is gone too
            records.append(record)
        shift = 1 if zero_based(records) else 0
        kept = []
        for r in records:
            r["episode"] += shift
            if r["episode"] <= episodes_done:
                kept.append(r)
        self.episode_log.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def episode(self, record: dict[str, Any], agent_metrics: dict[str, float]) -> None:
        """Log one episode (``record`` holds ``episode`` (its number, from 1), ``reward``, ``best_reward``,
        ``map50_95``, cost ratios)."""
        step = int(record["episode"])
        for key in ("reward", "best_reward", "map50_95", "recover_loss", "flops_ratio", "params_ratio",
                    "latency_ratio"):
            value = record.get(key)
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(f"search/{key}", value, step)
        self.writer.add_scalar("search/penalized", float(record.get("penalized", False)), step)
        for key, value in agent_metrics.items():
            if value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(f"agent/{key}", float(value), step)
        with open(self.episode_log, "a") as f:
            f.write(json.dumps(record) + "\n")

    def best_policy(self, episode: int, ratios: np.ndarray, reward: float) -> None:
        """Draw the per-unit ratios of a new best policy (``episode``: its number, from 1, the image's step)."""
        chart = ratio_chart(np.asarray(ratios), f"best policy: episode {episode}, reward {reward:.4f}")
        self.writer.add_image("best_policy/ratios", chart, episode, dataformats="HWC")
        self.writer.add_text("best_policy/ratios", ", ".join(f"{r:.3f}" for r in ratios), episode)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """The run's hyper-parameters and final figures (TensorBoard's HParams tab)."""
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        self.writer.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items() if v is not None},
                                run_name="hparams")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def read_scalars(run_dir: Path, tags: tuple[str, ...]) -> dict[str, tuple[list[int], list[float]]]:
    """Scalar curves ``tag -> (steps, values)`` read back from the run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its reader logs every file it scans
    events = EventAccumulator(str(Path(run_dir) / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    events.Reload()
    available = set(events.Tags().get("scalars", []))
    curves = {}
    for tag in tags:
        if tag in available:
            points = events.Scalars(tag)
            curves[tag] = ([p.step for p in points], [p.value for p in points])
    return curves


def reward_curves_svg(run_dir: Path, title: str, references: dict[str, float] | None = None) -> str:
    """The search's reward, best reward and proxy mAP per episode, drawn from its TensorBoard event files.

    ``references`` adds horizontal lines (e.g. the reward of uniform pruning at the same budget).
    """
    names = {"search/reward": "episode reward", "search/best_reward": "best reward so far",
             "search/map50_95": "proxy mAP@0.5:0.95"}
    curves = read_scalars(run_dir, tuple(names))
    series = {names[tag]: xy for tag, xy in curves.items()}
    steps = curves.get("search/reward", ([0], [0.0]))[0]
    for name, value in (references or {}).items():
        series[name] = ([min(steps), max(steps)], [value, value])
    return line_svg(series, title=title, x_label="episode", y_label="reward / mAP")
