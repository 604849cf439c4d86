"""Print amc's parameter and GFLOPs counts for the 15 official YOLOv7 cfgs as a Markdown table.

Usage: python scripts/official_counts.py

Counts are analytic (amc.models.count_architecture, thop's convention: 2 x MACs). The last column quotes the
figures published in the official YOLOv7 README (deployed models; P6 models at 1280, the others at 640) for
comparison; they are references, not amc measurements.
"""

from __future__ import annotations

from amc.models import count_architecture, load_cfg, official_cfg_names
from amc.models.io import official_cfg_dir

#: The official YOLOv7 README table (params in M, GFLOPs, test size), keyed by the cfg each row matches: the
#: deploy cfgs, except yolov7-d6 whose published 154.7M parameters are those of its training cfg.
PUBLISHED = {"deploy/yolov7-tiny.yaml": (6.2, 13.8, 640), "deploy/yolov7.yaml": (36.9, 104.7, 640),
             "deploy/yolov7x.yaml": (71.3, 189.9, 640), "deploy/yolov7-w6.yaml": (70.4, 360.0, 1280),
             "deploy/yolov7-e6.yaml": (97.2, 515.2, 1280), "training/yolov7-d6.yaml": (154.7, 806.8, 1280),
             "deploy/yolov7-e6e.yaml": (151.7, 843.2, 1280)}


def main() -> None:
    print("| cfg | params | GFLOPs@640 | fused params | fused GFLOPs@640 | official README | amc at that size |")
    print("|---|---:|---:|---:|---:|---|---|")
    for name in official_cfg_names():
        arch = load_cfg(official_cfg_dir() / name)
        raw, fused = count_architecture(arch, 640), count_architecture(arch, 640, fused=True)
        quoted = same = ""
        if name in PUBLISHED:
            params, gflops, size = PUBLISHED[name]
            quoted = f"{params}M, {gflops} GFLOPs @{size}"
            at = count_architecture(arch, size, fused=True)
            same = f"{at.params / 1e6:.1f}M, {at.gflops:.1f} GFLOPs ({at.gflops / gflops - 1:+.1%})"
        print(f"| {name} | {raw.params:,} | {raw.gflops:.1f} | {fused.params:,} | {fused.gflops:.1f} | "
              f"{quoted} | {same} |")


if __name__ == "__main__":
    main()
