"""YOLOv7 models: architectures from official cfgs, the network, safe loading/saving, cost counting."""

from amc.models.arch import Architecture, LayerSpec, load_cfg, parse_cfg
from amc.models.flops import LayerCost, ModelCost, count_architecture
from amc.models.io import load_model, official_cfg_names, save_model
from amc.models.yolo import YOLOv7

__all__ = ["Architecture", "LayerSpec", "LayerCost", "ModelCost", "YOLOv7", "count_architecture",
           "load_cfg", "load_model", "official_cfg_names", "parse_cfg", "save_model"]

