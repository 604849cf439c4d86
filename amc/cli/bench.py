"""``amc-bench``: measurements kept out of the test suite (they take minutes or depend on the machine).

Examples::

    amc-bench                       # bench=pruning: policy cost / apply timings and the baseline table
    amc-bench bench=fidelity        # proxy mAP vs full-val and fine-tuned mAP (Spearman rho), scatter plot
    amc-bench bench=speed           # proxy evaluation time per episode vs the bare forward passes
    amc-bench bench=latency         # per-unit latency table: build time, estimate cost, error vs measured
    amc-bench bench.cost_models=[yolov7-tiny] bench.latency.threads=1
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from omegaconf import DictConfig

from amc.atomic import atomic_write_json
from amc.cli.app import amc_app
from amc.config import parse_img_size, run_dir
from amc.console import console, print_table
from amc.errors import ConfigError
from amc.factory import make_criterion, rounding_from_config


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _packaged_model(name: str, seed: int):  # noqa: ANN202
    from amc.models import YOLOv7, load_cfg
    from amc.models.io import packaged

    path = packaged(f"training/{name}.yaml")
    if path is None:
        raise ConfigError(f"{name} is not a packaged official cfg (see conf/model/)")
    torch.manual_seed(seed)
    return YOLOv7(load_cfg(path)).eval()


def pruning_bench(cfg: DictConfig) -> dict:
    """Analytic cost, masked and physical policy application, and the uniform / global baseline table."""
    from amc.eval.latency import compare_cpu_latency
    from amc.pruning.baselines import global_magnitude_policy, uniform_policy
    from amc.pruning.masks import ChannelMasks
    from amc.pruning.physical import prune_model
    from amc.pruning.space import PruningSpace

    b = cfg.bench
    img_size = parse_img_size(b.img_size)
    rounding = rounding_from_config(b.pruning)
    unknown = [m for m in b.methods if m not in ("uniform", "global")]
    if unknown or len(set(b.budgets)) != len(b.budgets):
        raise ConfigError(f"bench.methods must be uniform/global (got {list(b.methods)}) and bench.budgets distinct")
    rng = np.random.default_rng(int(cfg.seed))
    cost_rows, cost_results = [], {}
    for name in b.cost_models:
        model = _packaged_model(str(name), int(cfg.seed))
        build_ms = _median_ms(lambda: PruningSpace.from_model(model, img_size, rounding), 3)
        space = PruningSpace.from_model(model, img_size, rounding)
        policies = [rng.uniform(0, rounding.max_ratio, len(space)) for _ in range(max(1, int(b.apply_repeats)))]
        widths = [space.kept_channels(p) for p in policies]
        cost_ms = _median_ms(lambda: space.cost(widths[0]), int(b.cost_repeats))
        criterion = make_criterion(str(b.criterion), seed=int(cfg.seed))
        criterion.prepare(model, space, None)
        masks = ChannelMasks(model, space)
        it = iter(range(10**9))
        masked_ms = _median_ms(lambda: masks.apply(criterion.select(list(widths[next(it) % len(widths)]))),
                               int(b.apply_repeats))
        it = iter(range(10**9))
        physical_ms = _median_ms(
            lambda: prune_model(model, space, criterion.select(list(widths[next(it) % len(widths)]))),
            int(b.apply_repeats))
        # Applying is half the story: a masked model still runs at full cost, a physical one at its own.
        selection = criterion.select(list(space.kept_channels(uniform_policy(space, 0.5).ratios)))
        masks.apply(selection)
        forward = compare_cpu_latency({"masked": model, "physical": prune_model(model, space, selection)},
                                      img_size, 1, int(b.latency.threads), 1, int(b.forward_runs), 5)
        masks.remove()
        fwd_masked, fwd_physical = forward["masked"].median_ms, forward["physical"].median_ms
        gain = fwd_masked - fwd_physical
        break_even = (physical_ms - masked_ms) / gain if gain > 0 else float("inf")
        cost_results[str(name)] = {"units": len(space), "space_build_ms": build_ms, "analytic_cost_ms": cost_ms,
                                   "apply_masked_ms": masked_ms, "apply_physical_ms": physical_ms,
                                   "forward_masked_ms": fwd_masked, "forward_physical_ms": fwd_physical,
                                   "break_even_images": break_even}
        cost_rows.append([name, len(space), f"{build_ms:.1f}", f"{cost_ms * 1e3:.1f}", f"{masked_ms:.2f}",
                          f"{physical_ms:.1f}", f"{fwd_masked:.1f}", f"{fwd_physical:.1f}", f"{break_even:.1f}"])
    print_table(f"cost of one policy on CPU ({torch.get_num_threads()} threads, {img_size[0]}x{img_size[1]})",
                ["model", "units", "space build ms", "analytic cost us", "apply masked ms", "apply physical ms",
                 "forward masked ms", "forward physical ms (50% FLOPs)", "break-even images"], cost_rows)

    model = _packaged_model(str(b.table_model), int(cfg.seed))
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
    for row, latency in zip(rows, timings.values()):
        table.append({**row, "latency_ms": latency.median_ms, "latency_min_ms": latency.min_ms,
                      "speedup": timings["unpruned"].median_ms / latency.median_ms})
    print_table(f"{b.table_model} at {img_size[0]}x{img_size[1]}: baselines at equal FLOPs budgets "
                f"(CPU, {lat.threads} threads, batch {lat.batch_size}, fused, median of {lat.runs} interleaved runs)",
                ["method", "budget", "params", "GFLOPs", "FLOPs kept", "CPU ms", "speed-up"],
                [[r["method"], f"{r['budget']:.0%}", f"{r['params'] / 1e6:.2f}M", f"{r['gflops']:.2f}",
                  f"{r['flops_ratio']:.1%}", f"{r['latency_ms']:.1f}", f"{r['speedup']:.2f}x"] for r in table],
                numeric_from=1)
    return {"cost": cost_results, "baselines": {"model": str(b.table_model), "rows": table}}


def latency_bench(cfg: DictConfig) -> dict:
    """Build a latency lookup table and compare its estimates with measured pruned models."""
    from amc.eval.latency_table import LatencyTable, validate_table
    from amc.pruning.baselines import uniform_policy
    from amc.pruning.space import PruningSpace
    from amc.reward.benchmarks import scale_to_budget

    b = cfg.bench
    img_size = parse_img_size(b.img_size)
    model = _packaged_model(str(b.model), int(cfg.seed))
    space = PruningSpace.from_model(model, img_size, rounding_from_config(b.pruning))
    t0 = time.perf_counter()
    table = LatencyTable.build(model, space, str(b.backend), threads=int(b.threads), grid=int(b.grid),
                               rest=str(b.rest))
    build_s = time.perf_counter() - t0
    table.save(run_dir() / "latency_table.json")
    half = space.kept_channels(uniform_policy(space, 0.5).ratios)
    estimate_us = _median_ms(lambda: table.estimate(half), int(b.estimate_calls)) * 1e3
    rng = np.random.default_rng(int(cfg.seed))
    policies = {f"uniform {float(x):.0%}": uniform_policy(space, float(x)).ratios for x in b.budgets}
    for k in range(int(b.random_policies)):
        policies[f"random {k}"] = scale_to_budget(space, rng.uniform(0, 1, len(space)), rng.uniform(0.3, 0.7))
    check = validate_table(table, model, space, policies, "l1", runs=int(b.runs), rounds=int(b.rounds))
    rows = [[r.name, f"{r.flops_ratio:.1%}", f"{r.estimated_ms:.1f}", f"{r.measured_ms:.1f}", f"{r.rel_error:+.1%}"]
            for r in [*check.rows, check.reference]]
    print_table(f"{b.model} at {img_size[0]}x{img_size[1]} on {b.backend} ({b.threads} threads): table estimate vs "
                f"measured (built in {build_s:.1f} s, {estimate_us:.0f} us per estimate)",
                ["policy", "FLOPs kept", "estimated ms", "measured ms", "error"], rows)
    console.print(f"mean |error| {check.mean_abs_rel_error:.1%}, max {check.max_abs_rel_error:.1%} "
                  f"(drift-corrected: mean {check.mean_abs_scaled_error:.1%}, max {check.max_abs_scaled_error:.1%})")
    return {"model": str(b.model), "backend": str(b.backend), "img_size": list(img_size), "threads": int(b.threads),
            "build_s": build_s, "estimate_us": estimate_us, "validation": check.to_dict()}


def fidelity_bench(cfg: DictConfig) -> dict:
    from amc.reward.benchmarks import fidelity_bench as run

    return run(cfg)


def speed_bench(cfg: DictConfig) -> dict:
    from amc.reward.benchmarks import speed_bench as run

    return run(cfg)


def compare_bench(cfg: DictConfig) -> dict:
    from amc.bench.compare import compare_bench as run

    return run(cfg)


def parallel_bench(cfg: DictConfig) -> dict:
    from amc.bench.parallel import parallel_bench as run

    return run(cfg)


def memory_bench(cfg: DictConfig) -> dict:
    from amc.bench.memory import memory_bench as run

    return run(cfg)


BENCHES: dict[str, Callable[[DictConfig], dict]] = {"pruning": pruning_bench, "latency": latency_bench,
                                                    "fidelity": fidelity_bench, "speed": speed_bench,
                                                    "compare": compare_bench, "parallel": parallel_bench,
                                                    "memory": memory_bench}


@amc_app("bench")
def main(cfg: DictConfig) -> dict:
    name = str(cfg.bench.name)
    if name not in BENCHES:
        raise ConfigError(f"bench={name} is unknown; choose one of {', '.join(BENCHES)}")
    results = BENCHES[name](cfg)
    results["machine"] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()}
    out = atomic_write_json(run_dir() / "metrics.json", {"bench": name, **results})
    console.print(f"results written to {out}")
    return results


if __name__ == "__main__":
    main()
