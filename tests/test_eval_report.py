"""The deployment report (amc-eval report.*): every model measured the same way, costs exact for ONNX graphs too,
run directories resolved to their models, ratios relative to the original, one-line errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from amc.errors import ConfigError
from amc.deploy.report import ReportRow, markdown_table, onnx_cost, report_table, resolve_report_path
from amc.export.onnx import export_detector, save_onnx
from amc.export.quantize import quantize_int8
from amc.models import save_model
from amc.pruning.apply import apply_policy
from amc.pruning.baselines import uniform_policy
from amc.pruning.space import PruningSpace
from conftest import mini_model
from test_eval_cli import amc_eval

SIZE = 96  # tiny_demo's image size


@pytest.fixture(scope="module")
def runs(tiny_demo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What the pipeline leaves behind, laid out like the commands' run directories: an original model folder,
    an amc-search-like run (model/), an amc-finetune-like run (best/) and an amc-export int8=true run."""
    root = tmp_path_factory.mktemp("runs")
    original = mini_model(nc=3).eval()
    space = PruningSpace.from_model(original, SIZE)
    pruned, _ = apply_policy(original, space, uniform_policy(space, 0.5).ratios, "l1")
    save_model(original, root / "original")
    save_model(pruned, root / "search" / "model")
    save_model(pruned, root / "finetune" / "best")
    proto = export_detector(pruned, SIZE)
    _, train, _ = tiny_demo
    from amc.data.loaders import sample_batches

    calibration = [images.numpy().astype(np.float32) for images, _ in sample_batches(train, 2, 2, SIZE, seed=0)]
    save_onnx(proto, root / "export" / "model.onnx")
    save_onnx(quantize_int8(proto, calibration), root / "export" / "model.int8.onnx")
    return {"root": root, "original": root / "original", "search": root / "search", "finetune": root / "finetune",
            "export": root / "export", "pruned_model": pruned, "original_model": original}


def test_run_directories_resolve_to_their_models(runs) -> None:
    assert resolve_report_path(runs["search"]) == ("amc", runs["search"] / "model")
    assert resolve_report_path(runs["finetune"]) == ("amc", runs["finetune"] / "best")
    assert resolve_report_path(runs["export"]) == ("onnx", runs["export"] / "model.int8.onnx")
    assert resolve_report_path(runs["export"] / "model.onnx") == ("onnx", runs["export"] / "model.onnx")
    assert resolve_report_path(runs["original"]) == ("amc", runs["original"])
    with pytest.raises(ConfigError, match="neither an amc model folder"):
        resolve_report_path(runs["root"])
    with pytest.raises(ConfigError, match="file not found"):
        resolve_report_path(runs["root"] / "missing.onnx")


def test_onnx_graphs_cost_what_their_model_costs(runs) -> None:
    reference = copy.deepcopy(runs["pruned_model"]).fuse().cost(SIZE)  # amc-export fuses
    for name in ("model.onnx", "model.int8.onnx"):  # INT8: the same parameters (8-bit) and FLOPs
        params, gflops = onnx_cost((runs["export"] / name).read_bytes(), SIZE)
        assert params == reference.params and gflops == pytest.approx(reference.gflops)
    assert reference.params < copy.deepcopy(runs["original_model"]).fuse().cost(SIZE).params
    bare = onnx.load(str(runs["export"] / "model.onnx"))
    del bare.metadata_props[:]  # a graph amc did not write: no cost rather than a guess
    assert onnx_cost(bare.SerializeToString(), SIZE) == (None, None)


def test_table_ratios_are_relative_to_the_first_row() -> None:
    rows = [ReportRow("original", "a", "torch", 0.5, 0.7, 1_000_000, 2.0, {"torch-cpu": 10.0, "onnxruntime-cpu": 8.0}),
            ReportRow("pruned", "b", "torch", 0.4, 0.6, 500_000, 1.0, {"torch-cpu": 5.0, "onnxruntime-cpu": 4.0}),
            ReportRow("int8", "c", "onnx", 0.39, 0.6, 500_000, 1.0, {"torch-cpu": None, "onnxruntime-cpu": 2.0})]
    columns, cells = report_table(rows)
    assert columns[-2:] == ["torch CPU ms", "ORT CPU ms"]
    assert cells[0][3:] == ["1.000", "2.00", "10.00", "8.00"]
    assert cells[1][3:] == ["0.500 (0.50x)", "1.00 (0.50x)", "5.00 (2.00x)", "4.00 (2.00x)"]
    assert cells[2][5:] == ["-", "2.00 (4.00x)"]
    md = markdown_table(columns, cells).splitlines()
    assert len(md) == 5 and md[1].startswith("| --- | ---:")
    speedup = rows[2].to_dict(rows[0])["vs_original"]["speedup"]
    assert speedup == {"torch-cpu": None, "onnxruntime-cpu": 4.0}


def test_a_noisy_timing_gives_no_speed_up() -> None:
    """A timing whose passes spread beyond max_spread (IQR / median) is shown with its spread and (noisy), and
    no speed-up is computed from it, in the table or the JSON; a steady one keeps its ratio."""
    rows = [ReportRow("original", "a", "torch", 0.5, 0.7, 100, 2.0, {"torch-cpu": 10.0, "onnxruntime-cpu": 8.0},
                      latency_spread={"torch-cpu": 0.05, "onnxruntime-cpu": 0.02}),
            ReportRow("pruned", "b", "torch", 0.4, 0.6, 50, 1.0, {"torch-cpu": 5.0, "onnxruntime-cpu": 4.0},
                      latency_spread={"torch-cpu": 0.45, "onnxruntime-cpu": 0.03})]
    _, cells = report_table(rows)
    assert cells[0][5:] == ["10.00 ±5%", "8.00 ±2%"]
    assert cells[1][5:] == ["5.00 ±45% (noisy)", "4.00 ±3% (2.00x)"]
    record = rows[1].to_dict(rows[0])
    assert record["vs_original"]["speedup"] == {"torch-cpu": None, "onnxruntime-cpu": 2.0}
    assert record["latency_noisy"] == {"torch-cpu": True, "onnxruntime-cpu": False}


def test_report_end_to_end(tiny_demo, runs, tmp_path: Path) -> None:
    root, _, val = tiny_demo
    common = [f"data.path={root}", f"img_size={SIZE}", "latency.runs=2", "latency.rounds=1", "latency.threads=1"]
    run = amc_eval(f"model.path={runs['original']}", f"report.pruned={runs['search']}",
                   f"report.finetuned={runs['finetune']}", f"report.int8={runs['export']}", *common,
                   f"hydra.run.dir={tmp_path / 'report'}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert json.loads((tmp_path / "report" / "metrics.json").read_text()) == report
    models = report["models"]
    assert list(models) == ["original", "pruned", "finetuned", "int8"] and report["images"] == len(val)
    orig, pruned, int8 = models["original"], models["pruned"], models["int8"]
    assert pruned["params"] < orig["params"] and int8["params"] == pruned["params"]
    assert pruned["vs_original"]["flops_ratio"] == pytest.approx(pruned["gflops"] / orig["gflops"])
    assert models["finetuned"]["map50_95"] == pruned["map50_95"]  # the same weights: the same mAP
    assert int8["kind"] == "onnx" and int8["latency_ms"]["torch-cpu"] is None
    for m in models.values():
        assert m["latency_ms"]["onnxruntime-cpu"] > 0 and "torch-cuda" not in m["latency_ms"]
        assert 0.0 <= m["map50_95"] <= m["map50"] <= 1.0
    assert orig["latency_ms"]["torch-cpu"] > 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert all(f"| {label} |" in md for label in models)
    # the report's original row is what plain amc-eval says of the same model on the same images
    plain = amc_eval(f"model.path={runs['original']}", f"data.path={root}", f"img_size={SIZE}",
                     f"hydra.run.dir={tmp_path / 'plain'}", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["map50_95"] == orig["map50_95"]


@pytest.mark.parametrize("entry, message", [
    ("report.pruned={root}/missing", "file not found"),
    ("report.pruned={root}", "neither an amc model folder"),
    ("report.other={other}", "classes where"),
    ("latency.backends=[tpu]", "latency.backends: tpu unknown"),
])
def test_report_errors_end_in_one_line(tiny_demo, runs, tmp_path: Path, entry: str, message: str) -> None:
    root, _, _ = tiny_demo
    other = save_model(mini_model(nc=5), tmp_path / "other")
    extra = [] if entry.startswith("report.") else [f"report.pruned={runs['search']}"]
    key = entry.split("=")[0]
    arg = entry.format(root=runs["root"], other=other)
    run = amc_eval(f"model.path={runs['original']}", f"data.path={root}", f"img_size={SIZE}",
                   ("+" if key == "report.other" else "") + arg, *extra, f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert message in lines[0]
    assert not (tmp_path / "run" / "report.json").exists()
