"""``amc-bench bench=latency``: a per-unit latency lookup table built for a packaged model, its build time and the
cost of one estimate, and its estimates against measured, physically pruned models (uniform and random policies).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from amc.bench.common import max_latency_spread, median_ms, packaged_model
from amc.config import output_dir, parse_img_size
from amc.console import console, print_table, warn
from amc.factory import rounding_from_config
from amc.pruning.baselines import uniform_policy
from amc.pruning.budget import scale_to_budget
from amc.pruning.space import PruningSpace
from amc.reward.latency_table import LatencyTable, validate_table


def latency_bench(cfg: DictConfig, out_dir: str | Path | None = None) -> dict:
    """Build a latency lookup table (saved as ``latency_table.json`` in ``out_dir``, default the Hydra run
    directory) and compare its estimates with measured pruned models."""
    b = cfg.bench
    img_size = parse_img_size(b.img_size)
    max_spread = max_latency_spread(cfg)
    model = packaged_model(str(b.model), int(cfg.seed))
    space = PruningSpace.from_model(model, img_size, rounding_from_config(b.pruning))
    t0 = time.perf_counter()
    table = LatencyTable.build(model, space, str(b.backend), threads=int(b.threads), grid=int(b.grid),
                               rest=str(b.rest))
    build_s = time.perf_counter() - t0
    table.save(output_dir(out_dir) / "latency_table.json")
    half = space.kept_channels(uniform_policy(space, 0.5).ratios)
    estimate_us = median_ms(lambda: table.estimate(half), int(b.estimate_calls)) * 1e3
    rng = np.random.default_rng(int(cfg.seed))
    policies = {f"uniform {float(x):.0%}": uniform_policy(space, float(x)).ratios for x in b.budgets}
    for k in range(int(b.random_policies)):
        policies[f"random {k}"] = scale_to_budget(space, rng.uniform(0, 1, len(space)), rng.uniform(0.3, 0.7))
    check = validate_table(table, model, space, policies, "l1", runs=int(b.runs), rounds=int(b.rounds))
    # a measurement that spread too much is no test of the table: its error is flagged, not trusted
    rows = [[r.name, f"{r.flops_ratio:.1%}", f"{r.estimated_ms:.1f}", f"{r.measured_ms:.1f}",
             "-" if r.measured_spread is None else f"{r.measured_spread:.0%}",
             f"{r.rel_error:+.1%}" + (" (noisy)" if r.noisy(max_spread) else "")]
            for r in [*check.rows, check.reference]]
    print_table(f"{b.model} at {img_size[0]}x{img_size[1]} on {b.backend} ({b.threads} threads): table estimate vs "
                f"measured (built in {build_s:.1f} s, {estimate_us:.0f} us per estimate)",
                ["policy", "FLOPs kept", "estimated ms", "measured ms", "IQR", "error"], rows)
    console.print(f"mean |error| {check.mean_abs_rel_error:.1%}, max {check.max_abs_rel_error:.1%} "
                  f"(drift-corrected: mean {check.mean_abs_scaled_error:.1%}, max {check.max_abs_scaled_error:.1%})")
    noisy = check.noisy(max_spread)
    if noisy:
        warn(f"latency too noisy to trust for {', '.join(noisy)}: the timed passes spread past {max_spread:.0%} of "
             f"the median (max_latency_spread), so their errors measure the machine, not the table; time again on "
             f"an idle machine")
    return {"model": str(b.model), "backend": str(b.backend), "img_size": list(img_size), "threads": int(b.threads),
            "build_s": build_s, "estimate_us": estimate_us, "validation": check.to_dict(),
            "max_latency_spread": max_spread, "latency_noisy": noisy}
