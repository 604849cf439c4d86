"""``amc-bench bench=fidelity``: does the proxy mAP rank policies the way their real accuracy does?

``N`` diverse policies at one FLOPs budget (uniform, global magnitude, random directions scaled to the budget) are
scored three ways: the proxy (:class:`~amc.reward.proxy.ProxyEvaluator`: masked model, adaptive BN, a subset of the
held-out search split), the full val split on the physically pruned model after adaptive BN (on its own,
independently drawn BN batches), and the full val split after a short fine-tune. Spearman's rho of proxy vs full
and proxy vs fine-tuned is the answer; a scatter plot (``fidelity.svg``) shows it. Prints a table and writes
``results.json`` in the run directory.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from amc.atomic import atomic_write_json, atomic_write_text
from amc.bench.common import (bench_device, container, demo_splits, finetune_pruned, safe_spearman, seeded_model,
                              spearman)
from amc.config import output_dir
from amc.console import ProgressLog, console, print_table
from amc.data.loaders import EvalSet, TrainSet, sample_batches
from amc.errors import ConfigError
from amc.eval.evaluator import DetectionEvaluator
from amc.factory import make_criterion, rounding_from_config
from amc.plots import scatter_svg
from amc.pruning.baselines import global_magnitude_policy, uniform_policy
from amc.pruning.budget import scale_to_budget
from amc.pruning.physical import prune_model
from amc.pruning.selection import ChannelSelection, top_channels
from amc.pruning.space import PruningSpace
from amc.reward.proxy import ProxyEvaluator, proxy_settings, recalibrate_batch_norm

__all__ = ["fidelity_bench", "fidelity_policies", "spearman"]


def fidelity_policies(model, space, b: DictConfig, seed: int) -> list[dict[str, Any]]:  # noqa: ANN001
    """The policies of the fidelity benchmark: name, kind, criterion, ratios, kept channels and selection."""
    n = int(b.policies)
    budget = float(b.budget)
    criteria: dict[str, Any] = {}

    def criterion(name: str):  # noqa: ANN202
        if name not in criteria:
            c = make_criterion(name, seed=seed)
            c.prepare(model, space, None)
            criteria[name] = c
        return criteria[name]

    out: list[dict[str, Any]] = []
    for kind in list(b.baselines)[:n]:
        if kind == "uniform":
            found = uniform_policy(space, budget)
            name = str(b.criterion)
            selection = criterion(name).select(found.kept)
        elif kind == "global":
            found = global_magnitude_policy(model, space, budget)
            name = "group-l2"  # the global ranking's own scores pick the channels
            selection = ChannelSelection(top_channels(found.scores, found.kept))
        else:
            raise ConfigError(f"bench.baselines: unknown baseline {kind!r} (uniform, global)")
        out.append({"kind": str(kind), "criterion": name, "ratios": found.ratios, "selection": selection})
    rng = np.random.default_rng(seed)
    random_criteria = [str(c) for c in b.random.criteria] or [str(b.criterion)]
    low, high = float(b.random.low), float(b.random.high)
    if not 0.0 <= low < high:
        raise ConfigError(f"bench.random needs 0 <= low < high, got {low}, {high}")
    k = 0
    while len(out) < n:
        direction = rng.uniform(low, high, len(space))
        ratios = scale_to_budget(space, direction, budget)
        name = random_criteria[k % len(random_criteria)]
        out.append({"kind": "random", "criterion": name, "ratios": ratios,
                    "selection": criterion(name).select(space.kept_channels(ratios))})
        k += 1
    full = space.full_cost.macs
    for p in out:
        p["flops_ratio"] = space.cost(p["selection"].widths).macs / full
    return out


def fidelity_bench(cfg: DictConfig, out_dir: str | Path | None = None) -> dict:
    """Spearman rho of proxy mAP against full-val mAP and fine-tuned mAP over policies at one budget.

    Args:
        cfg: the command's config (``cfg.bench`` = ``conf/bench/fidelity.yaml``, ``cfg.seed``).
        out_dir: where ``results.json`` and ``fidelity.svg`` go (default: the Hydra run directory).
    """
    b = cfg.bench
    seed = int(cfg.seed)
    if int(b.policies) < 2:
        raise ConfigError(f"bench.policies must be >= 2 to rank anything, got {b.policies}")
    device = bench_device(b)
    out = output_dir(out_dir)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    val, train, search = demo_splits(b)
    model = seeded_model(str(b.model), b.get("nc"), seed)
    img_size = int(b.img_size)
    rounding = rounding_from_config(b.pruning)
    space = PruningSpace.from_model(model, img_size, rounding)
    timings["setup_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    policies = fidelity_policies(model, space, b, seed)
    timings["policies_s"] = time.perf_counter() - t0
    console.print(f"{len(policies)} policies at {float(b.budget):g} of the FLOPs "
                  f"(rounding: multiple {rounding.multiple}, min {rounding.min_channels}, max ratio "
                  f"{rounding.max_ratio:g})")

    # 1. proxy mAP: the default settings (plus overrides), and any variants on the same policies.
    variants = {"proxy": container(b.get("proxy"))}
    for name, overrides in container(b.get("proxy_variants")).items():
        variants[str(name)] = container(overrides)
    proxy_scores: dict[str, list[float]] = {}
    proxy_info: dict[str, dict[str, Any]] = {}
    for name, overrides in variants.items():
        settings = proxy_settings(overrides)
        t0 = time.perf_counter()
        evaluator = ProxyEvaluator(model, space, search, train, settings, device)  # held out from `val`
        prepare_s = time.perf_counter() - t0
        try:
            unpruned = evaluator(None).map50_95
            scores, seconds = [], []
            # a log (not a terminal) hears from a long variant every progress_interval_s, with an ETA
            scoring = ProgressLog(f"bench=fidelity proxy {name} policy", len(policies))
            for k, p in enumerate(policies, 1):
                r = evaluator(p["selection"])
                scores.append(r.map50_95)
                seconds.append(r.total_s)
                scoring.update(k, f"proxy mAP {r.map50_95:.3f}")
        finally:
            evaluator.close()
        proxy_scores[name] = scores
        proxy_info[name] = {"overrides": overrides, "settings": asdict(settings), "prepare_s": prepare_s,
                            "episode_s_median": statistics.median(seconds), "unpruned_map50_95": unpruned,
                            "images": evaluator.num_images}
        console.print(f"proxy {name}: {len(policies)} policies scored, median {statistics.median(seconds):.2f} s "
                      f"per policy (unpruned {unpruned:.3f})")
    timings["proxy_s"] = sum(i["prepare_s"] + i["episode_s_median"] * len(policies) for i in proxy_info.values())
    model = model.to(device)

    # 2. full val split, physically pruned, adaptive BN on independently drawn batches.
    fb = b.full
    t0 = time.perf_counter()
    full_set = val.subset(fb.get("val_images"), seed)
    stride = int(model.stride.max())
    full_evaluator = DetectionEvaluator(full_set, EvalSet(full_set, img_size, 32, stride, progress=False).to(device),
                                        device=device)
    bn_batches = [x.to(device) for x, _ in sample_batches(train, int(fb.bn_batches), int(fb.bn_batch_size), img_size,
                                                          seed=int(fb.bn_seed), augment=bool(fb.bn_augment))]
    unpruned_full = full_evaluator(model).map50_95
    timings["full_prepare_s"] = time.perf_counter() - t0

    ft = b.finetune
    do_finetune = int(ft.epochs) > 0
    n_finetunes = int(ft.get("seeds", 1))
    if do_finetune and n_finetunes < 1:
        raise ConfigError(f"bench.finetune.seeds must be >= 1, got {n_finetunes}")
    hyp = container(ft.hyp)
    train_set = None
    if do_finetune:
        t0 = time.perf_counter()
        train_set = TrainSet(train.subset(ft.get("train_images"), seed), img_size=img_size, augment=bool(ft.augment),
                             hyp=hyp, seed=seed)
        timings["finetune_prepare_s"] = time.perf_counter() - t0

    rows: list[dict[str, Any]] = []
    full_s, finetune_s = [], []
    # one line per policy (each is a full evaluation and fine-tunes), on the console and in the job log, with an ETA
    reference = ProgressLog("bench=fidelity policy", len(policies), interval_s=0, echo=True)
    for i, p in enumerate(policies):
        t0 = time.perf_counter()
        pruned = prune_model(model, space, p["selection"]).to(device)
        recalibrate_batch_norm(pruned, bn_batches)
        full = full_evaluator(pruned).map50_95
        full_s.append(time.perf_counter() - t0)
        tuned, tuned_runs = None, []
        if do_finetune:
            t0 = time.perf_counter()
            # One short fine-tune is noisy (two runs of the same policy differ by up to 0.03 mAP on the demo,
            # about the spread between policies): the reference is the mean over `finetune.seeds` runs.
            for k in range(n_finetunes):
                train_set.seed = seed + k  # augmentation stream of this run
                trained = finetune_pruned(pruned, train_set, hyp, ft, seed + k, device)
                tuned_runs.append(full_evaluator(trained).map50_95)
            tuned = statistics.fmean(tuned_runs)
            finetune_s.append(time.perf_counter() - t0)
        row = {"index": i, "kind": p["kind"], "criterion": p["criterion"], "flops_ratio": p["flops_ratio"],
               "proxy_map50_95": proxy_scores["proxy"][i], "full_map50_95": full, "finetuned_map50_95": tuned,
               "finetuned_runs_map50_95": tuned_runs,
               "ratios": [float(r) for r in p["ratios"]], "kept": [int(w) for w in p["selection"].widths]}
        for name in variants:
            if name != "proxy":
                row[f"{name}_map50_95"] = proxy_scores[name][i]
        rows.append(row)
        reference.update(i + 1, f"{p['kind']}, {p['criterion']}: proxy {row['proxy_map50_95']:.3f} full {full:.3f}"
                         + (f" fine-tuned {tuned:.3f}" if tuned is not None else ""))
    timings["full_s"] = sum(full_s)
    timings["finetune_s"] = sum(finetune_s)
    timings["finetune_per_policy_s"] = statistics.median(finetune_s) if finetune_s else 0.0
    timings["total_s"] = time.perf_counter() - started

    full_scores = [r["full_map50_95"] for r in rows]
    tuned_scores = [r["finetuned_map50_95"] for r in rows] if do_finetune else None
    correlations: dict[str, dict[str, float | None]] = {}
    for name in variants:
        correlations[name] = {
            "spearman_full": safe_spearman(proxy_scores[name], full_scores),
            "spearman_finetuned": safe_spearman(proxy_scores[name], tuned_scores) if tuned_scores else None}
    rho_full = correlations["proxy"]["spearman_full"]
    rho_tuned = correlations["proxy"]["spearman_finetuned"]
    rho_full_tuned = safe_spearman(full_scores, tuned_scores) if tuned_scores else None
    targets = {"spearman_proxy_full": float(b.targets.full), "spearman_proxy_finetuned": float(b.targets.finetuned),
               "n_policies": 12}

    _print_fidelity(rows, variants, correlations, rho_full_tuned, b, timings)
    svg = scatter_svg([r["proxy_map50_95"] for r in rows],
                      {"full val (adaptive BN)": full_scores,
                       **({f"fine-tuned ({int(ft.epochs)} ep, mean of {n_finetunes})": tuned_scores} if tuned_scores else {})},
                      title=f"proxy vs real mAP@0.5:0.95, {len(rows)} policies at {float(b.budget):g} FLOPs: "
                            f"rho full {_fmt(rho_full)}, fine-tuned {_fmt(rho_tuned)}",
                      x_label="proxy mAP@0.5:0.95", y_label="mAP@0.5:0.95 (full val split)")
    svg_path = atomic_write_text(out / "fidelity.svg", svg)

    results = {
        "n_policies": len(rows),
        "spearman_proxy_full": rho_full,
        "spearman_proxy_finetuned": rho_tuned,
        "spearman_full_finetuned": rho_full_tuned,
        "targets": targets,
        "targets_met": bool(len(rows) >= targets["n_policies"] and _at_least(rho_full, targets["spearman_proxy_full"])
                            and _at_least(rho_tuned, targets["spearman_proxy_finetuned"])),
        "variants": {name: {**proxy_info[name], **correlations[name]} for name in variants},
        "unpruned": {"proxy_map50_95": proxy_info["proxy"]["unpruned_map50_95"], "full_map50_95": unpruned_full},
        "policies": rows,
        "timings": timings,
        "settings": {"model": str(b.model), "data_path": b.get("data_path"), "device": str(device),
                     "threads": torch.get_num_threads(), "seed": seed, "budget": float(b.budget),
                     "img_size": img_size, "rounding": {"multiple": rounding.multiple,
                                                        "min_channels": rounding.min_channels,
                                                        "max_ratio": rounding.max_ratio},
                     "criterion": str(b.criterion), "baselines": list(b.baselines),
                     "random": container(b.random), "full": container(fb),
                     "finetune": {k: v for k, v in container(ft).items() if k != "hyp"}, "finetune_hyp": hyp,
                     "units": len(space)},
        "plot": str(svg_path),
    }
    path = atomic_write_json(out / "results.json", results)
    console.print(f"results written to {path}, plot to {svg_path}")
    return results


def _at_least(value: float | None, target: float) -> bool:
    return value is not None and value >= target


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _print_fidelity(rows: list[dict[str, Any]], variants: dict[str, Any], correlations: dict[str, Any],
                    rho_full_tuned: float | None, b: DictConfig, timings: dict[str, float]) -> None:
    extra = [n for n in variants if n != "proxy"]
    print_table(f"fidelity: {len(rows)} policies at {float(b.budget):g} of the FLOPs (mAP@0.5:0.95)",
                ["#", "policy", "criterion", "FLOPs kept", "proxy", "full val", "fine-tuned", *extra],
                [[r["index"] + 1, r["kind"], r["criterion"], f"{r['flops_ratio']:.1%}", f"{r['proxy_map50_95']:.3f}",
                  f"{r['full_map50_95']:.3f}", _fmt(r["finetuned_map50_95"]),
                  *(f"{r[f'{n}_map50_95']:.3f}" for n in extra)] for r in rows], numeric_from=3)
    print_table("Spearman rho (targets: proxy-full >= "
                f"{float(b.targets.full):g}, proxy-fine-tuned >= {float(b.targets.finetuned):g})",
                ["proxy settings", "vs full val", "vs fine-tuned"],
                [[n, _fmt(c["spearman_full"]), _fmt(c["spearman_finetuned"])] for n, c in correlations.items()]
                + [["(full val itself)", "1", _fmt(rho_full_tuned)]])
    console.print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k.endswith("_s")))
