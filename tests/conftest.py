"""Shared test helpers: the official reference fixtures (see tests/fixtures/README.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n N``), each worker gets its share of the cores, for torch and for the commands the
    tests start: N workers each using every core would oversubscribe the machine and run slower than one."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(share)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))
OFFICIAL = ["yolov7-tiny", "yolov7", "yolov7-e6e", "yolov7-tiny-deploy"]


def fixture_meta(name: str) -> dict[str, Any]:
    """The official model's facts: cfg, width, classes, params, GFLOPs at 640, fp32 noise."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


def fixture_io(name: str) -> dict[str, torch.Tensor]:
    """The official model's input and outputs (eval, train raw, fused)."""
    return load_file(str(FIXTURES / f"{name}.io.safetensors"))


def parity_bound(meta: dict[str, Any], key: str) -> float:
    """The fixtures README's fair bound: max(1e-4, 2 x the official code's own fp32 noise)."""
    return max(1e-4, 2 * meta["fp32_noise"][key])


def fused_bound(meta: dict[str, Any]) -> float:
    """The fixtures README's bound for fused outputs against the unfused ones."""
    return max(1e-3, 2 * meta["fp32_noise"]["fused_eval_pred"])


@pytest.fixture(params=OFFICIAL)
def official_name(request: pytest.FixtureRequest) -> str:
    return request.param


def mini_cfg(head: str = "IDetect") -> dict[str, Any]:
    """amc's tiny cfg using every module (tests/fixtures/mini.yaml), with the given head."""
    import yaml

    cfg = yaml.safe_load((FIXTURES / "mini.yaml").read_text())
    if head == "IAuxDetect":  # auxiliary heads read the same levels as the lead heads
        cfg["head"][-1] = [[13, 14, 15, 13, 14, 15], 1, "IAuxDetect", ["nc", "anchors"]]
    else:
        cfg["head"][-1][2] = head
    return cfg


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Well-scaled random weights with non-trivial BatchNorm statistics and implicit layers.

    Fusing with default BatchNorm (mean 0, var 1, weight 1, bias 0) would be nearly a no-op, so every
    statistic is perturbed; convolution weights are rescaled so activations keep a sane scale.
    """
    g = torch.Generator().manual_seed(seed)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        elif isinstance(m, torch.nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in**0.5)
            if m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        elif name.split(".")[-2:-1] == ["ia"] or name.split(".")[-2:-1] == ["im"]:
            base = 1.0 if ".im." in f".{name}." else 0.0
            m.implicit.copy_(base + 0.1 * torch.randn(m.implicit.shape, generator=g))
    return model


def irregular(arch, seed: int = 0):
    """A copy of ``arch`` with random, odd widths everywhere pruning could cut (what a pruned model looks like).

    Widths that must stay equal (inputs of a Shortcut) are left alone, as are RepConv identity blocks.
    """
    import random

    rng = random.Random(seed)
    arch = arch.copy()
    tied = {j for i, layer in enumerate(arch.layers)
            if layer.module == "Shortcut" or (layer.module == "RepConv" and layer.args["identity"])
            for j in layer.sources(i)}

    def cut(c: int) -> int:
        return max(1, c - rng.randint(1, max(1, c // 2)))

    for i, layer in enumerate(arch.layers):
        a = layer.args
        if i in tied:
            continue
        if layer.module == "Conv" or (layer.module == "RepConv" and not a["identity"]):
            a["c2"] = cut(a["c2"])
        elif layer.module == "DownC":
            a.update(cv1=cut(a["cv1"]), cv2=cut(a["cv2"]), cv3=cut(a["cv3"]))
        elif layer.module == "SPPCSPC":
            a.update({f"cv{j}": cut(a[f"cv{j}"]) for j in range(1, 8)})
    return arch


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory):
    """A small demo dataset (COCO format, 3 classes) generated once per test session: (root, train, val)."""
    from amc.data.datasets import load_dataset
    from amc.data.synthetic import generate_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(root, n_train=12, n_val=6, img_size=96, seed=3, n_search=6)
    return root, load_dataset("demo", root, "train"), load_dataset("demo", root, "val")


def mini_model(nc: int = 3, seed: int = 0):
    """amc's tiny all-modules model with ``nc`` classes (fresh weights, deterministic)."""
    from amc.models import YOLOv7, parse_cfg

    torch.manual_seed(seed)
    return YOLOv7(parse_cfg(mini_cfg(), nc=nc))


class Interrupt(Exception):
    """Raised by :class:`StopAtEpoch`: stands for a run killed at an epoch boundary."""


def stop_at_epoch_set():  # noqa: ANN201 (keeps amc's data module out of conftest's imports)
    """A TrainSet subclass that simulates a killed run when its ``stop_at`` epoch starts (None: never)."""
    from amc.data.loaders import TrainSet

    class StopAtEpoch(TrainSet):
        stop_at: int | None = None

        def set_epoch(self, epoch: int) -> None:
            if epoch == self.stop_at:
                raise Interrupt
            super().set_epoch(epoch)

    return StopAtEpoch


@pytest.fixture
def one_torch_thread():
    """Tiny agent networks: one thread is fastest (and on a shared CPU, several threads are much slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

