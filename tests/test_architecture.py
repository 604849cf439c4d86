"""The architecture (docs/architecture.md) holds: ``lint-imports`` keeps every contract of pyproject.toml, fails on a
deliberately added back-edge, and every top-level module of amc sits in a layer of the layers contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

pytest.importorskip("importlinter", reason="import-linter is in the test extra: pip install -e .[test]")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("amc", "envs", "agents")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the packages found on the path from ``cwd`` (the contracts of ``cwd/pyproject.toml``)."""
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # this tree's packages, not an installed copy
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_lint_imports_keeps_every_contract():
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout and "BROKEN" not in run.stdout, run.stdout
    assert len(contracts()) >= 7


def copy_packages(dest: Path) -> None:
    """The project's packages (Python files only) and pyproject.toml, in ``dest``."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package, ignore=lambda d, names: [
            n for n in names if not (n.endswith(".py") or (Path(d) / n).is_dir()) or n == "__pycache__"])
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


@pytest.mark.parametrize("module, line, broken", [
    # the pruning engine reaching up to the command line: layers, cli-on-top and pruning-engine contracts
    ("amc/pruning/space.py", "from amc.cli.app import amc_app", "Only the commands import amc.cli"),
    # an environment importing an agent: the Gymnasium API contract
    ("envs/pruning_env.py", "from agents.base import SearchAgent", "envs never imports agents"),
    # models importing the training code above them
    ("amc/models/arch.py", "import amc.train.loss", "Models import nothing above them"),
])
def test_a_back_edge_breaks_the_contracts(tmp_path, module, line, broken):
    copy_packages(tmp_path)
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n{line}  # a deliberate back-edge\n")
    run = lint_imports(tmp_path)
    out = " ".join(run.stdout.split())  # lint-imports wraps long contract names
    assert run.returncode != 0, run.stdout
    assert f"{broken}" in out and "BROKEN" in out
    assert "Layers point down (docs/architecture.md) BROKEN" in out
    importer = module.removesuffix(".py").replace("/", ".")
    assert importer in out  # the report names the module with the back-edge


def test_every_module_of_amc_is_in_a_layer():
    layers = next(c for c in contracts() if c["type"] == "layers")["layers"]
    named = {m.strip() for layer in layers for m in layer.replace("|", ":").split(":")}
    children = {f"amc.{p.stem}" for p in (ROOT / "amc").iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert {"envs", "agents"} <= named
    assert children - named == set(), "place every new top-level module of amc in a layer (pyproject.toml)"
    assert named - {"envs", "agents"} <= children, "a layer names a module that does not exist"
