"""``amc-finetune``: fine-tune a pruned model, optionally distilling the unpruned model into it.

Examples::

    amc-finetune                                          # demo: uniform pruning to 50% FLOPs, then fine-tuning + KD
    amc-finetune run=outputs/search/<date>                # an amc-search run: its pruned model, its base model as teacher
    amc-finetune policy=outputs/prune/<date>/policy.yaml  # a policy applied to model= (default: the demo)
    amc-finetune model.path=outputs/prune/<date>/model    # an already pruned amc model (teacher: the model it
                                                          # was pruned from, or teacher.path=...)
    amc-finetune kd.output_weight=0 kd.feature_weight=0   # plain fine-tuning, no distillation
    amc-finetune resume=outputs/finetune/<date>           # continue an interrupted fine-tune in its own folder

The run directory holds ``finetune_config.yaml`` (what the run started with; ``resume=`` reads it back),
``start/`` (the pruned model before fine-tuning), ``best/`` (the best EMA weights by validation fitness, amc
format), ``last/`` and ``trainer_state.pt`` (for ``resume=``), ``tensorboard/`` and ``metrics.json``.
"""


from __future__ import annotations

from omegaconf import DictConfig

from amc.cli.app import amc_app
from amc.config import run_dir
from amc.finetune.resume import FINETUNE_RESUME
from amc.resume import task_overrides


@amc_app("finetune", resume=FINETUNE_RESUME)
def main(cfg: DictConfig) -> dict:
    from amc.finetune.workflow import run_finetune  # torch: kept off start-up so that --help is fast

    return run_finetune(cfg, run_dir(), task_overrides())


if __name__ == "__main__":
    main()
