"""``amc-info``: per-layer widths, parameters and GFLOPs of a model (cfg, official checkpoint or amc model).

Examples::

    amc-info                                  # the embedded demo model
    amc-info model=yolov7                     # an official cfg shipped with amc
    amc-info model.path=yolov7-tiny.pt img_size=[384,640]
"""

from __future__ import annotations

from omegaconf import DictConfig

from amc.cli.app import amc_app
from amc.config import run_dir


@amc_app("info")
def main(cfg: DictConfig) -> dict:
    from amc.deploy.info import model_info  # torch: kept off start-up so that --help is fast

    return model_info(cfg, run_dir())


if __name__ == "__main__":
    main()
