"""Atomic file and folder writes: a killed run never leaves a half-written result behind.

Every output is first written under a temporary name beside its target, ``.<name>.tmp-<host>-<pid>-<random>``,
then renamed into place. Three things make these outputs fit a shared run directory:

* they get the permissions the umask gives (0644 files, 0755 folders under umask 022), not ``mkstemp``'s
  0600/0700, so a teammate or a TensorBoard server running as another user can read them;
* a folder is replaced in one atomic step where the filesystem allows it (Linux ``renameat2`` with
  ``RENAME_EXCHANGE``), so a reader always finds the old or the new complete folder at its path; elsewhere the
  old folder waits as ``<name>.old`` while the new one is renamed in, and :func:`complete_dir` finds it;
* the temporaries of a killed writer are removed by the next atomic write into that folder
  (:func:`clean_stale`): the host and PID in their names tell a dead writer's from a live one's.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: A temporary whose writer cannot be checked (another host, a name without a PID, a PID reused after a reboot)
#: counts as abandoned once nothing in it changed for this long; no atomic write takes anywhere near a day.
STALE_AFTER_S = 24 * 3600

# ``.<name>.tmp-<host>-<pid>-<random>``: mkstemp/mkdtemp draw <random> from [a-z0-9_]; the host may hold hyphens,
# so the PID is the last all-digit field before it.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>.*)-(?P<pid>\d+)-[a-z0-9_]+$")
# Temporaries of amc versions before PIDs were in the names: mkstemp's ``.<name>.<8 random>`` and save_model's
# ``.<name>.old-<pid>``. Only removed once old and once ``<name>`` itself exists (a later write completed).
_LEGACY_NAME = re.compile(r"^\.(?P<name>.+)\.(?:[a-z0-9_]{8}|old-\d+)$")
_CLEANED: set[str] = set()  # folders this process has already cleaned: leftovers come from earlier processes


@functools.cache
def _host() -> str:
    """This machine's name as it appears in temporary names (a shared filesystem serves several hosts)."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "localhost"


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-{_host()}-{os.getpid()}-"


@functools.cache
def _umask_by_syscall() -> int:
    """The umask read the portable way; cached, since it is briefly 0 for every thread while it is read."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _umask_by_syscall()


def _publish_mode(path: Path, folder: bool) -> None:
    """Give a temporary the mode a plain ``open``/``mkdir`` would have given it (mkstemp makes 0600/0700)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def _publish_tree(folder: Path) -> None:
    """:func:`_publish_mode` for a folder and everything in it: writers such as safetensors' ``save_file``
    create 0600 files whatever the umask. Executable files stay executable; symbolic links are left alone."""
    mask = current_umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                continue
            os.chmod(path, (0o777 if stat.S_ISDIR(mode) or mode & 0o111 else 0o666) & ~mask)


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """libc's ``renameat2`` (Linux, glibc >= 2.28), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap the entries ``a`` and ``b`` in one atomic step; False where the OS or filesystem cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2  # <fcntl.h>, <linux/fs.h>
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):  # e.g. some network filesystems
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _last_change(entry: Path) -> float:
    """When ``entry`` last changed: for a folder, also the files directly in it (a writer fills those)."""
    times = [entry.lstat().st_mtime]
    if entry.is_dir() and not entry.is_symlink():
        times += [child.lstat().st_mtime for child in entry.iterdir()]
    return max(times)


def _is_stale(entry: Path, now: float) -> bool:
    """Whether ``entry`` is a temporary that no live writer will finish (see :func:`clean_stale`)."""
    match = _TEMP_NAME.match(entry.name)
    if match:
        pid = int(match["pid"])
        if match["host"] == _host():
            if pid == os.getpid():
                return False  # this process's own: another thread may be writing it
            if not _pid_alive(pid):
                return True
        return now - _last_change(entry) > STALE_AFTER_S  # another host's, or a PID since reused
    match = _LEGACY_NAME.match(entry.name)
    if match and (entry.parent / match["name"]).exists():
        return now - _last_change(entry) > STALE_AFTER_S
    return False


def clean_stale(folder: str | os.PathLike[str], force: bool = False) -> list[Path]:
    """Remove the temporaries that killed atomic writes left in ``folder``; returns what was removed.

    A temporary is stale when the process named in it ran on this host and is gone, or when nothing in it
    changed for :data:`STALE_AFTER_S` (its writer is on another host, or the PID was reused). A temporary
    that a live process may still be writing is never touched. Each folder is cleaned once per process
    (``force`` cleans again): leftovers come from processes that ended before this one wrote there.
    """
    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _CLEANED and not force:
        return []
    _CLEANED.add(key)
    removed: list[Path] = []
    now = time.time()
    try:
        entries = [folder / e.name for e in os.scandir(folder) if e.name.startswith(".")]
    except OSError:
        return removed
    for entry in entries:
        try:
            if not _is_stale(entry, now):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:  # removed meanwhile by another cleaner, or not ours to remove
            continue
    return removed


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block succeeds it is renamed onto ``path``.

    Whatever writer fills the temporary file (``torch.save``, ``safetensors.save_file``, ``open``), the target
    is either the previous file or the complete new one; on an error the temporary file is removed. The file
    gets the umask's permissions, and stale temporaries in the folder are then removed (:func:`clean_stale`).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish_mode(Path(tmp), folder=False)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    clean_stale(target.parent)


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


def _old(target: Path) -> Path:
    return target.with_name(f"{target.name}.old")


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; once the block succeeds it replaces ``path`` as a whole.

    Where the filesystem can swap two folders atomically (Linux ``RENAME_EXCHANGE``), ``path`` holds the old
    or the new complete folder at every instant. Elsewhere the old folder is first renamed to ``<name>.old``
    and removed only after the new one is in place, so a kill between the two renames leaves the old
    complete folder there: :func:`complete_dir` finds it. On an error the temporary folder is removed and
    ``path`` is untouched. The folder and what it holds get the umask's permissions; stale temporaries in
    the parent folder are then removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    old = _old(target)
    try:
        yield tmp
        _publish_tree(tmp)
        # After a swap ``tmp`` holds the old folder, which the finally clause removes.
        if not (target.is_dir() and not target.is_symlink() and _exchange(tmp, target)):
            if target.exists():
                if old.exists():
                    shutil.rmtree(old)
                os.replace(target, old)
            os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)  # also the one a kill between two renames left behind
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    clean_stale(target.parent)


def complete_dir(path: str | os.PathLike[str]) -> Path | None:
    """The last complete version of a folder written by :func:`atomic_dir` (``path`` or its ``.old``), or None."""
    target = Path(path)
    if target.is_dir():
        return target
    old = _old(target)
    if old.is_dir():
        return old
    # A writer may have renamed the new folder in, and removed the .old one, between the two checks above.
    return target if target.is_dir() else None
