"""``amc-bench bench=parallel``: search throughput (episodes/hour) for 1, 2 and more parallel workers.

Every setting is a complete ``amc-search`` in its own process (so no setting inherits another's threads, caches
in memory or worker processes) with ``workers=N``; its ``results.json`` gives the episodes' wall time
(``search_s``) apart from the one-off set-up (``setup_s``: model, data, evaluator of the main process;
``workers_setup_s``: starting the N worker processes, each building its own model copy and evaluator).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from amc.atomic import atomic_write_json
from amc.config import config_number, output_dir
from amc.console import ProgressLog, console, print_table
from amc.errors import ConfigError
from amc.search.parallel import episodes_per_hour


def _settings(b: DictConfig) -> tuple[list[int], list[str]]:
    workers = list(b.workers) if OmegaConf.is_list(b.get("workers")) else None
    if not workers or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in workers) \
            or len(set(workers)) != len(workers):
        raise ConfigError(f"bench.workers must be a list of distinct whole numbers >= 1, got {b.get('workers')!r}")
    search = list(b.search) if OmegaConf.is_list(b.get("search")) else None
    if search is None or not all(isinstance(o, str) and "=" in o for o in search):
        raise ConfigError(f"bench.search must be a list of amc-search overrides (key=value), got {b.get('search')!r}")
    reserved = [o for o in search if o.split("=", 1)[0].lstrip("+~") in
                ("workers", "episodes", "seed", "device", "device.threads", "agent.warmup", "hydra.run.dir")]
    if reserved:
        raise ConfigError(f"bench.search sets {', '.join(reserved)}: those are the bench's own knobs "
                          f"(bench.workers, episodes, device, threads, warmup; seed)")
    return workers, search


def _search(overrides: list[str], threads: int, timeout_s: float, out: Path) -> tuple[dict[str, Any], float]:
    """Run one amc-search; its results.json and the wall time of the whole command."""
    env = dict(os.environ)
    if threads:  # the BLAS / OpenMP pools of every process of the search, not only torch's
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    try:
        run = subprocess.run([sys.executable, "-m", "amc.cli.search", f"hydra.run.dir={out}", *overrides],
                             capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"the search in {out} ran past bench.timeout_s={timeout_s:g}: fewer episodes or a "
                          f"longer timeout") from None
    wall = time.perf_counter() - started
    if run.returncode != 0:
        lines = (run.stderr or run.stdout).strip().splitlines()
        raise ConfigError(f"the search in {out} failed: {lines[-1] if lines else f'exit {run.returncode}'}")
    return json.loads((out / "results.json").read_text()), wall


def parallel_bench(cfg: DictConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Episodes/hour of the demo search (proxy evaluator) for each ``bench.workers`` count, each search in
    ``out_dir/workers-N`` (default: the Hydra run directory); returns the results."""
    b = cfg.bench
    workers, search = _settings(b)
    episodes = config_number(b, "episodes", int, 1, prefix="bench.")
    warmup = config_number(b, "warmup", int, 0, prefix="bench.")
    threads = config_number(b, "threads", int, 0, prefix="bench.")
    seed = config_number(cfg, "seed", int)  # amc-bench's own seed (conf/bench.yaml)
    timeout_s = config_number(b, "timeout_s", float, 1, prefix="bench.")
    device = str(b.device)
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(f"bench.device must be cpu, cuda or cuda:N, got {device!r}")
    out_dir = output_dir(out_dir)
    rows: list[dict[str, Any]] = []
    # each setting is a whole search in a subprocess whose output is captured: a line after each, with an ETA
    settings_log = ProgressLog("bench=parallel setting", len(workers), interval_s=0, echo=True)
    for n in workers:
        console.print(f"workers={n}: {episodes} episodes ({warmup} warm-up) on {device}, {threads or 'default'} "
                      f"torch threads per worker")
        overrides = [*search, f"workers={n}", f"episodes={episodes}", f"agent.warmup={warmup}", f"seed={seed}",
                     f"device={device.split(':')[0]}", f"device.threads={threads}"]
        if ":" in device:
            overrides.append(f"device.name={device}")
        results, wall = _search(overrides, threads, timeout_s, out_dir / f"workers-{n}")
        rows.append({"workers": n, "episodes": int(results["episodes"]), "search_s": float(results["search_s"]),
                     "episodes_per_hour": episodes_per_hour(int(results["episodes"]), float(results["search_s"])),
                     "setup_s": results.get("setup_s"), "workers_setup_s": results.get("workers_setup_s"),
                     "wall_s": wall, "best_reward": results.get("best_reward"),
                     "run_dir": str(out_dir / f"workers-{n}")})
        settings_log.update(len(rows), f"workers={n}: {rows[-1]['episodes_per_hour']:.0f} episodes/hour, "
                                       f"command {wall:.0f} s")
    reference = next((r for r in rows if r["workers"] == 1), rows[0])
    for r in rows:
        r["speedup"] = r["episodes_per_hour"] / reference["episodes_per_hour"]
    print_table(f"search throughput: demo model, proxy evaluator, {device}, {threads or 'default'} torch threads per "
                f"worker, {episodes} episodes per setting (speed-up vs {reference['workers']} worker"
                f"{'s' if reference['workers'] > 1 else ''}; set-up not in the episodes' time)",
                ["workers", "episodes", "episodes s", "episodes/hour", "speed-up", "set-up s (main)",
                 "set-up s (workers)", "command s"],
                [[r["workers"], r["episodes"], f"{r['search_s']:.1f}", f"{r['episodes_per_hour']:.0f}",
                  f"{r['speedup']:.2f}x", f"{r['setup_s']:.1f}", f"{r['workers_setup_s']:.1f}", f"{r['wall_s']:.1f}"]
                 for r in rows])
    results = {"device": device, "threads_per_worker": threads, "episodes": episodes, "warmup": warmup,
               "seed": seed, "cpu_count": os.cpu_count(), "search": search, "settings": rows}
    atomic_write_json(out_dir / "results.json", results)
    return results
