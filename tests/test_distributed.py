"""Distributed fine-tuning: ``torchrun --nproc_per_node=2 -m amc.cli.finetune`` on the CPU (gloo) trains like one
process with the same global batch, and a killed 2-process run resumes; the pieces (sampler, settings, devices,
run-directory lock) on their own.

What "trains like one process" means, and the tolerances:

* Two processes with 2 images each per step compute exactly what one process computes when it accumulates the
  same two micro-batches of 2 images into one optimizer step of 4 (``batch_size=2 nominal_batch_size=4``):
  every term of the YOLOv7 and distillation losses, each BatchNorm's batch statistics and the augmentation of
  every image (seeded by (seed, epoch, image), never by rank) are the same, and the gradient all-reduce of two
  processes adds two numbers. Measured: bit-identical weights after a killed and resumed 2-epoch run with
  distillation; the bound, 1e-6 of the weight update, leaves room for a summation order only.
* Against one process that sees all 4 images in one batch (no accumulation), splitting the batch changes the
  computation itself: BatchNorm normalizes each process's share with that share's statistics (unless
  SyncBatchNorm, which torch implements for GPUs only) and the box, class and distillation terms are means over
  each share's matches (as in YOLOv7's own DDP training). With BatchNorm frozen and the objectness loss alone (a
  mean over every grid cell of every image, the same whatever the split) the two agree to 8e-6 of the update
  (float rounding); the bound is 1e-4. With everything on, at 2 images per process, the split moves the
  one-epoch update by about as much as the update itself (relative difference 1.2) in one process with
  accumulation exactly as in two processes: the price of small per-process batches, not of the processes.
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

from amc.device import process_device
from amc.errors import ConfigError
from amc.finetune.launch import check_processes, shared_run_dir
from amc.finetune.workflow import run_finetune
from amc.models import load_model
from amc.runlock import LOCK_FILE, launch_rank, lock_run_dir, locked_by_other, unlock_run_dir
from amc.train.distributed import (SINGLE, Distributed, ShardedBatchSampler, backend_for, errors_from_rank_zero,
                                   launch, per_rank_batch)
from distributed_run import objectness_update

CONF = Path(__file__).resolve().parents[1] / "conf"
HELPER = Path(__file__).resolve().parent / "distributed_run.py"


def quick(root: Path, batch: int = 4, nominal: int = 4, fit_batches: int = 1) -> list[str]:
    """A 2-epoch fine-tune with distillation of the demo model pruned to 50% FLOPs: 8 training images (2 steps of
    4 per epoch), scored once, at the end, on 2 val images at 64 px."""
    return [f"data.path={root}", "img_size=64", "epochs=2", f"batch_size={batch}", f"nominal_batch_size={nominal}",
            "train_images=8", "val_images=2", "eval_every=2", "progress=false", "tensorboard=false", "cache=false",
            f"kd.fit_batches={fit_batches}"]


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 <args>`` (gloo on the CPU, one torch thread per process)."""
    env = {**os.environ, "AMC_CACHE_DIR": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def parameters(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The trained tensors of a state dict, flat (BatchNorm's running statistics and counters left out)."""
    return torch.cat([v.flatten().double() for k, v in state.items()
                      if v.dtype.is_floating_point and "running_" not in k])


# ------------------------------------------------------------------------------------------------ end to end
def test_two_processes_train_like_one_and_a_killed_run_resumes(tiny_demo, tmp_path, monkeypatch, one_torch_thread):
    root, _, _ = tiny_demo
    # 2 processes, global batch 4: the objectness check (distributed_run.py), then amc-finetune with distillation,
    # rank 0 killed (SIGKILL) right after it saved epoch 1; the run directory is Hydra's default, named by the clock
    run = torchrun(str(HELPER), str(root), str(tmp_path / "update.pt"), "1", *quick(root), cwd=tmp_path)
    assert run.returncode != 0, run.stdout
    runs = list((tmp_path / "outputs" / "finetune").iterdir())
    assert len(runs) == 1, runs  # both processes wrote into rank 0's folder
    out = runs[0]
    assert torch.load(out / "trainer_state.pt", weights_only=True)["epoch"] == 1
    assert not (out / "metrics.json").exists()

    run = torchrun("-m", "amc.cli.finetune", f"resume={out}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "resuming" in run.stdout and run.stdout.count("fine-tuning (2 epochs") == 1  # rank 0 alone prints
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["backend"], metrics["sync_bn"]) == (2, "gloo", False)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and metrics["losses"]["kd_feat"] > 0

    # one process, the same 4 images per optimizer step in the same two micro-batches of 2 (the adapters'
    # least-squares start reads kd.fit_batches x batch_size images: the same 4 images)
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("finetune", overrides=quick(root, batch=2, nominal=4, fit_batches=2))
    one = run_finetune(cfg, tmp_path / "one")
    assert one["world_size"] == 1 and one["backend"] is None
    two_state = torch.load(out / "trainer_state.pt", weights_only=True)
    one_state = torch.load(tmp_path / "one" / "trainer_state.pt", weights_only=True)
    start = parameters(load_model(tmp_path / "one" / "start")[0].state_dict())
    for key in ("model", "ema"):  # the trained weights and their EMA (what is exported)
        two, single = parameters(two_state[key]), parameters(one_state[key])
        assert (two - single).norm() <= 1e-6 * (single - start).norm(), (key, (two - single).abs().max().item())
    two, single = parameters(two_state["extra"]), parameters(one_state["extra"])  # the distillation adapters
    assert (two - single).norm() <= 1e-6 * single.norm(), (two - single).abs().max().item()
    for a, b in zip(metrics["history"], one["history"], strict=True):
        for name in ("box", "obj", "cls", "kd_out", "kd_feat", "total"):
            assert a[name] == pytest.approx(b[name], rel=1e-6), name

    # BatchNorm frozen, objectness only: 2 processes against one process with the whole batch of 4
    two_update = torch.load(tmp_path / "update.pt", weights_only=True)
    one_update = objectness_update(str(root), tmp_path / "objectness", SINGLE)
    assert (two_update - one_update).norm() <= 1e-4 * one_update.norm(), \
        ((two_update - one_update).norm() / one_update.norm()).item()


# ------------------------------------------------------------------------------------------------ the pieces
def test_shards_of_the_global_batches_are_the_one_process_batches():
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    one = [order[i:i + 4] for i in range(0, 10, 4)]
    for world in (2, 4):
        shards = [list(ShardedBatchSampler(order, 4, world, rank)) for rank in range(world)]
        assert all(len(s) == 3 for s in shards)  # every process steps alike
        for k, batch in enumerate(one[:2]):
            assert sum((s[k] for s in shards), []) == batch  # consecutive slices of the one-process batch
        last = [s[2] for s in shards]
        assert all(last) and sum(last, [])[:2] == one[2]  # topped up from the epoch's start, never empty
    assert [list(ShardedBatchSampler(order, 4, 2, r)) for r in range(2)][0][0] == order[:2]


def test_the_batch_split_the_backend_and_sync_bn_are_checked_before_any_work():
    two = Distributed(rank=0, world_size=2, local_rank=0, local_world_size=2)
    cfg = OmegaConf.create({"device": {"name": "cpu"},
                            "distributed": {"backend": "auto", "sync_bn": False, "timeout_min": 30}})
    assert per_rank_batch(16, 4) == 4 and check_processes(cfg, 4, two).device == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"batch_size=5 cannot be split over 2 processes.*multiple of 2"):
        check_processes(cfg, 5, two)
    cfg.distributed.sync_bn = True
    with pytest.raises(ConfigError, match="sync_bn=true needs CUDA"):
        check_processes(cfg, 4, two)
    assert check_processes(cfg, 5, SINGLE).settings.sync_bn  # one process: nothing to split, nothing to sync
    cfg.distributed.sync_bn, cfg.distributed.backend = False, "nccl"
    with pytest.raises(ConfigError, match="nccl needs CUDA"):
        check_processes(cfg, 4, two)
    cfg.distributed.backend = "mpi"
    with pytest.raises(ConfigError, match="distributed.backend must be one of auto, nccl, gloo"):
        check_processes(cfg, 4, SINGLE)
    assert backend_for(torch.device("cpu")) == "gloo" and backend_for(torch.device("cuda", 0)) == "nccl"
    assert backend_for(torch.device("cuda", 0), "gloo") == "gloo"
    old = OmegaConf.create({"device": {"name": "cpu"}})  # the config of a run started before the knobs
    assert check_processes(old, 4, two).settings.backend == "auto"


def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert process_device("cuda", 1, 2) == torch.device("cuda:1") == process_device("auto", 1, 2)
    assert process_device("cpu", 1, 2) == torch.device("cpu") and process_device("cuda:1", 0, 1).index == 1
    with pytest.raises(ConfigError, match=r"4 processes on this machine but 2 visible CUDA GPU.*nproc_per_node=2"):
        process_device("cuda", 3, 4)
    with pytest.raises(ConfigError, match="on one device"):
        process_device("cuda:1", 0, 2)


def test_the_launch_is_read_from_torchrun_s_environment(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(key, raising=False)
    assert launch() == SINGLE and launch_rank() == 0
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert launch_rank() == 3  # a submitit task's rank, read without torch (the lock is taken before it loads)
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert launch() == Distributed(rank=1, world_size=4, local_rank=1, local_world_size=2) and launch_rank() == 1


def test_only_rank_zero_locks_the_run_directory_and_reports_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert lock_run_dir(tmp_path / "run", "amc-finetune") == tmp_path / "run" / LOCK_FILE
    assert not (tmp_path / "run" / LOCK_FILE).exists() and locked_by_other(tmp_path / "run") is None
    monkeypatch.setenv("RANK", "0")
    lock_run_dir(tmp_path / "run", "amc-finetune")
    assert (tmp_path / "run" / LOCK_FILE).exists()
    unlock_run_dir(tmp_path / "run")

    rank1 = Distributed(rank=1, world_size=2)
    with pytest.raises(SystemExit) as ended, errors_from_rank_zero(rank1):
        raise ConfigError("batch_size=5 cannot be split")
    assert ended.value.code == 2  # quietly: rank 0 prints the one error line
    with pytest.raises(ConfigError), errors_from_rank_zero(Distributed(rank=0, world_size=2)):
        raise ConfigError("batch_size=5 cannot be split")
    checked = []
    assert shared_run_dir(tmp_path / "x", SINGLE, checked.append) == tmp_path / "x" and checked == [tmp_path / "x"]
