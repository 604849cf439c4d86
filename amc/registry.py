"""Building a component by name from a registry (criteria, rewards ...), with one-line errors for users."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

from amc.errors import ConfigError

T = TypeVar("T")


def option_names(cls: type) -> list[str]:
    """The keyword options a registered class accepts (its ``__init__`` parameters)."""
    return [k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "args", "kwargs")]


def make_registered(registry: Mapping[str, type[T]], name: str, what: str, **options: Any) -> T:
    """``registry[name](**options)``; an unknown name or option raises :class:`ConfigError` listing valid ones."""
    cls = registry.get(str(name))
    if cls is None:
        raise ConfigError(f"unknown {what} {name!r}; valid: {', '.join(sorted(registry))}")
    valid = option_names(cls)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"{what} {name!r} has no option {unknown[0]!r}; its options: "
                          f"{', '.join(valid) if valid else 'none'}")
    return cls(**options)
