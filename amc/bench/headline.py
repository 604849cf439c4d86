"""The README's headline table, rendered from a ``bench=compare`` ``results.json`` (issue 20: "the README's headline
table is that file").

The README holds the rendering between two markers (:data:`START`, :data:`END`); ``scripts/readme_headline.py``
rewrites that block from ``docs/results/compare-heldout/results.json`` and a test checks that the two agree, so the
headline cannot drift from the measured file. Everything shown is read from the file (nothing is recomputed but
ratios of numbers it holds), so a table with fewer seeds than the bench asked for says so.
"""

from __future__ import annotations

import re
import statistics
import textwrap
from typing import Any

from amc.bench.compare_stats import JUDGE_SEED_STRIDE
from amc.console import fmt_interval, fmt_number

START = "<!-- headline:start (generated from {source} by scripts/readme_headline.py; do not edit by hand) -->"
END = "<!-- headline:end -->"
LABELS = {"ddpg": "DDPG (`amc-search episodes={episodes}`)", "random": "random search, best of the same episodes",
          "uniform": "uniform pruning", "global_magnitude": "global magnitude (Torch-Pruning's ranking)"}
"""How each method reads in the table."""


def _pct(key: str) -> str:
    return f"{float(key):.0%}"


def _count(images: Any) -> str:
    """An image count recorded as a number or as the list of image ids."""
    if images is None:
        return "?"
    return str(len(images)) if isinstance(images, list) else str(images)


def _wrap(paragraph: str) -> str:
    return textwrap.fill(paragraph, width=115, break_long_words=False, break_on_hyphens=False)


def _judge(settings: dict[str, Any]) -> str:
    """How a policy's fine-tuned mAP was judged, from the bench's fine-tune settings ('' when they are not recorded)."""
    finetune = settings.get("finetune") or {}
    epochs, images = finetune.get("epochs"), finetune.get("train_images")
    if not epochs:
        return ""
    judges = finetune.get("judge_seeds") or 1
    where = f" on {images} train images" if images else ""
    if judges == 1:
        return f" (after one {epochs}-epoch fine-tune{where})"
    return (f" (the mean of {judges} {epochs}-epoch fine-tunes{where}, fine-tune seeds seed + {JUDGE_SEED_STRIDE} r "
            f"for r < {judges})")


def _seed_counts(results: dict[str, Any]) -> dict[str, int]:
    """Seeds every method has at each budget (``bench.report_only`` reports only those)."""
    return {key: min(len(a["seeds"]) for a in methods.values()) for key, methods in results["budgets"].items()}


def headline_markdown(results: dict[str, Any], source: str) -> str:
    """The headline block for ``results`` (a ``bench=compare`` results.json), markers included. ``source`` is the
    file's path as the README names it."""
    settings = results["settings"]
    protocol = settings.get("protocol") or {}
    counts = _seed_counts(results)
    asked = len(settings["seeds"])
    lines = [START.format(source=f"`{source}`"), ""]
    seeds = ", ".join(f"{n} of {asked} seeds at {_pct(k)}" for k, n in counts.items())
    lines.append(_wrap(
        f"The demo model, every method at the same FLOPs budget with the shipped defaults ({seeds}; "
        f"{settings['episodes']} episodes per search). Fine-tuned mAP@0.5:0.95{_judge(settings)} on the "
        f"{_count(protocol.get('report_images', settings.get('full_images')))} images of the "
        f"`{protocol.get('report_split', 'val')}` split; the searches scored policies on "
        f"{_count(protocol.get('search_images'))} images of the `{protocol.get('search_split', '?')}` split "
        f"({protocol.get('overlap_images', '?')} images in common). DDPG - method is paired by seed: mean, 95% "
        f"bootstrap interval, seeds DDPG won / tied / lost."))
    lines += ["", "| FLOPs kept | method | fine-tuned mAP (mean ± sd) | DDPG - method | 95% CI | won / tied / lost "
              "| episodes to 95% of best (mean) |", "|---|---|---:|---:|---:|---:|---:|"]
    for key, methods in results["budgets"].items():
        pairs = results["paired"]["map_finetuned"].get(key, {})
        for method, a in methods.items():
            p = pairs.get(method)
            diff = fmt_number(p["mean"], sign=True) if p else ""
            ci = fmt_interval(p["ci95"]) if p else ""
            record = f"{p['wins']} / {p['ties']} / {p['losses']}" if p else ""
            label = LABELS.get(method, method).format(episodes=settings["episodes"])
            lines.append(f"| {_pct(key)} | {label} | {fmt_number(a['map_finetuned'])} ± "
                         f"{fmt_number(a['map_finetuned_std'])} | {diff} | {ci} | {record} | {fmt_number(a['episodes_to_95'], 1)} |")
    lines += ["", _wrap(_notes(results, counts))]
    lines += ["", END]
    return "\n".join(lines)


def _notes(results: dict[str, Any], counts: dict[str, int]) -> str:
    """Failed seeds, DDPG's speed against random search's, the fine-tune's own noise and where the cells ran."""
    budgets = results["budgets"]
    failed = results.get("ddpg_failed_seeds", {})
    notes = ["Failed DDPG seeds (best policy a warm-up draw, or its last 15 episodes no better than the warm-up): "
             + ", ".join(f"{len(failed.get(k) or [])} at {_pct(k)}" for k in budgets) + "."]
    speed = []
    for key, methods in budgets.items():
        ours, theirs = methods.get("ddpg", {}).get("episodes_to_95"), methods.get("random", {}).get("episodes_to_95")
        if ours and theirs:
            speed.append(f"{ours / theirs:.2f} at {_pct(key)}")
    if speed:
        notes.append("Episodes DDPG needs to reach 95% of its best proxy mAP, as a share of random search's: "
                     + ", ".join(speed) + ".")
    # uniform and global magnitude prune the same channels for every seed: their spread is the fine-tune's alone
    floor = []
    for key, methods in budgets.items():
        sds = [statistics.stdev(values) for m in ("uniform", "global_magnitude") if m in methods
               for values in [[s.get("map_finetuned") for s in methods[m]["per_seed"]]]
               if len(values) > 1 and None not in values]
        if sds:
            floor.append(f"{' / '.join(fmt_number(sd) for sd in sds)} at {_pct(key)}")
    if floor:
        notes.append("The fine-tune's own noise (the sd over seeds of uniform / global magnitude, whose policy is the "
                     "same for every seed): " + ", ".join(floor) + ".")
    notes.append(_where(results))
    return " ".join(n for n in notes if n)


def _machine_name(machine: dict[str, Any]) -> str:
    gpu = f"{machine['cuda']}, " if machine.get("cuda") else ""
    return (f"{machine.get('device', '?')} ({gpu}torch {machine.get('torch', '?')}, {machine.get('threads', '?')} "
            f"thread(s) per process)")


def _seed_list(seeds: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2, 5``."""
    runs: list[list[int]] = []
    for s in sorted(seeds):
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def _where(results: dict[str, Any]) -> str:
    """Where the cells ran: the one machine, or each machine with its seeds (a bench finished elsewhere)."""
    found = results.get("cell_machines")
    if not found:  # results written before the cells' machines were summarized: the reporting process's
        machine = results["settings"].get("machine") or {}
        return f"Cells ran on {_machine_name(machine)}." if machine else ""
    machines = found["machines"]
    if len(machines) == 1:
        return f"Cells ran on {_machine_name(machines[0]['machine'])}."
    parts = []
    for entry in machines:
        seeds = sorted({s for v in entry["seeds"].values() for s in v})
        parts.append(f"seeds {_seed_list(seeds)} on {_machine_name(entry['machine'])}")
    mixed = found.get("mixed_seeds") or {}
    tail = (" Every method of a seed ran on the same machine, so each paired difference is measured on one."
            if not any(mixed.values()) else
            " Seeds whose methods ran on different machines: "
            + "; ".join(f"{_seed_list(v)} at {_pct(k)}" for k, v in mixed.items() if v) + ".")
    return "Cells ran on: " + "; ".join(parts) + "." + tail


def replace_block(text: str, block: str) -> str:
    """``text`` (the README) with its headline block replaced by ``block``; a README without the markers is an
    error, so a moved or deleted block is noticed."""
    pattern = re.compile(re.escape("<!-- headline:start") + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError("the README has no headline block (its start and end markers)")
    return pattern.sub(lambda _: block, text, count=1)
