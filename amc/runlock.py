"""One run per run directory: an OS file lock on ``<run dir>/.lock``, held for the life of the process.

Two commands writing into one folder interleave their files (two searches append to one ``episodes.jsonl``,
a ``resume=`` of a search that is still running replays its episodes). Every ``amc-*`` command therefore takes
an exclusive :func:`fcntl.flock` on ``.lock`` in its run directory before it writes anything there, and a
second command finding it taken is refused.

Why ``flock`` and not a file that exists while a run goes on: the kernel releases the lock when the process
ends, however it ends (``kill -9``, out of memory, a Slurm time limit), so no stale lock is ever left to
clean. The ``.lock`` file itself stays in the folder (deleting it on exit would race with a process that has
just opened it); it holds the pid, host and command of its last holder, which only the refusal message reads.
On Linux, ``flock`` on NFS is carried out as a POSIX lock, so runs on two cluster nodes sharing one
filesystem exclude each other too.

A process holds each lock until it exits (:data:`_held` keeps the descriptors open); taking a lock it already
holds is a no-op, so the CLI can lock the folder before Hydra starts and again, from inside the job, after.
Worker processes forked by a holder inherit the descriptor and keep the folder locked while they live.

A distributed fine-tune (``torchrun --nproc_per_node=N -m amc.cli.finetune``, or the tasks of one submitit job)
is one run in N processes: rank 0 takes the lock and writes the folder, the other ranks (:func:`launch_rank`)
neither take nor probe it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # not a POSIX system: folders are not locked (amc's supported platforms are POSIX)
    fcntl = None  # type: ignore[assignment]

from amc.errors import AmcError

LOCK_FILE = ".lock"

#: resolved run directory -> open descriptor of its locked ``.lock`` (kept open for the life of the process)
_held: dict[Path, int] = {}


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a run directory's lock, as its ``.lock`` file says."""

    pid: int | None = None
    host: str | None = None
    command: str | None = None
    started: float | None = None

    def describe(self) -> str:
        """``amc-search, pid 1234 on node7, since 2026-11-26 10:00:03`` (what is known of it)."""
        parts = [self.command or "another amc command"]
        if self.pid is not None:
            here = self.host in (None, socket.gethostname())
            parts.append(f"pid {self.pid}" + ("" if here else f" on {self.host}"))
        if self.started is not None:
            parts.append(f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))}")
        return ", ".join(parts)


class RunDirLocked(AmcError):
    """The run directory is locked by another process; :attr:`holder` says which, as far as known."""

    def __init__(self, run_dir: Path, holder: Holder) -> None:
        self.run_dir, self.holder = Path(run_dir), holder
        super().__init__(f"{run_dir} is in use by another run ({holder.describe()}): wait for it to end, "
                         f"or choose another hydra.run.dir")


#: The variable holding a task's global rank in a submitit job, per executor (``SUBMITIT_EXECUTOR``).
_SUBMITIT_RANK = {"slurm": "SLURM_PROCID", "local": "SUBMITIT_LOCAL_GLOBALID"}


def launch_rank() -> int:
    """This process's rank in a multi-process launch, 0 otherwise: torchrun's ``RANK`` (with ``WORLD_SIZE``),
    else the task's global rank in a submitit job (Hydra's submitit launcher with several tasks per job).

    Read from the environment only (no torch): the commands lock their folder before anything heavy is imported.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        value = env["RANK"]
    else:
        value = env.get(_SUBMITIT_RANK.get(env.get("SUBMITIT_EXECUTOR", ""), ""), "0")
    try:
        return int(value)
    except ValueError:
        return 0


def _key(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir).resolve()


def _read_holder(path: Path) -> Holder:
    try:
        data = json.loads(path.read_text())
        return Holder(pid=int(data["pid"]), host=data.get("host"), command=data.get("command"),
                      started=data.get("started"))
    except (OSError, ValueError, KeyError, TypeError):  # being written, or written by something else
        return Holder()


def holds(run_dir: str | os.PathLike[str]) -> bool:
    """Whether this process holds the lock of ``run_dir``."""
    return _key(run_dir) in _held


def locked_by_other(run_dir: str | os.PathLike[str]) -> Holder | None:
    """Who holds ``run_dir``'s lock when another process does, else None; creates and changes nothing.

    A folder without ``.lock`` is free: every holder creates the file before locking it. A process of rank > 0
    in a distributed launch sees every folder free: its rank 0 holds the run's lock.
    """
    if fcntl is None or holds(run_dir) or launch_rank() != 0:
        return None
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: probing never blocks another prober
    except OSError:
        return _read_holder(path)
    finally:
        os.close(fd)  # closing the descriptor drops the probe's lock
    return None


def lock_run_dir(run_dir: str | os.PathLike[str], command: str) -> Path:
    """Lock ``run_dir`` (created if missing) for the rest of this process's life; returns the ``.lock`` path.

    Raises :class:`RunDirLocked` when another process holds it. Taking a lock this process already holds
    does nothing, and so does a process of rank > 0 in a distributed launch (its rank 0 locks the run).
    """
    folder = Path(run_dir)
    path = folder / LOCK_FILE
    if fcntl is None or holds(folder) or launch_rank() != 0:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    # O_RDWR without O_TRUNC: the holder's record is only rewritten once this process owns the lock
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunDirLocked(folder, _read_holder(path)) from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                             "started": time.time()}).encode())
    _held[_key(folder)] = fd
    return path


def unlock_run_dir(run_dir: str | os.PathLike[str]) -> None:
    """Release a lock this process holds (tests; a command keeps its lock until it exits)."""
    fd = _held.pop(_key(run_dir), None)
    if fd is not None:
        os.close(fd)
