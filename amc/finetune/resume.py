"""How an ``amc-finetune`` run directory is recognized and resumed: its config file and the settings a resume may
change.

Kept free of torch so that the command checks a ``resume=`` command line before anything heavy is imported (and
before Hydra writes into the folder); :mod:`amc.finetune.workflow` does the fine-tuning itself.
"""

from __future__ import annotations

from amc.resume import DISPLAY_ONLY, ResumeRule

CONFIG_FILE = "finetune_config.yaml"
RUN_MARKER = "amc_finetune"
START_DIR = "start"
#: ``amc-finetune resume=DIR`` continues the run with its own settings (checked before Hydra starts, see
#: amc.resume): the epochs already trained followed its schedule, data and distillation, and changing any of
#: them halfway would train neither the old model nor the new one. Only these may differ:
FINETUNE_RESUME = ResumeRule(command="amc-finetune", config_file=CONFIG_FILE, marker=RUN_MARKER,
                             mutable=DISPLAY_ONLY, required=(START_DIR,))
