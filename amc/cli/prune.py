"""``amc-prune``: prune a model by a policy file or a baseline at a FLOPs budget.

Examples::

    amc-prune                                           # demo model, uniform ratios to 50% of the FLOPs
    amc-prune method=global budget.flops=0.3            # Torch-Pruning global magnitude ranking
    amc-prune method=policy policy=outputs/amc-search/.../policy.yaml criterion=ls
    amc-prune model=yolov7-tiny mode=finegrained finegrained.sparsity=0.7

Writes ``model/`` (amc format, truly smaller), ``policy.yaml`` and ``metrics.json`` to the run directory.
"""

from __future__ import annotations

from omegaconf import DictConfig

from amc.cli.app import amc_app
from amc.config import run_dir


@amc_app("prune")
def main(cfg: DictConfig) -> dict:
    from amc.prune.workflow import prune  # torch: kept off start-up so that --help is fast

    return prune(cfg, run_dir())


if __name__ == "__main__":
    main()
