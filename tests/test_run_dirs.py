"""Run directories are used by one command at a time, resumes are honest, and command lines fail in one line.

* two searches into one folder: the second is refused (an OS lock, released even by ``kill -9``);
* ``resume=`` refuses settings that differ from the run's own (naming the key and both values), writes nothing
  when it refuses, and extends a finished search that is given more ``episodes``;
* episode numbers start at 1 in every file (older runs numbered from 0 are renumbered when resumed);
* mistyped keys end in one ``error:`` line naming the closest valid key; ``--help`` says what a command does;
* ``gymnasium.make("amc/YOLOv7Pruning-v0")`` finds the environment through amc's entry point.

Searches use the stub evaluator (instant made-up mAP) and a handful of episodes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from amc.runlock import LOCK_FILE, lock_run_dir, locked_by_other, unlock_run_dir
from amc.search.tracking import read_episode_log

STUB = ["evaluator=stub", "final.latency_runs=0", "progress=false", "final.export_model=false"]


def amc(command: str, *overrides: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "AMC_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", f"amc.cli.{command}", *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def one_error_line(run: subprocess.CompletedProcess) -> str:
    """The refusal's single ``error:`` line (asserting exit code 2, nothing else on stderr, no traceback)."""
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its content and modification time (to show nothing was written)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def ratios(run_dir: Path) -> list[list[float]]:
    return [e["ratios"] for e in read_episode_log(run_dir / "episodes.jsonl")]


# ---------------------------------------------------------------------------------------------- the lock
def test_a_second_search_into_a_running_one_is_refused_until_it_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "AMC_CACHE_DIR": str(tmp_path / "cache")}
    # far more episodes than the test lasts: the first search is still running when the second starts
    first = subprocess.Popen([sys.executable, "-m", "amc.cli.search", f"hydra.run.dir={out}", *STUB,
                              "agent=random", "episodes=1000000"], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        state = out / "checkpoint" / "state.json"
        while time.time() < deadline:  # running: the folder is locked and an episode is checkpointed
            try:
                if json.loads(state.read_text())["episodes_done"] >= 1:
                    break
            except (OSError, ValueError, KeyError):
                pass
            assert first.poll() is None, "the first search ended early"
            time.sleep(0.1)
        holder = locked_by_other(out)
        assert holder is not None and holder.pid == first.pid and holder.command == "amc-search"
        config_before = (out / ".hydra" / "config.yaml").read_bytes()

        second = amc("search", f"hydra.run.dir={out}", *STUB, "agent=random", "episodes=3", cwd=tmp_path)
        line = one_error_line(second)
        assert f"{out} is in use by another run (amc-search, pid {first.pid}" in line
        resumed = amc("search", f"resume={out}", cwd=tmp_path)
        assert f"resume={out}: that run is still going (amc-search, pid {first.pid}" in one_error_line(resumed)
        other_command = amc("info", f"hydra.run.dir={out}", cwd=tmp_path)  # any amc command: the same lock
        assert "is in use by another run" in one_error_line(other_command)
        assert (out / ".hydra" / "config.yaml").read_bytes() == config_before  # the refused ones wrote nothing
        assert not (out / "metrics.json").exists() and not (out / "info.log").exists()
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)

    # kill -9 released the lock (the kernel does it): the killed search resumes, here just to its end
    assert locked_by_other(out) is None
    played = json.loads((out / "checkpoint" / "state.json").read_text())["episodes_done"]
    done = amc("search", f"resume={out}", f"episodes={played}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "results.json").read_text())["episodes"] == played


def test_a_lock_held_elsewhere_refuses_every_command(tmp_path: Path) -> None:
    """This test process holds the folder, as a running command would: amc-info is refused, in one line."""
    out = tmp_path / "held"
    lock_run_dir(out, "amc-test")
    try:
        run = amc("info", f"hydra.run.dir={out}", "per_layer=false", cwd=tmp_path)
        assert f"{out} is in use by another run (amc-test, pid {os.getpid()}" in one_error_line(run)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    finally:
        unlock_run_dir(out)
    assert amc("info", f"hydra.run.dir={out}", "per_layer=false", cwd=tmp_path).returncode == 0


# ---------------------------------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-episode stub search (copied by the tests that change it)."""
    root = tmp_path_factory.mktemp("finished")
    run = amc("search", f"hydra.run.dir={root / 'run'}", *STUB, "episodes=4", "agent.warmup=2", cwd=root)
    assert run.returncode == 0, run.stderr
    return root / "run"


@pytest.mark.parametrize("overrides, message", [
    (["budget.flops=0.3"], "budget.flops is 0.5 in that run, 0.3 asked"),
    (["seed=3"], "seed is 0 in that run, 3 asked"),
    (["agent=random"], "agent.name is ddpg in that run, random asked (agent=random)"),
    (["agent.warmup=3"], "agent.warmup is 2 in that run, 3 asked"),
    (["episodes=3"], "episodes=3 is fewer than the 4 episodes that run has played"),
    (["hydra.run.dir=elsewhere"], "continues the run in its own folder"),
])
def test_resume_refuses_changed_settings_and_writes_nothing(finished: Path, tmp_path: Path,
                                                             overrides: list[str], message: str) -> None:
    before = snapshot(finished)
    line = one_error_line(amc("search", f"resume={finished}", *overrides, cwd=tmp_path))
    assert line.startswith(f"error: resume={finished}") and message in line, line
    assert snapshot(finished) == before
    assert not (tmp_path / "elsewhere").exists()


def test_a_refused_resume_creates_and_overwrites_nothing(tmp_path: Path) -> None:
    run = amc("search", f"resume={tmp_path / 'mistyped'}", cwd=tmp_path)
    assert "no such directory" in one_error_line(run)
    assert not (tmp_path / "mistyped").exists()
    info = tmp_path / "info-run"  # another command's run directory given to resume=
    assert amc("info", f"hydra.run.dir={info}", "per_layer=false", cwd=tmp_path).returncode == 0
    before = snapshot(info)
    assert "is not an amc-search run directory" in one_error_line(amc("search", f"resume={info}", cwd=tmp_path))
    assert snapshot(info) == before


def test_a_new_search_into_a_finished_one_is_refused_before_hydra_writes(finished: Path, tmp_path: Path) -> None:
    before = snapshot(finished)
    line = one_error_line(amc("search", f"hydra.run.dir={finished}", *STUB, cwd=tmp_path))
    assert f"continue it with resume={finished}" in line
    assert snapshot(finished) == before  # its .hydra/ files included


def test_resuming_a_finished_search_with_more_episodes_plays_them(finished: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "extended"
    shutil.copytree(finished, out)
    (out / LOCK_FILE).unlink()
    hydra_overrides = (out / ".hydra" / "overrides.yaml").read_bytes()
    run = amc("search", f"resume={out}", "episodes=6", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "resuming" in run.stdout and "at episode 5 of 6" in " ".join(run.stdout.split())
    log = read_episode_log(out / "episodes.jsonl")
    assert [e["episode"] for e in log] == [1, 2, 3, 4, 5, 6]
    results = json.loads((out / "results.json").read_text())
    assert results["episodes"] == 6 and results["best_reward"] == max(e["reward"] for e in log)
    # recorded: a later resume keeps the 6 episodes; .hydra/ still tells how the run was started
    assert yaml.safe_load((out / "search_config.yaml").read_text())["config"]["episodes"] == 6
    assert yaml.safe_load((out / ".hydra" / "config.yaml").read_text())["episodes"] == 6
    assert (out / ".hydra" / "overrides.yaml").read_bytes() == hydra_overrides
    # the same episodes as a search asked for 6 from the start
    reference = amc("search", f"hydra.run.dir={tmp_path / 'six'}", *STUB, "episodes=6", "agent.warmup=2",
                    cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    assert ratios(out) == ratios(tmp_path / "six")

    again = amc("search", f"resume={out}", cwd=tmp_path)  # nothing more to play: the final stage only
    assert again.returncode == 0, again.stderr
    assert "all 6 episodes were played" in " ".join(again.stdout.split())
    assert len(read_episode_log(out / "episodes.jsonl")) == 6


def test_a_run_numbered_from_zero_is_renumbered_when_resumed(finished: Path, tmp_path: Path) -> None:
    """Runs started before episode numbers were unified (0-based files) continue, numbered from 1."""
    import shutil

    out = tmp_path / "old"
    shutil.copytree(finished, out)
    (out / LOCK_FILE).unlink()
    log = out / "episodes.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    log.write_text("".join(json.dumps({**r, "episode": r["episode"] - 1}) + "\n" for r in records))
    policy = yaml.safe_load((out / "best_policy.yaml").read_text())
    best = policy["metrics"]["episode"]
    policy["metrics"]["episode"] = best - 1
    (out / "best_policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    state_path = out / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    state.pop("first_episode")
    state["best_episode"] -= 1
    state_path.write_text(json.dumps(state))
    assert [e["episode"] for e in read_episode_log(log)] == [1, 2, 3, 4]  # readers see 1-based numbers

    run = amc("search", f"resume={out}", "episodes=5", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert [json.loads(line)["episode"] for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5]
    results = json.loads((out / "results.json").read_text())
    assert yaml.safe_load((out / "best_policy.yaml").read_text())["metrics"]["episode"] == results["best_episode"]
    assert results["best_episode"] in (best, 5)
    assert json.loads(state_path.read_text())["first_episode"] == 1


def test_a_finetune_resume_refuses_changed_settings_too(tmp_path: Path) -> None:
    run = tmp_path / "ft"
    (run / "start").mkdir(parents=True)
    (run / "finetune_config.yaml").write_text(yaml.safe_dump({"amc_finetune": 1, "config": {"epochs": 5}}))
    before = snapshot(run)
    line = one_error_line(amc("finetune", f"resume={run}", "epochs=7", cwd=tmp_path))
    assert f"resume={run}: epochs is 5 in that run, 7 asked" in line
    assert "only progress, progress_interval_s, progress_heartbeat_s may change" in line
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------------- command lines
@pytest.mark.parametrize("command, overrides, message", [
    ("search", ["budget.flop=0.5"], "budget.flop=0.5: amc-search has no setting budget.flop: did you mean "
                                    "budget.flops=0.5?"),
    ("search", ["episodez=6"], "episodez=6: amc-search has no setting episodez: did you mean episodes=6?"),
    ("search", ["+episodez=6"], "+episodez=6: amc-search has no setting episodez, and nothing would read an "
                                "added one: did you mean episodes=6?"),
    ("search", ["+episodes=6"], "episodes is already a setting of amc-search: write episodes=6"),
    ("search", ["-m", "budget.flopz=0.5,0.7"], "did you mean budget.flops=0.5,0.7?"),
    ("search", ["episodes=[1,"], "episodes=[1,: not a valid override"),
    ("info", ["img_sise=320"], "amc-info has no setting img_sise: did you mean img_size=320?"),
])
def test_unknown_keys_end_in_one_line_naming_the_closest(tmp_path: Path, command: str, overrides: list[str],
                                                        message: str) -> None:
    run = amc(command, *overrides, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
              cwd=tmp_path, timeout=120)
    line = one_error_line(run)
    assert message in line, line
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_help_describes_the_command_and_lists_only_its_groups(tmp_path: Path) -> None:
    run = amc("search", "--help", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert text.startswith("amc-search: the AMC-style pruning search")
    assert "powered by Hydra" not in text and not (tmp_path / "outputs").exists()
    groups = text[text.index("Config groups"):].split("\n\n")[0].splitlines()[1:]
    named = {line.split()[0] for line in groups if not line.startswith("     ")}
    assert named == {"model", "data", "agent", "reward", "evaluator", "device", "budget"}
    assert "ddpg-demo*" in text and "--cfg job" in text
    info = amc("info", "--help", cwd=tmp_path)
    assert info.stdout.startswith("amc-info: per-layer widths")
    groups = info.stdout[info.stdout.index("Config groups"):].split("\n\n")[0].splitlines()[1:]
    assert {line.split()[0] for line in groups if not line.startswith("     ")} == {"model"}


@pytest.mark.parametrize("command, groups", [
    ("info", {"model"}), ("eval", {"model", "data", "device"}), ("prune", {"model", "data"}),
    ("finetune", {"model", "data", "device", "hyp"}), ("export", {"model", "data"}), ("bench", {"bench"}),
])
def test_every_command_help_starts_with_what_it_does(tmp_path: Path, command: str, groups: set[str]) -> None:
    run = amc(command, "--help", cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"amc-{command}: ")
    listed = run.stdout[run.stdout.index("Config groups"):].split("\n\n")[0].splitlines()[1:]
    assert {line.split()[0] for line in listed if not line.startswith("     ")} == groups


# ---------------------------------------------------------------------------------------------- gymnasium
GYM_REGISTER = """
import sys
import gymnasium
from gymnasium.envs import registration

ID = "amc/YOLOv7Pruning-v0"
if not hasattr(registration, "load_plugin_envs"):
    # gymnasium >= 1.0 dropped the plugin loader that gymnasium 0.29 runs on import: run the entry point as it did
    from importlib.metadata import entry_points
    (plugin,) = [e for e in entry_points(group="gymnasium.envs") if e.name == "amc"]
    with registration.namespace(plugin.name):
        plugin.load()()
assert "envs" not in sys.modules, "registering imported envs"
spec = gymnasium.spec(ID)
assert spec.entry_point == "envs.pruning_env:PruningEnv", spec.entry_point
"""

GYM_MAKE = """
import gymnasium
from amc.models import load_model
from amc.pruning.space import PruningSpace
from amc.reward.functions import reward_from_config
from envs import Budget, StubEvaluator

model, _ = load_model("demo-model")
space = PruningSpace.from_model(model, 256)
env = gymnasium.make(ID, space=space, evaluate=StubEvaluator(space),
                     reward=reward_from_config({"name": "budget"}), budget=Budget("flops", 0.7))
obs, _ = env.reset(seed=0)
print(type(env.unwrapped).__name__, env.unwrapped.spec.id)
"""


def python(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_gymnasium_finds_the_environment_id_through_the_entry_point(tmp_path: Path) -> None:
    """A fresh interpreter that never imports envs: the id resolves through amc's gymnasium.envs entry point."""
    run = python(GYM_REGISTER + GYM_MAKE, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["PruningEnv", "amc/YOLOv7Pruning-v0"]


def test_gymnasium_1_finds_the_id_by_its_module_prefix(tmp_path: Path) -> None:
    """Gymnasium >= 1.0, without plugins: ``amc.gym_plugin:`` before the id makes gymnasium register it."""
    run = python('ID = "amc.gym_plugin:amc/YOLOv7Pruning-v0"' + GYM_MAKE, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["PruningEnv", "amc/YOLOv7Pruning-v0"]


def test_a_search_recorded_by_an_earlier_amc_resumes_with_the_settings_added_since(tmp_path: Path) -> None:
    """A run recorded before a result-neutral setting existed gets its default on resume (the runner reads every
    setting); a setting that could change the remaining episodes is not invented."""
    from amc.search.rundir import load_resume_config

    run = tmp_path / "old"
    run.mkdir()
    recorded = {"episodes": 5, "final": {"latency_runs": 0}, "progress": False}
    (run / "search_config.yaml").write_text(yaml.safe_dump({"amc_search": 1, "config": recorded}))
    cfg = load_resume_config(run)
    assert cfg.final.max_latency_spread == 0.2 and cfg.progress_interval_s == 0 and cfg.worker_devices is None
    assert cfg.final.latency_runs == 0 and cfg.progress is False  # what the run recorded stays
    assert "ratio_bounds" not in cfg
