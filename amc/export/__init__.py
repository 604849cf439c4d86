"""Deployment exports: ONNX graphs of amc models (optionally with NMS inside) and their INT8 quantization.

:mod:`amc.export.onnx` exports a fused model with a dynamic batch axis and checks it in ONNX Runtime against
PyTorch; :mod:`amc.export.quantize` quantizes an exported graph to INT8 (static, QDQ, per-channel weights).
``amc-export`` (:mod:`amc.cli.export`) runs both and measures mAP and CPU latency.
"""

from amc.export.onnx import (ONNX_OPSET, ExportError, GraphNms, OnnxDetector, add_nms, export_detector,
                             graph_detections, ort_session, save_onnx, torch_to_onnx)

__all__ = ["ONNX_OPSET", "ExportError", "GraphNms", "OnnxDetector", "add_nms", "export_detector",
           "graph_detections", "ort_session", "save_onnx", "torch_to_onnx"]
