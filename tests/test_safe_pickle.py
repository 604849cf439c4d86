"""Tests for amc.models.safe_pickle: reading official YOLOv7 checkpoints without running their code."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn

from amc.errors import CheckpointError, UnsafeCheckpointError
from amc.models.safe_pickle import PickledRecord, load_pickled_checkpoint, read_official_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = ["yolov7-tiny", "yolov7", "yolov7-e6e", "yolov7-tiny-deploy"]
REPO = Path(__file__).resolve().parents[1]


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    """Write a zip archive holding ``entries`` (name -> bytes)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def _fixture_entries(name: str) -> dict[str, bytes]:
    with zipfile.ZipFile(FIXTURES / f"{name}.pt") as archive:
        return {n: archive.read(n) for n in archive.namelist()}


@pytest.mark.parametrize("name", NAMES)
def test_official_fixture_loads(name: str) -> None:
    expected = json.loads((FIXTURES / f"{name}.json").read_text())
    ckpt = read_official_checkpoint(FIXTURES / f"{name}.pt")
    assert ckpt.source == ("ema" if expected["checkpoint_style"] == "training" else "model")
    assert sum(ckpt.state_dict[k].numel() for k in ckpt.parameter_names) == expected["params"]
    assert ckpt.parameter_names < set(ckpt.state_dict)
    buffers = {k.rsplit(".", 1)[1] for k in set(ckpt.state_dict) - ckpt.parameter_names}
    assert buffers == {"running_mean", "running_var", "num_batches_tracked", "anchors", "anchor_grid"}
    for key, tensor in ckpt.state_dict.items():
        assert tensor.dtype in (torch.float32, torch.int64), key
        assert tensor.is_contiguous(), key
    assert ckpt.names == expected["names"]
    assert ckpt.cfg["nc"] == expected["nc"] and ckpt.cfg["width_multiple"] == expected["width_multiple"]
    assert isinstance(ckpt.hyp, dict) and "lr0" in ckpt.hyp


def test_training_and_released_metadata() -> None:
    training = read_official_checkpoint(FIXTURES / "yolov7-tiny.pt")
    released = read_official_checkpoint(FIXTURES / "yolov7.pt")
    assert (training.source, training.epoch) == ("ema", 12)
    assert (released.source, released.epoch) == ("model", -1)
    raw = load_pickled_checkpoint(FIXTURES / "yolov7-tiny.pt")
    assert set(raw) >= {"model", "ema", "optimizer", "epoch"}
    assert isinstance(raw["ema"], PickledRecord) and raw["ema"].qualname == "Model"
    assert raw["model"].attrs["_modules"]["model"].module == "torch.nn.modules.container"


def test_loading_runs_no_official_code() -> None:
    code = (
        "import sys\n"
        "from amc.models.safe_pickle import read_official_checkpoint\n"
        f"for n in {NAMES!r}:\n"
        f"    read_official_checkpoint({str(FIXTURES)!r} + '/' + n + '.pt')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('models', 'utils')]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)


def _fake_official_module(monkeypatch: pytest.MonkeyPatch) -> type[nn.Module]:
    """Register importable ``models.yolo.Model``/``models.common.Slotted`` so that torch.save can pickle them."""
    models, yolo, common = (types.ModuleType(n) for n in ("models", "models.yolo", "models.common"))

    class Slotted:
        __slots__ = ("b", "__dict__")  # pickles its state as (dict, slots)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.SiLU())
            self.heads = nn.ModuleList([nn.Conv2d(4, 6, 1), nn.Identity()])
            self.register_parameter("unused", None)
            self.register_buffer("persistent", torch.arange(3.0))
            self.register_buffer("scratch", torch.ones(2), persistent=False)
            self.register_module("absent", None)
            self.yaml, self.names, self.hyp = {"nc": 2, "anchors": 3}, ["cat", "dog"], {"lr0": 0.01}
            self.slotted = Slotted()
            self.slotted.b, self.slotted.c = 1, 2

    for cls, module in ((Model, yolo), (Slotted, common)):
        cls.__module__, cls.__qualname__ = module.__name__, cls.__name__
        setattr(module, cls.__name__, cls)
    for module in (models, yolo, common):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return Model


def test_state_dict_matches_nn_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _fake_official_module(monkeypatch)()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    model.half()
    path = tmp_path / "fake.pt"
    torch.save({"model": model, "ema": None, "epoch": 3}, path)
    ckpt = read_official_checkpoint(path)
    expected = model.float().state_dict()
    assert list(ckpt.state_dict) == list(expected)  # same names, same order
    for key, tensor in expected.items():
        assert torch.equal(ckpt.state_dict[key], tensor), key
    assert ckpt.parameter_names == {n for n, _ in model.named_parameters()}
    assert (ckpt.names, ckpt.source, ckpt.epoch, ckpt.cfg) == (["cat", "dog"], "model", 3, model.yaml)
    slotted = load_pickled_checkpoint(path)["model"].attrs["slotted"]
    assert isinstance(slotted.state, tuple) and slotted.attrs == {"b": 1, "c": 2}


def test_tensor_rebuild_roundtrip(tmp_path: Path) -> None:
    base = torch.randn(4, 6)
    values: dict[str, Any] = {
        "base": base, "row_view": base[1:, ::2], "transposed": base.t(),  # share one storage
        "param": nn.Parameter(torch.randn(3)), "empty": torch.empty(0, 5),
        **{str(dt): torch.arange(6).to(dt) for dt in (torch.float16, torch.bfloat16, torch.float64,
                                                      torch.int32, torch.uint8, torch.int8, torch.bool)},
        "size": torch.Size([2, 3]), "dtype": torch.float16, "set": {1, 2}, "frozenset": frozenset({3}),
        "complex": 1 + 2j, "slice": slice(1, 5, 2), "ordered": collections.OrderedDict(a=1),
    }
    torch.save(values, tmp_path / "t.pt")
    loaded = load_pickled_checkpoint(tmp_path / "t.pt")
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value.detach()), key
        else:
            assert loaded[key] == value and type(loaded[key]) is type(value), key


def test_numpy_values_become_records(tmp_path: Path) -> None:
    torch.save({"array": np.arange(3), "scalar": np.float32(1.5)}, tmp_path / "np.pt")
    loaded = load_pickled_checkpoint(tmp_path / "np.pt")
    assert all(isinstance(v, PickledRecord) and v.module.startswith("numpy") for v in loaded.values())


def test_storage_type_given_as_dtype(tmp_path: Path) -> None:
    """Newer torch may write a dtype object where older ones write ``torch.HalfStorage``."""
    class Storage:
        pass

    class Tensor:
        def __reduce__(self) -> Any:
            return torch._utils._rebuild_tensor_v2, (Storage(), 1, (2,), (1,), False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return ("storage", torch.float16, "0", "cpu", 3) if isinstance(obj, Storage) else None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"t": Tensor()})
    data = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float16).numpy().tobytes()
    path = _zip(tmp_path / "dtype.pt", {"a/data.pkl": buffer.getvalue(), "a/data/0": data})
    assert torch.equal(load_pickled_checkpoint(path)["t"], torch.tensor([2.0, 3.0], dtype=torch.float16))


class _Exploit:
    """Pickles as a call of ``func(*args)``: what a malicious checkpoint would run on load."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> Any:
        return self.func, self.args


@pytest.mark.parametrize("attack", ["system", "eval", "exec", "Popen"])
def test_malicious_checkpoint_is_refused(tmp_path: Path, attack: str) -> None:
    pwned = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {pwned}')"
    exploit = {
        "system": _Exploit(os.system, f"touch {pwned}"),
        "eval": _Exploit(eval, payload),
        "exec": _Exploit(exec, payload),
        "Popen": _Exploit(subprocess.Popen, ["touch", str(pwned)]),
    }[attack]
    path = tmp_path / "evil.pt"
    torch.save({"epoch": 0, "model": {"weights": torch.ones(2), "hook": exploit}}, path)
    refused = {"system": "system", "eval": "builtins.eval", "exec": "builtins.exec", "Popen": "subprocess.Popen"}
    with pytest.raises(UnsafeCheckpointError, match=refused[attack]) as info:
        read_official_checkpoint(path)
    assert str(path) in str(info.value)
    assert not pwned.exists()


@pytest.mark.parametrize("module, name", [
    ("builtins", "getattr"), ("__builtin__", "eval"), ("torch", "load"), ("torch.serialization", "load"),
    ("torch._utils", "_rebuild_tensor"), ("numpy", "load"), ("copyreg", "_reconstructor"), ("nt", "system"),
    ("collections", "deque"), ("_codecs", "decode"), ("modelsx.yolo", "Model"),
])
def test_unlisted_globals_are_refused(tmp_path: Path, module: str, name: str) -> None:
    pickled = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"."
    path = _zip(tmp_path / "g.pt", {"a/data.pkl": pickled})
    with pytest.raises(UnsafeCheckpointError, match=name):
        load_pickled_checkpoint(path)


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="neither an official YOLOv7 checkpoint nor an amc model"):
        read_official_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_official_checkpoint(tmp_path / "missing.pt")
    no_pickle = _zip(tmp_path / "nopkl.pt", {"a/data/0": b"\0" * 8})
    with pytest.raises(CheckpointError, match="data.pkl"):
        read_official_checkpoint(no_pickle)
    entries = _fixture_entries("yolov7-tiny-deploy")
    pkl = "yolov7-tiny-deploy/data.pkl"
    truncated = _zip(tmp_path / "truncated.pt", {**entries, pkl: entries[pkl][: len(entries[pkl]) // 2]})
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_official_checkpoint(truncated)
    big = _zip(tmp_path / "big.pt", {**entries, "yolov7-tiny-deploy/byteorder": b"big"})
    with pytest.raises(CheckpointError, match="big-endian"):
        read_official_checkpoint(big)
    cut = tmp_path / "cut.pt"
    cut.write_bytes((FIXTURES / "yolov7.pt").read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match=str(cut)):
        read_official_checkpoint(cut)


@pytest.mark.parametrize("content, message", [
    ([1, 2], "no 'model' or 'ema'"),
    ({"epoch": 1}, "no 'model' or 'ema'"),
    ({"model": nn.Conv2d(1, 1, 1)}, "torch.nn.modules.conv.Conv2d, not an official"),
    ({"model": {"conv.weight": torch.ones(1)}}, "dict, not an official"),
])
def test_not_an_official_model(tmp_path: Path, content: Any, message: str) -> None:
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message) as info:
        read_official_checkpoint(path)
    assert str(path) in str(info.value)
