"""Pruning policies on disk: one sparsity ratio per unit, with what is needed to check and reproduce them.

A policy file is YAML (``format: amc-policy/1``)::

    format: amc-policy/1
    model:                       # the model it was made for
      fingerprint: sha256:...    # hash of the architecture (layers, widths, classes, anchors)
      source: amc/assets/demo-model
      units: 55
    method: uniform              # uniform, global, search or manual
    criterion: l1                # channel-selection criterion used to pick the channels
    img_size: [640, 640]         # size at which FLOPs were counted
    rounding: {multiple: 8, min_channels: 8, max_ratio: 0.9}
    budget: {flops: 0.5}         # the target it was made for (fractions of the unpruned model)
    cost: {params: ..., gflops: ..., flops_ratio: ..., params_ratio: ...}
    metrics: {}                  # free-form results (e.g. mAP of the search)
    ratios:                      # unit name -> sparsity ratio (fraction of channels removed)
      model.0: 0.0
      ...
    channels:                    # kept channels per unit under ``rounding`` (checked on load)
      model.0: 32
      ...

:meth:`Policy.load` refuses malformed files; :meth:`Policy.ratios_for` refuses a policy made for another
model (fingerprint or unit names), ratios outside ``[0, max_ratio]`` and kept channels that do not follow
from the ratios -- all before any pruning work starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from amc.atomic import atomic_write_text
from amc.errors import ConfigError
from amc.pruning.criteria import CRITERIA
from amc.pruning.space import ChannelRounding, PruningSpace

POLICY_FORMAT = "amc-policy/1"
METHODS = ("uniform", "global", "search", "manual")


@dataclass
class Policy:
    """Per-unit sparsity ratios for one model, with provenance and cost.

    Attributes:
        ratios: unit name -> sparsity ratio, in unit order.
        fingerprint: :attr:`PruningSpace.fingerprint` of the model it was made for.
        rounding: how ratios became channel counts.
        img_size: (height, width) at which ``cost`` was counted.
        method, criterion: how it was found and how channels are chosen.
        budget: target fractions (``flops``, ``params``, ``latency``) it was made for.
        cost: ``params``, ``gflops``, ``flops_ratio``, ``params_ratio`` of the pruned model.
        metrics: anything else worth keeping (mAP, reward ...).
        source: the model file it was made for (informative).
    """

    ratios: dict[str, float]
    fingerprint: str
    rounding: ChannelRounding = field(default_factory=ChannelRounding)
    img_size: tuple[int, int] = (640, 640)
    method: str = "manual"
    criterion: str = "l1"
    budget: dict[str, float] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    channels: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_ratios(cls, space: PruningSpace, ratios: Sequence[float], **info: Any) -> "Policy":
        """A policy for ``space`` from a ratio array in unit order; fills in its channels and cost."""
        r = space.check_ratios(ratios)
        kept = space.kept_channels(r)
        full, cost = space.full_cost, space.cost(kept)
        # Ratios keep full precision: a rounded ratio could cross a rounding step and keep other channels.
        return cls(ratios={n: float(x) for n, x in zip(space.names, r)}, fingerprint=space.fingerprint,
                   rounding=space.rounding, img_size=space.img_size,
                   channels={n: int(k) for n, k in zip(space.names, kept)},
                   cost={"params": cost.params, "gflops": cost.gflops, "flops_ratio": cost.macs / full.macs,
                         "params_ratio": cost.params / full.params}, **info)

    # ------------------------------------------------------------------ checking against a model
    def ratios_for(self, space: PruningSpace) -> np.ndarray:
        """The ratio array for ``space``, after checking that this policy was made for it."""
        if self.fingerprint != space.fingerprint:
            raise ConfigError(f"policy was made for model {self.fingerprint}, this model is {space.fingerprint} "
                              f"(a policy only applies to the architecture it was searched on)")
        r = space.ratios_from_mapping(self.ratios)
        if self.channels:
            kept = dict(zip(space.names, space.kept_channels(r)))
            wrong = [n for n, c in self.channels.items() if kept.get(n) != c]
            if wrong:
                raise ConfigError(f"policy channels of {wrong[0]} ({self.channels[wrong[0]]}) do not follow from its "
                                  f"ratio and rounding ({kept.get(wrong[0])}); was the file edited?")
        return r

    # ------------------------------------------------------------------ YAML
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": POLICY_FORMAT,
            "model": {"fingerprint": self.fingerprint, "source": self.source, "units": len(self.ratios)},
            "method": self.method,
            "criterion": self.criterion,
            "img_size": list(self.img_size),
            "rounding": {"multiple": self.rounding.multiple, "min_channels": self.rounding.min_channels,
                         "max_ratio": self.rounding.max_ratio},
            "budget": dict(self.budget),
            "cost": dict(self.cost),
            "metrics": dict(self.metrics),
            "ratios": dict(self.ratios),
            "channels": dict(self.channels),
        }

    def save(self, path: str | Path) -> Path:
        """Write the policy as YAML, atomically."""
        return atomic_write_text(path, yaml.safe_dump(_plain(self.to_dict()), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        """Read and validate a policy file (structure and value types; see :meth:`ratios_for` for the model)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"policy file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = "policy") -> "Policy":
        if not isinstance(data, dict) or data.get("format") != POLICY_FORMAT:
            raise ConfigError(f"{where}: not an amc policy (expected 'format: {POLICY_FORMAT}')")
        model = data.get("model")
        if not isinstance(model, dict) or not isinstance(model.get("fingerprint"), str):
            raise ConfigError(f"{where}: missing model.fingerprint")
        ratios = data.get("ratios")
        if not isinstance(ratios, dict) or not ratios:
            raise ConfigError(f"{where}: 'ratios' must map unit names to sparsity ratios")
        for name, value in ratios.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: ratio of {name} must be a number, got {value!r}")
        channels = data.get("channels") or {}
        if not isinstance(channels, dict) or any(isinstance(v, bool) or not isinstance(v, int)
                                                 for v in channels.values()):
            raise ConfigError(f"{where}: 'channels' must map unit names to integers")
        method = data.get("method", "manual")
        if method not in METHODS:
            raise ConfigError(f"{where}: method must be one of {', '.join(METHODS)}, got {method!r}")
        try:
            rounding = ChannelRounding(**(data.get("rounding") or {}))
            size = data.get("img_size", [640, 640])
            img_size = (int(size[0]), int(size[1]))
            if len(size) != 2 or min(img_size) < 1:
                raise ValueError(f"img_size must be [height, width] > 0, got {size}")
        except (TypeError, ValueError, IndexError) as e:
            raise ConfigError(f"{where}: malformed rounding or img_size ({e})") from None
        criterion = str(data.get("criterion", "l1"))
        if criterion not in CRITERIA:
            raise ConfigError(f"{where}: criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
        for key in ("budget", "cost", "metrics"):
            if not isinstance(data.get(key) or {}, dict):
                raise ConfigError(f"{where}: '{key}' must be a mapping")
        return cls(ratios={str(k): float(v) for k, v in ratios.items()}, fingerprint=model["fingerprint"],
                   rounding=rounding, img_size=img_size, method=method, criterion=criterion,
                   budget=dict(data.get("budget") or {}), cost=dict(data.get("cost") or {}),
                   metrics=dict(data.get("metrics") or {}), source=str(model.get("source", "")),
                   channels={str(k): int(v) for k, v in channels.items()})


def _plain(value: Any) -> Any:
    """Numpy scalars and tuples as plain YAML types."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
