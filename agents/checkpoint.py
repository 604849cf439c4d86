"""Safe readers for the agents' checkpoint files: they never unpickle, and they check every size before reading.

An agent checkpoint is written in three formats, each readable by others' tools:

* plain JSON (``agent.json``, and the ``data`` entry of a stable-baselines3 zip);
* stable-baselines3's model zip (``model.zip``): a ``data`` JSON entry plus ``torch.save``'d state dicts
  (``policy.pth``, ``actor.optimizer.pth``, ``critic.optimizer.pth``);
* a NumPy ``.npz`` archive of the replay buffer's arrays (``replay_buffer.npz``).

stable-baselines3's own readers are not safe on a file from elsewhere: ``DDPG.load`` cloudpickle-deserializes the
``":serialized:"`` values of the zip's ``data`` (the spaces, the policy class, the schedules; a crafted value runs
any code), and ``load_replay_buffer`` unpickles a whole file. The readers here never do: the ``data`` entry is
parsed as JSON and its serialized values are dropped unread, the state dicts go through
``torch.load(weights_only=True)`` (tensors and plain containers only), and ``.npz`` arrays are read with
``allow_pickle=False`` after their headers are checked against the arrays they are meant to fill. Before
anything is inflated, every size a file declares (zip entries, nested ``torch.save`` archives, array headers) is
checked against what the reader expects, so a small hostile file cannot make it allocate gigabytes.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from numpy.lib import format as npy_format

from amc.errors import CheckpointError, UnsafeCheckpointError

#: How many bytes a file may unpack into per byte it holds. ``torch.save`` and ``np.savez`` store their entries
#: uncompressed (1x); a re-zipped (deflated) copy of float weights inflates under 2x. A zip bomb declares ~1000x.
MAX_EXPANSION = 32
#: Allowance on top of that for tiny files (a handful of small tensors), whatever their ratio.
MIN_UNPACK_BYTES = 1 << 20
#: The largest JSON file or zip ``data`` entry read (a real one is ~10 kB: hyper-parameters and a few pickles).
MAX_JSON_BYTES = 1 << 20
#: The largest ``.npy`` header read (NumPy's own default limit for headers it parses safely).
MAX_NPY_HEADER = 10_000
#: The entries of a stable-baselines3 DDPG zip holding state dicts (``_get_torch_save_params`` of TD3/DDPG).
SB3_STATE_DICTS = ("policy", "actor.optimizer", "critic.optimizer")


def unpack_limit(file_bytes: int) -> int:
    """The most bytes a file of ``file_bytes`` may unpack into (see :data:`MAX_EXPANSION`)."""
    return MAX_EXPANSION * int(file_bytes) + MIN_UNPACK_BYTES


def _name(source: str | os.PathLike[str] | IO[bytes]) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else str(getattr(source, "name", "<stream>"))


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON object from ``path`` (at most :data:`MAX_JSON_BYTES`), as plain values only.

    Raises:
        CheckpointError: the file is missing, too large, not JSON or not an object.
    """
    try:
        size = os.stat(path).st_size
        if size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path} is {size:,} bytes, over the {MAX_JSON_BYTES:,} a checkpoint's JSON may "
                                  "hold: refusing to read it")
        with open(path, "rb") as f:
            return _json_object(f.read(), str(path))
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({type(e).__name__}: {e})") from e


def _json_object(raw: bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{where} is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{where} holds a JSON {type(value).__name__}, not an object")
    return value


def _open_zip(source: str | os.PathLike[str] | IO[bytes], where: str | None = None) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{where or _name(source)} is not a readable zip archive ({type(e).__name__}: "
                              f"{e})") from e


def _entry(archive: zipfile.ZipFile, name: str, limit: int, where: str) -> zipfile.ZipInfo:
    """The entry ``name``, refused (before reading a byte of it) when absent or declaring over ``limit`` bytes."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{where} has no {name!r} entry: not a checkpoint of this kind, or truncated") from None
    if info.file_size > limit:
        raise CheckpointError(f"{where}: entry {name!r} declares {info.file_size:,} bytes where at most {limit:,} "
                              "are expected: refusing to unpack it (a zip bomb, or another model's file)")
    return info


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> bytes:
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as e:
        raise CheckpointError(f"{where}: entry {info.filename!r} is unreadable ({type(e).__name__}: {e})") from e


def plain_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """A stable-baselines3 ``data`` dict without its ``":serialized:"`` (cloudpickled) values, never decoded."""
    return {k: v for k, v in data.items() if not (isinstance(v, dict) and ":serialized:" in v)}


def read_sb3_data(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The plain JSON values of a stable-baselines3 zip's ``data`` entry (see :func:`plain_data`)."""
    where = os.fspath(path)
    with _open_zip(path) as archive:
        raw = _read(archive, _entry(archive, "data", MAX_JSON_BYTES, where), where)
    return plain_data(_json_object(raw, f"{where}: the 'data' entry"))


def load_tensors(raw: bytes, where: str) -> Any:
    """``torch.load(weights_only=True)`` of a ``torch.save`` archive held in ``raw``, after bounding its entries.

    A ``torch.save`` file is itself a zip whose records are stored uncompressed, so what its entries declare must
    fit in the bytes that hold them (with :func:`unpack_limit`'s allowance); torch would allocate what they declare.

    Raises:
        UnsafeCheckpointError: the pickle names anything but tensors and plain containers (it could run code).
        CheckpointError: the archive is corrupt or declares more than it holds.
    """
    buffer = io.BytesIO(raw)
    with _open_zip(buffer, where) as archive:
        declared = sum(info.file_size for info in archive.infolist())
    if declared > unpack_limit(len(raw)):
        raise CheckpointError(f"{where}: its records declare {declared:,} bytes in {len(raw):,} (over "
                              f"{MAX_EXPANSION}x): refusing to unpack it (a zip bomb, or a corrupt archive)")
    buffer.seek(0)
    try:
        return torch.load(buffer, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = " ".join(str(e).split())
        # torch's message is a paragraph; the global it refused is what the user needs
        reason = text[text.find("Unsupported"):].split(" was not")[0] if "Unsupported" in text else text
        raise UnsafeCheckpointError(f"{where} holds a pickle of more than tensors, refused unread "
                                    f"({reason[:160]})") from e
    except Exception as e:  # noqa: BLE001 - whatever torch raises on a corrupt archive is the same user problem
        raise CheckpointError(f"{where} is not a readable torch.save archive ({type(e).__name__}: "
                              f"{str(e)[:200]})") from e


def read_sb3_zip(path: str | os.PathLike[str], max_state_bytes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stable-baselines3 DDPG zip read without unpickling: its plain ``data`` values and its state dicts.

    Args:
        path: the zip ``BaseAlgorithm.save`` wrote.
        max_state_bytes: the most bytes any state-dict entry may declare (from the model it will be loaded into).

    Returns:
        ``(data, params)``: ``data`` as :func:`read_sb3_data`; ``params`` maps each of :data:`SB3_STATE_DICTS` to
        its state dict (``torch.load(weights_only=True)``). Other entries are never read.
    """
    where = os.fspath(path)
    with _open_zip(path) as archive:
        raw = {name: _read(archive, _entry(archive, name, limit, where), where)
               for name, limit in (("data", MAX_JSON_BYTES),
                                   *((f"{n}.pth", max_state_bytes) for n in SB3_STATE_DICTS))}
    data = plain_data(_json_object(raw.pop("data"), f"{where}: the 'data' entry"))
    params = {name[:-len(".pth")]: load_tensors(content, f"{where}: {name}") for name, content in raw.items()}
    for name, state in params.items():
        if not isinstance(state, dict):
            raise CheckpointError(f"{where}: {name}.pth holds a {type(state).__name__}, not a state dict")
    return data, params


def zip_declared_bytes(path: str | os.PathLike[str]) -> int:
    """The sum of the sizes a zip archive's entries declare (read from its directory: nothing is inflated)."""
    with _open_zip(path) as archive:
        return sum(info.file_size for info in archive.infolist())


def write_npz(target: IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` (uncompressed) of numeric arrays: readable by :func:`read_npz` and by ``np.load`` anywhere."""
    for name, array in arrays.items():
        if np.asarray(array).dtype.hasobject:
            raise TypeError(f"array {name!r} holds Python objects: only numeric arrays are saved (no pickles)")
    np.savez(target, **{k: np.asarray(v) for k, v in arrays.items()})


def read_npz(source: str | os.PathLike[str] | IO[bytes], expected: Mapping[str, tuple[tuple[int, ...], np.dtype]],
             ) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive, each checked against its expected shape and dtype before it is read.

    Every expected array must be there as ``<name>.npy``; its zip entry may declare no more than the array's
    bytes plus a header, its ``.npy`` header must declare exactly the expected shape and dtype (so no object
    array, which would be a pickle), and the data are then read with ``allow_pickle=False``. Other entries are
    never read.

    Raises:
        CheckpointError: a missing, oversized, mismatched or corrupt array.
    """
    where = _name(source)
    out: dict[str, np.ndarray] = {}
    with _open_zip(source) as archive:
        for name, (shape, dtype) in expected.items():
            dtype = np.dtype(dtype)
            nbytes = math.prod(shape) * dtype.itemsize
            info = _entry(archive, f"{name}.npy", nbytes + MAX_NPY_HEADER + 16, where)
            try:
                with archive.open(info) as f:
                    version = npy_format.read_magic(f)
                    if version == (1, 0):
                        header = npy_format.read_array_header_1_0(f, max_header_size=MAX_NPY_HEADER)
                    elif version == (2, 0):
                        header = npy_format.read_array_header_2_0(f, max_header_size=MAX_NPY_HEADER)
                    else:
                        raise ValueError(f"unsupported .npy format version {version}")
                got_shape, _, got_dtype = header
                if tuple(got_shape) != tuple(shape) or got_dtype != dtype:
                    raise CheckpointError(f"{where}: array {name!r} is {got_dtype} {tuple(got_shape)} where "
                                          f"{dtype} {tuple(shape)} is expected: saved with other settings, or "
                                          "not this agent's file")
                with archive.open(info) as f:
                    array = npy_format.read_array(f, allow_pickle=False, max_header_size=MAX_NPY_HEADER)
            except CheckpointError:
                raise
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError) as e:
                raise CheckpointError(f"{where}: array {name!r} is unreadable ({type(e).__name__}: "
                                      f"{str(e)[:200]})") from e
            out[name] = array
    return out
