"""Parallel episodes (``workers: N``): batched rollouts of the agents and the search on worker processes.

The agents' batching is checked in-process on the toy environment (``DummyVecEnv``, same protocol as the worker
processes); the search itself runs real ``SubprocVecEnv`` workers on the stub evaluator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from agents import DDPGAgent, RandomSearchAgent, SearchAgent, UniformAgent
from amc.device import worker_devices
from amc.errors import ConfigError
from amc.search.parallel import worker_configs
from amc.search.runner import SearchRunner, load_resume_config
from amc.search.setup import SearchSetup
from envs.vector import make_vec_env
from toy_env import Recorder, ToyPruningEnv

CONF = Path(__file__).resolve().parents[1] / "conf"
SMALL = dict(actor_hidden=[32, 32], critic_hidden=[32, 32], batch_size=16)
STUB = ["evaluator=stub", "final.latency_runs=0", "final.export_model=false", "progress=false"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def toy_vec(n: int) -> tuple[object, list[Recorder]]:
    envs = [Recorder(ToyPruningEnv()) for _ in range(n)]
    return make_vec_env([lambda e=e: e for e in envs], subprocesses=False), envs


# -- the agents' batched rollout ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda env: DDPGAgent(env, 3, warmup=2, **SMALL),
                                  lambda env: RandomSearchAgent(env, 3)], ids=["ddpg", "random"])
def test_a_batch_of_one_is_the_serial_loop(make):
    serial_env = Recorder(ToyPruningEnv())
    serial, serial_reports = make(serial_env), []
    serial.run(5, serial_reports.append)
    vec, (env,) = toy_vec(1)
    batched, reports = make(ToyPruningEnv()), []
    batched.run_batched(vec, 5, reports.append)
    assert env.actions == serial_env.actions
    assert [r.reward for r in reports] == [r.reward for r in serial_reports]
    assert [r.phase for r in reports] == [r.phase for r in serial_reports]
    if isinstance(serial, DDPGAgent):
        assert all(torch.equal(a, b) for a, b in zip(serial.model.actor.state_dict().values(),
                                                     batched.model.actor.state_dict().values(), strict=True))


def test_ddpg_batches_count_warmup_and_updates_per_episode(tmp_path):
    vec, envs = toy_vec(2)
    agent, reports = DDPGAgent(ToyPruningEnv(), 0, warmup=3, **SMALL), []
    agent.run_batched(vec, 7, reports.append)  # batches 0-1, 2-3 (straddles the warm-up), 4-5, 6 (one idle env)
    n = ToyPruningEnv().n_units
    assert [r.episode for r in reports] == list(range(7)) and agent.episodes_done == 7
    assert [r.phase for r in reports] == ["warmup"] * 3 + ["explore"] * 4
    assert [r.metrics.get("gradient_steps") for r in reports] == [None] * 3 + [n] * 4  # as in the serial loop
    assert agent.model._n_updates == 4 * n and agent.replay_buffer.size() == 7 * n
    assert [r.last_in_batch for r in reports] == [False, True, False, True, False, True, True]
    assert [len(e.actions) for e in envs] == [4 * n, 3 * n]  # the idle environment evaluated nothing
    assert len({tuple(r.ratios) for r in reports}) == 7  # independent exploration per environment
    assert reports[3].metrics["sigma"] == pytest.approx(0.5) and reports[4].metrics["sigma"] == pytest.approx(0.475)


def test_batched_agents_resume_at_a_batch_end(tmp_path):
    full_vec, full_envs = toy_vec(2)
    full = DDPGAgent(ToyPruningEnv(), 5, warmup=2, **SMALL)
    full.run_batched(full_vec, 8)

    first_vec, _ = toy_vec(2)
    first = DDPGAgent(ToyPruningEnv(), 5, warmup=2, **SMALL)
    first.run_batched(first_vec, 4, lambda r: r.last_in_batch and first.save(tmp_path))
    resumed_vec, resumed_envs = toy_vec(2)
    resumed = SearchAgent.load(tmp_path, ToyPruningEnv())
    assert resumed.episodes_done == 4
    resumed.run_batched(resumed_vec, 8)
    n = ToyPruningEnv().n_units
    for env, ref in zip(resumed_envs, full_envs, strict=True):
        assert env.actions == ref.actions[2 * n:]
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.actor.state_dict().values(),
                                                 full.model.actor.state_dict().values(), strict=True))


def test_uniform_agent_plays_its_one_episode_on_the_first_env():
    vec, envs = toy_vec(3)
    agent, reports = UniformAgent(ToyPruningEnv(), 0), []
    agent.run_batched(vec, 10, reports.append)
    assert len(reports) == 1 and agent.episodes_done == 10 and reports[0].phase == "uniform"
    assert len(envs[0].actions) == 6 and envs[1].actions == envs[2].actions == []


# -- the search on worker processes -----------------------------------------------------------------------------------

def amc_search(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AMC_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "amc.cli.search", *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def episodes(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]


def search_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("search", overrides=list(overrides))


class Interrupted(Exception):
    pass


def test_parallel_search_outputs_determinism_and_resume(tmp_path, monkeypatch):
    args = (*STUB, "episodes=7", "agent.warmup=3", "budget.flops=0.5", "workers=2")
    runs = {}
    for name in ("a", "b"):
        run = amc_search(f"hydra.run.dir={tmp_path / name}", *args, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        runs[name] = episodes(tmp_path / name)
    log = runs["a"]
    assert [e["episode"] for e in log] == list(range(1, 8))  # numbered from 1, as on screen
    assert [e["phase"] for e in log] == ["warmup"] * 3 + ["explore"] * 4
    assert [e["ratios"] for e in runs["b"]] == [e["ratios"] for e in log]  # same seed, same workers
    assert all(e["flops_ratio"] <= 0.5 for e in log)  # every episode meets the budget
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["episodes"] == 7 and results["workers"] == 2 and results["flops_ratio"] <= 0.5
    assert results["best_reward"] == max(e["reward"] for e in log)
    assert (tmp_path / "a" / "best_policy.yaml").is_file()
    assert json.loads((tmp_path / "a" / "checkpoint" / "state.json").read_text())["episodes_done"] == 7

    # interrupted after a batch end (episode 4) and in the middle of a batch (episode 5, checkpoint at 4)
    original = SearchRunner._on_episode
    for stop in (4, 5):
        out = tmp_path / f"stopped-{stop}"

        def on_episode(self, report, stop=stop):  # noqa: ANN001
            original(self, report)
            if report.episode + 1 == stop:
                raise Interrupted

        monkeypatch.setattr(SearchRunner, "_on_episode", on_episode)
        with pytest.raises(Interrupted):
            SearchRunner(search_config(*args), out).run()
        monkeypatch.setattr(SearchRunner, "_on_episode", original)
        assert json.loads((out / "checkpoint" / "state.json").read_text())["episodes_done"] == 4
        SearchRunner(load_resume_config(out), out).run()
        resumed = episodes(out)
        assert [e["episode"] for e in resumed] == list(range(1, 8))
        assert [e["ratios"] for e in resumed] == [e["ratios"] for e in log]


def test_one_worker_is_the_serial_search(tmp_path):
    args = (*STUB, "episodes=4", "agent.warmup=2")
    for name, extra in (("default", ()), ("one", ("workers=1",))):
        run = amc_search(f"hydra.run.dir={tmp_path / name}", *args, *extra, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        assert "worker processes" not in run.stdout
    assert [e["ratios"] for e in episodes(tmp_path / "one")] == [e["ratios"] for e in episodes(tmp_path / "default")]
    assert json.loads((tmp_path / "one" / "results.json").read_text())["workers"] == 1


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "two"])
def test_bad_workers_is_one_config_error_line(tmp_path, value):
    with pytest.raises(ConfigError, match="workers must be a whole number >= 1") as error:
        SearchRunner(search_config(*STUB, f"workers={value}"), tmp_path / "run")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run" / "search_config.yaml").exists()


def test_bad_workers_on_the_command_line(tmp_path):
    run = amc_search(f"hydra.run.dir={tmp_path / 'run'}", *STUB, "workers=0", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("error: workers must be a whole number >= 1")
    assert "Traceback" not in run.stderr


# -- where the workers run --------------------------------------------------------------------------------------------

@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine shows ``n`` CUDA GPUs (the placement logic only asks torch.cuda how many)."""
    def show(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return show


def test_cuda_places_workers_round_robin_over_the_visible_gpus(gpus):
    gpus(4)
    assert worker_devices("cuda", 6) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    assert worker_devices("auto", 2) == ["cuda:0", "cuda:1"]  # auto means CUDA here
    assert worker_devices("cuda:2", 3) == ["cuda:2"] * 3  # a GPU the user names: every worker on it
    assert worker_devices("cpu", 2) == ["cpu", "cpu"]
    gpus(1)
    assert worker_devices("cuda", 3) == ["cuda"] * 3  # one GPU: the workers share it, as before
    gpus(0)
    assert worker_devices("auto", 2) == ["auto", "auto"] and worker_devices("cpu", 1) == ["cpu"]


def test_listed_worker_devices_are_used_round_robin_and_checked(gpus):
    gpus(2)
    assert worker_devices("cuda", 3, ["cuda:1", "cuda:0"]) == ["cuda:1", "cuda:0", "cuda:1"]
    assert worker_devices("cpu", 2, ["CUDA:1", "cpu"]) == ["cuda:1", "cpu"]  # the list wins over device.name
    for bad, pattern in ((["cuda:2"], "shows 2 CUDA GPU"), (["tpu"], "not a device"), (["auto"], "not auto")):
        with pytest.raises(ConfigError, match=pattern):
            worker_devices("cuda", 2, bad)
    gpus(0)
    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        worker_devices("cpu", 2, ["cuda:0"])


def test_each_worker_config_names_its_own_device(gpus, tmp_path):
    gpus(2)
    cfg = search_config(*STUB, "workers=3", "device=cuda")
    configs = worker_configs(cfg, 3)
    assert [c["device"]["name"] for c in configs] == ["cuda:0", "cuda:1", "cuda:0"]
    assert all(c["workers"] == 3 and c["evaluator"]["name"] == "stub" for c in configs)  # the rest as given
    # a worker process builds its set-up on its own device (the model is not built here: no GPU in CI)
    worker = SearchSetup(OmegaConf.create(configs[1]), tmp_path, worker=(1, 3))
    assert worker._device() == torch.device("cuda:1")
    cfg = search_config(*STUB, "workers=2", "device=cuda", "worker_devices=[cuda:1]")
    assert [c["device"]["name"] for c in worker_configs(cfg, 2)] == ["cuda:1", "cuda:1"]


@pytest.mark.parametrize("value,pattern", [("[cuda:7]", "shows 2 CUDA GPU"), ("cuda:0", "must be a list"),
                                           ("[]", "must be a list")])
def test_a_bad_worker_placement_is_refused_before_any_work(gpus, tmp_path, value, pattern):
    gpus(2)
    setup = SearchSetup(search_config(*STUB, "workers=2", f"worker_devices={value}"), tmp_path)
    with pytest.raises(ConfigError, match=pattern) as error:
        setup.build_env()  # the main process checks the placement first, before it loads the model
    assert "\n" not in str(error.value) and not hasattr(setup, "model")
