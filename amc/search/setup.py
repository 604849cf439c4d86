"""What a search is made of, built from its config: the model, its pruning space, the channel criterion, the
latency table, the episode evaluator and the pruning environment (:class:`SearchSetup`).

The runner (:mod:`amc.search.runner`) builds one in its own process; with ``workers: N`` every worker process
(:mod:`amc.search.parallel`) builds its own from the same config.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from amc.config import config_number, plain, search_split
from amc.console import console
from amc.data.datasets import cache_dir
from amc.data.loaders import sample_batches
from amc.device import select_device, worker_devices
from amc.errors import ConfigError
from amc.factory import load_data_from_config, load_model_from_config, make_criterion, rounding_from_config
from amc.pruning.space import PruningSpace
from amc.reward.evaluation import ProxyPolicyEvaluator
from amc.reward.functions import reward_from_config
from amc.reward.latency_table import LatencyTable
from amc.reward.proxy import ProxyEvaluator, proxy_settings
from amc.search.settings import SearchSettings
from envs.pruning_env import PruningEnv
from envs.stub import StubEvaluator


class SearchSetup:
    """Model, pruning space, evaluator and environment of a search, built from its config.

    The runner builds one; with ``workers > 1`` every worker process of :mod:`amc.search.parallel` builds its
    own from the same config (its own model copy and evaluator), seeded alike, so an episode's outcome does not
    depend on which process evaluated it.

    Args:
        cfg: the composed ``conf/search.yaml``.
        run_dir: the run directory (a latency table is read from, or written to, it).
        worker: ``(rank, workers)`` in a worker process: no console notes, and ``device.threads: 0`` means the
            machine's cores divided among the workers. A worker's config names its own device
            (:func:`worker_placement`, applied by :mod:`amc.search.parallel`).
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, worker: tuple[int, int] | None = None) -> None:
        self.cfg, self.run_dir, self.worker = cfg, Path(run_dir), worker
        self.settings = SearchSettings.from_config(cfg)

    def _note(self, message: str) -> None:
        if self.worker is None:  # N workers printing the same set-up lines would only repeat the main process
            console.print(message)

    def build_env(self) -> None:
        """Build the model, pruning space, evaluator and environment of the config (``self.env``, ``self.space``, ...)."""
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
        self.budget = s.budget
        self.criterion = criterion
        self.evaluate = self._evaluator()
        if reward.needs_recovery and not getattr(self.evaluate, "reports_recover_loss", False):
            raise ConfigError(f"reward={reward.name} scores the loss left after the proxy's recovery steps: "
                              f"set evaluator.proxy.recover_steps > 0 (e.g. 30)")
        self.criterion_name = criterion.name
        self.env = PruningEnv(self.space, self.evaluate, reward, self.budget, ratio_bounds=s.ratio_bounds,
                              latency_table=self.latency_table, action_mode=s.action_mode,
                              spend_budget=s.spend_budget)
        self.env.reset(seed=s.seed)

    def _device(self) -> torch.device:
        d = self.cfg.device
        threads = config_number(d, "threads", int, 0, prefix="device.")
        name = str(d.name)
        if self.worker is not None:
            threads = worker_threads(threads, self.worker[1])
        elif self.settings.workers > 1:
            worker_placement(self.cfg, self.settings.workers)  # a bad worker placement is refused before any work
        if threads:
            torch.set_num_threads(threads)
        return select_device(name)

    def _latency_table(self):  # noqa: ANN202
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
            if criterion.needs_data:
                raise ConfigError(f"evaluator=stub reads no data: use a data-free criterion (l1, l2, bn, random), "
                                  f"not {criterion.name}")
            criterion.prepare(self.model, self.space)
            return StubEvaluator(self.space, latency_table=self.latency_table)
        if name != "proxy":
            raise ConfigError(f"evaluator.name must be proxy or stub, got {name!r}")
        settings = proxy_settings(ev.get("proxy"))
        # held out: policies are scored on the search split, results are reported on data.split (val)
        self.search_split = search_split(self.cfg.data)
        val = load_data_from_config(self.cfg.data, self.search_split)
        train = load_data_from_config(self.cfg.data, str(self.cfg.data.get("train_split") or "train")) \
            if settings.adaptive_bn else None
        batches = None
        if criterion.needs_data:
            batches = sample_batches(train or val, 4, 8, settings.img_size, seed=self.settings.seed)
        criterion.prepare(self.model, self.space, batches)
        cache = None
        if bool(ev.get("cache", True)):
            cache = str(cache_dir())
        self._note(f"preparing the proxy evaluator: {settings.val_images} images of the {self.search_split} split "
                   f"at {settings.img_size} px, "
                   f"{settings.bn_batches}x{settings.bn_batch_size} BN images, on {self.device}")
        proxy = ProxyEvaluator(self.model, self.space, val, train, settings, self.device, cache_dir=cache)
        return ProxyPolicyEvaluator(self.space, proxy, criterion, self.latency_table)


def worker_threads(threads: int, workers: int) -> int:
    """Torch CPU threads of one worker: ``device.threads`` when set, else the machine's cores shared out (N workers
    each taking every core would fight over them)."""
    if threads:
        return int(threads)
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def worker_placement(cfg: DictConfig, workers: int) -> list[str]:
    """The device of each of the search's ``workers`` worker processes: ``worker_devices`` (a list, used
    round-robin) when given, else ``device.name`` spread over the visible GPUs (:func:`amc.device.worker_devices`).
    A malformed list, or a device this machine does not have, is refused in one line."""
    listed = cfg.get("worker_devices")  # absent in the configs of runs started before the knob
    if listed is not None and not (OmegaConf.is_list(listed) and len(listed) > 0):
        raise ConfigError(f"worker_devices must be a list of devices (e.g. [cuda:0, cuda:1]) or null, got {listed!r}")
    return worker_devices(str(cfg.device.name), workers, [str(d) for d in listed] if listed is not None else None)
