"""The settings of a search, read from its config and checked before any work (a typo never surfaces mid-search)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from amc.config import config_number, parse_img_size
from amc.errors import ConfigError
from amc.pruning.budget import Budget
from amc.search.pick import check_rule


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
    spend_budget: bool = False
    export_rule: str = "reward"

    @property
    def budget(self) -> Budget:
        """The search's :class:`~amc.pruning.budget.Budget`."""
        return Budget(self.budget_metric, self.budget_fraction)

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
        budget = Budget.from_config(cfg.budget)  # the budget's own checks, one-line errors
        workers = cfg.get("workers", 1)  # absent in the configs of runs started before the knob: one worker
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers must be a whole number >= 1 (environments evaluating in parallel), "
                              f"got {workers!r}")
        # absent in the configs of runs started before the knob: AMC's absolute actions, as they ran
        action_mode = str(cfg.get("action_mode", "absolute"))
        if action_mode not in ("absolute", "centred", "relative"):
            raise ConfigError(f"action_mode must be absolute, centred or relative, got {action_mode!r}")
        # absent in the configs of runs started before the knob: the one-sided wall they ran with
        spend_budget = cfg.get("spend_budget", False)
        if not isinstance(spend_budget, bool):
            raise ConfigError(f"spend_budget must be true or false, got {spend_budget!r}")
        # absent in the configs of runs started before the knob: they exported the best reward
        export_rule = check_rule(str(cfg.get("export_rule", "reward")))
        final = cfg.final
        return cls(episodes=episodes, seed=seed, img_size=img_size, ratio_bounds=(lo, hi),
                   budget_metric=budget.metric, budget_fraction=budget.fraction,
                   checkpoint_every=config_number(cfg, "checkpoint_every", int, 1),
                   final_latency_runs=config_number(final, "latency_runs", int, 0, prefix="final."),
                   final_latency_rounds=config_number(final, "latency_rounds", int, 1, prefix="final."),
                   export_model=bool(final.export_model), progress=bool(cfg.get("progress", True)),
                   workers=workers, action_mode=action_mode, spend_budget=spend_budget,
                   export_rule=export_rule)
