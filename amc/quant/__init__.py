"""Quantization-aware training (QAT) of amc models with PyTorch's own machinery (``torch.ao.quantization``).

:mod:`amc.quant.qat` puts fake quantization into a fused model where ``amc-export int8=true`` deploys INT8
(per-channel int8 weights, per-tensor activations, the head and the box decoding in float unless told), so that
fine-tuning sees the rounding the deployed graph will do; it saves and loads such a model as tensors (safetensors)
and plain metadata. :mod:`amc.quant.onnx` writes the INT8 (QDQ) ONNX graph from the scales the model learned,
instead of calibrating them after training.
"""

from amc.quant.qat import (QAT_FORMAT, QUANT_FILE, QuantScheme, calibrate, float_model, is_qat_checkpoint,
                           load_qat_model, prepare_qat, save_qat_model)

__all__ = ["QAT_FORMAT", "QUANT_FILE", "QuantScheme", "calibrate", "float_model", "is_qat_checkpoint",
           "load_qat_model", "prepare_qat", "save_qat_model"]
