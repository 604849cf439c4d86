"""A safe reader for official YOLOv7 checkpoints (``torch.save`` zip archives holding a pickled model).

Official checkpoints pickle whole ``models.yolo.Model`` objects, so ``torch.load`` would import and run the
official code (and any code a tampered pickle names). This module never does: its unpickler resolves only an
allow-list of globals. Harmless builtins, torch dtypes and tensor-rebuild helpers map to real objects (the
rebuild helpers to our own functions); model classes map to inert :class:`PickledRecord` subclasses that only
store what the pickle hands them; every other global raises :class:`UnsafeCheckpointError`.
"""

from __future__ import annotations

import _compat_pickle
import collections
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from amc.errors import AmcError, CheckpointError, UnsafeCheckpointError

__all__ = [
    "MAX_EXPANSION",
    "OfficialCheckpoint",
    "PickledRecord",
    "load_pickled_checkpoint",
    "read_official_checkpoint",
    "unpack_limit",
]

#: How many bytes a checkpoint may unpack into per byte of archive: the sizes its zip entries declare, and again
#: the tensors rebuilt from them. ``torch.save`` stores entries uncompressed (1x); a re-zipped (deflated) checkpoint
#: of float weights inflates under 2x, even one of 95%-zero pruned weights about 14x. A zip bomb declares ~1000x
#: (3 GiB in 3 MB): refused before a byte of it is inflated, so memory stays a small multiple of the file's size.
MAX_EXPANSION = 32
#: Allowance on top of that for tiny archives (a test's pickle of a few records), whatever their ratio.
MIN_UNPACK_BYTES = 1 << 20

# Legacy storage class names as torch.save writes them; newer torch may write a dtype object instead.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
# Collected once from torch's namespace so that looking a name up never triggers torch's lazy submodule imports.
_TORCH_DTYPES: dict[str, torch.dtype] = {k: v for k, v in vars(torch).items() if isinstance(v, torch.dtype)}
_BUILTINS: dict[str, type] = {t.__name__: t for t in (set, frozenset, list, dict, tuple, slice, complex)}
# Globals that become inert records: model/module classes and the numpy and argparse values training scripts
# sometimes leave in checkpoints. ``models.``/``utils.`` are the official repository's packages.
_RECORD_PREFIXES = ("models.", "utils.", "torch.nn.modules.", "numpy.dtypes.")
_RECORD_NAMES = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("argparse", "Namespace"),
}


class PickledRecord:
    """An inert stand-in for a pickled object whose class is not trusted to run.

    Subclasses are made per global name (see :func:`_record_class`); ``module``/``qualname`` name the original
    global. Construction and ``__setstate__`` only store their arguments, so no code of the checkpoint runs.
    """

    module: str = ""
    qualname: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledRecord:
        record = super().__new__(cls)
        record.args, record.kwargs, record.state = args, kwargs, None
        return record

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept REDUCE-style construction; ``__new__`` already stored the arguments."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    @property
    def attrs(self) -> dict[str, Any]:
        """The pickled instance attributes, merging the ``(dict, slots)`` form of the state."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            return {**(state[0] or {}), **(state[1] or {})}
        return state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<PickledRecord {self.module}.{self.qualname}>"


_RECORD_CLASSES: dict[tuple[str, str], type[PickledRecord]] = {}


def _record_class(module: str, qualname: str) -> type[PickledRecord]:
    """The (cached) inert record class standing in for global ``module.qualname``."""
    key = (module, qualname)
    if key not in _RECORD_CLASSES:
        attrs = {"module": module, "qualname": qualname}
        _RECORD_CLASSES[key] = type(qualname.rpartition(".")[2] or "Record", (PickledRecord,), attrs)
    return _RECORD_CLASSES[key]


@dataclass(frozen=True)
class _StorageType:
    """What ``torch.<Name>Storage`` resolves to: only ``persistent_load`` consumes it."""

    dtype: torch.dtype


def _rebuild_tensor_v2(storage: torch.Tensor, storage_offset: int, size: tuple[int, ...],
                       stride: tuple[int, ...], requires_grad: bool = False, backward_hooks: Any = None,
                       metadata: Any = None) -> torch.Tensor:
    """Our ``torch._utils._rebuild_tensor_v2``: a private copy of a strided view of the storage."""
    return torch.as_strided(storage, tuple(size), tuple(stride), storage_offset).clone()


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool = False, backward_hooks: Any = None,
                       state: Any = None) -> torch.Tensor:
    """Our ``_rebuild_parameter``(``_with_state``): the plain tensor (module records say what is a parameter)."""
    return data


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it to store ``bytes`` (e.g. numpy raw data)."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected bytes encoding {encoding!r}")
    return text.encode("latin1")


# ``torch._utils._rebuild_tensor_v2`` maps to the unpickler's own bounded wrapper (_SafeUnpickler._rebuild_tensor).
_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("_codecs", "encode"): _latin1_encode,
}


def unpack_limit(archive_bytes: int) -> int:
    """The most bytes a checkpoint of ``archive_bytes`` may unpack into (see :data:`MAX_EXPANSION`)."""
    return MAX_EXPANSION * archive_bytes + MIN_UNPACK_BYTES


def _check_declared_sizes(archive: zipfile.ZipFile, path: Path) -> None:
    """Refuse an archive whose entries declare more bytes than :func:`unpack_limit` allows, before reading any.

    ``zipfile`` never returns more than an entry's declared size, so bounding the declared sizes bounds what
    unpickling can read (the pickle stream included).
    """
    size = path.stat().st_size
    declared = sum(info.file_size for info in archive.infolist())
    if declared > unpack_limit(size):
        raise CheckpointError(
            f"{path}: its zip entries declare {declared:,} bytes in a {size:,}-byte file (over {MAX_EXPANSION}x): "
            "refusing to unpack it (a zip bomb, or a corrupt archive)")


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles ``<prefix>/data.pkl`` of a torch zip checkpoint through the allow-list above.

    Every size the pickle declares is checked before memory is spent on it: a storage record's byte size must
    equal what its zip entry declares, and the tensors rebuilt from storages may not add up to more than
    ``limit`` bytes (a tensor record can declare any size over a one-element storage with stride 0).
    """

    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: Path, limit: int) -> None:
        super().__init__(archive.open(f"{prefix}/data.pkl"))
        self._archive, self._prefix, self._path = archive, prefix, path
        self._storages: dict[str, torch.Tensor] = {}  # storages shared between tensors are read once
        self._limit, self._rebuilt_bytes = limit, 0

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles use Python 2 names (__builtin__.eval, commands.Popen); judge and report the
        # Python 3 names they stand for, as pickle's own fix_imports would resolve them.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if module == "builtins" and name in _BUILTINS:
            return _BUILTINS[name]
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch":
            if name == "Size":
                return torch.Size
            if name in _STORAGE_DTYPES:
                return _StorageType(_STORAGE_DTYPES[name])
            if name in _TORCH_DTYPES:
                return _TORCH_DTYPES[name]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if (module, name) in _FUNCTIONS:
            return _FUNCTIONS[(module, name)]
        if module in ("models", "utils") or module.startswith(_RECORD_PREFIXES) or (module, name) in _RECORD_NAMES:
            return _record_class(module, name)
        raise UnsafeCheckpointError(
            f"refusing to load global '{module}.{name}' from {self._path}: amc only loads official YOLOv7 "
            "checkpoints and amc models (no code in pickles is executed)")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid  # the location is ignored: everything loads on the CPU
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else storage_type
        if not isinstance(dtype, torch.dtype) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"bad storage record {pid!r}")
        key = str(key)
        if key not in self._storages:
            name = f"{self._prefix}/data/{key}"
            nbytes = numel * torch.empty((), dtype=dtype).element_size()
            declared = self._archive.getinfo(name).file_size
            # torch.save writes each storage as exactly its bytes; any other declared size is a corrupt or
            # tampered entry, refused before it is inflated.
            if declared != nbytes:
                raise CheckpointError(
                    f"{self._path}: storage {key} declares {declared:,} bytes but its tensor record needs "
                    f"{nbytes:,} ({numel:,} x {dtype}): a corrupt or tampered checkpoint")
            data = self._archive.read(name)
            if len(data) != nbytes:
                raise pickle.UnpicklingError(f"storage {key} holds {len(data)} bytes, expected {nbytes}")
            # frombuffer refuses empty buffers; bytearray makes the tensor own writable memory.
            self._storages[key] = (torch.frombuffer(bytearray(data), dtype=dtype) if nbytes
                                   else torch.empty(0, dtype=dtype))
        storage = self._storages[key]
        if storage.dtype != dtype:  # one storage viewed with two dtypes: not something torch.save writes
            raise pickle.UnpicklingError(f"storage {key} is used with dtypes {storage.dtype} and {dtype}")
        return storage

    def _rebuild_tensor(self, storage: torch.Tensor, storage_offset: int, size: Any, *args: Any,
                        **kwargs: Any) -> torch.Tensor:
        """:func:`_rebuild_tensor_v2` once the copy it makes is known to fit in what is left of the limit."""
        if not (isinstance(storage, torch.Tensor) and isinstance(size, (tuple, list))
                and all(isinstance(n, int) and n >= 0 for n in size)):
            raise pickle.UnpicklingError(f"bad tensor record: size {size!r} of a {type(storage).__name__}")
        self._rebuilt_bytes += math.prod(size) * storage.element_size()
        if self._rebuilt_bytes > self._limit:
            raise CheckpointError(
                f"{self._path}: its tensor records declare over {self._limit:,} bytes of tensors, more than "
                f"{MAX_EXPANSION}x the file's size: a corrupt or tampered checkpoint")
        return _rebuild_tensor_v2(storage, storage_offset, size, *args, **kwargs)


def load_pickled_checkpoint(path: str | Path) -> Any:
    """Unpickle a ``torch.save`` zip archive safely.

    Returns the object tree: dicts, lists, tensors (CPU, their saved dtype) and :class:`PickledRecord` objects
    for model classes. Raises :class:`CheckpointError` (or :class:`UnsafeCheckpointError`) naming ``path``,
    also, before reading them, for sizes beyond :func:`unpack_limit` (zip bombs, tampered tensor records).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a zip archive, so it is neither an official YOLOv7 checkpoint nor an amc model "
            "(legacy torch<1.6 files are not supported: re-save them with a recent torch)")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)]
            if len(pickles) != 1:
                raise CheckpointError(f"{path} is a zip archive but not a torch checkpoint (no single "
                                      "<name>/data.pkl): neither an official YOLOv7 checkpoint nor an amc model")
            _check_declared_sizes(archive, path)
            prefix = pickles[0].rpartition("/")[0]
            if f"{prefix}/byteorder" in archive.namelist():
                byteorder = archive.read(f"{prefix}/byteorder").decode(errors="replace").strip()
                if byteorder != "little":
                    raise CheckpointError(f"{path} was saved on a {byteorder}-endian machine; amc reads "
                                          "little-endian checkpoints only")
            return _SafeUnpickler(archive, prefix, path, unpack_limit(path.stat().st_size)).load()
    except AmcError:
        raise
    except Exception as exc:  # a damaged stream can fail anywhere inside pickle, zipfile or torch
        raise CheckpointError(f"{path} is truncated or corrupt: {type(exc).__name__}: {exc}") from exc


@dataclass
class OfficialCheckpoint:
    """The parts of an official YOLOv7 checkpoint that amc uses."""

    cfg: dict[str, Any]  # the model's ``yaml``: the cfg dict the official Model was built from
    state_dict: dict[str, torch.Tensor]  # as ``nn.Module.state_dict()`` names it; floating tensors in fp32
    names: list[str]  # class names
    source: str  # "ema" or "model": which entry the weights came from
    epoch: int | None  # the saved epoch (-1 in released checkpoints, as strip_optimizer writes it)
    hyp: dict[str, Any] | None  # the training hyper-parameters, if the model carries them
    parameter_names: set[str] = field(default_factory=set)  # state_dict keys that are parameters, not buffers


def _module_state(record: Any, prefix: str, out: dict[str, torch.Tensor], params: set[str], path: Path) -> None:
    """Flatten a pickled ``nn.Module`` record the way ``nn.Module.state_dict()`` orders and names it."""
    attrs = record.attrs if isinstance(record, PickledRecord) else {}
    if "_parameters" not in attrs or "_modules" not in attrs:
        raise CheckpointError(f"{path}: '{prefix.rstrip('.') or 'model'}' is not a pickled torch module")
    non_persistent = attrs.get("_non_persistent_buffers_set") or set()
    for name, tensor in attrs["_parameters"].items():
        if tensor is not None:
            out[prefix + name] = tensor
            params.add(prefix + name)
    for name, tensor in (attrs.get("_buffers") or {}).items():
        if tensor is not None and name not in non_persistent:
            out[prefix + name] = tensor
    for name, child in attrs["_modules"].items():
        if child is not None:
            _module_state(child, f"{prefix}{name}.", out, params, path)


def read_official_checkpoint(path: str | Path) -> OfficialCheckpoint:
    """Read an official YOLOv7 checkpoint without running its code; prefers ``ema`` weights, as YOLOv7 does."""
    path = Path(path)
    ckpt = load_pickled_checkpoint(path)
    if not isinstance(ckpt, dict) or (ckpt.get("ema") is None and ckpt.get("model") is None):
        raise CheckpointError(f"{path} holds no 'model' or 'ema' entry: it is not an official YOLOv7 checkpoint")
    source = "ema" if ckpt.get("ema") is not None else "model"
    model = ckpt[source]
    if not (isinstance(model, PickledRecord) and (model.module, model.qualname) == ("models.yolo", "Model")):
        kind = f"{model.module}.{model.qualname}" if isinstance(model, PickledRecord) else type(model).__name__
        raise CheckpointError(f"{path}: '{source}' is a {kind}, not an official YOLOv7 models.yolo.Model")
    attrs = model.attrs
    cfg = attrs.get("yaml")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: the model carries no cfg dict ('yaml' attribute)")
    state: dict[str, torch.Tensor] = {}
    params: set[str] = set()
    _module_state(model, "", state, params, path)
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: '{name}' is a {type(tensor).__name__}, not a tensor")
        if tensor.is_floating_point():
            state[name] = tensor.to(torch.float32, memory_format=torch.contiguous_format)
    names = attrs.get("names")
    if not isinstance(names, list):
        names = list(range(int(attrs.get("nc", cfg.get("nc", 0)))))
    epoch, hyp = ckpt.get("epoch"), attrs.get("hyp")
    return OfficialCheckpoint(cfg=cfg, state_dict=state, names=[str(n) for n in names], source=source,
                              epoch=epoch if isinstance(epoch, int) else None,
                              hyp=hyp if isinstance(hyp, dict) else None, parameter_names=params)
