"""``amc-eval``: mAP@0.5:0.95, mAP@0.5, params, GFLOPs and images/s of a model on a dataset; with ``report.*``
entries, the deployment report of several models (original, pruned, fine-tuned, INT8) side by side.

Examples::

    amc-eval                                              # the demo model on the demo val split
    amc-eval model.path=yolov7-tiny.pt data=coco data.path=/data/coco
    amc-eval model.path=best.pt data=yolo data.path=/data/mine/data.yaml subset=200
    amc-eval report.pruned=outputs/amc-search/RUN report.finetuned=outputs/amc-finetune/RUN \
             report.int8=outputs/amc-export/RUN           # deployment report (conf/eval.yaml, report:)
"""

from __future__ import annotations

from omegaconf import DictConfig

from amc.cli.app import amc_app
from amc.config import run_dir


@amc_app("eval")
def main(cfg: DictConfig) -> dict:
    from amc.deploy.evaluate import evaluate  # torch and onnx: kept off start-up so that --help is fast

    return evaluate(cfg, run_dir())


if __name__ == "__main__":
    main()
