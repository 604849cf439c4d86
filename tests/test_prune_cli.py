"""amc-prune end to end: baselines at a budget, policy files, fine-grained mode, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from amc.models import load_model
from amc.pruning.policy import Policy
from amc.pruning.space import PruningSpace
from conftest import FIXTURES

REPO = Path(__file__).resolve().parents[1]


def amc_prune(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AMC_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "amc.cli.prune", *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env)


def test_default_uniform_half_flops_on_the_demo(tmp_path: Path) -> None:
    run = amc_prune(f"hydra.run.dir={tmp_path / 'a'}", "latency.runs=2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "before" in run.stdout and "after" in run.stdout
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    pruned, names = load_model(str(tmp_path / "a" / "model"))
    original, _ = load_model("demo-model")
    cost, full = pruned.cost(640), original.cost(640)
    assert metrics["params"] == cost.params and metrics["gflops"] == pytest.approx(cost.gflops)
    assert metrics["flops_ratio"] == pytest.approx(cost.macs / full.macs) and metrics["flops_ratio"] <= 0.5
    assert metrics["params_ratio"] == pytest.approx(cost.params / full.params)
    lat = metrics["latency_ms"]
    assert lat["before"] > 0 and lat["after"] > 0 and lat["before_spread"] >= 0 and lat["after_spread"] >= 0
    # a speed-up only from timings that are not noise
    noisy = max(lat["before_spread"], lat["after_spread"]) > lat["max_spread"]
    assert lat["noisy"] is noisy and (lat["speedup"] is None) is noisy
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in original.parameters())
    policy = Policy.load(tmp_path / "a" / "policy.yaml")
    assert policy.method == "uniform" and policy.budget == {"flops": 0.5} and policy.criterion == "l1"
    assert len(set(policy.ratios.values())) == 1
    space = PruningSpace.from_model(original, 640)
    assert policy.fingerprint == space.fingerprint

    # the written policy re-applied gives the same model, weight for weight (with the policy's criterion)
    run = amc_prune(f"hydra.run.dir={tmp_path / 'b'}", "method=policy", f"policy={tmp_path / 'a' / 'policy.yaml'}",
                    "latency.runs=0", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    again, _ = load_model(str(tmp_path / "b" / "model"))
    for (k, v), (k2, v2) in zip(pruned.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_global_magnitude_with_a_data_criterion(tmp_path: Path, tiny_demo) -> None:
    root, _, _ = tiny_demo
    run = amc_prune(f"hydra.run.dir={tmp_path / 'g'}", "method=global", "budget.flops=0.6", "criterion=taylor",
                    f"data.path={root}", "calibration.batches=1", "calibration.batch_size=4",
                    "calibration.img_size=96", "latency.runs=0", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert metrics["method"] == "global" and metrics["criterion"] == "taylor" and metrics["flops_ratio"] <= 0.6
    policy = yaml.safe_load((tmp_path / "g" / "policy.yaml").read_text())
    assert len(set(policy["ratios"].values())) > 1  # a global ranking gives unequal ratios


def test_official_checkpoint(tmp_path: Path) -> None:
    run = amc_prune(f"model.path={FIXTURES / 'yolov7.pt'}", "budget.flops=0.4", "criterion=l2", "img_size=320",
                    "pruning.multiple=1", "pruning.min_channels=1",  # the fixture is a narrow model
                    "latency.runs=0", f"hydra.run.dir={tmp_path}", cwd=REPO)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.3 < metrics["flops_ratio"] <= 0.4 and metrics["img_size"] == [320, 320]
    pruned, _ = load_model(str(tmp_path / "model"))
    with torch.no_grad():
        assert torch.isfinite(pruned.eval()(torch.rand(1, 3, 320, 320))[0]).all()


def test_finegrained_mode(tmp_path: Path) -> None:
    run = amc_prune("mode=finegrained", "finegrained.sparsity=0.6", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["mode"] == "finegrained" and 0.4 < metrics["params_ratio"] < 0.5
    assert metrics["sparsity"]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    model, _ = load_model(str(tmp_path / "model"))
    convs = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and ".m." not in n]
    zeros = sum(int((m.weight == 0).sum()) for m in convs)
    assert zeros == metrics["sparsity"]["zeros"]


@pytest.mark.parametrize("overrides, message", [
    (["budget.flops=0.01"], "unreachable"),
    (["budget.flops=1.5"], "budget.flops must be a fraction"),
    (["criterion=magic"], "unknown pruning criterion 'magic'"),
    (["method=policy"], "needs policy=FILE"),
    (["method=policy", "policy=missing.yaml"], "does not exist"),
    (["method=policy", "policy={wrong}"], "policy was made for model"),
    (["method=policy", "policy={edited}"], "outside [0, 0.9]"),
    (["method=nope"], "method must be one of"),
    (["+criterion_options.samples=3"], "has no option 'samples'"),
    (["latency.rounds=abc"], "latency.rounds must be an integer"),
    (["latency.threads=0"], "latency.threads must be >= 1"),
    (["pruning.multiple=abc"], "pruning.multiple must be an integer"),
    (["pruning.max_ratio=1.0"], "max_ratio must be in [0, 1)"),
    (["calibration.batches=0", "criterion=taylor"], "calibration.batches must be >= 1"),
    (["seed=x"], "seed must be an integer"),
    (["mode=finegrained", "finegrained.sparsity=abc"], "finegrained.sparsity must be a number"),
    (["mode=finegrained", "finegrained.sparsity=1.0"], "finegrained.sparsity must be in"),
    (["method=policy", "policy={badsize}"], "img_size must be [height, width] > 0"),
    (["method=policy", "policy={badcrit}"], "criterion must be one of"),
])
def test_user_errors_end_in_one_line(tmp_path: Path, overrides: list[str], message: str) -> None:
    space = PruningSpace.from_model(load_model(str(FIXTURES / "yolov7-tiny.pt"))[0], 640)
    Policy.from_ratios(space, [0.5] * len(space)).save(tmp_path / "wrong.yaml")
    demo_space = PruningSpace.from_model(load_model("demo-model")[0], 640)
    edited = Policy.from_ratios(demo_space, [0.5] * len(demo_space)).to_dict()
    edited["ratios"][demo_space.names[3]] = 0.95
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited))
    good = Policy.from_ratios(demo_space, [0.5] * len(demo_space)).to_dict()
    (tmp_path / "badsize.yaml").write_text(yaml.safe_dump({**good, "img_size": [0, -5]}))
    (tmp_path / "badcrit.yaml").write_text(yaml.safe_dump({**good, "criterion": "bogus"}))
    args = [o.format(wrong=tmp_path / "wrong.yaml", edited=tmp_path / "edited.yaml", badsize=tmp_path / "badsize.yaml",
                     badcrit=tmp_path / "badcrit.yaml") for o in overrides]
    run = amc_prune(*args, f"hydra.run.dir={tmp_path / 'run'}", "latency.runs=0", cwd=tmp_path)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], run.stderr
    # refused before any pruning work: nothing written
    assert not any((tmp_path / "run" / f).exists() for f in ("model", "policy.yaml", "metrics.json"))
