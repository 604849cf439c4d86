"""The export workflow behind ``amc-export``: ONNX export (optionally with NMS in the graph) and INT8
quantization, checked on real images against the PyTorch model before anything is written (what is checked and
written: the command's help, :mod:`amc.cli.export`).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from omegaconf import DictConfig

from amc.atomic import atomic_write_json
from amc.config import config_number
from amc.console import console, print_table, warn
from amc.data.datasets import cache_dir
from amc.data.loaders import EvalSet, sample_batches
from amc.errors import ConfigError
from amc.eval.evaluator import DetectionEvaluator, EvalSettings, check_classes
from amc.eval.latency import Latency, latency_session, run_interleaved, speedup, spread_text
from amc.eval.nms import non_max_suppression
from amc.export.onnx import (MIN_EXPORT_OPSET, ExportError, GraphNms, OnnxDetector, add_nms, check_predictions,
                             compare_detections, export_detector, graph_detections, max_export_opset, ort_session,
                             save_onnx)
from amc.export.quantize import ACTIVATION_TYPES, CALIBRATION_METHODS, DEFAULT_BINS, quantize_int8
from amc.factory import load_data_from_config, load_model_from_config
from amc.quant.onnx import export_qat, prediction_agreement
from amc.quant.qat import is_qat_checkpoint, load_qat_model


def _flag(node: DictConfig, key: str, prefix: str = "", optional: bool = False) -> bool | None:
    value = node.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise ConfigError(f"{prefix}{key} must be true or false{' or null' if optional else ''}, got {value!r}")
    return value


def _settings(cfg: DictConfig) -> dict[str, Any]:
    """Every knob, checked before any work starts (one-line errors)."""
    s: dict[str, Any] = {
        "img_size": config_number(cfg, "img_size", int, 32),
        "opset": config_number(cfg, "opset", int, MIN_EXPORT_OPSET, max_export_opset()),
        "fuse": _flag(cfg, "fuse"), "nms": _flag(cfg, "nms"), "int8": _flag(cfg, "int8"),
        "threads": config_number(cfg, "threads", int, 1, optional=True),
        "seed": config_number(cfg, "seed", int),
        "verify_images": config_number(cfg.verify, "images", int, 1, prefix="verify."),
        "verify_batch": config_number(cfg.verify, "batch_size", int, 1, prefix="verify."),
        "tolerance": config_number(cfg.verify, "tolerance", float, 0.0, prefix="verify."),
        "nms_unmatched": config_number(cfg.verify, "nms_unmatched", float, 0.0, 1.0, prefix="verify."),
        "subset": config_number(cfg, "subset", int, 1, optional=True),
        "batch_size": config_number(cfg, "batch_size", int, 1),
        "cache": _flag(cfg, "cache"),
    }
    measure = _flag(cfg, "measure", optional=True)
    s["measure"] = s["int8"] if measure is None else measure
    o = cfg.nms_options
    s["graph_nms"] = GraphNms(config_number(o, "conf_thres", float, 0.0, 1.0, prefix="nms_options."),
                              config_number(o, "iou_thres", float, 0.0, 1.0, prefix="nms_options."),
                              config_number(o, "max_det", int, 1, prefix="nms_options."),
                              _flag(o, "multi_label", prefix="nms_options."))
    e = cfg.eval
    s["eval"] = {"conf_thres": config_number(e, "conf_thres", float, 0.0, 1.0, prefix="eval."),
                 "iou_thres": config_number(e, "iou_thres", float, 0.0, 1.0, prefix="eval."),
                 "max_det": config_number(e, "max_det", int, 1, prefix="eval."),
                 "multi_label": _flag(e, "multi_label", prefix="eval.")}
    q, c = cfg.quantize, cfg.calibration
    if str(q.activation_type) not in ACTIVATION_TYPES:
        raise ConfigError(f"quantize.activation_type must be one of {', '.join(ACTIVATION_TYPES)}, "
                          f"got {q.activation_type!r}")
    if str(c.method) not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration.method must be one of {', '.join(CALIBRATION_METHODS)}, got {c.method!r}")
    s["from_qat"] = _flag(q, "from_qat", "quantize.")
    s["quantize"] = {"per_channel": _flag(q, "per_channel", "quantize."), "activation_type": str(q.activation_type),
                     "keep_head": _flag(q, "keep_head", "quantize."),
                     "reduce_range": _flag(q, "reduce_range", "quantize."), "method": str(c.method),
                     "bins": config_number(c, "bins", int, 16, optional=True, prefix="calibration."),
                     "percentile": config_number(c, "percentile", float, 50.0, 100.0, prefix="calibration.")}
    s["calibration_images"] = config_number(c, "images", int, prefix="calibration.")
    if s["int8"] and s["calibration_images"] < 1:
        raise ConfigError(f"calibration.images must be >= 1: INT8 calibration needs images, "
                          f"got {s['calibration_images']}")
    s["calibration_batch"] = config_number(c, "batch_size", int, 1, prefix="calibration.")
    s["latency"] = {k: config_number(cfg.latency, k, int, low, prefix="latency.")
                    for k, low in (("runs", 1), ("rounds", 1), ("warmup", 0), ("batch_size", 1))}
    s["latency"]["max_spread"] = config_number(cfg.latency, "max_spread", float, 0.0, prefix="latency.")
    return s


def _calibration_images(cfg: DictConfig, s: dict[str, Any]):  # noqa: ANN202
    """The calibration batches (float32 numpy, letterboxed training images); one-line error when there are none."""
    train_split = str(cfg.data.get("train_split") or "train")
    train = load_data_from_config(cfg.data, train_split)
    if len(train) == 0:
        raise ConfigError(f"INT8 calibration needs images, but {train.source} ({train_split} split) has none")
    singles = sample_batches(train, s["calibration_images"], 1, s["img_size"], seed=s["seed"])
    images = [x.numpy() for x, _ in singles]
    b = s["calibration_batch"]
    return [np.concatenate(images[i:i + b]) for i in range(0, len(images), b)], train.source


def export(cfg: DictConfig, out: str | Path) -> dict:
    """The export workflow on a composed ``conf/export.yaml``, writing into ``out``; returns ``metrics.json``'s
    content."""
    out = Path(out)
    s = _settings(cfg)
    model, names, source = load_model_from_config(cfg.model)
    # A quantization-aware model (amc-finetune qat=true): model.onnx holds its float weights, model.int8.onnx its
    # learned scales (no calibration)
    qat = load_qat_model(source)[0] if s["int8"] and s["from_qat"] and is_qat_checkpoint(source) else None
    val = load_data_from_config(cfg.data)
    check_classes(model, val)  # before any work
    stride = max(32, int(model.stride.max()))
    calibration = _calibration_images(cfg, s) if s["int8"] and qat is None else None
    trace_size = math.ceil(s["img_size"] / stride) * stride

    # ---- export, then ONNX Runtime against PyTorch on real images (nothing is written before this passes)
    proto = export_detector(model, trace_size, s["opset"], fuse=s["fuse"])
    reference = copy.deepcopy(model).cpu().float().eval()
    if s["fuse"]:
        reference.fuse()
    fp32 = OnnxDetector(proto, s["threads"])
    verify_set = EvalSet(val.subset(s["verify_images"], s["seed"]), s["img_size"], s["verify_batch"], stride,
                         progress=False)
    batches = [b.images.float() / 255.0 for b in verify_set]
    # The check is against PyTorch's exact (float64) predictions: against PyTorch float32 the difference would
    # add PyTorch's own rounding, which alone reaches ~1e-3 on large boxes. Both figures are reported.
    verified = check_predictions(reference, fp32, batches)
    diff, diff_fp32, noise = verified.max_abs_diff, verified.max_abs_diff_vs_fp32, verified.pytorch_fp32_error
    shapes = sorted({tuple(x.shape) for x in batches})
    console.print(f"ONNX Runtime vs PyTorch on {verify_set.num_images} images of {val.source} "
                  f"(batches {', '.join('x'.join(map(str, sh)) for sh in shapes)}): max abs diff {diff:.3g} "
                  f"(vs PyTorch float32: {diff_fp32:.3g}; PyTorch float32 vs float64: {noise:.3g})")
    if diff > s["tolerance"]:
        raise ExportError(f"ONNX Runtime and PyTorch differ by up to {diff:.3g} on the decoded predictions, over "
                          f"verify.tolerance={s['tolerance']:g} (PyTorch's own float32 rounding on these images: "
                          f"{noise:.3g}; raise verify.tolerance if the difference is of that order)")
    metrics: dict[str, Any] = {
        "model": source, "data": val.source, "img_size": s["img_size"], "opset": s["opset"], "fused": s["fuse"],
        "onnxruntime": onnxruntime.__version__, "inputs": {"images": ["batch", 3, "height", "width"]},
        "max_abs_diff": diff, "max_abs_diff_vs_fp32": diff_fp32, "pytorch_fp32_error": noise,
        "verify": {"images": verify_set.num_images, "tolerance": s["tolerance"], "reference": "pytorch-float64",
                   "batch_shapes": [list(sh) for sh in shapes]},
        "nms": None, "files": {"fp32": "model.onnx"},
    }

    final = proto
    if s["nms"]:
        final = add_nms(proto, s["graph_nms"])
        session = ort_session(final, s["threads"])
        g = s["graph_nms"]
        found, from_ort, from_torch = [], [], []
        with torch.inference_mode():
            for x in batches:
                found += graph_detections(session, x)
                for target, pred in ((from_ort, fp32(x)[0]), (from_torch, reference(x)[0])):
                    target += non_max_suppression(pred, conf_thres=g.conf_thres, iou_thres=g.iou_thres,
                                                  multi_label=g.multi_label, max_det=g.max_det)
        check = compare_detections(found, from_ort, s["tolerance"])
        end_to_end = compare_detections(found, from_torch, s["tolerance"])
        unmatched = check["expected"] + check["found"] - 2 * check["matched"]
        console.print(f"NMS in the graph vs amc's NMS on the same predictions: {check['matched']} of "
                      f"{check['expected']} detections matched ({check['found']} found), max abs diff "
                      f"{check['max_abs_diff']:.3g}")
        if unmatched > s["nms_unmatched"] * max(1, check["expected"]):
            raise ExportError(f"the graph's NMS disagrees with amc's on {unmatched} detections of "
                              f"{check['expected']} (verify.nms_unmatched={s['nms_unmatched']:g})")
        metrics["nms"] = {**g.to_dict(), "outputs": {"detections": ["batch", "k", 6], "num_detections": ["batch"]},
                          "check": check, "vs_pytorch": end_to_end}
    save_onnx(final, out / "model.onnx")

    quantized = None
    if qat is not None:
        quantized = export_qat(qat, trace_size, s["opset"])
        with torch.inference_mode():
            predicted = torch.cat([OnnxDetector(quantized, s["threads"])(x)[0] for x in batches])
            fake = torch.cat([qat(x)[0] for x in batches])
            floating = torch.cat([reference(x)[0] for x in batches])
        agreement = prediction_agreement(fake, predicted)
        noise = prediction_agreement(fake, floating)
        console.print(f"INT8 graph from the learned scales vs the fake-quantized PyTorch model on "
                      f"{verify_set.num_images} images: confidence mean abs diff {agreement['conf_mean_abs_diff']:.2g} "
                      f"(the float model vs the fake-quantized one: {noise['conf_mean_abs_diff']:.2g})")
        int8_final = add_nms(quantized, s["graph_nms"]) if s["nms"] else quantized
        ort_session(int8_final, s["threads"])  # it loads and has kernels for every operator
        save_onnx(int8_final, out / "model.int8.onnx")
        metrics["files"]["int8"] = "model.int8.onnx"
        metrics["calibration"] = None
        metrics["qat"] = {"source": source, "scheme": qat.qat_scheme.to_dict(), "format": "QDQ",
                          "vs_fake_quant": agreement, "float_vs_fake_quant": noise}
    elif s["int8"]:
        batches_c, calib_source = calibration
        q = s["quantize"]
        quantized = quantize_int8(proto, batches_c, q["method"], q["per_channel"], q["activation_type"],
                                  q["keep_head"], q["reduce_range"], q["bins"], q["percentile"])
        int8_final = add_nms(quantized, s["graph_nms"]) if s["nms"] else quantized
        ort_session(int8_final, s["threads"])  # it loads and has kernels for every operator
        save_onnx(int8_final, out / "model.int8.onnx")
        metrics["files"]["int8"] = "model.int8.onnx"
        metrics["calibration"] = {**q, "bins": None if q["method"] == "MinMax" else q["bins"] or DEFAULT_BINS[
            q["method"]], "images": sum(len(b) for b in batches_c), "data": calib_source, "format": "QDQ"}

    rows = [["fp32", "model.onnx", f"{(out / 'model.onnx').stat().st_size / 1e6:.2f}"]]
    if quantized is not None:
        rows.append(["int8", "model.int8.onnx", f"{(out / 'model.int8.onnx').stat().st_size / 1e6:.2f}"])
    columns = ["", "file", "MB"]
    if s["measure"]:
        dataset = val.subset(s["subset"], s["seed"]) if s["subset"] is not None else val
        eval_set = EvalSet(dataset, s["img_size"], s["batch_size"], stride,
                           cache_path=cache_dir() / "evalsets" if s["cache"] else None)
        evaluator = DetectionEvaluator(dataset, eval_set, EvalSettings(**s["eval"]), "cpu", progress=True)
        graphs = {"fp32": (fp32, final)}
        if quantized is not None:
            graphs["int8"] = (OnnxDetector(quantized, s["threads"]), int8_final)
        results = {name: evaluator(detector) for name, (detector, _) in graphs.items()}
        lat = s["latency"]
        shape = (lat["batch_size"], 3, trace_size, trace_size)  # img_size, up to a multiple of the stride
        with latency_session("onnxruntime-cpu", s["threads"]) as timing:
            timers = {name: timing.onnx_timer(graph.SerializeToString(), shape) for name, (_, graph) in graphs.items()}
            times = run_interleaved(timers, lat["warmup"], lat["runs"], lat["rounds"])
            latency = {name: Latency.of(t, timing.threads, "onnxruntime-cpu") for name, t in times.items()}
        for name in graphs:
            metrics[f"{name}_map50_95"] = results[name].map50_95
            metrics[f"{name}_map50"] = results[name].map50
            metrics[f"{name}_ms"] = latency[name].median_ms
        metrics["map_images"] = results["fp32"].images
        metrics["eval"] = s["eval"]
        metrics["latency"] = {"backend": "onnxruntime-cpu", "threads": latency["fp32"].threads, "runs": lat["runs"],
                              "rounds": lat["rounds"], "input": list(shape), "interleaved": True,
                              "statistic": "median", "max_spread": lat["max_spread"],
                              **{f"{name}_min_ms": latency[name].min_ms for name in graphs},
                              **{f"{name}_spread": latency[name].spread for name in graphs},
                              "noisy": any(latency[name].noisy(lat["max_spread"]) for name in graphs)}
        if "int8" in graphs:  # a speed-up only from timings that are not noise (None otherwise)
            metrics["latency"]["int8_speedup"] = speedup(latency["fp32"], latency["int8"], lat["max_spread"])
        columns += ["mAP@0.5:0.95", "mAP@0.5", "CPU ms", "IQR"]
        for row, name in zip(rows, graphs):
            row += [f"{results[name].map50_95:.4f}", f"{results[name].map50:.4f}", f"{latency[name].median_ms:.2f}",
                    spread_text(latency[name])]
    atomic_write_json(out / "metrics.json", metrics)
    print_table(f"ONNX opset {s['opset']}{', NMS in the graph' if s['nms'] else ''}, max abs diff vs PyTorch "
                f"{diff:.2g}", columns, rows, numeric_from=2)
    if s["measure"]:
        console.print(f"mAP@0.5:0.95 and mAP@0.5 on {metrics['map_images']} images of {val.source} (amc's NMS, "
                      f"as amc-eval); CPU ms: ONNX Runtime, {metrics['latency']['threads']} threads, median of "
                      f"{s['latency']['runs']} interleaved runs at {'x'.join(map(str, metrics['latency']['input']))}")
    if s["measure"] and metrics["latency"]["noisy"]:
        warn(f"the ONNX Runtime timings spread by more than latency.max_spread={s['latency']['max_spread']} "
             f"(IQR / median): too noisy to compare the graphs' speed on this machine now; measure on an idle "
             f"machine or with more latency.runs")
    console.print(f"{', '.join(metrics['files'].values())} and metrics.json written to {out}")
    return metrics

