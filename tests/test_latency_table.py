"""The per-unit latency table: exact at full width, monotone, persisted with a key, fast, validated."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import torch
from torch import nn

from amc.errors import ConfigError
from amc.reward.latency_table import (LatencyTable, TableKey, conv_block_onnx, grid_points, monotone_grid,
                                    validate_table)
from amc.models import YOLOv7, load_cfg
from amc.models.io import packaged
from amc.pruning.space import PruningSpace
from conftest import mini_model

SIZE = 128
BUILD = dict(threads=1, grid=3, warmup=1, runs=5, full_runs=10, full_rounds=5, progress=False)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = YOLOv7(load_cfg(packaged("training/yolov7-tiny.yaml"))).eval()
    return model, PruningSpace.from_model(model, SIZE)


@pytest.fixture(scope="module")
def table(tiny):
    model, space = tiny
    before = torch.get_num_threads()
    built = LatencyTable.build(model, space, "torch-cpu", **BUILD)
    assert torch.get_num_threads() == before
    return built


def _widths(space: PruningSpace, keep: float) -> np.ndarray:
    return space.round_widths(space.full_widths * keep)


def test_every_block_is_measured_on_its_grid(tiny, table):
    model, space = tiny
    assert len(table.entries) == len(space.sites) + len(space.head_inputs)  # yolov7-tiny: no auxiliary heads
    assert [e.path for e in table.entries[:len(space.sites)]] == [s.path for s in space.sites]
    full, low = space.full_widths, space.min_widths
    for e in table.entries:
        assert e.in_grid[-1] == e.in_const + sum(c * full[u] for u, c in e.in_units.items())
        assert e.in_grid[0] == e.in_const + sum(c * low[u] for u, c in e.in_units.items())
        assert e.out_grid[-1] == (e.out_const if e.out_unit < 0 else full[e.out_unit])
        assert 1 <= len(e.in_grid) <= 3 and 1 <= len(e.out_grid) <= 3
        assert np.all(np.diff(e.in_grid) > 0) and np.all(np.diff(e.out_grid) > 0)
        ms = np.asarray(e.ms)
        assert ms.shape == (len(e.in_grid), len(e.out_grid)) and np.all(ms > 0)
        assert np.all(np.diff(ms, axis=0) >= 0) and np.all(np.diff(ms, axis=1) >= 0)
    first = table.entries[0]  # model.0 reads the 3-channel image at full resolution
    assert first.in_grid == [3] and first.input_hw == (SIZE, SIZE)
    assert table.settings["grid"] == 3 and table.build_s > 0


def test_estimate_at_full_width_is_the_measured_full_model(tiny, table):
    _, space = tiny
    assert table.full_ms > 0
    assert table.estimate(space.full_widths) == pytest.approx(table.full_ms, rel=1e-12, abs=1e-12)
    assert table.rest_ms == pytest.approx(table.full_ms - table.blocks_full_ms, abs=1e-12)
    parts = table.breakdown(space.full_widths)
    assert sum(parts.values()) == pytest.approx(table.full_ms, rel=1e-12)


def test_rest_terms_all_reproduce_the_full_model(tiny, table):
    _, space = tiny
    rest = table.rest
    assert rest.kind == "proportional" and rest.calibration_ms > 0
    calib = np.asarray(rest.calibration_widths)
    assert np.array_equal(calib, space.round_widths(space.full_widths * 0.5))
    blocks = table.block_ms(_widths(space, 0.4)).sum()
    assert table.offset_ms == 0 and table.scale == pytest.approx(table.full_ms / table.blocks_full_ms)
    constant = table.with_rest("constant")
    assert constant.scale == 1 and constant.estimate(_widths(space, 0.4)) == pytest.approx(
        table.rest_ms + blocks, rel=1e-12)
    calibrated = table.with_rest("calibrated")
    assert calibrated.scale > 0
    if table.blocks_full_ms > table.block_ms(calib).sum() and table.full_ms > rest.calibration_ms:
        assert calibrated.estimate(calib) == pytest.approx(rest.calibration_ms, rel=1e-9)  # through both models
    for t in (table, constant, calibrated):
        assert t.estimate(space.full_widths) == pytest.approx(table.full_ms, rel=1e-12)
    with pytest.raises(ConfigError, match="rest term"):
        table.with_rest("quadratic")


def test_estimate_never_grows_when_widths_shrink(tiny, table):
    _, space = tiny
    full, low = space.full_widths, space.min_widths
    rng = np.random.default_rng(0)
    for _ in range(50):
        wide = space.round_widths(rng.uniform(low, full))
        narrow = space.round_widths(rng.uniform(low, wide))
        assert np.all(narrow <= wide)
        assert table.estimate(narrow) <= table.estimate(wide) + 1e-9
    # Real shrinking, not just "not growing": the blocks at ~30% width (~10% of the MACs) cost well under their
    # full-width time. Both sums come from the same build, in which each block's grid points were timed in turn
    # (interleaved rounds, median kept), so machine load inflates both alike. Measured 0.28 of the full-width
    # time (idle and busy 2-core machine); 0.8 leaves a ~3x margin, and a table whose blocks do not shrink with
    # their widths (sizes not applied, one grid point reused) gives ~1.0.
    small = _widths(space, 0.3)
    assert table.estimate(small) < table.estimate(full)
    assert table.block_ms(small).sum() < 0.8 * table.blocks_full_ms
    batch = np.stack([full, small, low])
    assert np.allclose(table.estimate_batch(batch), [table.estimate(w) for w in batch], rtol=1e-12)


def test_estimate_checks_the_width_count(table):
    with pytest.raises(ValueError, match="units"):
        table.estimate(np.ones(3))


def test_estimate_is_fast(tiny, table, one_torch_thread):
    """An estimate costs a small fraction of measuring the model it stands for: compared, in one run and in
    turns, with a forward pass of the unpruned model at the table's size (no absolute time: a busy machine slows
    both alike)."""
    model, space = tiny
    w = _widths(space, 0.5)
    x = torch.zeros(1, 3, SIZE, SIZE)
    estimate_s, forward_s = [], []
    with torch.no_grad():
        for _ in range(10):
            t0 = time.perf_counter()
            for _ in range(20):
                table.estimate(w)
            estimate_s.append((time.perf_counter() - t0) / 20)
            t0 = time.perf_counter()
            model(x)
            forward_s.append(time.perf_counter() - t0)
    # the fastest of each (load only ever adds time). Measured ~80 us per estimate against ~16 ms per forward pass
    # (yolov7-tiny, 128 px, one thread): 200x. 20 estimates per forward pass leaves a 10x margin; an estimate that
    # rebuilt or ran anything model-sized would cost a forward pass or more.
    assert min(estimate_s) < min(forward_s) / 20, (min(estimate_s), min(forward_s))


def test_save_load_round_trip_and_key_refusal(tiny, table, tmp_path):
    _, space = tiny
    path = table.save(tmp_path / "t.json")
    expected = TableKey.current(space, "torch-cpu", threads=1)
    assert table.key == expected
    loaded = LatencyTable.load(path, expected)
    assert loaded.key == table.key and loaded.full_ms == table.full_ms and loaded.rest_ms == table.rest_ms
    assert loaded.rest == table.rest and (loaded.scale, loaded.offset_ms) == (table.scale, table.offset_ms)
    rng = np.random.default_rng(1)
    batch = space.round_widths(rng.uniform(space.min_widths, space.full_widths, (20, space.n_units)))
    assert np.array_equal(loaded.estimate_batch(batch), table.estimate_batch(batch))
    for change in (dict(threads=2), dict(backend="onnxruntime-cpu"), dict(img_size=(SIZE, 2 * SIZE)),
                   dict(fingerprint="sha256:0"), dict(torch="0.0"), dict(device="another cpu")):
        other = dataclasses.replace(expected, **change)
        with pytest.raises(ConfigError, match=list(change)[0]) as e:
            LatencyTable.load(path, other)
        assert "\n" not in str(e.value)
    # load_or_build reads the file (no measuring) when it fits, and refuses one that does not
    assert LatencyTable.load_or_build(path, None, space, "torch-cpu", threads=1).full_ms == table.full_ms
    with pytest.raises(ConfigError, match="threads"):
        LatencyTable.load_or_build(path, None, space, "torch-cpu", threads=2)


def test_unreadable_tables_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        LatencyTable.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    for text in ("{not json", json.dumps({"format": "something else"}), json.dumps({"format": "amc-latency-table/1"})):
        bad.write_text(text)
        with pytest.raises(ConfigError, match="unreadable"):
            LatencyTable.load(bad)


def test_table_refuses_another_model_or_size(tiny, table):
    model, space = tiny
    with pytest.raises(ConfigError, match="not the one"):
        LatencyTable.build(mini_model(), space, "torch-cpu", **BUILD)
    with pytest.raises(ConfigError, match="rebuild"):
        validate_table(table, model, PruningSpace.from_model(model, 2 * SIZE), [np.zeros(space.n_units)])
    with pytest.raises(ConfigError, match="grid"):
        LatencyTable.build(model, space, "torch-cpu", **{**BUILD, "grid": 1})


def test_validate_table_on_physically_pruned_models(tiny, table, monkeypatch):
    """validate_table prunes, fuses and times each policy's model with the table's settings, and reports each
    estimate's error against that model's time. The timing is replaced by a known latency model (the real
    comparison on a machine is ``amc-bench bench=latency``), so every figure has an exact expected value."""
    import amc.reward.latency_table as latency_table
    from amc.eval.latency import Latency
    from amc.pruning.baselines import uniform_policy

    model, space = tiny
    rng = np.random.default_rng(2)
    policies = {"uniform50": uniform_policy(space, 0.5).ratios, "random": rng.uniform(0.2, 0.6, space.n_units)}
    calls = []
    drift = 1.25  # the machine runs 25% slower than when the table was built

    def known_latency(models, img_size, backend, batch_size, threads, warmup, runs, rounds, device):
        calls.append((dict(models), img_size, backend, batch_size, threads, runs, rounds))
        full_macs = models["unpruned"].cost(SIZE).macs
        # each model's "measured" time: the drifted full time scaled by its own (counted) MACs
        return {name: Latency.of([drift * table.full_ms * m.cost(SIZE).macs / full_macs], 1, backend)
                for name, m in models.items()}

    monkeypatch.setattr(latency_table, "compare_latency", known_latency)
    report = validate_table(table, model, space, policies, "l1", warmup=1, runs=6, rounds=6)
    (models, img_size, backend, batch_size, threads, runs, rounds), = calls
    assert (img_size, backend, batch_size, threads, runs, rounds) == (table.key.img_size, "torch-cpu", 1, 1, 6, 6)
    assert list(models) == ["unpruned", "uniform50", "random"] and all(m.fused for m in models.values())
    full_fused = space.cost(space.full_widths, fused=True).macs
    assert models["unpruned"].cost(SIZE).macs == full_fused
    assert [r.name for r in report.rows] == ["uniform50", "random"]
    expected_rel, expected_scaled = [], []
    for row, ratios in zip(report.rows, policies.values()):
        kept = space.kept_channels(ratios)
        ratio = space.cost(kept, fused=True).macs / full_fused
        # the model timed for this row is this policy's physically pruned model (counted, not the space's formula)
        assert models[row.name].cost(SIZE).macs == space.cost(kept, fused=True).macs
        assert row.flops_ratio == pytest.approx(ratio, rel=1e-12) and 0.0 < ratio < 0.6
        assert row.estimated_ms == pytest.approx(table.estimate(kept), rel=1e-12)
        assert row.measured_ms == pytest.approx(drift * table.full_ms * ratio, rel=1e-12)
        expected_rel.append(table.estimate(kept) / (drift * table.full_ms * ratio) - 1)
        expected_scaled.append(table.estimate(kept) / (table.full_ms * ratio) - 1)  # the drift divided out
        assert row.rel_error == pytest.approx(expected_rel[-1], rel=1e-9)
    ref = report.reference
    assert (ref.name, ref.flops_ratio) == ("unpruned", 1.0)
    assert ref.estimated_ms == pytest.approx(table.full_ms, rel=1e-12)
    assert ref.rel_error == pytest.approx(1 / drift - 1, rel=1e-12)  # exactly the machine's drift
    assert report.errors == pytest.approx(expected_rel, rel=1e-9)
    assert report.scaled_errors == pytest.approx(expected_scaled, rel=1e-9)
    assert report.mean_abs_rel_error == pytest.approx(np.mean(np.abs(expected_rel)), rel=1e-9)
    assert report.max_abs_rel_error == pytest.approx(np.max(np.abs(expected_rel)), rel=1e-9)
    assert report.mean_abs_scaled_error == pytest.approx(np.mean(np.abs(expected_scaled)), rel=1e-9)
    assert report.max_abs_scaled_error == pytest.approx(np.max(np.abs(expected_scaled)), rel=1e-9)
    # the expected figures tell the cases apart (latency is not proportional to MACs in a measured table)
    assert abs(expected_rel[0] - expected_rel[1]) > 0.01 and abs(expected_scaled[0] - expected_rel[0]) > 0.01
    saved = report.to_dict()
    assert [r["rel_error"] for r in saved["rows"]] == pytest.approx(expected_rel, rel=1e-9)
    assert saved["mean_abs_rel_error"] == pytest.approx(report.mean_abs_rel_error)
    assert saved["reference"]["measured_ms"] == pytest.approx(drift * table.full_ms, rel=1e-12)


def test_grid_points_and_monotone_grid():
    three = grid_points(8, 64, 8, 3)
    assert len(three) == 3 and three[0] == 8 and three[-1] == 64 and three[1] % 8 == 0
    assert grid_points(8, 64, 8, 20) == list(range(8, 65, 8))
    assert grid_points(3, 3, 8, 4) == [3]
    assert grid_points(8, 30, 8, 10) == [8, 16, 24, 30]
    noisy = np.array([[1.0, 3.0, 2.0], [0.5, 4.0, 5.0], [2.0, 3.5, 6.0]])
    mono = monotone_grid(noisy)
    assert np.all(np.diff(mono, axis=0) >= 0) and np.all(np.diff(mono, axis=1) >= 0)
    ordered = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert np.array_equal(monotone_grid(ordered), ordered)


@pytest.mark.parametrize("act", [nn.LeakyReLU(0.1), nn.SiLU(), nn.ReLU(), nn.Identity(), nn.Hardswish(), None])
@pytest.mark.parametrize("geometry", [(3, 2, 1), (1, 1, 0)])
def test_onnx_blocks_compute_the_torch_block(act, geometry):
    import onnxruntime as ort

    k, s, p = geometry
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 20, k, s, p, bias=True)
    x = torch.randn(1, 12, 17, 16)
    payload = conv_block_onnx(conv, act, x.shape)
    assert payload is not None
    got = ort.InferenceSession(payload, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = (act or nn.Identity())(conv(x))
    assert got.shape == tuple(want.shape)
    assert np.abs(got - want.numpy()).max() < 1e-4
    assert conv_block_onnx(conv, nn.GELU(), x.shape) is None  # unmapped: the caller exports with torch


def test_onnxruntime_table_on_the_mini_model():
    model = mini_model().eval()
    space = PruningSpace.from_model(model, 64)
    table = LatencyTable.build(model, space, "onnxruntime-cpu", **{**BUILD, "full_runs": 5})
    assert table.key.backend == "onnxruntime-cpu" and table.key.onnxruntime
    assert len(table.entries) == len(space.sites) + len(space.head_inputs)
    assert table.estimate(space.full_widths) == pytest.approx(table.full_ms, rel=1e-12)
    assert table.estimate(space.min_widths) <= table.full_ms


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.is_available() is False: no CUDA GPU")
def test_torch_cuda_table_on_the_mini_model():
    model = mini_model().eval()
    space = PruningSpace.from_model(model, 64)
    table = LatencyTable.build(model, space, "torch-cuda", **{**BUILD, "threads": None})
    assert table.key.backend == "torch-cuda" and table.key.device == torch.cuda.get_device_name()
    assert table.estimate(space.full_widths) == pytest.approx(table.full_ms, rel=1e-12)
    assert table.estimate(space.min_widths) <= table.full_ms
    assert next(model.parameters()).device.type == "cpu"
