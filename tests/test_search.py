"""amc-search end to end on the stub evaluator: outputs, determinism, resume after kill -9, sweeps, bad input.

The stub evaluator (envs.stub) makes episodes instant, so these tests exercise the runner, the environment and
the agent together in seconds; the proxy evaluator behind the same interface is tested in test_proxy.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from amc.models import load_model
from amc.pruning.policy import Policy
from amc.pruning.space import ChannelRounding, PruningSpace
from amc.search.pick import pick
from amc.search.tracking import read_scalars

STUB = ["evaluator=stub", "final.latency_runs=0", "progress=false"]


def amc_search(*overrides: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "AMC_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "amc.cli.search", *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def episodes(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]


def demo_space(run_dir: Path) -> PruningSpace:
    cfg = yaml.safe_load((run_dir / "search_config.yaml").read_text())["config"]
    model, _ = load_model("demo-model")
    p = cfg["pruning"]
    return PruningSpace.from_model(model, 256, ChannelRounding(p["multiple"], p["min_channels"], p["max_ratio"]))


def test_stub_search_writes_everything_and_meets_the_budget(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = amc_search(f"hydra.run.dir={out}", *STUB, "episodes=8", "agent.warmup=3", "budget.flops=0.5", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "best" in run.stdout and "uniform" in run.stdout and "original" in run.stdout
    results = json.loads((out / "results.json").read_text())
    for key in ("best_reward", "best_map_proxy", "uniform_map_proxy", "flops_ratio", "episodes"):
        assert results[key] is not None, key
    assert results["episodes"] == 8 and results["flops_ratio"] <= 0.5
    log = episodes(out)
    assert [e["episode"] for e in log] == list(range(1, 9))  # numbered from 1 in every file and on screen
    assert [e["phase"] for e in log] == ["warmup"] * 3 + ["explore"] * 5
    assert results["best_reward"] == max(e["reward"] for e in log)
    space = demo_space(out)
    full = space.full_cost.macs
    for e in log:  # the environment enforced the budget in every episode
        assert space.policy_cost(e["ratios"]).macs <= 0.5 * full
    best = Policy.load(out / "best_policy.yaml")
    ratios = best.ratios_for(space)
    assert best.method == "search" and best.budget == {"flops": 0.5}
    assert best.metrics["reward"] == results["best_reward"]
    assert best.metrics["episode"] == results["best_episode"] == json.loads((out / "metrics.json").read_text())[
        "best_episode"]
    assert np.allclose(ratios, log[results["best_episode"] - 1]["ratios"])
    assert log[results["best_episode"] - 1]["episode"] == results["best_episode"]
    assert f"best policy (episode {results['best_episode']})" in " ".join(run.stdout.split())
    pruned, _ = load_model(str(out / "model"))
    assert pruned.cost(256).macs == space.policy_cost(ratios).macs
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert read_scalars(out, ("search/reward",))["search/reward"][0] == list(range(1, 9))  # steps = episode numbers
    assert events and any((out / "tensorboard").glob("hparams/events.out.tfevents.*"))
    assert (out / "checkpoint" / "agent" / "model.zip").is_file()  # stable-baselines3 DDPG.load reads it
    assert (out / "reward_curves.svg").read_text().startswith("<svg")


def test_recovery_reward_is_minus_the_logged_recovery_loss(tmp_path: Path) -> None:
    """reward=recovery: every episode's reward is minus its recover_loss (the stub's damage), logged with it."""
    out = tmp_path / "run"
    run = amc_search(f"hydra.run.dir={out}", *STUB, "reward=recovery", "episodes=5", "agent.warmup=2",
                     "budget.flops=0.5", "final.export_model=false", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    log = episodes(out)
    assert len(log) == 5 and len({e["recover_loss"] for e in log}) == 5
    for e in log:
        assert e["recover_loss"] > 0 and e["reward"] == pytest.approx(-e["recover_loss"])
    assert json.loads((out / "results.json").read_text())["best_reward"] == max(e["reward"] for e in log)


def test_same_seed_same_policies_and_other_seed_differs(tmp_path: Path) -> None:
    args = (*STUB, "episodes=6", "agent.warmup=2", "final.export_model=false")
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run = amc_search(f"hydra.run.dir={tmp_path / name}", *args, f"seed={seed}", cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        runs[name] = [e["ratios"] for e in episodes(tmp_path / name)]
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


# amc-search in a process that kills itself (SIGKILL: no handler, no clean-up runs) once a given episode is logged
# and handed to the runner's after_episode hook: a kill -9 at a known episode, whatever the machine's speed.
KILLED_AT = """
import os
import signal

from amc.search.runner import SearchRunner

KILL_AT = int(os.environ["AMC_TEST_KILL_AT"])
init = SearchRunner.__init__


def kill(report):
    if report.episode + 1 == KILL_AT:  # the agent counts episodes from 0
        os.kill(os.getpid(), signal.SIGKILL)


def init_with_kill(self, cfg, run_dir, after_episode=None):
    init(self, cfg, run_dir, after_episode=kill)


SearchRunner.__init__ = init_with_kill  # the class itself: whichever module amc-search imports it from
from amc.cli.search import main

main()
"""


def test_resume_after_kill_continues_exactly(tmp_path: Path) -> None:
    """kill -9 after episode 8 of 24 (learning since episode 5), with a checkpoint every 3 episodes: episodes 7 and
    8 are logged but not checkpointed. The resumed run discards them, plays them again and ends exactly as a run
    that was never killed."""
    args = (*STUB, "episodes=24", "agent.warmup=4", "checkpoint_every=3", "final.export_model=false")
    reference = amc_search(f"hydra.run.dir={tmp_path / 'ref'}", *args, cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    script = tmp_path / "killed_at.py"
    script.write_text(KILLED_AT)
    env = {**os.environ, "AMC_CACHE_DIR": str(tmp_path / "cache"), "AMC_TEST_KILL_AT": "8"}
    killed = subprocess.run([sys.executable, str(script), f"hydra.run.dir={out}", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, f"not killed at episode 8 (after_episode hook not called?): " \
        f"exit code {killed.returncode}\n{killed.stderr}"
    assert [e["episode"] for e in episodes(out)] == list(range(1, 9))  # logged up to the kill
    assert json.loads((out / "checkpoint" / "state.json").read_text())["episodes_done"] == 6  # the last multiple of 3
    best_before = Policy.load(out / "best_policy.yaml")  # exported before the kill: complete and loadable
    assert not (out / "results.json").exists()

    resumed = amc_search(f"resume={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    log, ref = episodes(out), episodes(tmp_path / "ref")
    assert [e["episode"] for e in log] == list(range(1, 25))  # each episode once, none lost, none twice
    assert [e["ratios"] for e in log] == [e["ratios"] for e in ref]  # the same policies as without the kill
    results, ref_results = (json.loads((d / "results.json").read_text()) for d in (out, tmp_path / "ref"))
    assert results["best_reward"] == ref_results["best_reward"] >= best_before.metrics["reward"]
    assert results["episodes"] == 24


def test_the_export_rule_picks_from_the_whole_log_and_survives_a_kill(tmp_path: Path) -> None:
    """export_rule=map_top10_learned: best_policy.yaml, results.json and the pruned model hold the episode the rule
    picks from the whole episode log (never a warm-up draw once the agent has learned), the same after a kill -9
    and a resume as without; the episodes played are those of the default rule."""
    args = (*STUB, "episodes=16", "agent.warmup=4", "checkpoint_every=3", "budget.flops=0.5")
    runs = {}
    for name, rule in (("reward", "reward"), ("ref", "map_top10_learned")):
        run = amc_search(f"hydra.run.dir={tmp_path / name}", *args, f"export_rule={rule}", cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        runs[name] = episodes(tmp_path / name)
    assert [e["ratios"] for e in runs["reward"]] == [e["ratios"] for e in runs["ref"]]  # the same trajectory
    exported = {name: Policy.load(tmp_path / name / "best_policy.yaml").metrics["episode"] for name in runs}
    assert exported["reward"] == pick(runs["reward"], "reward")["episode"] != exported["ref"]  # this seed: they differ

    out = tmp_path / "killed"
    script = tmp_path / "killed_at.py"
    script.write_text(KILLED_AT)
    env = {**os.environ, "AMC_CACHE_DIR": str(tmp_path / "cache"), "AMC_TEST_KILL_AT": "11"}
    killed = subprocess.run([sys.executable, str(script), f"hydra.run.dir={out}", *args,
                             "export_rule=map_top10_learned"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = amc_search(f"resume={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr

    for name in ("ref", "killed"):
        run_dir = tmp_path / name
        log = episodes(run_dir)
        chosen = pick(log, "map_top10_learned")
        assert chosen["phase"] != "warmup"
        scored = [e["reward"] if not e["penalized"] else float("-inf") for e in log]
        assert [e["best_reward"] for e in log] == list(np.maximum.accumulate(scored))  # the curve: the best so far
        results = json.loads((run_dir / "results.json").read_text())
        best = Policy.load(run_dir / "best_policy.yaml")
        assert results["best_episode"] == best.metrics["episode"] == chosen["episode"], name
        assert results["export_rule"] == "map_top10_learned"
        assert best.metrics["export_rule"] == "map_top10_learned" and best.metrics["phase"] == chosen["phase"]
        assert results["best_map_proxy"] == best.metrics["map50_95_proxy"] == chosen["map50_95"]
        space = demo_space(run_dir)
        assert np.allclose(best.ratios_for(space), chosen["ratios"])
        pruned, _ = load_model(str(run_dir / "model"))
        assert pruned.cost(256).macs == space.policy_cost(best.ratios_for(space)).macs
    assert [e["ratios"] for e in episodes(out)] == [e["ratios"] for e in runs["ref"]]


def test_multirun_sweep_with_the_submitit_local_launcher(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run = amc_search("-m", "hydra/launcher=local", f"hydra.sweep.dir={sweep}", *STUB, "episodes=2", "agent.warmup=1",
                     "final.export_model=false", "budget.flops=0.5,0.7", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    results = sorted(sweep.glob("*/results.json"))
    assert len(results) == 2
    budgets = sorted(json.loads(r.read_text())["budget"]["flops"] for r in results)
    assert budgets == [0.5, 0.7]


@pytest.mark.parametrize("overrides, message", [
    (["agent=nosuch"], "agent=nosuch is not an option of agent"),
    (["budget.flops=0.001"], "unreachable"),
    (["model=yolov7-tiny", "evaluator=proxy"], "classes"),  # 80 classes against the demo's 3
    (["episodes=0"], "episodes must be"),
    (["ratio_bounds=[0.5,0.2]"], "ratio_bounds"),
    (["export_rule=best"], "export_rule must be one of reward, map_top10, map, map_top10_learned"),
    (["evaluator=proxy", "evaluator.proxy.recover_steps=0"], "evaluator.proxy.recover_steps > 0"),  # reward=recovery: no steps
])
def test_bad_input_is_one_line_before_the_search(tmp_path: Path, overrides: list[str], message: str) -> None:
    out = tmp_path / "run"
    stub = [a for a in STUB if not any(o.startswith("evaluator=") for o in overrides) or a != "evaluator=stub"]
    run = amc_search(f"hydra.run.dir={out}", *stub, *overrides, cwd=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    # progress notes (e.g. "generating the demo dataset") may precede it; the error itself is one line
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1] == errors[0]
    assert not (out / "episodes.jsonl").exists()


def test_a_new_search_refuses_the_folder_of_another(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = amc_search(f"hydra.run.dir={out}", *STUB, "episodes=1", "agent.warmup=1", "final.export_model=false",
                       cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = amc_search(f"hydra.run.dir={out}", *STUB, "episodes=1", cwd=tmp_path)
    assert again.returncode == 2 and f"resume={out}" in again.stderr.strip().splitlines()[-1]


def test_resume_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "notarun").mkdir()
    run = amc_search(f"resume={tmp_path / 'notarun'}", cwd=tmp_path)
    assert run.returncode == 2 and "not an amc-search run directory" in run.stderr


def test_unwritable_run_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a run directory below a file cannot be created, whoever runs the test
    run = amc_search(f"hydra.run.dir={blocker / 'run'}", *STUB, cwd=tmp_path)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "hydra.run.dir" in run.stderr


def test_shipped_slurm_launcher_config_composes(tmp_path: Path) -> None:
    """conf/hydra/launcher/slurm.yaml resolves to submitit's Slurm launcher (no cluster needed to check that)."""
    run = amc_search("hydra/launcher=slurm", "--cfg", "hydra", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    launcher = yaml.safe_load(run.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["timeout_min"] == 240 and launcher["gpus_per_node"] == 1


def test_the_search_scores_policies_on_its_own_split_never_on_val(tiny_demo, tmp_path: Path) -> None:
    """Issue 20, held out: the proxy's images come from data.search_split (the demo's `search` split, or a fixed
    subset of train_split for user data), are disjoint from data.split's, and the run records which split."""
    from hydra import compose, initialize_config_module

    from amc.search.setup import SearchSetup

    root, _, val = tiny_demo
    val_files = {os.path.realpath(r.path) for r in val.images}
    for search_split, folder in (("search", "search"), ("null", "train")):
        with initialize_config_module(config_module="conf", version_base="1.3"):
            cfg = compose("search", overrides=[f"data.path={root}", "data.img_size=96", f"data.search_split={search_split}",
                                               "evaluator.proxy.val_images=4", "evaluator.proxy.img_size=96",
                                               "evaluator.proxy.bn_batches=1", "evaluator.proxy.bn_batch_size=2",
                                               "evaluator.proxy.bn_img_size=96", "evaluator.cache=false"])
        setup = SearchSetup(cfg, tmp_path)
        setup.build_env()
        files = [os.path.realpath(f) for f in setup.evaluate.image_files]
        setup.evaluate.close()
        assert len(files) == 4 and not set(files) & val_files
        assert all(Path(f).parent.name == folder for f in files)
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("search", overrides=[f"data.path={root}", "data.search_split=val"])
    with pytest.raises(Exception, match="also data.split"):
        SearchSetup(cfg, tmp_path).build_env()
