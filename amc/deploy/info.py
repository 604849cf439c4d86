"""The ``amc-info`` workflow: a model's per-layer widths, parameters and GFLOPs, as loaded and fused (deployed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from amc.atomic import atomic_write_json
from amc.config import parse_img_size
from amc.console import console, print_table
from amc.factory import load_model_from_config
from amc.models.flops import count_architecture


def model_info(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Print the model's layer table (``per_layer``) and summary; write ``out/metrics.json`` and return it."""
    img_size = parse_img_size(cfg.img_size)
    model, names, source = load_model_from_config(cfg.model)
    cost = model.cost(img_size)
    fused = count_architecture(model.arch, img_size, fused=True)
    rows = []
    for layer, spec in zip(cost.layers, model.arch.layers):
        rows.append([layer.index, spec.from_, layer.module, layer.c_in, layer.c_out or "-",
                     "x".join(map(str, layer.out_hw)) if layer.out_hw != (0, 0) else "-",
                     f"{layer.params:,}", f"{layer.gflops:.3f}"])
    if cfg.per_layer:
        print_table(f"{source}: layers at {img_size[0]}x{img_size[1]}",
                    ["#", "from", "module", "in ch", "out ch", "out size", "params", "GFLOPs"], rows, numeric_from=3)
    metrics = {
        "model": source, "classes": len(names), "img_size": list(img_size),
        "params": cost.params, "gflops": cost.gflops, "fused": cost.fused,
        "fused_params": fused.params, "fused_gflops": fused.gflops,
        "strides": model.stride.tolist(), "layers": cost.to_dict()["layers"],
    }
    path = atomic_write_json(Path(out) / "metrics.json", metrics)
    print_table("summary", ["", "params", "GFLOPs"],
                [["as loaded" + (" (fused)" if cost.fused else ""), f"{cost.params:,}", f"{cost.gflops:.2f}"],
                 ["fused (deployed)", f"{fused.params:,}", f"{fused.gflops:.2f}"]])
    console.print(f"{len(model.arch.layers)} layers, {len(names)} classes, strides {model.stride.tolist()}; "
                  f"metrics written to {path}")
    return metrics
