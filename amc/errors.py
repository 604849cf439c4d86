"""Errors a user can cause and fix.

Every command catches :class:`AmcError` at its top level and prints its message as one line (no
traceback), so the message must say what went wrong, where (file, layer, key) and what to do.
"""

from __future__ import annotations


class AmcError(Exception):
    """An error the user can fix; CLIs print its one-line message instead of a traceback."""


class ConfigError(AmcError):
    """A malformed model cfg, architecture file or command-line configuration."""


class CheckpointError(AmcError):
    """A checkpoint that cannot be read: missing, corrupt, of an unknown kind or mismatched weights."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that refers to a global outside amc's allow-list (it could run code when loaded)."""
