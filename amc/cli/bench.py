"""``amc-bench``: measurements kept out of the test suite (they take minutes or depend on the machine).

Examples::

    amc-bench                       # bench=pruning: policy cost / apply timings and the baseline table
    amc-bench bench=fidelity        # proxy mAP vs full-val and fine-tuned mAP (Spearman rho), scatter plot
    amc-bench bench=speed           # proxy evaluation time per episode vs the bare forward passes
    amc-bench bench=latency         # per-unit latency table: build time, estimate cost, error vs measured
    amc-bench bench.cost_models=[yolov7-tiny] bench.latency.threads=1

Each bench is a module of :mod:`amc.bench` (``bench=<name>`` runs ``amc.bench.<name>``); this command only
dispatches and writes ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from amc.atomic import atomic_write_json
from amc.cli.app import amc_app
from amc.config import run_dir
from amc.console import console
from amc.errors import ConfigError

BENCHES = ("pruning", "latency", "fidelity", "speed", "compare", "parallel", "memory")
"""Every bench by name (``bench.name`` in ``conf/bench/``)."""


def bench_function(name: str) -> Callable[[DictConfig], dict]:
    """The function that runs ``bench=<name>``: ``run(cfg) -> results``, writing into the Hydra run directory.

    Each bench's module is imported when it runs, not at start-up (torch, the search): ``--help`` stays fast.
    """
    if name == "pruning":
        from amc.bench.pruning import pruning_bench as run  # imported when it runs (see above)
    elif name == "latency":
        from amc.bench.latency import latency_bench as run  # imported when it runs (see above)
    elif name == "fidelity":
        from amc.bench.fidelity import fidelity_bench as run  # imported when it runs (see above)
    elif name == "speed":
        from amc.bench.speed import speed_bench as run  # imported when it runs (see above)
    elif name == "compare":
        from amc.bench.compare import compare_bench as run  # imported when it runs (see above)
    elif name == "parallel":
        from amc.bench.parallel import parallel_bench as run  # imported when it runs (see above)
    elif name == "memory":
        from amc.bench.memory import memory_bench as run  # imported when it runs (see above)
    else:
        raise ConfigError(f"bench={name} is unknown; choose one of {', '.join(BENCHES)}")
    return run


@amc_app("bench")
def main(cfg: DictConfig) -> dict:
    from amc.bench.common import machine  # torch: kept off start-up so that --help is fast

    run = bench_function(str(cfg.bench.name))
    out = run_dir()
    results = run(cfg)
    results["machine"] = machine()
    path = atomic_write_json(out / "metrics.json", {"bench": str(cfg.bench.name), **results})
    console.print(f"results written to {path}")
    return results


if __name__ == "__main__":
    main()
