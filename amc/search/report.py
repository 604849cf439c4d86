"""The end of a search (:func:`final_report`): the best policy against uniform pruning at the same budget, scored
by the same evaluator; the best policy's pruned model exported; the original, uniform and best models timed;
``results.json`` and ``metrics.json``; the TensorBoard hyper-parameters; ``reward_curves.svg``; the summary table.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from omegaconf import DictConfig

from amc.atomic import atomic_write_json, atomic_write_text
from amc.config import config_number
from amc.console import console, print_table, warn
from amc.errors import ConfigError
from amc.eval.latency import DEFAULT_MAX_SPREAD, Latency, compare_latency, speedup, spread_text
from amc.models.io import save_model
from amc.pruning.physical import prune_model
from amc.reward.evaluation import policy_outcome
from amc.reward.functions import reward_from_config
from amc.search.rundir import BEST_POLICY_FILE, SearchState
from amc.search.setup import SearchSetup
from amc.search.tracking import SearchLog, reward_curves_svg


def max_latency_spread(cfg: DictConfig) -> float:
    """``final.max_latency_spread`` of a search config (:data:`~amc.eval.latency.DEFAULT_MAX_SPREAD` for the
    configs of runs started before the knob); a one-line error when it is not a number >= 0."""
    final = cfg.get("final")
    value = None if final is None else config_number(final, "max_latency_spread", float, 0.0, optional=True,
                                                     prefix="final.")
    return DEFAULT_MAX_SPREAD if value is None else float(value)


def final_report(setup: SearchSetup, state: SearchState, log: SearchLog, setup_s: float,
                 workers_setup_s: float) -> dict[str, Any]:
    """The end of a search: the best policy against uniform pruning at the same budget (re-scored by the same
    evaluator), the pruned model exported, the models timed, ``results.json`` / ``metrics.json``, the TensorBoard
    hyper-parameters, ``reward_curves.svg`` and the summary table; returns ``results.json``'s content."""
    s, st = setup.settings, state
    if st.best_ratios is None:
        raise ConfigError("every episode was penalized (non-finite mAP or cost): no policy to export; "
                          "see episodes.jsonl")
    best = np.asarray(st.best_ratios)
    env = setup.env.unwrapped
    uniform = np.full(len(setup.space), env.uniform_ratio())
    console.print(f"scoring uniform pruning at the same budget (ratio {uniform[0]:.4f}) with the same evaluator")
    uniform_outcome = setup.evaluate(uniform)
    uniform_reward = reward_from_config(setup.cfg.reward)(uniform_outcome)
    unpruned_map = setup.evaluate.unpruned_map() if hasattr(setup.evaluate, "unpruned_map") else None
    best_fig = policy_outcome(setup.space, best, float("nan"), setup.latency_table)
    uni_fig = uniform_outcome

    models: dict[str, Any] = {}
    if s.export_model or s.final_latency_runs:
        models["best"] = _pruned(setup, best)
        if s.final_latency_runs:
            models["uniform"] = _pruned(setup, uniform)
    if s.export_model:
        save_model(models["best"], setup.run_dir / "model",
                   extra={"pruned_from": setup.source, "policy": BEST_POLICY_FILE})
    measured = _final_latency(setup, models) if s.final_latency_runs else {}
    latency = {k: v.median_ms for k, v in measured.items()}
    max_spread = max_latency_spread(setup.cfg)
    noisy = [k for k, v in measured.items() if v.noisy(max_spread)]
    # Scored by the same evaluator at the same budget: a search that ends below uniform pruning found nothing
    # better than the one-line baseline, and its exported model is not the one to fine-tune.
    worse_than_uniform = bool(st.best_reward < uniform_reward.value)

    full = best_fig.full_flops, best_fig.full_params
    rows = {
        "original": {"map50_95_proxy": unpruned_map, "params": full[1], "gflops": full[0] / 1e9,
                     "latency_ms": latency.get("original")},
        "uniform": {"map50_95_proxy": uniform_outcome.map50_95, "params": uni_fig.params,
                    "gflops": uni_fig.flops / 1e9, "latency_ms": latency.get("uniform"),
                    "reward": uniform_reward.value},
        "best": {"map50_95_proxy": st.best_metrics.get("map50_95"), "params": best_fig.params,
                 "gflops": best_fig.flops / 1e9, "latency_ms": latency.get("best"), "reward": st.best_reward},
    }
    for name, row in rows.items():
        if name in measured:  # the spread of the passes, and the speed-up only when both timings can be trusted
            row["latency"] = measured[name].to_dict()
            row["speedup"] = speedup(measured["original"], measured[name], max_spread)
    results = {
        "best_reward": st.best_reward, "best_map_proxy": st.best_metrics.get("map50_95"),
        "best_episode": st.best_episode, "export_rule": s.export_rule, "uniform_map_proxy": uniform_outcome.map50_95,
        "uniform_reward": uniform_reward.value, "unpruned_map_proxy": unpruned_map,
        "flops_ratio": best_fig.flops / best_fig.full_flops, "params_ratio": best_fig.params / best_fig.full_params,
        "latency_ratio_estimated": (best_fig.latency_ms / best_fig.full_latency_ms
                                    if best_fig.latency_ms is not None else None),
        "episodes": st.episodes_done, "penalized_episodes": st.penalized, "search_s": st.search_s,
        "workers": s.workers, "setup_s": setup_s, "workers_setup_s": workers_setup_s,
        "budget": {s.budget_metric: s.budget_fraction}, "agent": str(setup.cfg.agent.name),
        "reward": str(setup.cfg.reward.name), "evaluator": str(setup.cfg.evaluator.name), "seed": s.seed,
        "units": len(setup.space), "img_size": list(s.img_size), "model": setup.source, "device": str(setup.device),
        "summary": rows, "best_policy": str(setup.run_dir / BEST_POLICY_FILE),
        # held out: the split (and how many of its images) policies were scored on, never data.split's
        "protocol": {"search_split": getattr(setup, "search_split", None), "report_split": str(setup.cfg.data.split),
                     "search_images": len(getattr(setup.evaluate, "image_files", []))},
        "model_dir": str(setup.run_dir / "model") if s.export_model else None,
        "worse_than_uniform": worse_than_uniform,
        # None when the models were not timed; else whether any timing spread past final.max_latency_spread
        "latency_noisy": bool(noisy) if measured else None, "max_latency_spread": max_spread,
    }
    atomic_write_json(setup.run_dir / "results.json", results)
    atomic_write_json(setup.run_dir / "metrics.json", results)
    log.hparams({"agent": str(setup.cfg.agent.name), "reward": str(setup.cfg.reward.name),
                      "budget_metric": s.budget_metric, "budget": s.budget_fraction, "seed": s.seed,
                      "episodes": st.episodes_done, "evaluator": str(setup.cfg.evaluator.name)},
                     {"best_reward": st.best_reward, "best_map_proxy": st.best_metrics.get("map50_95"),
                      "uniform_map_proxy": uniform_outcome.map50_95, "flops_ratio": results["flops_ratio"],
                      "worse_than_uniform": float(worse_than_uniform)})
    log.flush()
    atomic_write_text(setup.run_dir / "reward_curves.svg", reward_curves_svg(
        setup.run_dir, f"{setup.cfg.agent.name} search, {s.budget_metric} budget {s.budget_fraction:g}: reward per "
                      f"episode (from the TensorBoard events)",
        {"uniform pruning: reward": uniform_reward.value, "uniform pruning: proxy mAP": uniform_outcome.map50_95}))
    _print_summary(setup, state, rows, measured, max_spread)
    if noisy:
        worst = max(noisy, key=lambda k: measured[k].spread or float("inf"))
        spread = measured[worst].spread
        warn(f"latency too noisy to trust: the passes of {', '.join(noisy)} spread by up "
             f"to {'?' if spread is None else f'{spread:.0%}'} of the median (interquartile range; "
             f"final.max_latency_spread={max_spread:g}), so no speed-up is printed. Time again on an idle "
             f"machine, or with more final.latency_runs")
    if worse_than_uniform:
        warn(f"the best policy scores below uniform pruning at the same budget (reward {st.best_reward:.4f} < "
             f"{uniform_reward.value:.4f}, same evaluator): the search found nothing better than uniform "
             f"pruning; play more episodes, or fine-tune the uniform policy instead (metrics.json: "
             f"worse_than_uniform)")
    rule = "" if s.export_rule == "reward" else f", export_rule={s.export_rule}"
    console.print(f"best policy (episode {st.best_episode}{rule}): {setup.run_dir / BEST_POLICY_FILE}; "
                  f"results.json{', pruned model in model/' if s.export_model else ''} in {setup.run_dir}")
    return results

def _pruned(setup: SearchSetup, ratios: np.ndarray):  # noqa: ANN202
    """The physically pruned model of ``ratios`` (channels by the search's criterion), cost-checked."""
    selection = setup.criterion.select(setup.space.kept_channels(ratios))
    pruned = prune_model(setup.model, setup.space, selection)
    counted, analytic = pruned.cost(setup.space.img_size), setup.space.cost(selection.widths)
    if (counted.params, counted.macs) != (analytic.params, analytic.macs):
        raise RuntimeError("pruned model cost differs from the policy's analytic cost: please report this bug")
    return pruned.eval()

def _final_latency(setup: SearchSetup, models: dict[str, Any]) -> dict[str, Latency]:
    s = setup.settings
    timed = {"original": copy.deepcopy(setup.model).fuse(), **{k: copy.deepcopy(m).fuse() for k, m in models.items()}}
    threads = int(setup.cfg.device.threads) or None
    console.print(f"timing the original, uniform and best models ({setup.cfg.device.latency_backend}, "
                  f"{s.final_latency_runs} runs x {s.final_latency_rounds} rounds, interleaved)")
    measured = compare_latency(timed, s.img_size, backend=str(setup.cfg.device.latency_backend), threads=threads,
                               runs=s.final_latency_runs, rounds=s.final_latency_rounds, device=setup.device)
    return measured

def _print_summary(setup: SearchSetup, state: SearchState, rows: dict[str, dict[str, Any]],
                   measured: dict[str, Latency], max_spread: float) -> None:
    base = rows["original"]

    def fmt(v: Any, pattern: str) -> str:
        return "-" if v is None else format(v, pattern)

    table = []
    for name, r in rows.items():
        table.append([name, fmt(r["map50_95_proxy"], ".4f"), f"{r['params'] / 1e6:.3f}M",
                      f"{r['params'] / base['params']:.1%}", f"{r['gflops']:.3f}",
                      f"{r['gflops'] / base['gflops']:.1%}",
                      fmt(r["latency_ms"], ".2f"), spread_text(measured.get(name)),
                      _speedup_text(r, name in measured)])
    s = setup.settings
    print_table(f"{setup.source}: {setup.cfg.agent.name} search, {s.budget_metric} budget {s.budget_fraction:g}, "
                f"{state.episodes_done} episodes (mAP: proxy mAP@0.5:0.95 before fine-tuning)",
                ["model", "mAP proxy", "params", "of orig.", "GFLOPs", "of orig.", "ms", "IQR", "speed-up"], table)
    if measured:
        runs = next(iter(measured.values())).runs
        console.print(f"ms: median latency of {runs} passes, {setup.cfg.device.latency_backend}, batch 1, "
                      f"{s.img_size[0]}x{s.img_size[1]}; IQR: the interquartile range of those passes, as a "
                      f"fraction of the median; speed-up 'noisy' past {max_spread:.0%} (final.max_latency_spread)")


def _speedup_text(row: dict[str, Any], timed: bool) -> str:
    """The speed-up cell: ``1.33x``, ``noisy`` when a timing is not to be trusted, ``-`` when nothing was timed."""
    if not timed:
        return "-"
    return "noisy" if row.get("speedup") is None else f"{row['speedup']:.2f}x"
