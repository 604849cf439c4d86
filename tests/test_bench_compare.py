"""``amc-bench bench=compare`` (amc/bench/compare.py) on the stub evaluator with tiny settings: the exact shape of
results.json, means and stds from the per-seed values, resuming a partial run without redoing finished cells,
baselines within the budget, and one-line errors before any work. The real run is ``amc-bench bench=compare``."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf, open_dict

from amc.bench import compare
from amc.bench.common import spearman
from amc.bench.compare import CompareBench, _changed_settings, compare_bench
from amc.bench.compare_stats import (cell_machines, episodes_to_95, mean_std, paired, read_episodes, search_failed,
                                     wins)
from amc.bench.headline import END, headline_markdown, replace_block
from amc.errors import ConfigError, script_main
from amc.search.pick import EXPORT_RULES, pick
from amc.search.setup import SearchSetup

METHODS = ["ddpg", "random", "uniform", "global_magnitude"]
KEYS = {"map_proxy", "map_full", "map_finetuned", "map_proxy_std", "map_full_std", "map_finetuned_std", "wall_s",
        "episodes_to_95", "flops_ratio", "latency_ratio", "seeds", "per_seed"}


def tiny_cfg(*overrides: str, finetune: int = 0):
    """bench=compare on the stub evaluator: 4-episode searches, 2 seeds, 8 full-val images, fine-tune skipped (one
    judgement per policy when ``finetune`` asks for it, unless an override says how many)."""
    if not any(o.startswith("bench.finetune.judge_seeds=") for o in overrides):
        overrides = ("bench.finetune.judge_seeds=1", *overrides)
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("bench", overrides=[
            "bench=compare", "bench.budgets=[0.7]", "bench.seeds=2", "bench.episodes=4", "bench.search.progress=false",
            "bench.full.val_images=8", "bench.full.bn_batches=1", "bench.full.bn_batch_size=4",
            f"bench.finetune.epochs={finetune}", "bench.finetune.train_images=4", "bench.finetune.batch_size=4",
            "bench.finetune.nominal_batch_size=4", *overrides])
    # list values holding '=' are simpler to set here than to quote on a command line
    OmegaConf.update(cfg, "bench.search.overrides", ["evaluator=stub"])
    OmegaConf.update(cfg, "bench.search.agents.ddpg", ["agent=ddpg-demo", "agent.warmup=2"])
    return cfg


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("compare")
    return out, compare_bench(tiny_cfg(), out)


# ---------------------------------------------------------------------------------------------- statistics
def test_mean_std_and_episodes_to_95():
    assert mean_std([0.2, 0.4]) == (pytest.approx(0.3), pytest.approx(statistics.stdev([0.2, 0.4])))
    assert mean_std([0.5]) == (0.5, None)  # one seed: no spread to report
    assert mean_std([0.5, None]) == (None, None)  # never a mean of what was not measured
    # best so far 0.1, 0.1, 0.5, 0.5, 0.6: 95% of 0.6 = 0.57 first reached at episode 5; penalized (None) skipped
    assert episodes_to_95([0.1, None, 0.5, 0.2, 0.6]) == 5
    assert episodes_to_95([0.58, 0.6, 0.1]) == 1
    assert episodes_to_95([None, None]) is None


def test_wins_margin_and_missing_values():
    summary = {"0.5": {"ddpg": {"map_finetuned": 0.40, "map_proxy": 0.30},
                       "random": {"map_finetuned": 0.39, "map_proxy": 0.31},
                       "uniform": {"map_finetuned": 0.38, "map_proxy": 0.25},
                       "global_magnitude": {"map_finetuned": 0.40, "map_proxy": None}}}
    w = wins(summary, 0.02)["0.5"]
    assert w["finetuned"]["beats_uniform_by_margin"] and w["finetuned"]["beats_random"]
    assert w["finetuned"]["beats_global_magnitude"] and w["finetuned"]["all"]  # a tie counts as won
    assert w["proxy"]["beats_uniform_by_margin"] and not w["proxy"]["beats_random"]
    assert w["proxy"]["beats_global_magnitude"] is None and w["proxy"]["all"] is None
    assert not wins(summary, 0.03)["0.5"]["finetuned"]["beats_uniform_by_margin"]


# ---------------------------------------------------------------------------------------------- end to end
def test_results_have_the_exact_shape_and_right_statistics(finished):
    out, results = finished
    assert json.loads((out / "results.json").read_text())["budgets"] == json.loads(json.dumps(results["budgets"]))
    assert list(results["budgets"]) == ["0.7"]
    methods = results["budgets"]["0.7"]
    assert list(methods) == METHODS
    for method, agg in methods.items():
        assert set(agg) == KEYS, method
        assert agg["seeds"] == [0, 1] and [r["seed"] for r in agg["per_seed"]] == [0, 1]
        for metric in ("map_proxy", "map_full"):
            values = [r[metric] for r in agg["per_seed"]]
            assert all(isinstance(v, float) for v in values)
            assert agg[metric] == pytest.approx(statistics.fmean(values))
            assert agg[f"{metric}_std"] == pytest.approx(statistics.stdev(values))
        # the fine-tune was skipped: null, never a made-up number
        assert agg["map_finetuned"] is None and agg["map_finetuned_std"] is None
        assert all(r["map_finetuned"] is None for r in agg["per_seed"])
        assert agg["wall_s"] == pytest.approx(statistics.fmean(r["wall_s"] for r in agg["per_seed"]))
        if method in ("ddpg", "random"):
            steps = [r["episodes_to_95"] for r in agg["per_seed"]]
            assert all(1 <= s <= 4 for s in steps) and agg["episodes_to_95"] == pytest.approx(statistics.fmean(steps))
        else:
            assert agg["episodes_to_95"] is None
        for r in agg["per_seed"]:  # every method at the budget, baselines close under it
            assert r["flops_ratio"] <= 0.7
            if method in ("uniform", "global_magnitude"):
                assert r["flops_ratio"] > 0.6
    w = results["wins"]["0.7"]
    assert set(w) == {"margin", "finetuned", "proxy"} and w["margin"] == 0.02
    assert w["finetuned"]["all"] is None and isinstance(w["proxy"]["all"], bool)
    for name in ("results.md", "map_vs_flops.svg", "reward_curves.svg"):
        assert (out / name).is_file(), name
    assert (out / "map_vs_flops.svg").read_text().startswith("<svg")
    md = (out / "results.md").read_text()
    assert "| 0.7 | ddpg |" in md
    # one per-seed row per seed; with the fine-tune skipped nothing is made up for it, a search's episodes to 95% shown
    seed_rows = [line for line in md.splitlines() if line.startswith("| 0.7 | ") and line.split(" | ")[1].isdigit()]
    assert len(seed_rows) == len(results["budgets"]["0.7"]["ddpg"]["seeds"])
    assert all(row.split(" | ")[2].startswith("- (") and row.endswith("| - |") for row in seed_rows)
    # the searches are amc-search's: their run dirs hold everything it writes
    search = out / "cells" / "flops-0.7" / "ddpg" / "seed1" / "search"
    assert (search / "best_policy.yaml").is_file() and (search / "results.json").is_file()


def test_partial_run_resumes_without_redoing_finished_cells(finished, tmp_path, monkeypatch):
    src, before = finished
    out = tmp_path / "partial"
    shutil.copytree(src, out)
    # a bench killed after some cells: results gone, two cells unfinished; the ddpg one's search had finished
    for name in ("results.json", "results.md", "map_vs_flops.svg", "reward_curves.svg"):
        (out / name).unlink()
    cells = out / "cells" / "flops-0.7"
    (cells / "ddpg" / "seed1.json").unlink()
    (cells / "uniform" / "seed0.json").unlink()
    finished_before = {p: p.read_text() for p in cells.rglob("seed*.json")}
    ran = []
    original = CompareBench._run_cell

    def counting(self, budget, method, seed):
        ran.append((budget.key, method, seed))
        return original(self, budget, method, seed)

    monkeypatch.setattr(CompareBench, "_run_cell", counting)
    after = compare_bench(tiny_cfg(f"bench.resume={out}"), tmp_path / "unused")
    assert sorted(ran) == [("0.7", "ddpg", 1), ("0.7", "uniform", 0)]
    assert not (tmp_path / "unused").exists()
    for path, text in finished_before.items():  # finished cells were read, never rewritten
        assert path.read_text() == text
    # the resumed search played no episode again and gives the same best policy
    log = (cells / "ddpg" / "seed1" / "search" / "episodes.jsonl").read_text().splitlines()
    assert [json.loads(line)["episode"] for line in log] == [1, 2, 3, 4]
    for method in METHODS:
        for metric in ("map_proxy", "map_full", "flops_ratio"):
            assert after["budgets"]["0.7"][method][metric] == pytest.approx(before["budgets"]["0.7"][method][metric])
    # other settings than the finished cells': refused, in one line, instead of mixing results
    with pytest.raises(ConfigError, match=r"other settings than this run's \(full.val_images: 8 there, 6 here\)"):
        compare_bench(tiny_cfg(f"bench.resume={out}", "bench.full.val_images=6"), tmp_path / "unused")


def test_a_bench_resumed_with_another_export_rule_re_exports_its_search_cells(finished, tmp_path, monkeypatch):
    """Cells whose settings differ in export_rule alone are exported again from their episode logs (no episode played
    again, the baselines untouched), the former export kept in the record; then the table reads them as its own."""
    src, before = finished
    out = tmp_path / "rule"
    shutil.copytree(src, out)
    cells = out / "cells" / "flops-0.7"
    baselines = {p: p.read_text() for m in ("uniform", "global_magnitude") for p in (cells / m).glob("seed*.json")}
    logs = {p: p.read_text() for p in cells.rglob("episodes.jsonl")}
    monkeypatch.setattr(CompareBench, "_run_cell", lambda *a: pytest.fail("a cell was run again"))
    cfg = tiny_cfg(f"bench.resume={out}")
    OmegaConf.update(cfg, "bench.search.overrides", ["evaluator=stub", "export_rule=map_top10_learned"])
    after = compare_bench(cfg, tmp_path / "unused")
    changed = 0
    for method in ("ddpg", "random"):
        for seed in (0, 1):
            record = json.loads((cells / method / f"seed{seed}.json").read_text())
            log = read_episodes(cells / method / f"seed{seed}" / "search" / "episodes.jsonl")
            chosen = pick(log, "map_top10_learned")
            assert record["best_episode"] == chosen["episode"] and record["map_proxy"] == chosen["map50_95"]
            assert record["ratios"] == chosen["ratios"] and record["settings"]["search"]["export_rule"] == \
                "map_top10_learned"
            was = record["re_exported"]["before"]
            assert was["best_episode"] == pick(log, "reward")["episode"]
            changed += was["best_episode"] != record["best_episode"]
            if was["best_episode"] != record["best_episode"]:
                assert record["flops_ratio"] <= 0.7 and record["kept"] != json.loads(
                    (src / "cells" / "flops-0.7" / method / f"seed{seed}.json").read_text())["kept"]
    assert changed > 0  # this tiny bench's picks differ (its DDPG seeds export warm-up draws by reward)
    assert {p: p.read_text() for p in baselines} == baselines and {p: p.read_text() for p in logs} == logs
    assert after["budgets"]["0.7"]["uniform"]["map_full"] == before["budgets"]["0.7"]["uniform"]["map_full"]
    for seed in (0, 1):  # the learned rule never exports a warm-up draw; failed seeds judge the export
        record = json.loads((cells / "ddpg" / f"seed{seed}.json").read_text())
        log = read_episodes(cells / "ddpg" / f"seed{seed}" / "search" / "episodes.jsonl")
        assert log[record["best_episode"] - 1]["phase"] != "warmup"
        assert (seed in after["ddpg_failed_seeds"]["0.7"]) == search_failed(log, exported=record["best_episode"])
    again = compare_bench(cfg, tmp_path / "unused")  # read back as this run's own cells: nothing re-exported twice
    assert again["budgets"] == after["budgets"]


def test_finetune_column_when_enabled(tmp_path):
    results = compare_bench(tiny_cfg("bench.methods=[uniform]", "bench.seeds=1", finetune=1), tmp_path)
    agg = results["budgets"]["0.7"]["uniform"]
    assert isinstance(agg["map_finetuned"], float) and agg["map_finetuned_std"] is None  # one seed: no std
    assert agg["per_seed"][0]["map_finetuned"] == agg["map_finetuned"]
    assert results["wins"]["0.7"]["finetuned"]["all"] is None  # no ddpg to judge


def test_a_resumed_bench_asking_more_judge_seeds_judges_its_finished_cells_again(tmp_path, monkeypatch):
    """bench.finetune.judge_seeds: a finished cell judged once gets the missing fine-tunes (seeds seed + 1000 r) when
    a resumed bench asks for more, no search replayed, every judgement kept; map_finetuned is the mean of the first
    judge_seeds (back to the cell's own with 1); a fresh bench judging twice from the start scores the same."""
    first = compare_bench(tiny_cfg("bench.methods=[random,uniform]", "bench.seeds=1", finetune=1), tmp_path / "run")
    cell = tmp_path / "run" / "cells" / "flops-0.7" / "random" / "seed0.json"
    record = json.loads(cell.read_text())
    assert [j["seed"] for j in record["judges"]] == [0] and record["judges"][0]["map"] == record["map_finetuned"]
    del record["judges"]  # a cell from before judge_seeds: its one judgement is its map_finetuned
    cell.write_text(json.dumps(record))
    monkeypatch.setattr(CompareBench, "_run_cell", lambda *a: pytest.fail("a cell was run again"))
    twice = tiny_cfg("bench.methods=[random,uniform]", "bench.seeds=1", "bench.finetune.judge_seeds=2",
                     f"bench.resume={tmp_path / 'run'}", finetune=1)
    with pytest.raises(ConfigError, match="no seed has all"):  # report_only judges nothing: no cell has 2 yet
        compare_bench(tiny_cfg("bench.methods=[random,uniform]", "bench.seeds=1", "bench.finetune.judge_seeds=2",
                               f"bench.resume={tmp_path / 'run'}", "bench.report_only=true", finetune=1),
                      tmp_path / "unused")
    asking_two = CompareBench(twice, tmp_path / "unused")
    budget = asking_two.budget("0.7")
    assert asking_two.finished_record(budget, "random", 0) is None  # the bench judges it again first
    as_is = asking_two.finished_record(budget, "random", 0, all_judged=False)  # what the scripts revisit
    assert as_is["map_finetuned"] == first["budgets"]["0.7"]["random"]["map_finetuned"]
    second = compare_bench(twice, tmp_path / "unused")
    for method in ("random", "uniform"):
        judged = json.loads((cell.parent.parent / method / "seed0.json").read_text())
        maps = [j["map"] for j in judged["judges"]]
        assert [j["seed"] for j in judged["judges"]] == [0, 1000] and maps[0] == \
            first["budgets"]["0.7"][method]["map_finetuned"]
        assert judged["map_finetuned"] == pytest.approx(np.mean(maps)) == \
            second["budgets"]["0.7"][method]["map_finetuned"]
    assert second["settings"]["finetune"]["judge_seeds"] == 2
    # one judgement alone (scripts/judge_noise.py): judgement r of the cell's policy, as the bench made it
    judged = json.loads(cell.read_text())
    with tempfile.TemporaryDirectory() as work:
        setup = SearchSetup(asking_two.cfgs[("0.7", "random", 0)], Path(work))
        setup.build_env()
        try:
            selection = asking_two.cell_selection(setup, budget, "random", judged)
            alone = asking_two.judgement(setup, selection, 0, 1)
        finally:
            compare._close_evaluator(setup)  # the stub evaluator holds nothing to close
    assert alone["seed"] == 1000 and alone["map"] == pytest.approx(judged["judges"][1]["map"], abs=1e-6)
    back = compare_bench(tiny_cfg("bench.methods=[random,uniform]", "bench.seeds=1", f"bench.resume={tmp_path / 'run'}",
                                  finetune=1), tmp_path / "unused")  # resumed asking one judge: the cells' own
    for method in ("random", "uniform"):
        assert back["budgets"]["0.7"][method]["map_finetuned"] == first["budgets"]["0.7"][method]["map_finetuned"]
    monkeypatch.undo()
    fresh = compare_bench(tiny_cfg("bench.methods=[random,uniform]", "bench.seeds=1", "bench.finetune.judge_seeds=2",
                                   finetune=1), tmp_path / "fresh")
    for method in ("random", "uniform"):
        assert fresh["budgets"]["0.7"][method]["map_finetuned"] == pytest.approx(
            second["budgets"]["0.7"][method]["map_finetuned"], abs=1e-6)


def test_a_bench_split_by_seed_scores_like_one_bench(tmp_path):
    """Seeds spread over processes (seed=k bench.seeds=1) fine-tune on the same images as one bench of all seeds."""
    both = compare_bench(tiny_cfg("bench.methods=[uniform]", finetune=1), tmp_path / "both")
    alone = compare_bench(tiny_cfg("bench.methods=[uniform]", "bench.seeds=1", "seed=1", finetune=1),
                          tmp_path / "alone")
    seed1 = [r for r in both["budgets"]["0.7"]["uniform"]["per_seed"] if r["seed"] == 1][0]
    assert alone["budgets"]["0.7"]["uniform"]["per_seed"][0]["seed"] == 1
    assert alone["budgets"]["0.7"]["uniform"]["map_finetuned"] == seed1["map_finetuned"]


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("override, message", [
    ("bench.budgets=[0.01]", "unreachable"),
    ("bench.budgets=[1.5]", "in \\(0, 1\\]"),
    ("bench.methods=[ddpg,amc]", "bench.methods"),
    ("bench.seeds=0", "bench.seeds"),
])
def test_bad_settings_fail_before_any_work(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as e:
        CompareBench(tiny_cfg(override), tmp_path / "run")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_cli_unreachable_budget_is_one_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "amc.cli.bench", "bench=compare", "bench.budgets=[0.05,0.5]",
                          f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bench budget 0.05: flops budget 0.05 is unreachable")
    assert not (tmp_path / "run" / "cells").exists()


def test_module_exports():
    assert compare.METHODS == tuple(METHODS)


def test_latency_budget_cells(tmp_path):
    """bench.latency_budgets: one lookup table for the run, every method's policy within the latency budget."""
    results = compare_bench(tiny_cfg("bench.budgets=[]", "bench.latency_budgets=[0.8]", "bench.seeds=1"), tmp_path)
    assert list(results["budgets"]) == ["latency:0.8"]
    assert (tmp_path / "latency_table.json").is_file()
    for method in METHODS:
        agg = results["budgets"]["latency:0.8"][method]
        assert agg["latency_ratio"] <= 0.8 + 1e-9 and 0.0 < agg["flops_ratio"] < 1.0, (method, agg)
        assert agg["map_proxy"] is not None


def test_compare_parallel_script_gives_the_single_bench_results(finished, tmp_path):
    """scripts/compare_parallel.sh (one process per budget and seed, then one table) reproduces one bench's numbers."""
    _, single = finished
    out = tmp_path / "parallel"
    script = Path(__file__).parents[1] / "scripts" / "compare_parallel.sh"
    env = {**os.environ, "PYTHON": sys.executable, "BUDGETS": "0.7", "SEEDS": "2", "THREADS": "1"}
    args = ["bench.episodes=4", "bench.full.val_images=8", "bench.full.bn_batches=1", "bench.full.bn_batch_size=4",
            "bench.finetune.epochs=0", "bench.search.overrides=['evaluator=stub']",
            "bench.search.agents.ddpg=['agent=ddpg-demo','agent.warmup=2']"]
    # seed 1 first, as another machine would run it: one process per method group, no table (the seeds before
    # FIRST_SEED are not there); then the whole bench in the same run dir reads seed 1's cells back
    groups = {**env, "FIRST_SEED": "1", "METHOD_GROUPS": "ddpg random uniform,global_magnitude", "TABLE": "0"}
    first = subprocess.run(["bash", str(script), str(out), *args], env=groups, cwd=Path(__file__).parents[1],
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert sorted(p.name for p in (out / "logs").glob("*.log")) == [
        "0.7-seed1-ddpg.log", "0.7-seed1-random.log", "0.7-seed1-uniform+global_magnitude.log"]
    assert not (out / "logs" / "table").exists() and len(list((out / "cells").glob("*/*/seed1.json"))) == 4
    run = subprocess.run(["bash", str(script), str(out), *args], env=env, cwd=Path(__file__).parents[1],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "4 already finished" in " ".join((out / "logs" / "0.7-seed1.log").read_text().split())
    assert {p.name for p in (out / "logs").glob("*.log")} >= {"0.7-seed0.log", "0.7-seed1.log", "table.log"}
    assert "8 cells, 8 already finished" in " ".join((out / "logs" / "table.log").read_text().split())
    merged = json.loads((out / "results.json").read_text())
    for method in METHODS:
        for metric in ("map_proxy", "map_full", "flops_ratio"):
            assert merged["budgets"]["0.7"][method][metric] == pytest.approx(single["budgets"]["0.7"][method][metric])
        assert [r["seed"] for r in merged["budgets"]["0.7"][method]["per_seed"]] == [0, 1]
    # a process that fails is reported and no table is written from a partial set of cells
    bad = subprocess.run(["bash", str(script), str(tmp_path / "bad"), *args, "bench.full.val_images=0"], env=env,
                         cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "2 of 2 processes failed" in bad.stderr
    assert not (tmp_path / "bad" / "results.json").exists()


def test_search_learning_script_summarizes_each_search(tmp_path: Path) -> None:
    """scripts/search_learning.py: best episode, first/last-window mean reward, per search (plain and gzip logs)."""
    import gzip

    rewards = {"ddpg": [-0.5, -0.6, -0.3, -0.2], "random": [-0.5, -0.4, -0.6, -0.5]}
    for method, values in rewards.items():
        search = tmp_path / "cells" / "flops-0.3" / method / "seed0" / "search"
        search.mkdir(parents=True)
        lines = "".join(json.dumps({"reward": r, "map50_95": -r / 10, "penalized": False}) + "\n" for r in values)
        if method == "ddpg":
            (search / "episodes.jsonl").write_text(lines)
        else:
            with gzip.open(search / "episodes.jsonl.gz", "wt") as f:
                f.write(lines)
    script = Path(__file__).parents[1] / "scripts" / "search_learning.py"
    run = subprocess.run([sys.executable, str(script), str(tmp_path), "--window", "2"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = {line.split()[1]: line.split() for line in run.stdout.splitlines()[1:]}
    assert rows["ddpg"][3:8] == ["4", "4", "-0.2000", "-0.5500", "-0.2500"]
    assert rows["random"][3:8] == ["4", "2", "-0.4000", "-0.4500", "-0.5500"]
    empty = subprocess.run([sys.executable, str(script), str(tmp_path / "none")], capture_output=True, text=True)
    assert empty.returncode != 0 and "no cells" in empty.stderr


def test_the_default_bench_is_the_one_behind_the_shipped_heldout_table(tmp_path: Path) -> None:
    """Plain bench=compare (the shipped defaults: no search or agent overrides) composes every cell exactly as the
    run in docs/results/compare-heldout: each shipped cell's fingerprint (search config, full-val and fine-tune
    settings) equals the one this checkout computes, so `amc-bench bench=compare` reproduces and resumes that table
    and plain amc-search is the setting it measured."""
    shipped = Path(__file__).parents[1] / "docs" / "results" / "compare-heldout" / "cells"
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("bench", overrides=["bench=compare"])
    b = cfg.bench
    assert (list(b.budgets), b.seeds, b.episodes) == ([0.5, 0.3], 8, 120)
    assert list(b.search.overrides) == [] and list(b.search.agents.ddpg) == []
    bench = CompareBench(cfg, tmp_path / "run")
    checked = 0
    for (budget, method, seed), cell_cfg in bench.cfgs.items():
        path = shipped / f"flops-{budget}" / method / f"seed{seed}.json"
        if path.is_file():
            record = json.loads(path.read_text())
            assert (record["budget"], record["method"], record["seed"]) == (budget, method, seed)
            assert record["fingerprint"] == bench._cell_fingerprint(cell_cfg, method), (budget, method, seed)
            # judged as often as the default asks (bench.finetune.judge_seeds): read back, not judged again
            maps = [j["map"] for j in record["judges"]]
            assert len(maps) == b.finetune.judge_seeds and record["map_finetuned"] == pytest.approx(np.mean(maps))
            checked += 1
    # a setting the table was not measured with does not pass for it
    with initialize_config_module(config_module="conf", version_base="1.3"):
        other = compose("bench", overrides=["bench=compare", "bench.seeds=1", "bench.finetune.epochs=2"])
    other_bench = CompareBench(other, tmp_path / "other")
    key = ("0.5", "uniform", 0)
    assert other_bench._cell_fingerprint(other_bench.cfgs[key]) != bench._cell_fingerprint(bench.cfgs[key])
    if checked == 0:  # the bench has not finished a cell yet (docs/results.md, "The held-out proof")
        pytest.skip("docs/results/compare-heldout holds no finished cells yet")


def test_the_readme_headline_table_is_the_shipped_heldout_results(tmp_path: Path) -> None:
    """The README's headline block is exactly the rendering of docs/results/compare-heldout/results.json (issue 20:
    "the README's headline table is that file"); scripts/readme_headline.py rewrites it, and --check notices an
    edited number."""
    root = Path(__file__).parents[1]
    script = [sys.executable, str(root / "scripts" / "readme_headline.py"), "--check"]
    done = subprocess.run(script, capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    edited = tmp_path / "README.md"
    text = (root / "README.md").read_text()
    edited.write_text(text.replace("| 50% | DDPG (`amc-search episodes=120`) | 0.", "| 50% | DDPG (`amc-search episodes=120`) | 9.", 1))
    done = subprocess.run([*script, "--readme", str(edited)], capture_output=True, text=True, cwd=root)
    assert done.returncode == 1 and "does not hold the table" in done.stderr


def test_corner_script_agrees_with_the_benchs_failed_seeds(tmp_path: Path) -> None:
    """scripts/ddpg_corner.py (issue 20, item 3: where each DDPG search ended up) reads the shipped held-out cells'
    gzipped episode logs and calls a search failed exactly when the bench did; a folder without searches is one
    error line, exit 2."""
    root = Path(__file__).parents[1]
    shipped = root / "docs" / "results" / "compare-heldout"
    script = [sys.executable, str(root / "scripts" / "ddpg_corner.py")]
    done = subprocess.run([*script, str(shipped), "--json", str(tmp_path / "corner.json")], capture_output=True,
                          text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    searches = json.loads((tmp_path / "corner.json").read_text())["searches"]
    failed = json.loads((shipped / "results.json").read_text())["ddpg_failed_seeds"]
    for budget, by_seed in searches.items():
        assert sorted(int(s) for s, r in by_seed.items() if r["failed"]) == sorted(failed.get(budget, []))
        assert all(0 <= r["first_mean_ratio"] <= 0.8 and 0 <= r["later_mean_ratio"] <= 0.8 for r in by_seed.values())
    empty = subprocess.run([*script, str(tmp_path)], capture_output=True, text=True, cwd=root)
    assert empty.returncode == 2 and empty.stderr.startswith("error: no DDPG search")


def test_variant_script_pairs_a_settings_cells_with_the_shipped_bench(tmp_path: Path) -> None:
    """scripts/compare_variant.py sets a run's DDPG cells beside the shipped bench's, seed by seed: the shipped run
    against itself differs by exactly 0 from the shipped DDPG and agrees with results.json on random search and on
    the failed seeds; a run without DDPG cells is one error line, exit 2."""
    root = Path(__file__).parents[1]
    shipped = root / "docs" / "results" / "compare-heldout"
    script = [sys.executable, str(root / "scripts" / "compare_variant.py")]
    done = subprocess.run([*script, str(shipped), "--base", str(shipped), "--json", str(tmp_path / "v.json")],
                          capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    figures = json.loads((tmp_path / "v.json").read_text())
    results = json.loads((shipped / "results.json").read_text())
    assert figures["paired"]["shipped_ddpg"]["mean"] == 0.0 and figures["paired"]["shipped_ddpg"]["ties"] == 8
    shipped_random = results["paired"]["map_finetuned"]["0.5"]["random"]
    assert figures["paired"]["random"]["mean"] == pytest.approx(shipped_random["mean"])
    assert figures["failed_seeds"] == figures["shipped_failed_seeds"] == results["ddpg_failed_seeds"]["0.5"]
    empty = subprocess.run([*script, str(tmp_path)], capture_output=True, text=True, cwd=root)
    assert empty.returncode == 2 and empty.stderr.startswith("error: no DDPG cells")


def test_headline_block_says_what_was_measured_and_replaces_only_itself(finished):
    """The headline rendering of a results.json: seeds finished of those asked, every method's row, nothing made up
    for a skipped fine-tune; the README block between the markers is replaced, a README without them refused."""

    _, results = finished
    block = headline_markdown(json.loads(json.dumps(results)), "run/results.json")
    assert block.startswith("<!-- headline:start") and block.endswith(END)
    assert "2 of 2 seeds at 70%" in block and "0 images in common" in block
    assert "| 70% | DDPG (`amc-search episodes=4`) | - ± - |" in block  # the fine-tune was skipped: no number
    assert sum(line.startswith("| 70% |") for line in block.splitlines()) == 4
    assert "Fine-tuned mAP@0.5:0.95 on the" in block  # no fine-tune ran: no judge named
    judged = json.loads(json.dumps(results))
    judged["settings"]["finetune"].update(epochs=1, train_images=1000, judge_seeds=1)
    assert "(after one 1-epoch fine-tune on 1000 train images)" in headline_markdown(judged, "r.json")
    judged["settings"]["finetune"]["judge_seeds"] = 4
    assert "(the mean of 4 1-epoch fine-tunes on 1000 train images, fine-tune seeds seed + 1000 r for r < 4)" in \
        " ".join(headline_markdown(judged, "r.json").split())
    readme = "# title\n\n<!-- headline:start -->\nold\n<!-- headline:end -->\n\nafter\n"
    updated = replace_block(readme, block)
    assert updated == "# title\n\n" + block + "\n\nafter\n" and replace_block(updated, block) == updated
    with pytest.raises(ValueError, match="no headline block"):
        replace_block("# no markers\n", block)


def test_cells_from_two_machines_are_said_seed_by_seed(finished):
    """A bench finished on another machine (seeds 6-7 on a GPU, the rest on a CPU): results.json's cell_machines
    names each machine with its seeds, a seed whose methods ran on two machines is flagged, and the headline says
    which seeds ran where instead of naming the reporting process's machine."""
    _, results = finished
    assert results["cell_machines"]["mixed_seeds"] == {} and len(results["cell_machines"]["machines"]) == 1
    cpu = {"torch": "2.13.0+cpu", "device": "cpu", "cpu": "x86_64", "threads": 1, "cuda": None}
    gpu = {"torch": "2.11.0+cu130", "device": "cuda", "cpu": "x86_64", "threads": 1, "cuda": "NVIDIA H200"}
    cells = {"0.5": {m: [{"seed": s, "machine": gpu if s >= 6 else cpu} for s in range(8)]
                     for m in ("ddpg", "random")}}
    found = cell_machines(cells)
    assert [e["seeds"] for e in found["machines"]] == [{"0.5": [0, 1, 2, 3, 4, 5]}, {"0.5": [6, 7]}]
    assert found["mixed_seeds"] == {}
    block = headline_markdown({**json.loads(json.dumps(results)), "cell_machines": found}, "run/results.json")
    text = " ".join(block.split())
    assert ("Cells ran on: seeds 0-5 on cpu (torch 2.13.0+cpu, 1 thread(s) per process); seeds 6, 7 on cuda "
            "(NVIDIA H200, torch 2.11.0+cu130, 1 thread(s) per process). Every method of a seed ran on the same "
            "machine") in text
    cells["0.5"]["random"][2]["machine"] = gpu  # seed 2's random search elsewhere than its DDPG search
    found = cell_machines(cells)
    assert found["mixed_seeds"] == {"0.5": [2]}
    block = headline_markdown({**json.loads(json.dumps(results)), "cell_machines": found}, "run/results.json")
    assert "Seeds whose methods ran on different machines: 2 at 50%." in " ".join(block.split())


def test_surrogate_agents_script_fits_the_logged_loss_and_runs_each_setting(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/surrogate_agents.py: a known smooth loss of the ratios is fitted (high cross-validated R^2), every
    setting is searched on it, and each search's exported loss is the surrogate's value of a policy it played."""
    import gzip
    import importlib.util

    rng = np.random.default_rng(0)
    weights = rng.uniform(0.0, 1.0, 55)
    for method in ("ddpg", "random"):
        search = tmp_path / "cells" / "flops-0.3" / method / "seed0" / "search"
        search.mkdir(parents=True)
        with gzip.open(search / "episodes.jsonl.gz", "wt") as f:
            for k in range(100):
                ratios = rng.uniform(0.0, 0.8, 55)
                f.write(json.dumps({"ratios": ratios.tolist(), "recover_loss": 0.2 + float(weights @ ratios**2) / 55,
                                    "penalized": False, "phase": "explore" if k >= 15 else "warmup"}) + "\n")
    spec = importlib.util.spec_from_file_location("surrogate_agents",
                                                  Path(__file__).parents[1] / "scripts" / "surrogate_agents.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "surrogate_agents", module)  # worker processes find its functions by name
    spec.loader.exec_module(module)
    # Record every policy each search has the surrogate score (the script runs them one after another here; the
    # fit's own cross-validation calls are not recorded).
    searches: list[list[tuple[np.ndarray, float]]] = []
    searching = [False]
    score, search = module.RidgeSurrogate.__call__, module.surrogate_search

    def recorded_score(self, ratios):
        value = score(self, ratios)
        if searching[0]:
            searches[-1].append((np.array(ratios, dtype=np.float64), float(value[0])))
        return value

    def recorded_search(*args):
        searches.append([])
        searching[0] = True
        try:
            return search(*args)
        finally:
            searching[0] = False

    with monkeypatch.context() as m:  # undone before the --jobs run, whose workers pickle the real functions
        m.setattr(module.RidgeSurrogate, "__call__", recorded_score)
        m.setattr(module, "surrogate_search", recorded_search)
        out = module.main([str(tmp_path), "--seeds", "1", "--episodes", "4", "--noise", "0",
                           "--variant", "short=agent.warmup=2", "--out", str(tmp_path / "out.json")])
    assert out["fit"]["policies"] == 200 and out["fit"]["cv_r2"] > 0.9
    assert list(out["settings"]) == ["random", "ddpg", "short"] and len(searches) == 3
    assert out["settings"]["short"]["overrides"][-1] == "agent.warmup=2"

    def known_loss(ratios: np.ndarray) -> float:
        return 0.2 + float(weights @ ratios**2) / 55

    for setting, calls in zip(out["settings"].values(), searches):
        run = setting["runs"][0]
        played = {tuple(r): v for r, v in calls}  # the distinct policies it played, with their surrogate loss
        assert len(played) == 4 and 0 <= run["best_episode"] < 4  # one policy per episode
        # the exported loss is exactly the surrogate's value of a policy the search played, and (no noise, reward
        # = -loss) of the lowest-loss one: not merely a number in the loss's range
        assert run["best_loss"] in played.values() and run["best_loss"] == min(played.values())
        # and that value is the known loss of that policy: the fit's error on the played policies was measured at
        # 0.0043 at most (ridge 0.1 shrinks the fit a little); 0.01 is 2x that, while the played policies' losses
        # span 0.33-0.41 and a fit that predicted the mean logged loss (0.31) would err by 0.019 or more on them
        for ratios, value in played.items():
            assert abs(value - known_loss(np.array(ratios))) < 0.01, (value, known_loss(np.array(ratios)))
        assert max(played.values()) - min(played.values()) > 0.03  # policies the tolerance tells apart
    assert json.loads((tmp_path / "out.json").read_text())["settings"]["ddpg"]["best_loss_mean"] == \
        out["settings"]["ddpg"]["best_loss_mean"]
    # searches in parallel processes give the same results
    parallel = module.main([str(tmp_path), "--seeds", "1", "--episodes", "4", "--noise", "0", "--jobs", "2"])
    for name in ("random", "ddpg"):
        assert parallel["settings"][name]["runs"][0]["best_loss"] == out["settings"][name]["runs"][0]["best_loss"]
    with pytest.raises(SystemExit, match="scored policies"):
        module.main([str(tmp_path / "none")])


# ---------------------------------------------------------------------------------------------- held out
def test_policies_are_scored_on_images_the_results_are_not_reported_on(finished):
    """Issue 20: the bench records the images the searches score on and those it reports on; they are disjoint."""
    _, results = finished
    protocol = results["settings"]["protocol"]
    assert (protocol["search_split"], protocol["report_split"]) == ("search", "val")
    assert protocol["overlap_images"] == 0
    search, report = set(protocol["search_images"]), set(protocol["report_images"])
    assert len(report) == 8 and len(search) == 300  # bench.full.val_images=8; the stub scores no subset
    assert not search & report
    assert {Path(f).parent.name for f in search} == {"search"} and {Path(f).parent.name for f in report} == {"val"}
    machine = results["settings"]["machine"]
    assert machine["torch"] and machine["threads"] >= 1


def test_a_bench_scoring_on_its_report_split_is_refused(tmp_path):
    cfg = tiny_cfg()
    OmegaConf.update(cfg, "bench.search.overrides", ["evaluator=stub", "data.search_split=val"])
    with pytest.raises(ConfigError, match="search_split=val is also data.split"):
        compare_bench(cfg, tmp_path)


# ---------------------------------------------------------------------------------------------- paired statistics
def test_paired_differences_bootstrap_interval_and_sign_test():

    rec = lambda seed, v: {"seed": seed, "map_finetuned": v}  # noqa: E731
    cells = {"0.5": {"ddpg": [rec(s, v) for s, v in enumerate([0.30, 0.32, 0.28, 0.31, 0.29, 0.33, 0.30, 0.34])],
                     "random": [rec(s, v) for s, v in enumerate([0.25, 0.27, 0.29, 0.26, 0.24, 0.28, 0.25, 0.27])],
                     "uniform": [rec(s, 0.31) for s in range(7)]}}  # seed 7 not measured: left out of the pairs
    p = paired(cells)["0.5"]
    r = p["random"]
    assert r["diffs"] == pytest.approx([0.05, 0.05, -0.01, 0.05, 0.05, 0.05, 0.05, 0.07])
    assert r["mean"] == pytest.approx(0.045) and (r["wins"], r["ties"], r["losses"]) == (7, 0, 1)
    assert 0.0 < r["ci95"][0] < r["mean"] < r["ci95"][1] < 0.07
    assert r["sign_p"] == pytest.approx(2 * 9 / 256)  # P(X <= 1), X ~ Bin(8, 1/2), two-sided
    u = p["uniform"]
    assert u["seeds"] == list(range(7)) and u["ci95"][0] < 0 < u["ci95"][1]  # a tie within the spread


def test_a_search_fails_when_its_best_is_a_warmup_draw_or_it_never_improves():

    def log(rewards, warmup=3):
        return [{"episode": i + 1, "reward": r, "phase": "warmup" if i < warmup else "explore"}
                for i, r in enumerate(rewards)]

    assert search_failed(log([-0.5, -0.4, -0.5] + [-0.3] * 20)) is False  # learns: best after warm-up, last 15 better
    assert search_failed(log([-0.5, -0.1, -0.5] + [-0.3] * 20)) is True  # its best is a warm-up draw
    assert search_failed(log([-0.5, -0.1, -0.5] + [-0.3] * 20), exported=5) is False  # it exports a learned episode
    assert search_failed(log([-0.5, -0.4, -0.5] + [-0.3] * 20), exported=2) is True  # it exports a warm-up draw
    assert search_failed(log([-0.5, -0.4, -0.5] + [-0.35] + [-0.6] * 20)) is True  # last 15 no better than warm-up
    assert search_failed([{"reward": -0.4, "phase": "random"}]) is None  # random search has no warm-up


def test_report_only_tables_the_finished_seeds_and_runs_nothing(finished, tmp_path):
    """bench.report_only: a bench whose seed 1 is missing a cell reports seed 0 alone, with the same figures."""
    out, results = finished
    copy = tmp_path / "partial"
    shutil.copytree(out / "cells", copy / "cells")
    (copy / "cells" / "flops-0.7" / "uniform" / "seed1.json").unlink()
    partial = compare_bench(tiny_cfg("bench.report_only=true", f"bench.resume={copy}"), tmp_path / "run")
    assert [r["seed"] for r in partial["budgets"]["0.7"]["ddpg"]["per_seed"]] == [0]
    assert partial["budgets"]["0.7"]["ddpg"]["per_seed"][0] == results["budgets"]["0.7"]["ddpg"]["per_seed"][0]
    assert not (copy / "cells" / "flops-0.7" / "uniform" / "seed1.json").exists()  # nothing was run
    assert set(partial["paired"]["map_full"]["0.7"]) == {"random", "uniform", "global_magnitude"}

    seed0 = read_episodes(out / "cells" / "flops-0.7" / "ddpg" / "seed0" / "search" / "episodes.jsonl")
    assert len(seed0) == 4 and search_failed(seed0) is not None
    assert partial["ddpg_failed_seeds"] == {"0.7": [0] if search_failed(seed0) else []}


def test_where_a_flops_cell_runs_is_not_part_of_its_fingerprint(tmp_path):
    """A bench started on a CPU can be finished on a GPU seed by seed: device and threads are not settings of a
    FLOPs cell (each cell records its machine instead); the budget, episodes and agent are."""
    cpu = CompareBench(tiny_cfg(), tmp_path / "a")
    other = tiny_cfg()
    OmegaConf.update(other, "bench.search.overrides", ["evaluator=stub", "device=cuda", "device.threads=16"])
    gpu = CompareBench(other, tmp_path / "b")
    key = ("0.7", "ddpg", 0)
    assert cpu._cell_fingerprint(cpu.cfgs[key]) == gpu._cell_fingerprint(gpu.cfgs[key])
    assert cpu._cell_fingerprint(cpu.cfgs[key]) != cpu._cell_fingerprint(cpu.cfgs[("0.7", "random", 0)])


def test_spend_budget_is_a_setting_of_searches_only_and_off_is_the_old_wall(tmp_path):
    """spend_budget=false is the wall of benches run before the knob (their cells read back: same fingerprint as a
    config without the key); on, it is a setting of the searching methods' cells, not of the baselines' (their
    policies never step the environment); a value that is not a boolean fails before any work."""
    def bench(name, *items):
        cfg = tiny_cfg("bench.methods=[ddpg,uniform]")
        OmegaConf.update(cfg, "bench.search.overrides", ["evaluator=stub", *items])
        return CompareBench(cfg, tmp_path / name)

    plain, off, on = bench("a"), bench("b", "spend_budget=false"), bench("c", "spend_budget=true")
    ddpg, uniform = ("0.7", "ddpg", 0), ("0.7", "uniform", 0)
    legacy = plain.cfgs[ddpg].copy()
    with open_dict(legacy):
        del legacy["spend_budget"]
    assert plain._cell_fingerprint(legacy) == off._cell_fingerprint(off.cfgs[ddpg])
    assert on._cell_fingerprint(on.cfgs[ddpg]) != off._cell_fingerprint(off.cfgs[ddpg])
    assert (on._cell_fingerprint(on.cfgs[uniform], "uniform")
            == off._cell_fingerprint(off.cfgs[uniform], "uniform"))
    with pytest.raises(ConfigError, match="spend_budget must be true or false"):
        bench("d", "spend_budget=3")


def test_imitate_best_is_a_setting_of_the_ddpg_cells_only_whatever_its_default(tmp_path):
    """agent.imitate_best (0.1 in agent=ddpg-demo since issue 20) changes the DDPG cells' fingerprint, 0 is the actor
    of benches run before the knob, and the baselines' cells keep their fingerprint whichever value the agent config
    holds (their policies train no actor), so the baselines' cells of a bench run before the new default read
    back beside DDPG cells run with it."""
    def bench(name, value):
        cfg = tiny_cfg("bench.methods=[ddpg,uniform]")
        OmegaConf.update(cfg, "bench.search.overrides", ["evaluator=stub", f"agent.imitate_best={value}"])
        return CompareBench(cfg, tmp_path / name)

    off, on = bench("a", 0.0), bench("b", 0.1)
    ddpg, uniform = ("0.7", "ddpg", 0), ("0.7", "uniform", 0)
    legacy = off.cfgs[ddpg].copy()
    with open_dict(legacy):
        del legacy["agent"]["imitate_best"]
    assert off._cell_fingerprint(legacy) == off._cell_fingerprint(off.cfgs[ddpg])
    assert on._cell_fingerprint(on.cfgs[ddpg]) != off._cell_fingerprint(off.cfgs[ddpg])
    assert (on._cell_fingerprint(on.cfgs[uniform], "uniform")
            == off._cell_fingerprint(off.cfgs[uniform], "uniform"))


def test_what_a_search_shows_saves_or_reports_is_not_part_of_a_cell_fingerprint(tmp_path):
    """A bench continued with other progress, checkpoint or end-of-search report settings (the ones a search resume
    may change too, amc.search.resume.RESULT_NEUTRAL) reads its cells back; a setting a result depends on is
    named when it differs."""
    base = CompareBench(tiny_cfg(), tmp_path / "a")
    shown = tiny_cfg()
    OmegaConf.update(shown, "bench.search.overrides", [
        "evaluator=stub", "progress_interval_s=30", "progress_heartbeat_s=5", "checkpoint_every=3",
        "final.latency_runs=2", "final.max_latency_spread=0.5", "final.export_model=false"])
    other = CompareBench(shown, tmp_path / "b")
    key = ("0.7", "ddpg", 0)
    assert base._cell_fingerprint(base.cfgs[key]) == other._cell_fingerprint(other.cfgs[key])
    changed = tiny_cfg()
    OmegaConf.update(changed, "bench.search.overrides", ["evaluator=stub", "ratio_bounds=[0.0,0.7]"])
    moved = CompareBench(changed, tmp_path / "c")
    assert _changed_settings(base._result_settings(base.cfgs[key]), moved._result_settings(moved.cfgs[key])) == (
        " (search.ratio_bounds: [0.0, 0.8] there, [0.0, 0.7] here)")


def _script(name: str) -> ModuleType:
    """scripts/<name>.py as a module (scripts/ is not a package; its report() is what the tests check)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_finetune_cells_report_pairs_methods_seed_by_seed_under_both_finetunes() -> None:
    """scripts/finetune_cells.py's report (issue 20, item 5): per method the mean of each fine-tune, DDPG against each
    other method seed by seed with the bench's own paired statistics (mean, bootstrap interval, wins, sign test)
    under the default and the 1-epoch fine-tune, the order under each, and the 1-epoch's rank correlation with the
    default fine-tune over every policy."""
    script = _script("finetune_cells")
    seeds, methods = [0, 1, 2], ["ddpg", "random", "uniform"]
    best = {"ddpg": [0.36, 0.29, 0.35], "random": [0.35, 0.31, 0.30], "uniform": [0.20, 0.21, 0.22]}
    one = {"ddpg": [0.09, 0.07, 0.08], "random": [0.10, 0.06, 0.06], "uniform": [0.01, 0.02, 0.03]}
    proxy = {"ddpg": [0.05, 0.03, 0.04], "random": [0.06, 0.02, 0.01], "uniform": [0.003, 0.003, 0.003]}
    cells = {m: {s: {"best": best[m][s], "last": best[m][s], "bench_1epoch": one[m][s], "map_proxy": proxy[m][s]}
                 for s in seeds} for m in methods}
    results, lines = script.report(cells, "0.3", seeds, methods, ["threads=1"])
    vs_random = results["paired"]["best"]["random"]
    assert vs_random["diffs"] == pytest.approx([0.01, -0.02, 0.05]) and vs_random["mean"] == pytest.approx(0.04 / 3)
    assert (vs_random["wins"], vs_random["losses"]) == (2, 1)
    assert vs_random["ci95"][0] <= vs_random["mean"] <= vs_random["ci95"][1]
    assert results["paired"]["bench_1epoch"]["uniform"]["wins"] == 3
    assert results["ddpg_ahead_in_seeds"] == {"random": {"best": 2, "last": 2, "bench_1epoch": 2},
                                              "uniform": {"best": 3, "last": 3, "bench_1epoch": 3}}
    assert results["order"]["best"] == ["ddpg", "random", "uniform"] and results["order_holds"]
    rho = results["spearman_vs_default"]
    assert 0.5 < rho["bench_1epoch"]["every policy"] <= 1.0
    assert rho["map_proxy"]["search policies"] == pytest.approx(spearman([0.05, 0.03, 0.04, 0.06, 0.02, 0.01],
                                                                         [0.36, 0.29, 0.35, 0.35, 0.31, 0.30]))
    assert results["spearman_by_epoch"] == {}  # no per-epoch history recorded: nothing to rank
    text = "\n".join(lines)
    assert "| 1 | 0.2900 / 0.0700 | 0.3100 / 0.0600 | 0.2100 / 0.0200 |" in text
    assert "DDPG - random: default fine-tune, best epoch +0.0133" in text and "ahead in 2/3 seeds" in text
    json.dumps(results)  # results.json: plain JSON
    for m in methods:  # epoch 1 ranks like the 1-epoch fine-tune, the last epoch is the best
        for s in seeds:
            cells[m][s]["history"] = [one[m][s], best[m][s]]
    by_epoch = script.report(cells, "0.3", seeds, methods, [])[0]["spearman_by_epoch"]
    assert by_epoch["every policy"][0] == pytest.approx(rho["bench_1epoch"]["every policy"])
    assert by_epoch["every policy"][1] == by_epoch["search policies"][1] == pytest.approx(1.0)


@pytest.mark.parametrize("folder, bench", [("finetune-cells-0.5", "compare-heldout"),
                                            ("finetune-cells-0.3", "compare-heldout"),
                                            ("finetune-cells-0.5-no-imitation", "compare-heldout-no-imitation"),
                                            ("finetune-fresh-0.3", "compare-fresh"),
                                            ("finetune-fresh-rule-0.3", "compare-fresh-rule")])
def test_shipped_finetune_cells_are_the_runs_and_cells_they_name(folder: str, bench: str) -> None:
    """Each shipped real-fine-tune result (issue 20, item 5) is its runs: every cell's default fine-tune mAP is the
    best_map50_95 of the amc-finetune metrics.json shipped beside it, its 1-epoch mAP the bench cell's, and the
    summary and paired figures are what the script's report makes of those cells."""
    root = Path(__file__).parents[1] / "docs" / "results"
    results = json.loads((root / folder / "results.json").read_text())
    for method, by_seed in results["cells"].items():
        for seed, cell in by_seed.items():
            metrics = json.loads((root / folder / "finetune" / f"{method}-seed{seed}.json").read_text())
            assert cell["best"] == metrics["best_map50_95"] and cell["epochs"] == metrics["epochs"] == 5
            if "history" in cell:  # recorded since the eighth session's folders
                assert cell["history"] == [h["map50_95"] for h in metrics["history"]], (method, seed)
            record = json.loads((root / bench / "cells" / f"flops-{results['budget']}" / method /
                                 f"seed{seed}.json").read_text())
            # made when the bench judged once: its 1-epoch mAP is the cell's first judgement (the cell's own)
            first = record["judges"][0]["map"] if "judges" in record else record["map_finetuned"]
            assert cell["bench_1epoch"] == first, (method, seed)
    cells = {m: {int(s): c for s, c in by_seed.items()} for m, by_seed in results["cells"].items()}
    remade, _ = _script("finetune_cells").report(cells, results["budget"], results["seeds"], results["methods"],
                                                results["finetune_overrides"])
    remade = json.loads(json.dumps(remade))  # as results.json holds it (seed keys as strings)
    for key in ("summary", "order", "order_holds", "ddpg_ahead_in_seeds", "paired", "spearman_vs_default",
                "spearman_by_epoch"):
        if key in results:  # the first folder was written before the report held paired figures and the rhos
            assert remade[key] == results[key], key


def test_proxy_vs_finetune_ranks_each_proxy_score_against_the_default_finetune() -> None:
    """scripts/proxy_vs_finetune.py's report: per method the mean proxy mAP, reward and fine-tuned mAP; Spearman of the
    proxy mAP and of the reward against the default fine-tune's mAP over every policy and over the search policies
    alone; and its KEY=VALUE proxy settings parse as YAML values (and refuse anything else)."""
    script = _script("proxy_vs_finetune")
    seeds = [0, 1, 2]
    maps = {"ddpg": [0.05, 0.03, 0.04], "random": [0.06, 0.02, 0.01], "uniform": [0.003] * 3}
    rewards = {"ddpg": [-0.2, -0.3, -0.25], "random": [-0.21, -0.28, -0.35], "uniform": [-0.1] * 3}
    tuned = {"ddpg": [0.36, 0.29, 0.35], "random": [0.35, 0.31, 0.30], "uniform": [0.37, 0.38, 0.36]}
    cells = {m: {str(s): {"method": m, "seed": s, "map": maps[m][s], "reward": rewards[m][s], "seconds": 10.0 + s,
                          "finetuned": tuned[m][s]} for s in seeds} for m in maps}
    out = script.report(cells, list(maps), seeds)
    assert out["policies"] == 9 and out["median_seconds"] == 11.0
    assert out["per_method"]["random"]["map"] == pytest.approx(0.03)
    rho = out["spearman_vs_default"]
    search = [(m, s) for m in ("ddpg", "random") for s in seeds]
    assert rho["map"]["search policies"] == pytest.approx(spearman([maps[m][s] for m, s in search],
                                                                   [tuned[m][s] for m, s in search]))
    assert rho["reward"]["every policy"] > rho["map"]["every policy"]  # the reward ranks uniform first, as tuned
    assert script._proxy_overrides(["recover_steps=120", "recover_img_size=null", "recover_lr=0.03"]) == {
        "recover_steps": 120, "recover_img_size": None, "recover_lr": 0.03}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        script._proxy_overrides(["recover_steps"])
    json.dumps(out)


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parents[1] / "docs" / "results" /
                                                          "proxy-vs-finetune").glob("*.json")))
def test_shipped_proxy_studies_are_the_report_of_their_cells(name: str) -> None:
    """Each shipped proxy study (docs/evaluator.md quotes them) pairs every policy with the default fine-tune's mAP
    the fine-tune folder it names holds, and its report is what the script makes of its cells."""
    root = Path(__file__).parents[1]
    study = json.loads((root / "docs" / "results" / "proxy-vs-finetune" / name).read_text())
    tuned = json.loads((root / study["finetune_dir"] / "results.json").read_text())
    assert study["budget"] == tuned["budget"] and name.startswith(study["budget"] + "-")
    for method, by_seed in study["cells"].items():
        assert sorted(by_seed) == sorted(str(s) for s in tuned["seeds"]), method
        for seed, cell in by_seed.items():
            assert cell["finetuned"] == tuned["cells"][method][seed]["best"], (method, seed)
    remade = _script("proxy_vs_finetune").report(study["cells"], list(study["cells"]), tuned["seeds"])
    assert json.loads(json.dumps(remade)) == study["report"]


def test_export_rules_pick_by_reward_or_by_proxy_map_and_pair_the_searches() -> None:
    """scripts/export_rule.py picks with the search's own rules (amc.search.pick) and pairs DDPG with random search
    seed by seed under each rule."""
    script = _script("export_rule")
    assert script.pick is pick and script.RULES == EXPORT_RULES  # the search's own rules (tested in test_pick.py)
    judged = {"ddpg": [0.08, 0.07, 0.09], "random": [0.07, 0.08, 0.05]}
    cells = {m: {str(s): {rule: {"map_finetuned": v + (0.02 if rule == "map" and m == "ddpg" else 0.0),
                                 "map_full": 0.0, "map_proxy": 0.05}
                          for rule in script.RULES} for s, v in enumerate(values)} for m, values in judged.items()}
    for m in cells:
        for s in cells[m]:
            for rule in script.RULES:
                cells[m][s][rule]["episode"] = 7 if rule == "map" and m == "ddpg" else 3
    out = script.report(cells, [0, 1, 2], "0.3")
    assert out["paired"]["reward"]["map_finetuned"]["random"]["wins"] == 2
    assert out["paired"]["map"]["map_finetuned"]["random"]["wins"] == 3
    assert out["paired"]["map"]["map_finetuned"]["random"]["mean"] == pytest.approx(0.04 / 3 + 0.02)
    assert out["summary"]["reward"]["ddpg"]["map_finetuned"][0] == pytest.approx(0.08)
    # the default fine-tune: the exported policies' from finetune_cells.py, the other picks' where they ran
    exported = {"ddpg": {"0": 0.36, "1": 0.30, "2": 0.35}, "random": {"0": 0.35, "1": 0.31, "2": 0.30},
                "uniform": {"0": 0.33, "1": 0.33, "2": 0.33}}
    out = script.report(cells, [0, 1, 2], "0.3", exported)
    assert "default_finetune" not in out["paired"]["map"]  # DDPG's map picks were not fine-tuned
    assert out["paired"]["reward"]["default_finetune"]["random"]["wins"] == 2
    for s in cells["ddpg"]:
        cells["ddpg"][s]["map"]["default_finetune"] = 0.40
    out = script.report(cells, [0, 1, 2], "0.3", exported)
    assert out["summary"]["map"]["ddpg"]["default_finetune"][0] == pytest.approx(0.40)
    assert out["paired"]["map"]["default_finetune"]["random"]["wins"] == 3
    assert out["paired"]["map"]["default_finetune"]["uniform"]["wins"] == 3  # 0.40 against 0.33
    json.dumps(out)


@pytest.mark.parametrize("budget", ["0.3", "0.5"])
def test_shipped_export_rules_are_the_report_of_their_cells(budget: str) -> None:
    """docs/results/export-rule (docs/results.md quotes it): every cell's best-reward pick is the episode the bench
    cell exported, each pick's default fine-tune (where one ran) is the metrics.json shipped beside it, and the report
    is what the script makes of the cells."""
    root = Path(__file__).parents[1]
    study = json.loads((root / "docs" / "results" / "export-rule" / f"{budget}.json").read_text())
    for method, by_seed in study["cells"].items():
        for seed, picks in by_seed.items():
            record = json.loads((root / "docs" / "results" / "compare-heldout" / "cells" / f"flops-{budget}" / method /
                                 f"seed{seed}.json").read_text())
            assert picks["reward"]["episode"] == record["best_episode"], (method, seed)
            for rule, entry in picks.items():
                if "default_finetune" in entry:
                    metrics = root / "docs" / "results" / "export-rule" / f"finetune-{budget}" / \
                        f"{method}-seed{seed}-ep{entry['episode']}.json"
                    assert json.loads(metrics.read_text())["best_map50_95"] == entry["default_finetune"], rule
    exported = None
    if study.get("exported_finetune"):
        tuned = json.loads((root / study["exported_finetune"] / "results.json").read_text())
        exported = {m: {s: c["best"] for s, c in by_seed.items()} for m, by_seed in tuned["cells"].items()}
    remade = _script("export_rule").report(study["cells"], study["seeds"], study["budget"], exported)
    assert json.loads(json.dumps(remade)) == study["report"]


def test_a_scripts_user_error_is_one_error_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    """The result scripts end as the amc commands do (amc.errors.script_main): a user's error is one `error:` line
    on stderr and exit code 2; a script that succeeds returns normally."""
    def bad() -> None:
        raise ConfigError("no budget 0.4 in this bench")

    with pytest.raises(SystemExit) as stop:
        script_main(bad)
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: no budget 0.4 in this bench\n"
    script_main(lambda: None)


def test_a_finished_cells_model_is_rebuilt_with_the_channels_it_was_scored_with(finished, tmp_path):
    """scripts/finetune_cells.py fine-tunes each cell's pruned model again (issue 20, item 5): CompareBench.cell_model
    rebuilds it from the cell (searches: recorded ratios through the criterion; baselines: recomputed) and refuses a
    cell whose rebuilt widths differ from the recorded ones."""
    out, _ = finished
    bench = CompareBench(tiny_cfg("bench.resume=" + str(out)), out)
    budget = bench.budget("0.7")
    for method in METHODS:
        model, source, record = bench.cell_model(budget, method, 1, tmp_path / method)
        assert record == json.loads((out / "cells" / "flops-0.7" / method / "seed1.json").read_text())
        assert bench.space.cost(record["kept"]).macs == model.cost(bench.space.img_size).macs, method
        assert source == bench.source
    copy = tmp_path / "copy"
    shutil.copytree(out / "cells", copy / "cells")
    cell = copy / "cells" / "flops-0.7" / "ddpg" / "seed1.json"
    record = json.loads(cell.read_text())
    record["ratios"] = [0.0] * len(record["ratios"])  # not the policy it recorded
    cell.write_text(json.dumps(record))
    tampered = CompareBench(tiny_cfg("bench.resume=" + str(copy)), copy)
    with pytest.raises(ConfigError, match="the rebuilt policy keeps"):
        tampered.cell_model(budget, "ddpg", 1, tmp_path / "t")
    (copy / "cells" / "flops-0.7" / "uniform" / "seed0.json").unlink()
    with pytest.raises(ConfigError, match="has not finished"):
        tampered.cell_model(budget, "uniform", 0, tmp_path / "t")
    with pytest.raises(ConfigError, match="no cell"):
        tampered.cell_model(budget, "ddpg", 5, tmp_path / "t")
    with pytest.raises(ConfigError, match="no budget 0.4"):
        tampered.budget("0.4")
    # The scripts read a run's cells through the shipped defaults: these cells were made with other settings
    shipped = CompareBench.of_run(out, "0.7", [1], ["ddpg", "uniform"])
    assert [b.key for b in shipped.budgets] == ["0.7"] and shipped.seeds == [0, 1]
    assert shipped.methods == ["ddpg", "uniform"] and shipped.out == out
    with pytest.raises(ConfigError, match="other settings"):
        shipped.finished_record(shipped.budget("0.7"), "uniform", 1)


def test_of_run_composes_the_defaults_with_the_runs_own_overrides(monkeypatch, tmp_path):
    seen = {}

    def fake_compose(name, overrides, what):
        seen["overrides"] = list(overrides)
        return "cfg"

    monkeypatch.setattr(compare, "compose_config", fake_compose)
    monkeypatch.setattr(CompareBench, "__init__", lambda self, cfg, out: seen.update(cfg=cfg, out=out))
    CompareBench.of_run(tmp_path, "0.3", [8, 9], ["ddpg"], ["bench.search.overrides=['export_rule=map']"])
    assert seen["overrides"] == ["bench=compare", f"bench.resume={tmp_path}", "bench.budgets=[0.3]", "bench.seeds=10",
                                 "seed=0", "bench.methods=[ddpg]", "bench.search.overrides=['export_rule=map']"]


def test_shipped_fresh_seed_cells_are_the_defaults_and_their_re_export(tmp_path: Path) -> None:
    """docs/results/compare-fresh: seeds 8-11 at 30% with the shipped defaults (fingerprints as this checkout
    computes them); docs/results/compare-fresh-rule: the same searches exported again by map_top10_learned (same
    episode logs, each pick the rule's, the former export the fresh cell's), the baselines unchanged."""
    results = Path(__file__).parents[1] / "docs" / "results"
    override = "bench.search.overrides=['export_rule=map_top10_learned']"
    benches = {name: CompareBench.of_run(results / name, "0.3", [8, 9, 10, 11], METHODS, extra)
               for name, extra in (("compare-fresh", []), ("compare-fresh-rule", [override]))}
    for (budget, method, seed), cell_cfg in benches["compare-fresh"].cfgs.items():
        if seed < 8:
            continue
        cells = {name: results / name / "cells" / f"flops-{budget}" / method for name in benches}
        records = {name: json.loads((cells[name] / f"seed{seed}.json").read_text()) for name in benches}
        for name, bench in benches.items():
            assert records[name]["fingerprint"] == bench._cell_fingerprint(bench.cfgs[(budget, method, seed)],
                                                                           method), (name, method, seed)
        if method not in ("ddpg", "random"):
            assert records["compare-fresh-rule"] == records["compare-fresh"]
            continue
        logs = {name: read_episodes(cells[name] / f"seed{seed}" / "search" / "episodes.jsonl") for name in benches}
        assert logs["compare-fresh"] == logs["compare-fresh-rule"]
        rule, before = records["compare-fresh-rule"], records["compare-fresh-rule"]["re_exported"]["before"]
        assert rule["best_episode"] == pick(logs["compare-fresh"], "map_top10_learned")["episode"]
        assert before["best_episode"] == records["compare-fresh"]["best_episode"] == pick(
            logs["compare-fresh"], "reward")["episode"]
        assert before["map_finetuned"] == records["compare-fresh"]["map_finetuned"]


def test_pool_seeds_pairs_methods_over_the_seeds_of_several_results_files(tmp_path: Path) -> None:
    """scripts/pool_seeds.py: the seeds of a bench, a finetune_cells.py and an export_rule.py results file pooled
    under one judge, the first file giving a (method, seed) winning, and the bench's paired statistics over all."""
    script = _script("pool_seeds")
    bench = {"budgets": {"0.3": {"ddpg": {"per_seed": [{"seed": 0, "map_finetuned": 0.09},
                                                       {"seed": 8, "map_finetuned": 0.07}]},
                                 "random": {"per_seed": [{"seed": 0, "map_finetuned": 0.01},
                                                         {"seed": 8, "map_finetuned": 0.08}]}}}}
    rejudged = {"budget": 0.3, "report": {}, "cells": {
        "ddpg": {"0": {"reward": {"map_finetuned": 0.10}, "map_top10": {"map_finetuned": 0.2}}},
        "random": {"0": {"reward": {"map_finetuned": 0.06}, "map_top10": {"map_finetuned": 0.0}}}}}
    tuned = {"budget": "0.3", "order": {}, "cells": {"ddpg": {"1": {"best": 0.35}}, "random": {"1": {"best": 0.30}}}}
    files = []
    for name, data in (("rejudged", rejudged), ("bench", bench), ("tuned", tuned)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(data))
    records, pairs = script.pool(files, "0.3")
    assert [(r["seed"], r["map"]) for r in records["ddpg"]] == [(0, 0.10), (1, 0.35), (8, 0.07)]  # re-judged first
    assert records["ddpg"][0]["file"] == str(files[0])
    assert pairs["random"]["diffs"] == pytest.approx([0.04, 0.05, -0.01]) and pairs["random"]["wins"] == 2
    assert script.pool(files[:1], "0.3", "map_top10")[1]["random"]["diffs"] == pytest.approx([0.2])
    with pytest.raises(ConfigError, match="no DDPG cell at budget 0.5"):
        script.pool(files, "0.5")
    (tmp_path / "other.json").write_text(json.dumps({"budget": "0.3"}))
    with pytest.raises(ConfigError, match="other.json: not a bench=compare"):
        script.pool([tmp_path / "other.json"], "0.3")
    out = tmp_path / "pooled.json"
    script.main([str(out), "--budget", "0.3", "--judge", "1-epoch", str(files[0]), str(files[1])])
    assert json.loads(out.read_text())["judges"]["1-epoch"]["paired"]["random"]["wins"] == 1


def test_judge_noise_report_gives_the_judges_spread_and_pairs_on_the_cell_and_on_the_mean() -> None:
    """scripts/judge_noise.py's report: the pooled sd of one policy's 1-epoch mAP over fine-tune seeds, and DDPG
    against each method paired by seed on the cell's own judgement (repeat 0) and on the mean over the repeats."""
    script = _script("judge_noise")
    cells = {"ddpg": {"8": {"0": 0.06, "1": 0.08, "2": 0.10}, "9": {"0": 0.05, "1": 0.05, "2": 0.05}},
             "random": {"8": {"0": 0.07, "1": 0.07, "2": 0.07}, "9": {"0": 0.06, "1": 0.03, "2": 0.03}}}
    rep = script.report(cells, "0.3")
    spreads = [0.02, 0.0, 0.0, statistics.stdev([0.06, 0.03, 0.03])]
    assert rep["policies"] == 4 and rep["judge_sd"] == pytest.approx(np.sqrt(np.mean(np.square(spreads))))
    assert rep["paired"]["cell"]["random"]["diffs"] == pytest.approx([-0.01, -0.01])
    assert rep["paired"]["mean"]["random"]["diffs"] == pytest.approx([0.01, 0.01])
    assert rep["paired"]["mean"]["random"]["wins"] == 2 and rep["summary"]["mean"]["ddpg"][0] == pytest.approx(0.065)


@pytest.mark.parametrize(("folder", "budget", "seeds"), [("compare-judged-0.3", "0.3", 12),
                                                        ("compare-heldout", "0.3", 8), ("compare-heldout", "0.5", 8)])
def test_shipped_judged_cells_are_the_shipped_cells_judged_by_four_finetune_seeds(folder: str, budget: str,
                                                                                  seeds: int) -> None:
    """docs/results/compare-judged-0.3 (seeds 0-11 at 30%) and the headline bench compare-heldout: cells judged with
    bench.finetune.judge_seeds=4 (the default since the twelfth session): the same policies and fingerprints as the
    cells judged once (seeds 0-7: compare-heldout's as first shipped; 8-11: compare-fresh), judgement 0 the cell's
    own, the others with seeds seed + 1000 r, map_finetuned their mean, and results.json the bench's table of those
    means."""
    results = Path(__file__).parents[1] / "docs" / "results"
    judged = results / folder
    if not judged.is_dir():
        pytest.skip(f"{judged} is not shipped")
    bench = CompareBench.of_run(judged, budget, list(range(seeds)), METHODS, ["bench.finetune.judge_seeds=4"])
    table = json.loads((judged / "results.json").read_text())["budgets"][budget]
    assert table["ddpg"]["seeds"] == list(range(seeds))
    for (key, method, seed), cell_cfg in bench.cfgs.items():
        record = json.loads((judged / "cells" / f"flops-{key}" / method / f"seed{seed}.json").read_text())
        source = results / ("compare-heldout" if seed < 8 else "compare-fresh")
        original = json.loads((source / "cells" / f"flops-{key}" / method / f"seed{seed}.json").read_text())
        assert record["fingerprint"] == original["fingerprint"] == bench._cell_fingerprint(cell_cfg, method)
        assert record["kept"] == original["kept"] and record.get("ratios") == original.get("ratios")
        assert [j["seed"] for j in record["judges"]] == [seed + 1000 * r for r in range(4)]
        once = original["judges"][0]["map"] if "judges" in original else original["map_finetuned"]  # judged once
        assert record["judges"][0]["map"] == once
        if seed < 8:  # the headline's cells are these very judgements
            assert record == original, (method, seed)
        mean = float(np.mean([j["map"] for j in record["judges"]]))
        assert bench.finished_record(bench.budget(key), method, seed)["map_finetuned"] == pytest.approx(mean)
        per_seed = next(r for r in table[method]["per_seed"] if r["seed"] == seed)
        assert per_seed["map_finetuned"] == pytest.approx(mean)


@pytest.mark.parametrize("name", ["pool-seeds-0.3.json", "pool-seeds-0.5.json"])
def test_shipped_pooled_seeds_are_what_the_script_makes_of_the_files_they_name(name: str) -> None:
    """docs/results/pool-seeds-*.json (docs/results.md quotes them): every judge's pooled records and paired figures
    are scripts/pool_seeds.py's report of the results files it names, as they are shipped today (a results file
    changed without pooling again, e.g. the headline bench judged 4 times, is noticed)."""
    root = Path(__file__).parents[1]
    shipped = json.loads((root / "docs" / "results" / name).read_text())
    script = _script("pool_seeds")
    for judge, entry in shipped["judges"].items():
        records, pairs = script.pool([root / f for f in entry["files"]], shipped["budget"], shipped["rule"])
        for method, pooled in records.items():
            assert [(r["seed"], r["map"]) for r in pooled] == \
                [(r["seed"], r["map"]) for r in entry["records"][method]], (judge, method)
        assert json.loads(json.dumps(pairs)) == entry["paired"], judge
