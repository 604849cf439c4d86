"""``amc-prune``: prune a model by a policy file or a baseline at a FLOPs budget.

Examples::

    amc-prune                                           # demo model, uniform ratios to 50% of the FLOPs
    amc-prune method=global budget.flops=0.3            # Torch-Pruning global magnitude ranking
    amc-prune method=policy policy=outputs/amc-search/.../policy.yaml criterion=ls
    amc-prune model=yolov7-tiny mode=finegrained finegrained.sparsity=0.7

Writes ``model/`` (amc format, truly smaller), ``policy.yaml`` and ``metrics.json`` to the run directory.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from amc.atomic import atomic_write_json
from amc.cli.app import amc_app, console, load_data_from_config, load_model_from_config, print_table, run_dir
from amc.cli.info import parse_img_size
from amc.errors import ConfigError

METHODS = ("uniform", "global", "policy")
MODES = ("structured", "finegrained")


def _budget(cfg: DictConfig) -> float:
    flops = cfg.budget.get("flops")
    try:
        value = float(flops)
    except (TypeError, ValueError):
        raise ConfigError(f"budget.flops must be a fraction in (0, 1], got {flops!r}") from None
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"budget.flops must be a fraction in (0, 1], got {value}")
    return value


def _row(name: str, params: int, gflops: float, fused_gflops: float | None, latency: Any, base: dict) -> list:
    lat = "-" if latency is None else f"{latency.median_ms:.1f}"
    return [name, f"{params:,}", f"{params / base['params']:.1%}", f"{gflops:.3f}", f"{gflops / base['gflops']:.1%}",
            "-" if fused_gflops is None else f"{fused_gflops:.3f}", lat]


def _latencies(before, after, cfg: DictConfig, img_size):  # noqa: ANN001, ANN202
    """CPU latency of the fused models before and after, timed interleaved (None, None when disabled)."""
    import copy

    from amc.eval.latency import compare_cpu_latency

    if int(cfg.latency.runs) <= 0:
        return None, None
    models = {name: copy.deepcopy(m).eval().fuse() for name, m in (("before", before), ("after", after))}
    found = compare_cpu_latency(models, img_size, threads=cfg.latency.threads, runs=int(cfg.latency.runs),
                                rounds=int(cfg.latency.rounds))
    return found["before"], found["after"]


def criterion_options(cfg: DictConfig) -> dict[str, Any]:
    """``criterion_options`` from the config as a plain mapping."""
    from omegaconf import OmegaConf

    raw = cfg.get("criterion_options")
    options = {} if raw is None else OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else raw
    if not isinstance(options, dict):
        raise ConfigError(f"criterion_options must be a mapping, got {options!r}")
    return options


@amc_app("prune")
def main(cfg: DictConfig) -> dict:
    if cfg.mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    img_size = parse_img_size(cfg.img_size)
    if cfg.mode == "finegrained":
        return finegrained(cfg, img_size)
    if cfg.method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    return structured(cfg, img_size)


def structured(cfg: DictConfig, img_size: tuple[int, int]) -> dict:
    from amc.data.loaders import sample_batches
    from amc.models.io import save_model
    from amc.pruning.apply import apply_policy
    from amc.pruning.criteria import CRITERIA, make_criterion
    from amc.pruning.policy import Policy
    from amc.pruning.space import ChannelRounding, PruningSpace

    # Everything a user can get wrong is checked before the model is touched.
    policy_file = None
    if cfg.method == "policy":
        if not cfg.policy:
            raise ConfigError("method=policy needs policy=FILE (a policy YAML from amc-prune or amc-search)")
        policy_file = Policy.load(str(cfg.policy))
        rounding, img_size = policy_file.rounding, policy_file.img_size
    else:
        budget = _budget(cfg)
        rounding = ChannelRounding(int(cfg.pruning.multiple), int(cfg.pruning.min_channels),
                                   float(cfg.pruning.max_ratio))
    if cfg.criterion not in CRITERIA:
        raise ConfigError(f"criterion must be one of {', '.join(CRITERIA)}, got {cfg.criterion!r}")
    criterion = make_criterion(str(cfg.criterion), seed=int(cfg.seed), **criterion_options(cfg))
    model, names, source = load_model_from_config(cfg.model)
    space = PruningSpace.from_model(model, img_size, rounding)
    if policy_file is not None:
        ratios, info = policy_file.ratios_for(space), {"method": policy_file.method, "budget": policy_file.budget,
                                                       "metrics": policy_file.metrics}
    else:
        from amc.pruning.baselines import global_magnitude_policy, uniform_policy

        found = (uniform_policy(space, budget) if cfg.method == "uniform"
                 else global_magnitude_policy(model, space, budget))
        ratios, info = found.ratios, {"method": str(cfg.method), "budget": {"flops": budget}}
    batches = None
    if criterion.needs_data:
        dataset = load_data_from_config(cfg.data, str(cfg.data.get("train_split") or cfg.data.split))
        batches = sample_batches(dataset, int(cfg.calibration.batches), int(cfg.calibration.batch_size),
                                 int(cfg.calibration.img_size), seed=int(cfg.seed))
        if not batches:
            raise ConfigError(f"criterion {criterion.name} needs calibration images but the dataset is empty")
    console.print(f"{len(space)} prunable units; pruning with {info['method']} ratios, {criterion.name} channels")
    pruned, selection = apply_policy(model, space, ratios, criterion, batches)

    policy = Policy.from_ratios(space, ratios, criterion=criterion.name, source=source, **info)
    out = run_dir()
    save_model(pruned, out / "model", extra={"pruned_from": source, "policy": "policy.yaml"})
    policy.save(out / "policy.yaml")

    before, after = model.cost(img_size), pruned.cost(img_size)
    fused_before = space.cost(space.full_widths, fused=True)
    fused_after = space.cost(selection.widths, fused=True)
    lat_before, lat_after = _latencies(model, pruned, cfg, img_size)
    metrics = {
        "model": source, "method": info["method"], "criterion": criterion.name, "img_size": list(img_size),
        "units": len(space), "params": after.params, "gflops": after.gflops,
        "flops_ratio": after.macs / before.macs, "params_ratio": after.params / before.params,
        "fused_gflops": fused_after.gflops, "budget": info["budget"],
        "before": {"params": before.params, "gflops": before.gflops, "fused_gflops": fused_before.gflops},
        "latency_ms": None if lat_after is None else {
            "before": lat_before.median_ms, "after": lat_after.median_ms, "speedup": lat_before.median_ms /
            lat_after.median_ms, "threads": lat_after.threads, "runs": lat_after.runs, "device": "cpu"},
        "channels": {u.name: [u.channels, w] for u, w in zip(space.units, selection.widths)},
    }
    atomic_write_json(out / "metrics.json", metrics)
    base = {"params": before.params, "gflops": before.gflops}
    print_table(f"{source} at {img_size[0]}x{img_size[1]}: {info['method']} pruning, {criterion.name} channels",
                ["", "params", "of base", "GFLOPs", "of base", "fused GFLOPs", "CPU ms"],
                [_row("before", before.params, before.gflops, fused_before.gflops, lat_before, base),
                 _row("after", after.params, after.gflops, fused_after.gflops, lat_after, base)])
    console.print(f"pruned model, policy.yaml and metrics.json written to {out}")
    return metrics


def finegrained(cfg: DictConfig, img_size: tuple[int, int]) -> dict:
    from amc.models.io import save_model
    from amc.pruning.finegrained import apply_finegrained, nonzero_cost

    sparsity = float(cfg.finegrained.sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"finegrained.sparsity must be in [0, 1), got {sparsity}")
    model, names, source = load_model_from_config(cfg.model)
    before = nonzero_cost(model, img_size)
    report = apply_finegrained(model, sparsity)
    after = nonzero_cost(model, img_size)
    out = run_dir()
    save_model(model, out / "model", extra={"pruned_from": source, "finegrained_sparsity": sparsity})
    metrics = {
        "model": source, "mode": "finegrained", "img_size": list(img_size),
        "params": after.params, "gflops": after.gflops, "flops_ratio": after.macs / before.macs,
        "params_ratio": after.params / before.params, "note": "non-zero params and FLOPs; tensors keep their shapes",
        "before": {"params": before.params, "gflops": before.gflops}, "sparsity": report.to_dict(),
    }
    atomic_write_json(out / "metrics.json", metrics)
    base = {"params": before.params, "gflops": before.gflops}
    print_table(f"{source}: fine-grained sparsity {sparsity:.0%} per layer (non-zero counts)",
                ["", "params", "of base", "GFLOPs", "of base", "fused GFLOPs", "CPU ms"],
                [_row("before", before.params, before.gflops, None, None, base),
                 _row("after", after.params, after.gflops, None, None, base)])
    console.print(f"zeroed-weight model and metrics.json written to {out} (dense kernels: no speed-up without a "
                  f"sparse runtime)")
    return metrics


if __name__ == "__main__":
    main()
