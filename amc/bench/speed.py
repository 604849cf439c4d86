"""``amc-bench bench=speed``: the proxy evaluator's time per episode against its floor.

The floor is the bare forward passes an episode runs (the same BN calibration passes, recovery steps and val
passes on the same tensors, measured in the same run, without masks, NMS or COCOeval), with a breakdown of where
the rest goes. Prints a table and writes ``results.json`` in the run directory.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from amc.atomic import atomic_write_json
from amc.bench.common import bench_device, container, demo_splits, seeded_model, sync
from amc.config import output_dir
from amc.console import ProgressLog, console, print_table
from amc.errors import ConfigError
from amc.eval.nms import non_max_suppression
from amc.factory import make_criterion, rounding_from_config
from amc.pruning.physical import prune_model
from amc.pruning.space import PruningSpace
from amc.reward.proxy import ProxyEvaluator, proxy_settings, recalibrate_batch_norm


@torch.inference_mode()
def _val_forward(model, eval_set, device: torch.device) -> list[torch.Tensor]:  # noqa: ANN001
    """The val passes the evaluator runs, without NMS: the raw predictions of every batch."""
    preds = []
    for batch in eval_set:
        images = batch.images.to(device, non_blocking=True).float() / 255.0
        preds.append(model(images)[0].float())
    sync(device)
    return preds


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    t0 = time.perf_counter()
    value = fn()
    sync(device)
    return value, time.perf_counter() - t0


def _speed_one(label: str, model, val, train, settings, b: DictConfig, seed: int,  # noqa: ANN001
               device: torch.device) -> dict[str, Any]:
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
    total = int(b.warmup) + int(b.episodes)
    progress = ProgressLog(f"bench=speed {label} episode", total)  # plain lines when the output is a log
    try:
        for e in range(total):
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
            progress.update(e + 1, f"episode {episode_s:.2f} s, floor {bn_floor + recover_floor + fwd_floor:.2f} s"
                            + (" (warm-up)" if e < int(b.warmup) else ""))
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
    device = bench_device(b)
    out = output_dir(out_dir)
    settings = proxy_settings(b.get("proxy"))
    _, train, search = demo_splits(b)
    results: dict[str, Any] = {}
    for label, spec in container(b.models).items():
        spec = spec or {}
        model = seeded_model(str(spec.get("source", label)), spec.get("nc"), seed)
        results[str(label)] = _speed_one(str(label), model, search, train, settings, b, seed, device)
        console.print(f"{label}: episode {results[label]['episode_s']:.3f} s, floor {results[label]['floor_s']:.3f} s")
    rows = list(results.values())
    recovery = f", {settings.recover_steps} recovery steps" if settings.recover_steps else ""
    print_table(f"proxy evaluator per episode on {device} ({torch.get_num_threads()} CPU threads), median of "
                f"{int(b.episodes)} random policies; proxy: {settings.val_images} search-split images at "
                f"{settings.img_size}, {settings.bn_batches}x{settings.bn_batch_size} BN images at "
                f"{settings.bn_img_size}{recovery}. The per-episode range shows how far one episode's ratio moves "
                "with the machine's noise",
                ["model", "episode s", "floor s", "overhead", "per episode", "select+slice/masks", "BN", "val fwd+NMS",
                 "fwd floor", "NMS alone", "mAP+rest"],
                [[r["model"], f"{r['episode_s']:.3f}", f"{r['floor_s']:.3f}", f"{r['overhead_ratio']:.2f}x",
                  f"{min(r['overhead_ratio_per_episode']):.2f}-{max(r['overhead_ratio_per_episode']):.2f}x",
                  f"{r['select_s']:.3f}", f"{r['bn_s']:.3f}", f"{r['val_s']:.3f}", f"{r['forward_floor_s']:.3f}",
                  f"{r['nms_s']:.3f}", f"{r['rest_s']:.3f}"] for r in rows])
    first = rows[0]
    summary = {"overhead_ratio": first["overhead_ratio"], "episode_s": first["episode_s"],
               "floor_s": first["floor_s"], "models": results, "device": str(device),
               "threads": torch.get_num_threads(), "proxy": asdict(settings),
               "target_overhead_ratio": float(b.target_overhead_ratio),
               "targets_met": all(r["overhead_ratio"] <= float(b.target_overhead_ratio) for r in rows)}
    path = atomic_write_json(out / "results.json", summary)
    console.print(f"results written to {path}")
    return summary
