"""``amc-export``: ONNX export (optionally with NMS in the graph) and INT8 quantization, checked on real images.

Examples::

    amc-export                                         # the demo model: model.onnx, checked against PyTorch
    amc-export nms=true                                # the graph also runs NMS (ONNX NonMaxSuppression)
    amc-export int8=true                               # + model.int8.onnx, fp32/int8 mAP and CPU latency
    amc-export int8=true calibration.method=Entropy subset=100
    amc-export model.path=outputs/prune/.../model data=coco data.path=/data/coco img_size=640

The graph is exported from a fused copy of the model (``fuse=true``) with dynamic batch, height and width, then
run in ONNX Runtime on ``verify.images`` images of ``data.split`` next to the PyTorch model: the max abs difference
of the decoded predictions (boxes and scores, before NMS) must be at most ``verify.tolerance``. With ``nms=true``
the graph's detections are compared with amc's NMS on the same images. Nothing is written before these checks
pass, and every file is written atomically. Writes ``model.onnx``, ``model.int8.onnx`` (``int8=true``) and
``metrics.json`` to the run directory.
"""


from __future__ import annotations

from omegaconf import DictConfig

from amc.cli.app import amc_app
from amc.config import run_dir


@amc_app("export")
def main(cfg: DictConfig) -> dict:
    from amc.deploy.export import export  # torch and onnxruntime: kept off start-up so that --help is fast

    return export(cfg, run_dir())


if __name__ == "__main__":
    main()
