"""Errors a user can cause and fix.

Every command catches :class:`AmcError` at its top level and prints its message as one line (no
traceback), so the message must say what went wrong, where (file, layer, key) and what to do.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class AmcError(Exception):
    """An error the user can fix; CLIs print its one-line message instead of a traceback."""


class ConfigError(AmcError):
    """A malformed model cfg, architecture file or command-line configuration."""


class CheckpointError(AmcError):
    """A checkpoint that cannot be read: missing, corrupt, of an unknown kind or mismatched weights."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that refers to a global outside amc's allow-list (it could run code when loaded)."""


def script_main(main: Callable[[], None]) -> None:
    """Run a script's ``main`` as the amc commands end: an :class:`AmcError` (a bad path, budget or cell, a failed
    step) is one ``error:`` line and exit code 2, no traceback. Child processes (an amc-finetune a script starts)
    write unbuffered, so their logs follow the work."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        main()
    except AmcError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
