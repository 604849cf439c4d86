"""Loading and saving YOLOv7 models without executing pickled code.

``load_model`` accepts, by what the path is:

* an official checkpoint ``.pt`` (``torch.save`` of a dict holding the pickled ``models.yolo.Model``): read by
  :mod:`amc.models.safe_pickle`, which never imports or runs the official classes;
* an official cfg ``.yaml`` (a file, or the name of a packaged cfg such as ``training/yolov7-tiny.yaml``):
  a freshly initialized model;
* an amc model: a directory holding ``architecture.yaml`` (the layers with their actual widths, class names,
  whether it is fused) and ``weights.safetensors``; the path may also name either file in it.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from amc.atomic import atomic_dir, complete_dir
from amc.errors import CheckpointError, ConfigError
from amc.models.arch import ARCH_FORMAT, Architecture, parse_cfg, read_yaml
from amc.models.flops import count_architecture
from amc.models.safe_pickle import read_official_checkpoint
from amc.models.yolo import YOLOv7

ARCH_FILE, WEIGHTS_FILE = "architecture.yaml", "weights.safetensors"

# A model's size is checked against what backs it before any module is built (amc.models.arch bounds each
# layer; these bound the whole), so a file that declares a huge model costs no more memory than its weights.
#: An architecture (amc model, or an official checkpoint's cfg) may build at most this many times the values
#: its weights hold: a fused model is built unfused first (RepConv's 1x1 branch and BatchNorms add ~15%).
MAX_PARAMETERS_PER_WEIGHT = 2
#: Parameters of a model built from a cfg alone (no weights to measure it by): 4 GB of fp32 weights, 6x
#: yolov7-e6e (151 M), the largest YOLOv7. Within every per-layer bound a cfg can still ask for far more (all
#: widths x16 is 256x the parameters).
MAX_CFG_PARAMETERS = 1_000_000_000


def official_cfg_dir() -> Path:
    """Folder of the official YOLOv7 cfgs shipped with amc (``training/`` and ``deploy/``)."""
    return Path(str(resources.files("amc") / "cfg"))


def official_cfg_names() -> list[str]:
    """Packaged official cfgs, as ``training/yolov7-tiny.yaml`` ..."""
    root = official_cfg_dir()
    return sorted(str(p.relative_to(root)) for p in root.glob("*/*.yaml"))


def packaged_models_dir() -> Path:
    """Folder of the trained models shipped with amc (``demo-model``, in amc's format)."""
    return Path(str(resources.files("amc") / "assets"))


def packaged(name: str) -> Path | None:
    """A model shipped with amc: an official cfg (``training/yolov7.yaml``, ``yolov7-tiny.yaml`` meaning the
    training cfg, ``demo.yaml``) or a trained model folder (``demo-model``); None if there is none."""
    cfgs, assets = official_cfg_dir(), packaged_models_dir()
    for candidate in (cfgs / name, cfgs / "training" / name, assets / name):
        if candidate.is_file() or (candidate.is_dir() and (candidate / ARCH_FILE).is_file()):
            return candidate
    return None


def resolve_path(source: str | os.PathLike[str]) -> Path:
    """A user path, else the name of a model shipped with amc (see :func:`packaged`).

    An amc model folder being replaced by :func:`save_model` on a filesystem without atomic folder swaps may
    be missing for an instant (or, after a kill at that instant, until the next save): its complete previous
    version is then read (``<folder>.old``, see :func:`amc.atomic.complete_dir`).
    """
    p = Path(source).expanduser()
    if p.exists():
        return p
    folder, inner = (p.parent, p.name) if p.name in (ARCH_FILE, WEIGHTS_FILE) else (p, None)
    complete = complete_dir(folder)
    if complete is not None and (complete / ARCH_FILE).is_file():
        return complete / inner if inner else complete
    candidate = packaged(str(source))
    if candidate is not None:
        return candidate
    raise CheckpointError(f"{source}: file not found (give an official .pt or cfg .yaml, or an amc model folder)")


def _is_amc_model(p: Path) -> Path | None:
    """The amc model folder that ``p`` designates, if any."""
    folder = p if p.is_dir() else p.parent
    if (folder / ARCH_FILE).is_file() and (p.is_dir() or p.name in (ARCH_FILE, WEIGHTS_FILE)):
        return folder
    return None


def load_model(source: str | os.PathLike[str], nc: int | None = None,
               width_multiple: float | None = None, depth_multiple: float | None = None) -> tuple[YOLOv7, list[str]]:
    """Load a YOLOv7 model from an official ``.pt``, an official cfg, or an amc model folder.

    Args:
        source: the path (see the module docstring).
        nc, width_multiple, depth_multiple: overrides for a cfg (a fresh model); refused for weights.

    Returns:
        The fp32 model in eval mode on the CPU, and its class names.

    Raises:
        CheckpointError: missing or unreadable file, unsafe pickle, or weights that do not fit.
        ConfigError: a malformed cfg or architecture.
    """
    p = resolve_path(source)
    overrides = {"nc": nc, "width_multiple": width_multiple, "depth_multiple": depth_multiple}
    is_cfg = p.suffix in (".yaml", ".yml") and _is_amc_model(p) is None
    if not is_cfg and any(v is not None for v in overrides.values()):
        raise ConfigError(f"{p}: nc/width_multiple/depth_multiple only apply to a cfg, not to trained weights")
    folder = _is_amc_model(p)
    if folder is not None:
        model = _load_amc(folder)
    elif is_cfg:
        model = _load_cfg(p, overrides)
    elif p.is_file():
        model = _load_official(p)
    else:
        raise CheckpointError(f"{p}: a folder without {ARCH_FILE} is not an amc model")
    return model.float().eval(), model.names


def _load_cfg(p: Path, overrides: dict[str, Any]) -> YOLOv7:
    cfg = read_yaml(p)
    if isinstance(cfg, dict) and cfg.get("format") == ARCH_FORMAT:
        raise ConfigError(f"{p}: an amc architecture needs its {WEIGHTS_FILE} beside it, named {ARCH_FILE}")
    if isinstance(cfg, dict):
        cfg = {**cfg, **{k: v for k, v in overrides.items() if k != "nc" and v is not None}}
    arch = parse_cfg(cfg, source=str(p), nc=overrides["nc"])
    params = _parameters(arch)
    if params > MAX_CFG_PARAMETERS:
        raise ConfigError(f"{p}: this cfg builds {params:,} parameters, more than the {MAX_CFG_PARAMETERS:,} amc "
                          "builds from a cfg (the largest YOLOv7 has 151 M): check its widths and multipliers")
    torch.manual_seed(0)  # a cfg alone gives the same initial weights every time
    return YOLOv7(arch)


def _load_official(p: Path) -> YOLOv7:
    ckpt = read_official_checkpoint(p)
    arch = parse_cfg(ckpt.cfg, source=f"{p} (its embedded cfg)")
    _check_backed(arch, ckpt.state_dict, f"{p}: its embedded cfg", "the checkpoint")
    names = list(ckpt.names)
    if len(names) != arch.nc:
        names = [str(i) for i in range(arch.nc)]
    model = YOLOv7(arch, names, initialize=False)
    if _looks_fused(ckpt.state_dict):
        model.fuse()
    load_weights(model, ckpt.state_dict, str(p))
    return model


def _looks_fused(state_dict: dict[str, torch.Tensor]) -> bool:
    """Official fused models have biased Conv convolutions or re-parameterized RepConvs."""
    return any(k.endswith(".conv.bias") or ".rbr_reparam." in k for k in state_dict)


def _load_amc(folder: Path) -> YOLOv7:
    meta = read_yaml(folder / ARCH_FILE)
    if not isinstance(meta, dict) or "architecture" not in meta:
        raise CheckpointError(f"{folder / ARCH_FILE}: not an amc model description (no 'architecture' key)")
    arch = Architecture.from_dict(meta["architecture"], source=str(folder / ARCH_FILE))
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: file not found (an amc model needs its weights)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from None
    _check_backed(arch, state, str(folder / ARCH_FILE), WEIGHTS_FILE)
    names = meta.get("names")
    model = YOLOv7(arch, names if isinstance(names, list) and len(names) == arch.nc else None, initialize=False)
    if meta.get("fused"):
        model.fuse()
    load_weights(model, state, str(weights))
    return model


def _parameters(arch: Architecture) -> int:
    """Parameters of the unfused model ``arch`` builds, counted without building it."""
    return count_architecture(arch, 64).params


def _check_backed(arch: Architecture, state: dict[str, torch.Tensor], what: str, weights: str) -> None:
    """Refuse, before building it, an architecture far larger than the weights meant to fill it."""
    params, held = _parameters(arch), sum(t.numel() for t in state.values())
    if params > MAX_PARAMETERS_PER_WEIGHT * held:
        raise CheckpointError(f"{what} declares {params:,} parameters but {weights} holds {held:,} values: "
                              "the architecture does not describe these weights (corrupt or tampered)")


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with one readable error naming what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} != model {tuple(v.shape)}"
             for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), e.g. {wrong[0]}")
    if missing:
        problems.append(f"{len(missing)} missing tensor(s), e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
    if problems:
        raise CheckpointError(f"{source}: weights do not fit the architecture: {'; '.join(problems)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def save_model(model: YOLOv7, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Save ``model`` as an amc model folder (architecture YAML + safetensors), atomically.

    The folder is written under a temporary name and swapped into place (:func:`amc.atomic.atomic_dir`), so a
    killed run never leaves a half-written model, and an existing model at ``path`` is replaced only once the
    new one is complete: :func:`load_model` finds the old or the new complete model at ``path`` at any instant.

    Args:
        model: the model (any widths, fused or not).
        path: the folder to create.
        extra: more readable metadata to store in ``architecture.yaml`` (e.g. the policy that produced it).
    """
    target = Path(path)
    meta = {"amc_model": 1, "names": list(model.names), "fused": bool(model.fused),
            "architecture": model.arch.to_dict(), **(extra or {})}
    with atomic_dir(target) as tmp:
        state = {k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.detach().contiguous().cpu()
                 for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / ARCH_FILE).write_text(_dump_yaml(meta))
    return target


def _dump_yaml(meta: dict[str, Any]) -> str:
    """YAML with one layer per line (``[from, module, {args}]``), readable like an official cfg."""
    class _Dumper(yaml.SafeDumper):
        pass

    def _flow_rows(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
        flow = all(not isinstance(x, (list, dict)) for x in data) or (
            len(data) == 3 and isinstance(data[2], dict))
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    _Dumper.add_representer(list, _flow_rows)
    return yaml.dump(meta, Dumper=_Dumper, sort_keys=False, width=120)
