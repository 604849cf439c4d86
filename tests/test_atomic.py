"""Atomic writes (amc.atomic, save_model): outputs readable as the umask says, a model always complete at its
path, and the leftovers of killed writes cleaned by the next write into the folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import amc.atomic as atomic
from amc.atomic import STALE_AFTER_S, atomic_dir, atomic_file, atomic_write_json, clean_stale, complete_dir
from amc.models import YOLOv7, load_model, parse_cfg, save_model
from amc.models.io import ARCH_FILE, WEIGHTS_FILE
from conftest import mini_cfg, randomize_


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test (restored after)."""
    before = os.umask(0o022)

    def set_umask(mask: int) -> None:
        os.umask(mask)

    yield set_umask
    os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _model(seed: int) -> YOLOv7:
    return randomize_(YOLOv7(parse_cfg(mini_cfg())), seed=seed).eval()


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750),
                                                       (0o002, 0o664, 0o775)])
def test_outputs_get_the_permissions_of_the_umask(tmp_path: Path, umask: Callable[[int], None], mask: int,
                                                  file_mode: int, dir_mode: int) -> None:
    umask(mask)
    assert atomic.current_umask() == mask
    assert _mode(atomic_write_json(tmp_path / "metrics.json", {"a": 1})) == file_mode
    with atomic_file(tmp_path / "weights.bin") as tmp:
        tmp.write_bytes(b"\0")
    assert _mode(tmp_path / "weights.bin") == file_mode
    with atomic_dir(tmp_path / "checkpoint") as tmp:
        (tmp / "state.json").write_text("{}")
    assert _mode(tmp_path / "checkpoint") == dir_mode and _mode(tmp_path / "checkpoint" / "state.json") == file_mode
    for _ in range(2):  # a new model, then one replacing it
        out = save_model(_model(0), tmp_path / "model")
        assert _mode(out) == dir_mode
        assert _mode(out / ARCH_FILE) == _mode(out / WEIGHTS_FILE) == file_mode
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "metrics.json", "model", "weights.bin"]


def test_reading_the_umask_leaves_it_unchanged(umask: Callable[[int], None]) -> None:
    umask(0o037)
    for _ in range(3):
        assert atomic.current_umask() == 0o037
    assert atomic._umask_by_syscall.__wrapped__() == 0o037  # the portable fallback, uncached
    assert os.umask(0o037) == 0o037


def test_a_folder_is_swapped_in_one_step_where_the_filesystem_can(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "which").write_text("a")
    (b / "which").write_text("b")
    if not atomic._exchange(a, b):
        pytest.skip("this filesystem cannot exchange two folders (the two-rename fallback is tested below)")
    assert (a / "which").read_text() == "b" and (b / "which").read_text() == "a"


def test_replacing_a_model_swaps_it_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the exchange works, save_model never renames anything onto or away from ``m``: the path holds the
    old or the new complete model at every instant."""
    probe = tmp_path / "probe"
    probe.mkdir()
    if not atomic._exchange(probe, probe):
        pytest.skip("this filesystem cannot exchange two folders (the two-rename fallback is tested below)")
    probe.rmdir()
    first, second = _model(1), _model(2)
    save_model(first, tmp_path / "m")
    renamed: list[tuple[Path, Path]] = []
    real_replace = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda src, dst: renamed.append((Path(src), Path(dst)))
                        or real_replace(src, dst))
    save_model(second, tmp_path / "m")
    assert not [r for r in renamed if tmp_path / "m" in r], renamed
    assert os.listdir(tmp_path) == ["m"]
    assert _same(load_model(tmp_path / "m")[0], second)


def test_a_kill_between_the_two_renames_leaves_a_loadable_model(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the exchange, the old model moves to ``m.old`` before the new one is renamed in: killed right
    there, ``m`` is missing, yet load_model (and complete_dir) still find a complete model; the next save
    cleans up."""
    old, new = _model(1), _model(2)
    save_model(old, tmp_path / "m")
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # e.g. a network filesystem
    real_replace, calls = os.replace, []

    def killed_after_first(src: os.PathLike, dst: os.PathLike) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands for the kill: nothing after this point runs
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        save_model(new, tmp_path / "m")
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert not (tmp_path / "m").exists() and (tmp_path / "m.old").is_dir()
    assert complete_dir(tmp_path / "m") == tmp_path / "m.old"
    for source in (tmp_path / "m", tmp_path / "m" / ARCH_FILE, tmp_path / "m" / WEIGHTS_FILE):
        assert _same(load_model(source)[0], old), source
    save_model(new, tmp_path / "m")
    assert os.listdir(tmp_path) == ["m"]
    assert _same(load_model(tmp_path / "m")[0], new)


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _age(path: Path, seconds: float) -> Path:
    """Backdate ``path`` (and what is directly in it) by ``seconds``."""
    then = time.time() - seconds
    for p in [path, *(path.iterdir() if path.is_dir() else [])]:
        os.utime(p, (then, then))
    return path


def _leftover(folder: Path, name: str, is_dir: bool) -> Path:
    path = folder / name
    if is_dir:
        path.mkdir()
        (path / WEIGHTS_FILE).write_bytes(b"\0" * 8)
    else:
        path.write_bytes(b"\0" * 8)
    return path


def test_stale_leftovers_are_cleaned_by_the_next_write_and_live_ones_kept(tmp_path: Path) -> None:
    host, dead, live, day = atomic._host(), _dead_pid(), os.getppid(), STALE_AFTER_S + 60
    assert live != os.getpid()
    stale = [
        _leftover(tmp_path, f".model.tmp-{host}-{dead}-a1b2c3d4", True),          # killed save_model
        _leftover(tmp_path, f".checkpoint.tmp-{host}-{dead}-zz_9y8x7", True),     # killed search checkpoint
        _leftover(tmp_path, f".model.onnx.tmp-{host}-{dead}-q1w2e3r4", False),   # killed export
        _age(_leftover(tmp_path, f".metrics.json.tmp-other-host-{live}-abcdefgh", False), day),  # another host
        _age(_leftover(tmp_path, ".model.old-12345", True), day),                  # before PIDs were in the names
        _age(_leftover(tmp_path, ".model.k2j3h4g5", True), day),
    ]
    kept = [
        _leftover(tmp_path, f".model.tmp-{host}-{live}-a1b2c3d4", True),         # a live writer's
        _leftover(tmp_path, f".model.tmp-{host}-{os.getpid()}-b1b2c3d4", True),  # this process's own
        _leftover(tmp_path, f".model.onnx.tmp-other-host-{dead}-q1w2e3r4", False),  # another host's, recent
        _leftover(tmp_path, ".model.m2j3h4g5", True),                              # old-style but recent
        _age(_leftover(tmp_path, ".notes.abcdefgh", False), day),                  # no 'notes' beside it
        _age(_leftover(tmp_path, ".bashrc", False), day),                          # not a temporary at all
    ]
    save_model(_model(0), tmp_path / "model")
    assert not [p for p in stale if p.exists()]
    assert all(p.exists() for p in kept)
    assert clean_stale(tmp_path) == []  # once per folder and process: leftovers come from earlier processes
    _age(kept[2], day)
    assert clean_stale(tmp_path, force=True) == [kept[2]]


def test_a_killed_writer_leaves_nothing_the_next_run_keeps(tmp_path: Path) -> None:
    """A real kill -9 in the middle of writing a model: the next process's first write removes the leftover."""
    code = (
        "import os, signal, sys\n"
        "from amc.models import YOLOv7, parse_cfg, save_model\n"
        "from amc.models import io\n"
        "sys.path.insert(0, 'tests')\n"
        "from conftest import mini_cfg\n"
        "def killed(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "io.save_file = killed\n"
        f"save_model(YOLOv7(parse_cfg(mini_cfg())), {str(tmp_path / 'model')!r})\n"
    )
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", code], cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    assert run.returncode == -9
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.tmp-"), leftovers
    atomic_write_json(tmp_path / "metrics.json", {})  # any atomic write into the folder
    assert os.listdir(tmp_path) == ["metrics.json"]
