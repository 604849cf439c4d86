"""Deployment workflows: a model's size and cost layer by layer (``amc-info``, :mod:`amc.deploy.info`), its scores and the report that measures several versions of a detector side by
side (``amc-eval``, :mod:`amc.deploy.evaluate`, :mod:`amc.deploy.report`), ONNX export and INT8 quantization
(``amc-export``, :mod:`amc.deploy.export`)."""
