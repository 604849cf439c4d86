"""Benchmarks of the reward evaluator (``amc-bench bench=fidelity`` and ``amc-bench bench=speed``).

* **fidelity**: does the proxy mAP rank policies the way their real accuracy does? ``N`` diverse policies at
  one FLOPs budget (uniform, global magnitude, random directions scaled to the budget) are scored three
  ways: the proxy (:class:`~amc.reward.proxy.ProxyEvaluator`: masked model, adaptive BN, val subset), the
  full val split on the physically pruned model after adaptive BN (on its own, independently drawn BN
  batches), and the full val split after a short fine-tune. Spearman's rho of proxy vs full and proxy vs
  fine-tuned is the answer; a scatter plot (``fidelity.svg``) shows it.
* **speed**: evaluator time per episode against its floor, the bare forward passes it runs (the same BN
  calibration passes and val passes on the same tensors, measured in the same run, without masks, NMS or
  COCOeval), with a breakdown of where the rest goes.

Both print a table and write ``results.json`` in the run directory (plus whatever ``amc-bench`` writes).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from amc.plots import scatter_svg  # noqa: F401 (re-exported: the fidelity plot)
from amc.atomic import atomic_write_json, atomic_write_text
from amc.config import output_dir
from amc.console import console, print_table
from amc.errors import ConfigError
from amc.factory import make_criterion, rounding_from_config
from amc.pruning.budget import scale_to_budget  # noqa: F401 (re-exported: the benches' random policies)

# ----------------------------------------------------------------------------------------------------------
# Rank correlation
# ----------------------------------------------------------------------------------------------------------


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``values``; tied values share the mean of the ranks they span (``[1, 2, 2] -> [1, 2.5, 2.5]``)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation with average ranks for ties (Pearson's r of the ranks).

    NaN when fewer than two pairs, or when either side is constant (no ranking to compare). NaN inputs
    are not allowed.
    """
    a, b = np.asarray(x, dtype=np.float64).reshape(-1), np.asarray(y, dtype=np.float64).reshape(-1)
    if len(a) != len(b):
        raise ValueError(f"spearman: {len(a)} values against {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("spearman: values must be finite")
    if len(a) < 2:
        return float("nan")
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    if denom == 0.0:
        return float("nan")
    return float(np.clip((ra * rb).sum() / denom, -1.0, 1.0))


# ----------------------------------------------------------------------------------------------------------
# Policies at one budget
# ----------------------------------------------------------------------------------------------------------


def _policies(model, space, b: DictConfig, seed: int) -> list[dict[str, Any]]:
    """The policies of the fidelity benchmark: name, kind, criterion, ratios, kept channels and selection."""
    from amc.pruning.baselines import global_magnitude_policy, uniform_policy
    from amc.pruning.selection import ChannelSelection, top_channels

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


# ----------------------------------------------------------------------------------------------------------
# Settings from the config
# ----------------------------------------------------------------------------------------------------------


def _container(node: Any) -> dict[str, Any]:
    if node is None:
        return {}
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node)


def proxy_settings(overrides: Any = None):  # noqa: ANN201 (keeps torch imports lazy)
    """:class:`~amc.reward.proxy.ProxySettings` with ``overrides`` (a mapping; unknown keys are an error)."""
    from dataclasses import fields

    from amc.eval.evaluator import EvalSettings
    from amc.reward.proxy import ProxySettings

    values = _container(overrides)
    known = {f.name for f in fields(ProxySettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown proxy setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
    if isinstance(values.get("eval"), dict):
        values["eval"] = EvalSettings(**values["eval"])
    return ProxySettings(**values)


def _settings_dict(settings) -> dict[str, Any]:  # noqa: ANN001
    from dataclasses import asdict

    return asdict(settings)


def _setup(b: DictConfig) -> torch.device:
    from amc.device import select_device

    threads = int(b.get("threads") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    return select_device(str(b.get("device") or "cpu"))


def _load_data(b: DictConfig):  # noqa: ANN202
    """The demo-layout dataset's ``(val, train, search)`` splits: the proxy scores on ``search`` (held out),
    every reference (full val, fine-tuned) is measured on ``val``."""
    from amc.data.datasets import load_dataset

    path = b.get("data_path")
    return load_dataset("demo", path, "val"), load_dataset("demo", path, "train"), load_dataset("demo", path, "search")


def _load(source: str, nc: int | None, seed: int):  # noqa: ANN202
    from amc.models.io import load_model

    torch.manual_seed(seed)  # a cfg gives fresh weights: seeded
    model, _ = load_model(source, nc=nc)
    return model.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------
# Fidelity
# ----------------------------------------------------------------------------------------------------------


def finetune_pruned(pruned, train_set, hyp: dict[str, Any], f: DictConfig, seed: int, device: torch.device):  # noqa: ANN001, ANN201
    """A copy of ``pruned`` after ``f.epochs`` of training (the EMA weights if ``f.ema``); ``pruned`` is untouched.

    The short fine-tune of the benches (``bench=fidelity``, ``bench=compare``): ``f`` holds ``epochs``,
    ``batch_size``, ``nominal_batch_size``, ``warmup_min_iters``, ``workers``, ``ota`` and ``ema``.
    """
    from amc.train.loss import YOLOv7Loss, scale_hyp
    from amc.train.trainer import TrainConfig, Trainer

    model = copy.deepcopy(pruned)
    loss = YOLOv7Loss(model, scale_hyp(hyp, model.head.nl, model.nc, int(train_set.img_size)), ota=bool(f.ota))
    with tempfile.TemporaryDirectory(prefix="amc-fidelity-") as tmp:
        config = TrainConfig(epochs=int(f.epochs), batch_size=int(f.batch_size),
                             nominal_batch_size=int(f.nominal_batch_size), warmup_min_iters=int(f.warmup_min_iters),
                             workers=int(f.workers), seed=seed, save_dir=Path(tmp), resume=False, tensorboard=False,
                             progress=False)
        trainer = Trainer(model, train_set, hyp, loss, config, device)
        trainer.fit()
        trained = trainer.ema.ema if bool(f.ema) else trainer.model
    return trained.eval()


_finetune = finetune_pruned  # the name this helper had before bench=compare shared it


def fidelity_bench(cfg: DictConfig, out_dir: str | Path | None = None) -> dict:
    """Spearman rho of proxy mAP against full-val mAP and fine-tuned mAP over policies at one budget.

    Args:
        cfg: the command's config (``cfg.bench`` = ``conf/bench/fidelity.yaml``, ``cfg.seed``).
        out_dir: where ``results.json`` and ``fidelity.svg`` go (default: the Hydra run directory).
    """
    from amc.data.loaders import EvalSet, TrainSet, sample_batches
    from amc.eval.evaluator import DetectionEvaluator
    from amc.pruning.physical import prune_model
    from amc.pruning.space import PruningSpace
    from amc.reward.proxy import ProxyEvaluator, recalibrate_batch_norm

    b = cfg.bench
    seed = int(cfg.seed)
    if int(b.policies) < 2:
        raise ConfigError(f"bench.policies must be >= 2 to rank anything, got {b.policies}")
    device = _setup(b)
    out = output_dir(out_dir)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    val, train, search = _load_data(b)
    model = _load(str(b.model), b.get("nc"), seed)
    img_size = int(b.img_size)
    rounding = rounding_from_config(b.pruning)
    space = PruningSpace.from_model(model, img_size, rounding)
    timings["setup_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    policies = _policies(model, space, b, seed)
    timings["policies_s"] = time.perf_counter() - t0
    console.print(f"{len(policies)} policies at {float(b.budget):g} of the FLOPs "
                  f"(rounding: multiple {rounding.multiple}, min {rounding.min_channels}, max ratio "
                  f"{rounding.max_ratio:g})")

    # 1. proxy mAP: the default settings (plus overrides), and any variants on the same policies.
    variants = {"proxy": _container(b.get("proxy"))}
    for name, overrides in _container(b.get("proxy_variants")).items():
        variants[str(name)] = _container(overrides)
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
            for p in policies:
                r = evaluator(p["selection"])
                scores.append(r.map50_95)
                seconds.append(r.total_s)
        finally:
            evaluator.close()
        proxy_scores[name] = scores
        proxy_info[name] = {"overrides": overrides, "settings": _settings_dict(settings), "prepare_s": prepare_s,
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
    hyp = _container(ft.hyp)
    train_set = None
    if do_finetune:
        t0 = time.perf_counter()
        train_set = TrainSet(train.subset(ft.get("train_images"), seed), img_size=img_size, augment=bool(ft.augment),
                             hyp=hyp, seed=seed)
        timings["finetune_prepare_s"] = time.perf_counter() - t0

    rows: list[dict[str, Any]] = []
    full_s, finetune_s = [], []
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
                trained = _finetune(pruned, train_set, hyp, ft, seed + k, device)
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
        console.print(f"policy {i + 1}/{len(policies)} ({p['kind']}, {p['criterion']}): proxy {row['proxy_map50_95']:.3f}"
                      f" full {full:.3f}" + (f" fine-tuned {tuned:.3f}" if tuned is not None else "")
                      + f" ({full_s[-1] + (finetune_s[-1] if finetune_s else 0.0):.0f} s)")
    timings["full_s"] = sum(full_s)
    timings["finetune_s"] = sum(finetune_s)
    timings["finetune_per_policy_s"] = statistics.median(finetune_s) if finetune_s else 0.0
    timings["total_s"] = time.perf_counter() - started

    full_scores = [r["full_map50_95"] for r in rows]
    tuned_scores = [r["finetuned_map50_95"] for r in rows] if do_finetune else None
    correlations: dict[str, dict[str, float | None]] = {}
    for name in variants:
        correlations[name] = {
            "spearman_full": _safe_spearman(proxy_scores[name], full_scores),
            "spearman_finetuned": _safe_spearman(proxy_scores[name], tuned_scores) if tuned_scores else None}
    rho_full = correlations["proxy"]["spearman_full"]
    rho_tuned = correlations["proxy"]["spearman_finetuned"]
    rho_full_tuned = _safe_spearman(full_scores, tuned_scores) if tuned_scores else None
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
                     "random": _container(b.random), "full": _container(fb),
                     "finetune": {k: v for k, v in _container(ft).items() if k != "hyp"}, "finetune_hyp": hyp,
                     "units": len(space)},
        "plot": str(svg_path),
    }
    path = atomic_write_json(out / "results.json", results)
    console.print(f"results written to {path}, plot to {svg_path}")
    return results


def _safe_spearman(x: Sequence[float] | None, y: Sequence[float] | None) -> float | None:
    if x is None or y is None:
        return None
    rho = spearman(x, y)
    return None if np.isnan(rho) else rho


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


# ----------------------------------------------------------------------------------------------------------
# Scatter plot (hand-written SVG)
# ----------------------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------------------
# Speed
# ----------------------------------------------------------------------------------------------------------


@torch.inference_mode()
def _val_forward(model, eval_set, device: torch.device) -> list[torch.Tensor]:  # noqa: ANN001
    """The val passes the evaluator runs, without NMS: the raw predictions of every batch."""
    preds = []
    for batch in eval_set:
        images = batch.images.to(device, non_blocking=True).float() / 255.0
        preds.append(model(images)[0].float())
    _sync(device)
    return preds


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    _sync(device)
    t0 = time.perf_counter()
    value = fn()
    _sync(device)
    return value, time.perf_counter() - t0


def _speed_one(label: str, model, val, train, settings, b: DictConfig, seed: int,  # noqa: ANN001
               device: torch.device) -> dict[str, Any]:
    from amc.eval.nms import non_max_suppression
    from amc.pruning.physical import prune_model
    from amc.pruning.space import PruningSpace
    from amc.reward.proxy import ProxyEvaluator, recalibrate_batch_norm

    rounding = rounding_from_config(b.pruning)
    space = PruningSpace.from_model(model, settings.img_size, rounding)
    criterion = make_criterion(str(b.criterion), seed=seed)
    criterion.prepare(model, space, None)
    unmasked = copy.deepcopy(model).to(device).eval()  # before a masked evaluator hooks its masks into ``model``
    t0 = time.perf_counter()
    evaluator = ProxyEvaluator(model, space, val, train, settings, device)
    prepare_s = time.perf_counter() - t0
    s = evaluator.settings.eval
    nms_settings = dict(conf_thres=s.conf_thres, iou_thres=s.iou_thres, multi_label=s.multi_label,
                        max_det=s.max_det) if s is not None else {}
    rng = np.random.default_rng(seed)
    episodes = []
    try:
        for e in range(int(b.warmup) + int(b.episodes)):
            ratios = rng.uniform(0.0, rounding.max_ratio, len(space))
            t0 = time.perf_counter()
            selection = criterion.select(space.kept_channels(ratios))
            select_s = time.perf_counter() - t0
            # The model the evaluator's forward passes run: the sliced one (physical path) or the full one (masked).
            floor_model = unmasked if evaluator.masks is not None else prune_model(model, space, selection).eval()
            # Floor first: the same BN passes, recovery steps and val passes on the same tensors, no slicing,
            # masks, NMS or mAP. With recovery steps the evaluator trains the sliced copy and re-estimates BN once
            # more: the floor runs the same steps (on its own copy) and the second BN pass too.
            recover_floor = 0.0
            if evaluator.settings.adaptive_bn:
                _, bn_floor = _timed(lambda: recalibrate_batch_norm(floor_model, evaluator.bn_batches), device)
                if evaluator.recovery.enabled:
                    trained = copy.deepcopy(floor_model)
                    _, recover_floor = _timed(lambda: evaluator.recovery(trained), device)
                    _, bn_again = _timed(lambda: recalibrate_batch_norm(trained, evaluator.bn_batches), device)
                    bn_floor += bn_again
                    floor_model = trained
            else:
                bn_floor = 0.0
            preds, fwd_floor = _timed(lambda: _val_forward(floor_model, evaluator.evaluator.eval_set, device), device)
            _, nms_s = _timed(lambda: [non_max_suppression(p, **nms_settings) for p in preds], device)
            # The episode: pick channels (timed above), slice or mask, adaptive BN, val passes + NMS, COCOeval.
            t0 = time.perf_counter()
            result = evaluator(selection)
            episode_s = select_s + time.perf_counter() - t0
            if e >= int(b.warmup):
                episodes.append({"episode_s": episode_s, "floor_s": bn_floor + recover_floor + fwd_floor,
                                 "bn_floor_s": bn_floor, "recover_floor_s": recover_floor,
                                 "forward_floor_s": fwd_floor, "select_s": select_s, "bn_s": result.bn_s,
                                 "recover_s": result.recover_s, "val_s": result.eval_s, "nms_s": nms_s,
                                 "rest_s": episode_s - select_s - result.bn_s - result.recover_s - result.eval_s,
                                 "map50_95": result.map50_95})
    finally:
        evaluator.close()
    med = {k: statistics.median(ep[k] for ep in episodes) for k in episodes[0] if k != "map50_95"}
    cost = space.full_cost
    return {"model": label, "units": len(space), "params": cost.params, "gflops": cost.gflops,
            "images": evaluator.num_images, "bn_images": sum(len(x) for x in evaluator.bn_batches),
            "prepare_s": prepare_s, **med, "overhead_ratio": med["episode_s"] / med["floor_s"],
            "overhead_ratio_per_episode": [ep["episode_s"] / ep["floor_s"] for ep in episodes],
            "episodes": episodes}


def speed_bench(cfg: DictConfig, out_dir: str | Path | None = None) -> dict:
    """Proxy evaluator time per episode against the bare forward passes it runs, per model.

    Args:
        cfg: the command's config (``cfg.bench`` = ``conf/bench/speed.yaml``, ``cfg.seed``).
        out_dir: where ``results.json`` goes (default: the Hydra run directory).
    """
    b = cfg.bench
    seed = int(cfg.seed)
    if int(b.episodes) < 1:
        raise ConfigError(f"bench.episodes must be >= 1, got {b.episodes}")
    device = _setup(b)
    out = output_dir(out_dir)
    settings = proxy_settings(b.get("proxy"))
    _, train, search = _load_data(b)
    results: dict[str, Any] = {}
    for label, spec in _container(b.models).items():
        spec = spec or {}
        model = _load(str(spec.get("source", label)), spec.get("nc"), seed)
        results[str(label)] = _speed_one(str(label), model, search, train, settings, b, seed, device)
        console.print(f"{label}: episode {results[label]['episode_s']:.3f} s, floor {results[label]['floor_s']:.3f} s")
    rows = list(results.values())
    print_table(f"proxy evaluator per episode on {device} ({torch.get_num_threads()} CPU threads), median of "
                f"{int(b.episodes)} random policies; proxy: {settings.val_images} val images at {settings.img_size}, "
                f"{settings.bn_batches}x{settings.bn_batch_size} BN images at {settings.bn_img_size}",
                ["model", "episode s", "floor s", "overhead", "select+slice/masks", "BN", "val fwd+NMS", "fwd floor",
                 "NMS alone", "mAP+rest"],
                [[r["model"], f"{r['episode_s']:.3f}", f"{r['floor_s']:.3f}", f"{r['overhead_ratio']:.2f}x",
                  f"{r['select_s']:.3f}", f"{r['bn_s']:.3f}", f"{r['val_s']:.3f}", f"{r['forward_floor_s']:.3f}",
                  f"{r['nms_s']:.3f}", f"{r['rest_s']:.3f}"] for r in rows])
    first = rows[0]
    summary = {"overhead_ratio": first["overhead_ratio"], "episode_s": first["episode_s"],
               "floor_s": first["floor_s"], "models": results, "device": str(device),
               "threads": torch.get_num_threads(), "proxy": _settings_dict(settings),
               "target_overhead_ratio": float(b.target_overhead_ratio),
               "targets_met": all(r["overhead_ratio"] <= float(b.target_overhead_ratio) for r in rows)}
    path = atomic_write_json(out / "results.json", summary)
    console.print(f"results written to {path}")
    return summary
