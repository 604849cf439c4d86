"""Atomic file writes: a killed run never leaves a half-written result behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block succeeds it is renamed onto ``path``.

    Whatever writer fills the temporary file (``torch.save``, ``safetensors.save_file``, ``open``), the target
    is either the previous file or the complete new one; on an error the temporary file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    with atomic_file(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; once the block succeeds it replaces ``path`` as a whole.

    The old folder is first renamed to ``<name>.old`` and removed only after the new one is in place, so a
    kill at any moment leaves a complete folder under ``path`` or under ``<name>.old``:
    :func:`complete_dir` finds it. On an error the temporary folder is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    old = target.with_name(f"{target.name}.old")
    try:
        yield tmp
        if target.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def complete_dir(path: str | os.PathLike[str]) -> Path | None:
    """The last complete version of a folder written by :func:`atomic_dir` (``path`` or its ``.old``), or None."""
    target = Path(path)
    if target.is_dir():
        return target
    old = target.with_name(f"{target.name}.old")
    return old if old.is_dir() else None
