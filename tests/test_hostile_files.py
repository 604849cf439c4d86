"""Hostile model files: every size a file declares is checked against a bound before memory is spent on it.

Each input of issue 22 (a 3 MB zip bomb declaring 3 GiB, an amc architecture 10^9 or 10^7 channels wide, a cfg
with ``width_multiple: 1e5`` or ``nc: -5``) must end ``amc-info`` in one ``error:`` line with exit code 2, in
about the time and memory a good model costs (before the bounds: 45 s and 4.4 GB for the bomb, 43 s and 6.9 GB
for 10^7 channels, tracebacks for the others).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from amc.errors import AmcError, CheckpointError, ConfigError
from amc.models import load_cfg, load_model, official_cfg_names, parse_cfg
from amc.models.arch import MAX_CHANNELS
from amc.models.safe_pickle import MAX_EXPANSION, load_pickled_checkpoint
from conftest import FIXTURES, mini_cfg
from hostile_inputs import BOMB_DECLARED, DEMO_MODEL, build_all, deflated_zeros, raw_zip, wide_amc_model

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def _amc_info() -> list[str]:
    """The installed ``amc-info`` console script (the command users run), else the module it runs."""
    script = Path(sys.executable).with_name("amc-info")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "amc.cli.info"]


def _measure(model_path: Path, run_dir: Path) -> tuple[int, str, float, float, int]:
    """Run ``amc-info model.path=...``: exit code, its output, wall and CPU seconds, peak RSS in bytes.

    ``os.wait4`` gives this child's own resource use (``RUSAGE_CHILDREN`` would give the largest of every child
    the test session ever waited for).
    """
    out = run_dir.with_suffix(".out")
    start = time.monotonic()
    with open(out, "w") as sink:
        child = subprocess.Popen([*_amc_info(), f"model.path={model_path}", "per_layer=false",
                                  f"hydra.run.dir={run_dir}"], stdout=sink, stderr=subprocess.STDOUT, cwd=REPO,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped: keep Popen from waiting again
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # kB on Linux
    return (child.returncode, out.read_text(), time.monotonic() - start, usage.ru_utime + usage.ru_stime, peak)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and peak RSS of ``amc-info`` on the (good) demo model: the yardstick."""
    code, output, wall, cpu, peak = _measure(DEMO_MODEL, tmp_path_factory.mktemp("good") / "run")
    assert code == 0, output
    return wall, cpu, peak


def test_the_zip_bomb_is_what_it_claims(hostile: dict[str, Path]) -> None:
    """The crafted bomb: a few MB on disk whose storage entry declares (and would inflate to) 3 GiB."""
    bomb = hostile["zip-bomb"]
    assert bomb.stat().st_size < 4 * MIB
    with zipfile.ZipFile(bomb) as archive:
        info = archive.getinfo("yolov7-tiny-deploy/data/0")
        assert info.file_size == BOMB_DECLARED and info.compress_type == zipfile.ZIP_DEFLATED
        with archive.open(info) as entry:
            assert entry.read(MIB) == bytes(MIB)  # really inflates to zeros


@pytest.mark.parametrize("name", ["zip-bomb", "width-1e9", "width-1e7", "width_multiple-1e5", "nc-5"])
def test_hostile_input_ends_in_one_line_in_bounded_time_and_memory(
        name: str, hostile: dict[str, Path], good_run: tuple[float, float, int], tmp_path: Path) -> None:
    good_wall, good_cpu, good_peak = good_run
    path = hostile[name]
    code, output, wall, cpu, peak = _measure(path, tmp_path / "run")
    lines = output.strip().splitlines()
    assert code == 2, output
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], output
    # Beyond start-up (imports, ~3 s) the refusal is instant: about the CPU time of loading a good model (which
    # builds it and counts its cost). The margins allow for a busy machine (CPU time is steadier than wall
    # time) and still fail the unbounded reads: 43 s of CPU for the bomb and for 10^7 channels.
    assert cpu < 2 * good_cpu + 2.0, (cpu, good_cpu)
    assert wall < 3 * good_wall + 10.0, (wall, good_wall)
    size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.iterdir())
    assert peak < good_peak + 4 * size + 96 * MIB, (peak / MIB, good_peak / MIB, size / MIB)


@pytest.mark.parametrize("name, error, message", [
    ("zip-bomb", CheckpointError, f"declare 3,2.* bytes in a 3,.*-byte file \\(over {MAX_EXPANSION}x\\)"),
    ("width-1e9", ConfigError, r"layer 0 \(Conv\) 'c2' must be an integer in \[1, 65536\], got 1000000000"),
    ("width-1e7", ConfigError, r"layer 0 \(Conv\) 'c2' must be an integer in \[1, 65536\], got 10000000"),
    ("width_multiple-1e5", ConfigError, r"'width_multiple' must be a number in \(0, 16\], got '1e5'"),
    ("nc-5", ConfigError, r"'nc' must be an integer in \[1, 100000\], got -5"),
])
def test_hostile_input_is_refused_before_memory_is_spent(name: str, error: type[AmcError], message: str,
                                                         hostile: dict[str, Path]) -> None:
    """In process, where the imports are done: the refusal itself takes well under a second of CPU."""
    start = time.process_time()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(error, match=message):
        load_model(hostile[name])
    assert time.process_time() - start < 1.0
    # ru_maxrss is a high-water mark: it rises only if this load went past every earlier peak of the session.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 64 * 1024  # kB


@pytest.mark.parametrize("key, value, message", [
    ("width_multiple", 0, r"'width_multiple' must be a number in \(0, 16\], got 0"),
    ("width_multiple", 16.5, r"'width_multiple' must be a number in \(0, 16\]"),
    ("width_multiple", float("nan"), r"'width_multiple' must be a number"),
    ("width_multiple", "wide", r"'width_multiple' must be a number"),
    ("depth_multiple", -1, r"'depth_multiple' must be a number in \(0, 16\], got -1"),
    ("depth_multiple", 1e5, r"'depth_multiple' must be a number in \(0, 16\]"),
    ("depth_multiple", True, r"'depth_multiple' must be a number"),
    ("nc", 0, r"'nc' must be an integer in \[1, 100000\], got 0"),
    ("nc", 10**9, r"'nc' must be an integer in \[1, 100000\]"),
    ("nc", 2.5, r"'nc' must be an integer"),
    ("ch", 10**6, r"'ch' must be an integer in \[1, 65536\]"),
])
def test_cfg_multipliers_and_counts_are_bounded(key: str, value: object, message: str) -> None:
    cfg = mini_cfg()
    cfg[key] = value
    with pytest.raises(ConfigError, match=message):
        parse_cfg(cfg, source="bad.yaml")


@pytest.mark.parametrize("row, message", [
    (0, r"layer 0 \(Conv\) 'c2' must be an integer in \[1, 65536\]"),   # 1e9 channels after width scaling
    (1, r"layer 0 \(Conv\) 'k' must be an integer in \[1, 64\], got 1000"),
    (2, r"layer 0 \(Conv\) 's' must be an integer in \[1, 64\], got 0"),
    (3, r"layer 0 \(Conv\) 'p' must be an integer in \[0, 64\], got 5000"),
    (4, r"layer 0 has an invalid repeat number 100000"),
    (5, r"layer 0 \(Conv\) 'n' must be an integer in \[1, 64\], got 640"),  # 40 x depth_multiple 16
    (6, r"layer 0 \(Conv\) has 3 groups, which do not divide its widths 3 -> 16"),
    (7, r"layer 0 \(Conv\) has malformed args"),  # 1e400 channels: float overflow, no traceback
])
def test_layer_sizes_are_bounded(row: int, message: str) -> None:
    cfg = mini_cfg()
    cfg["backbone"][0] = [
        [-1, 1, "Conv", [10**9, 3, 2]],
        [-1, 1, "Conv", [16, 1000, 2]],
        [-1, 1, "Conv", [16, 3, 0]],
        [-1, 1, "Conv", [16, 3, 2, 5000]],
        [-1, 100000, "Conv", [16, 3, 2]],
        [-1, 40, "Conv", [16, 3, 1]],
        [-1, 1, "Conv", [16, 3, 2, None, 3]],
        [-1, 1, "Conv", ["1e400", 3, 2]],
    ][row]
    if row == 5:
        cfg["depth_multiple"] = 16
    with pytest.raises(ConfigError, match=message):
        parse_cfg(cfg, source="bad.yaml")


def test_upsampling_pooling_and_anchors_are_bounded() -> None:
    cfg = mini_cfg()
    cfg["head"][0][3] = [None, 10**4, "nearest"]
    with pytest.raises(ConfigError, match=r"layer 11 \(Upsample\) 'scale_factor' must be a number in \(0, 64\]"):
        parse_cfg(cfg, source="bad.yaml")
    cfg = mini_cfg()
    cfg["backbone"][4][3] = [24, 1, False, 1, 0.5, [5, 9, 1301]]
    with pytest.raises(ConfigError, match=r"layer 4 \(SPPCSPC\) 'k' must be an integer in \[1, 64\], got 1301"):
        parse_cfg(cfg, source="bad.yaml")
    for anchors, message in (([[10, 13, 16, 30], [30, 61], [116, 90]], "same number"),
                             ([[10, -13]] * 3, "positive sizes"), ([["a", 1]] * 3, "must hold numbers")):
        cfg = mini_cfg()
        cfg["anchors"] = anchors
        with pytest.raises(ConfigError, match=message):
            parse_cfg(cfg, source="bad.yaml")


def test_an_architecture_larger_than_its_weights_is_refused_before_building(tmp_path: Path) -> None:
    """Within every per-layer bound (65536 channels), the demo's weights cannot fill the model declared."""
    folder = wide_amc_model(tmp_path / "m", MAX_CHANNELS)
    start = time.process_time()
    with pytest.raises(CheckpointError, match=r"architecture.yaml declares [\d,]+ parameters but "
                                              r"weights.safetensors holds [\d,]+ values"):
        load_model(folder)
    assert time.process_time() - start < 1.0


def test_a_cfg_building_too_many_parameters_is_refused(tmp_path: Path) -> None:
    """All widths x16 of yolov7-e6e: each layer within bounds, the model 38 G parameters."""
    with pytest.raises(ConfigError, match=r"builds [\d,]+ parameters, more than the 1,000,000,000"):
        load_model("training/yolov7-e6e.yaml", width_multiple=16)


def _fixture_rows(name: str = "yolov7-tiny-deploy") -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(FIXTURES / f"{name}.pt") as archive:
        return [(n, archive.read(n)) for n in archive.namelist()]


def test_storage_entries_must_declare_what_their_tensor_record_needs(tmp_path: Path) -> None:
    """A storage entry declaring more or fewer bytes than the pickle's record (numel x element size) is refused
    before it is read, even when the archive as a whole stays within its bound."""
    import zlib

    rows = _fixture_rows()
    victim = "yolov7-tiny-deploy/data/0"  # 432 bytes: 216 fp16 values
    for declared, payload, method in ((8 * MIB, deflated_zeros(8 * MIB), 8), (400, bytes(400), 0)):
        entries = [(n, payload, method, 0, declared) if n == victim else (n, d, 0, zlib.crc32(d), len(d))
                   for n, d in rows]
        path = raw_zip(tmp_path / f"lying-{declared}.pt", entries)
        with pytest.raises(CheckpointError, match=f"storage 0 declares {declared:,} bytes but its tensor record "
                                                  r"needs 432 \(216 x torch.float16\)"):
            load_pickled_checkpoint(path)


def test_an_unreferenced_bomb_entry_is_refused_too(tmp_path: Path) -> None:
    """The archive's total is checked first: a bomb the pickle never names is not inflated either."""
    import zlib

    rows = [(n, d, 0, zlib.crc32(d), len(d)) for n, d in _fixture_rows()]
    bomb = raw_zip(tmp_path / "extra.pt", rows + [("yolov7-tiny-deploy/extra", deflated_zeros(256 * MIB), 8, 0,
                                                   256 * MIB)])
    with pytest.raises(CheckpointError, match="zip bomb"):
        load_pickled_checkpoint(bomb)
    assert load_pickled_checkpoint(raw_zip(tmp_path / "plain.pt", rows))  # the same archive without it loads


def test_a_tensor_record_larger_than_its_storage_allows_is_refused(tmp_path: Path) -> None:
    """A stride-0 view declares any size over one stored value; rebuilt, it would be copied whole."""
    path = tmp_path / "expanded.pt"
    torch.save({"t": torch.zeros(1).expand(10**9)}, path)
    assert path.stat().st_size < MIB
    start = time.process_time()
    with pytest.raises(CheckpointError, match="tensor records declare over"):
        load_pickled_checkpoint(path)
    assert time.process_time() - start < 1.0
    small = tmp_path / "small.pt"
    torch.save({"t": torch.arange(3.0)[:1].expand(1000)}, small)  # 4 kB of copies: within the bound
    assert torch.equal(load_pickled_checkpoint(small)["t"], torch.zeros(1000))


def test_real_files_pass_the_bounds() -> None:
    """The bounds leave real models alone: every official fixture (the fused deploy one too, which is built
    unfused first) and every shipped cfg."""
    for name in ("yolov7-tiny", "yolov7", "yolov7-e6e", "yolov7-tiny-deploy"):
        load_model(FIXTURES / f"{name}.pt")
    for name in official_cfg_names():
        load_cfg(REPO / "amc" / "cfg" / name)
