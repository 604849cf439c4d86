"""The workflow behind ``amc-prune``: prune a model once, by a policy file or a baseline at a FLOPs budget
(``mode=structured``), or zero its smallest weights (``mode=finegrained``), and write the result.

:func:`prune` checks everything a user can get wrong before any pruning work starts (one-line
:class:`~amc.errors.ConfigError`), then writes ``model/`` (amc format, truly smaller), ``policy.yaml`` and
``metrics.json`` to the run directory and prints the before/after table (examples: the command's help,
:mod:`amc.cli.prune`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from amc.atomic import atomic_write_json
from amc.config import config_number, parse_img_size
from amc.console import console, print_table, warn
from amc.data.loaders import sample_batches
from amc.errors import ConfigError
from amc.eval.latency import Latency, compare_cpu_latency, speedup, spread_text
from amc.factory import load_data_from_config, load_model_from_config, make_criterion, rounding_from_config
from amc.models import YOLOv7
from amc.models.io import save_model
from amc.pruning.apply import apply_policy
from amc.pruning.baselines import global_magnitude_policy, uniform_policy
from amc.pruning.budget import check_budget
from amc.pruning.finegrained import apply_finegrained, nonzero_cost
from amc.pruning.policy import Policy
from amc.pruning.space import PruningSpace

#: ``method=``: how a structured pruning's ratios are found.
METHODS = ("uniform", "global", "policy")
#: ``mode=``: remove channels (structured) or zero weights (finegrained).
MODES = ("structured", "finegrained")

#: The columns of the before/after table.
COLUMNS = ["", "params", "of base", "GFLOPs", "of base", "fused GFLOPs", "CPU ms", "IQR"]


def _row(name: str, params: int, gflops: float, fused_gflops: float | None, latency: Latency | None,
         base: dict[str, float]) -> list[str]:
    """One row of the before/after table; ``base`` holds the unpruned ``params`` and ``gflops``."""
    lat = "-" if latency is None else f"{latency.median_ms:.1f}"
    return [name, f"{params:,}", f"{params / base['params']:.1%}", f"{gflops:.3f}", f"{gflops / base['gflops']:.1%}",
            "-" if fused_gflops is None else f"{fused_gflops:.3f}", lat, spread_text(latency)]


def _latency_settings(cfg: DictConfig) -> dict[str, Any]:
    """``latency.*`` checked: timed ``runs`` (0 = none), ``rounds`` of turns, CPU ``threads`` (None = torch's), the
    ``max_spread`` beyond which a timing is too noisy for a speed-up."""
    return {"runs": config_number(cfg.latency, "runs", int, 0, prefix="latency."),
            "max_spread": config_number(cfg.latency, "max_spread", float, 0.0, prefix="latency."),
            "rounds": config_number(cfg.latency, "rounds", int, 1, prefix="latency."),
            "threads": config_number(cfg.latency, "threads", int, 1, optional=True, prefix="latency.")}


def _latencies(before: YOLOv7, after: YOLOv7, latency: dict[str, Any],
               img_size: tuple[int, int]) -> tuple[Latency | None, Latency | None]:
    """CPU latency of the fused models before and after, timed interleaved (None, None when disabled)."""
    if latency["runs"] <= 0:
        return None, None
    models = {name: copy.deepcopy(m).eval().fuse() for name, m in (("before", before), ("after", after))}
    found = compare_cpu_latency(models, img_size, threads=latency["threads"], runs=latency["runs"],
                                rounds=latency["rounds"])
    return found["before"], found["after"]


def criterion_options(cfg: DictConfig) -> dict[str, Any]:
    """``criterion_options`` from the config as a plain mapping."""
    raw = cfg.get("criterion_options")
    options = {} if raw is None else OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else raw
    if not isinstance(options, dict):
        raise ConfigError(f"criterion_options must be a mapping, got {options!r}")
    return options


def prune(cfg: DictConfig, out: str | Path) -> dict[str, Any]:
    """Prune the model of ``cfg`` (the composed ``conf/prune.yaml``) and write the result to ``out``.

    Returns:
        The content of ``metrics.json``.

    Raises:
        ConfigError: an unknown ``mode`` or ``method``, or any other setting a user can get wrong.
    """
    if cfg.mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    img_size = parse_img_size(cfg.img_size)
    if cfg.mode == "finegrained":
        return finegrained(cfg, img_size, Path(out))
    if cfg.method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    return structured(cfg, img_size, Path(out))


def structured(cfg: DictConfig, img_size: tuple[int, int], out: Path) -> dict[str, Any]:
    """``mode=structured``: remove channels by ``method`` (a baseline at ``budget.flops``, or a policy file)."""
    # Everything a user can get wrong is checked before any pruning work starts.
    seed = config_number(cfg, "seed", int)
    latency = _latency_settings(cfg)
    policy_file = budget = None
    if cfg.method == "policy":
        if not cfg.policy:
            raise ConfigError("method=policy needs policy=FILE (a policy YAML from amc-prune or amc-search)")
        policy_file = Policy.load(str(cfg.policy))
        # A policy brings its rounding, image size and (unless criterion= is given) its criterion.
        rounding, img_size = policy_file.rounding, policy_file.img_size
        criterion_name = str(cfg.criterion or policy_file.criterion)
    else:
        budget = config_number(cfg.budget, "flops", float, prefix="budget.")
        if not 0.0 < budget <= 1.0:
            raise ConfigError(f"budget.flops must be a fraction in (0, 1] of the unpruned FLOPs, got {budget}")
        rounding = rounding_from_config(cfg.pruning)
        criterion_name = str(cfg.criterion or "l1")
    criterion = make_criterion(criterion_name, seed=seed, **criterion_options(cfg))
    batches_n = config_number(cfg.calibration, "batches", int, 1, prefix="calibration.")
    batch_size = config_number(cfg.calibration, "batch_size", int, 1, prefix="calibration.")
    calib_size = config_number(cfg.calibration, "img_size", int, 32, prefix="calibration.")
    model, names, source = load_model_from_config(cfg.model)
    space = PruningSpace.from_model(model, img_size, rounding)
    if budget is not None:
        check_budget(space, budget, fused=False)
    batches = None
    if criterion.needs_data:
        dataset = load_data_from_config(cfg.data, str(cfg.data.get("train_split") or cfg.data.split))
        batches = sample_batches(dataset, batches_n, batch_size, calib_size, seed=seed)
        if not batches:
            raise ConfigError(f"criterion {criterion.name} needs calibration images but {dataset.source} has none")
    if policy_file is not None:
        ratios = policy_file.ratios_for(space)
        info = {"method": policy_file.method, "budget": policy_file.budget, "metrics": policy_file.metrics}
        console.print(f"applying {cfg.policy}: its rounding (multiple {rounding.multiple}, min {rounding.min_channels},"
                      f" max ratio {rounding.max_ratio}) and image size {img_size[0]}x{img_size[1]}")
    else:
        found = (uniform_policy(space, budget) if cfg.method == "uniform"
                 else global_magnitude_policy(model, space, budget))
        ratios, info = found.ratios, {"method": str(cfg.method), "budget": {"flops": budget}}
    console.print(f"{len(space)} prunable units; pruning with {info['method']} ratios, {criterion.name} channels")
    pruned, selection = apply_policy(model, space, ratios, criterion, batches)

    policy = Policy.from_ratios(space, ratios, criterion=criterion.name, source=source, **info)
    save_model(pruned, out / "model", extra={"pruned_from": source, "policy": "policy.yaml"})
    policy.save(out / "policy.yaml")

    before, after = model.cost(img_size), pruned.cost(img_size)
    fused_before = space.cost(space.full_widths, fused=True)
    fused_after = space.cost(selection.widths, fused=True)
    lat_before, lat_after = _latencies(model, pruned, latency, img_size)
    metrics = {
        "model": source, "method": info["method"], "criterion": criterion.name, "img_size": list(img_size),
        "units": len(space), "params": after.params, "gflops": after.gflops,
        "flops_ratio": after.macs / before.macs, "params_ratio": after.params / before.params,
        "fused_gflops": fused_after.gflops, "budget": info["budget"],
        "before": {"params": before.params, "gflops": before.gflops, "fused_gflops": fused_before.gflops},
        "latency_ms": None if lat_after is None else _latency_figures(lat_before, lat_after, latency["max_spread"]),
        "channels": {u.name: [u.channels, w] for u, w in zip(space.units, selection.widths)},
    }
    atomic_write_json(out / "metrics.json", metrics)
    base = {"params": before.params, "gflops": before.gflops}
    print_table(f"{source} at {img_size[0]}x{img_size[1]}: {info['method']} pruning, {criterion.name} channels",
                COLUMNS, [_row("before", before.params, before.gflops, fused_before.gflops, lat_before, base),
                          _row("after", after.params, after.gflops, fused_after.gflops, lat_after, base)])
    if metrics["latency_ms"] is not None and metrics["latency_ms"]["noisy"]:
        warn(f"the CPU timings spread by more than latency.max_spread={latency['max_spread']} (IQR / median): too "
             f"noisy for a speed-up on this machine now (metrics.json: latency_ms.speedup is null); measure on an "
             f"idle machine or with more latency.runs")
    console.print(f"pruned model, policy.yaml and metrics.json written to {out}")
    return metrics


def _latency_figures(before: Latency, after: Latency, max_spread: float) -> dict[str, Any]:
    """metrics.json's ``latency_ms``: both medians with their spread, and a speed-up only when neither is noisy."""
    ratio = speedup(before, after, max_spread)
    return {"before": before.median_ms, "after": after.median_ms, "speedup": ratio, "noisy": ratio is None,
            "max_spread": max_spread, "before_spread": before.spread, "after_spread": after.spread,
            "threads": after.threads, "runs": after.runs, "device": "cpu"}


def finegrained(cfg: DictConfig, img_size: tuple[int, int], out: Path) -> dict[str, Any]:
    """``mode=finegrained``: zero ``finegrained.sparsity`` of every prunable convolution's weights by magnitude."""
    sparsity = config_number(cfg.finegrained, "sparsity", float, 0.0, 0.999, prefix="finegrained.")
    model, names, source = load_model_from_config(cfg.model)
    before = nonzero_cost(model, img_size)
    report = apply_finegrained(model, sparsity)
    after = nonzero_cost(model, img_size)
    save_model(model, out / "model", extra={"pruned_from": source, "finegrained_sparsity": sparsity})
    metrics = {
        "model": source, "mode": "finegrained", "img_size": list(img_size),
        "params": after.params, "gflops": after.gflops, "flops_ratio": after.macs / before.macs,
        "params_ratio": after.params / before.params, "note": "non-zero params and FLOPs; tensors keep their shapes",
        "before": {"params": before.params, "gflops": before.gflops}, "sparsity": report.to_dict(),
    }
    atomic_write_json(out / "metrics.json", metrics)
    base = {"params": before.params, "gflops": before.gflops}
    print_table(f"{source}: fine-grained sparsity {sparsity:.0%} per layer (non-zero counts)", COLUMNS,
                [_row("before", before.params, before.gflops, None, None, base),
                 _row("after", after.params, after.gflops, None, None, base)])
    console.print(f"zeroed-weight model and metrics.json written to {out} (dense kernels: no speed-up without a "
                  f"sparse runtime)")
    return metrics
