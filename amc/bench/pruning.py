"""``amc-bench bench=pruning`` (the default bench): what one policy costs to price and to apply, masked and
physically, against the forward pass it saves; and the uniform / global-magnitude baselines at equal FLOPs budgets,
timed on the CPU.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from amc.bench.common import median_ms, packaged_model
from amc.bench.common import max_latency_spread
from amc.config import parse_img_size
from amc.console import print_table, warn
from amc.errors import ConfigError
from amc.eval.latency import compare_cpu_latency, speedup, spread_text
from amc.factory import make_criterion, rounding_from_config
from amc.pruning.baselines import global_magnitude_policy, uniform_policy
from amc.pruning.masks import ChannelMasks
from amc.pruning.physical import prune_model
from amc.pruning.space import PruningSpace


def pruning_bench(cfg: DictConfig, out_dir: str | Path | None = None) -> dict:
    """Analytic cost, masked and physical policy application, and the uniform / global baseline table (``out_dir``:
    unused, every figure is returned for ``metrics.json``)."""
    b = cfg.bench
    img_size = parse_img_size(b.img_size)
    rounding = rounding_from_config(b.pruning)
    unknown = [m for m in b.methods if m not in ("uniform", "global")]
    if unknown or len(set(b.budgets)) != len(b.budgets):
        raise ConfigError(f"bench.methods must be uniform/global (got {list(b.methods)}) and bench.budgets distinct")
    max_spread = max_latency_spread(cfg)
    rng = np.random.default_rng(int(cfg.seed))
    cost_rows, cost_results = [], {}
    noisy: list[str] = []
    for name in b.cost_models:
        model = packaged_model(str(name), int(cfg.seed))
        build_ms = median_ms(lambda: PruningSpace.from_model(model, img_size, rounding), 3)
        space = PruningSpace.from_model(model, img_size, rounding)
        policies = [rng.uniform(0, rounding.max_ratio, len(space)) for _ in range(max(1, int(b.apply_repeats)))]
        widths = [space.kept_channels(p) for p in policies]
        cost_ms = median_ms(lambda: space.cost(widths[0]), int(b.cost_repeats))
        criterion = make_criterion(str(b.criterion), seed=int(cfg.seed))
        criterion.prepare(model, space, None)
        masks = ChannelMasks(model, space)
        it = iter(range(10**9))
        masked_ms = median_ms(lambda: masks.apply(criterion.select(list(widths[next(it) % len(widths)]))),
                               int(b.apply_repeats))
        it = iter(range(10**9))
        physical_ms = median_ms(
            lambda: prune_model(model, space, criterion.select(list(widths[next(it) % len(widths)]))),
            int(b.apply_repeats))
        # Applying is half the story: a masked model still runs at full cost, a physical one at its own.
        selection = criterion.select(list(space.kept_channels(uniform_policy(space, 0.5).ratios)))
        masks.apply(selection)
        forward = compare_cpu_latency({"masked": model, "physical": prune_model(model, space, selection)},
                                      img_size, 1, int(b.latency.threads), 1, int(b.forward_runs), 5)
        masks.remove()
        fwd_masked, fwd_physical = forward["masked"].median_ms, forward["physical"].median_ms
        noisy += [f"{name} {kind} forward" for kind, lat in forward.items() if lat.noisy(max_spread)]
        gain = fwd_masked - fwd_physical
        break_even = (physical_ms - masked_ms) / gain if gain > 0 else float("inf")
        cost_results[str(name)] = {"units": len(space), "space_build_ms": build_ms, "analytic_cost_ms": cost_ms,
                                   "apply_masked_ms": masked_ms, "apply_physical_ms": physical_ms,
                                   "forward_masked_ms": fwd_masked, "forward_physical_ms": fwd_physical,
                                   "forward_masked": forward["masked"].to_dict(),
                                   "forward_physical": forward["physical"].to_dict(),
                                   "break_even_images": break_even}
        cost_rows.append([name, len(space), f"{build_ms:.1f}", f"{cost_ms * 1e3:.1f}", f"{masked_ms:.2f}",
                          f"{physical_ms:.1f}", f"{fwd_masked:.1f}", f"{fwd_physical:.1f}", f"{break_even:.1f}"])
    print_table(f"cost of one policy on CPU ({torch.get_num_threads()} threads, {img_size[0]}x{img_size[1]})",
                ["model", "units", "space build ms", "analytic cost us", "apply masked ms", "apply physical ms",
                 "forward masked ms", "forward physical ms (50% FLOPs)", "break-even images"], cost_rows)

    model = packaged_model(str(b.table_model), int(cfg.seed))
    space = PruningSpace.from_model(model, img_size, rounding)
    criterion = make_criterion(str(b.criterion), seed=int(cfg.seed))
    criterion.prepare(model, space, None)
    lat = b.latency
    base = model.cost(img_size)
    # Every model is built first and timed interleaved with the others (see amc.eval.latency).
    rows = [{"method": "unpruned", "budget": 1.0, "params": base.params, "gflops": base.gflops, "flops_ratio": 1.0}]
    deployed = {"unpruned": copy.deepcopy(model).eval().fuse()}
    for budget in b.budgets:
        for method in b.methods:
            found = (uniform_policy(space, float(budget)) if method == "uniform"
                     else global_magnitude_policy(model, space, float(budget)))
            pruned = prune_model(model, space, criterion.select(list(space.kept_channels(found.ratios))))
            cost = pruned.cost(img_size)
            rows.append({"method": str(method), "budget": float(budget), "params": cost.params,
                         "gflops": cost.gflops, "flops_ratio": cost.macs / base.macs})
            deployed[f"{method}@{budget}"] = pruned.eval().fuse()
    timings = compare_cpu_latency(deployed, img_size, int(lat.batch_size), int(lat.threads), int(lat.warmup),
                                  int(lat.runs), int(lat.rounds))
    table = []
    for row, (name, latency) in zip(rows, timings.items()):
        # no speed-up from a noisy timing (None): a busy machine once showed a 70%-FLOPs model at 0.15x
        table.append({**row, "latency_ms": latency.median_ms, "latency_min_ms": latency.min_ms,
                      "latency": latency.to_dict(), "speedup": speedup(timings["unpruned"], latency, max_spread)})
        if latency.noisy(max_spread):
            noisy.append(name)
    print_table(f"{b.table_model} at {img_size[0]}x{img_size[1]}: baselines at equal FLOPs budgets "
                f"(CPU, {lat.threads} threads, batch {lat.batch_size}, fused, median of {lat.runs} interleaved runs)",
                ["method", "budget", "params", "GFLOPs", "FLOPs kept", "CPU ms", "IQR", "speed-up"],
                [[r["method"], f"{r['budget']:.0%}", f"{r['params'] / 1e6:.2f}M", f"{r['gflops']:.2f}",
                  f"{r['flops_ratio']:.1%}", f"{r['latency_ms']:.1f}", spread_text(timings[name]),
                  "noisy" if r["speedup"] is None else f"{r['speedup']:.2f}x"] for name, r in zip(timings, table)],
                numeric_from=1)
    if noisy:
        warn(f"latency too noisy to trust for {', '.join(noisy)}: the timed passes spread past {max_spread:.0%} of "
             f"the median (max_latency_spread); time again on an idle machine")
    return {"cost": cost_results, "baselines": {"model": str(b.table_model), "rows": table},
            "max_latency_spread": max_spread, "latency_noisy": noisy}
