"""Hostile model files, built small in a test: each declares a size that would cost gigabytes if believed.

Used by ``tests/test_hostile_files.py``; also runnable to measure what amc does with them::

    python tests/hostile_inputs.py OUT_DIR     # writes the files and prints their paths
"""

from __future__ import annotations

import shutil
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import yaml

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "amc" / "assets" / "demo-model"
BOMB_DECLARED = 3 << 30  # what the zip bomb's storage entry declares: 3 GiB (in a ~3 MB archive)


def raw_zip(path: Path, entries: list[tuple[str, bytes, int, int, int]]) -> Path:
    """Write a zip archive by hand, so that an entry may hold pre-deflated data and declare any size.

    ``zipfile`` compresses what it is given and records the true size; a zip bomb needs neither. Each entry is
    ``(name, payload as stored, method (0 stored, 8 deflated), crc32, declared uncompressed size)``.
    """
    out, central = bytearray(), bytearray()
    for name, payload, method, crc, size in entries:
        raw, offset = name.encode(), len(out)
        # Local header, then central-directory record (date 0x21: 1980-01-01, the zip epoch).
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(payload), size,
                           len(raw), 0) + raw + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(payload),
                               size, len(raw), 0, 0, 0, 0, 0, offset) + raw
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))
    return path


def deflated_zeros(size: int) -> bytes:
    """A raw deflate stream that inflates to ``size`` zero bytes (``size`` a multiple of 1 MiB), built in
    milliseconds: after a full flush the compressor's state is reset, so every MiB compresses to the same bytes."""
    mib = 1 << 20
    assert size % mib == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(mib)) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(bytes(mib)) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert again == block  # what makes the concatenation valid
    return block * (size // mib) + compressor.flush()


def zip_bomb(path: Path, declared: int = BOMB_DECLARED, fixture: str = "yolov7-tiny-deploy") -> Path:
    """An official checkpoint whose first weight storage is replaced by ``declared`` deflated zeros.

    The pickle still says that storage holds a few hundred bytes; the zip entry claims (and inflates to)
    ``declared`` bytes. The CRC is left wrong: a reader that checks sizes never gets that far.
    """
    with zipfile.ZipFile(FIXTURES / f"{fixture}.pt") as archive:
        entries = [(n, archive.read(n)) for n in archive.namelist()]
    victim = f"{fixture}/data/0"
    rows = [(n, deflated_zeros(declared), 8, 0, declared) if n == victim else (n, data, 0, zlib.crc32(data), len(data))
            for n, data in entries]
    return raw_zip(path, rows)


def wide_amc_model(folder: Path, width: int) -> Path:
    """The demo amc model with its first convolution declared ``width`` channels wide (weights unchanged)."""
    shutil.copytree(DEMO_MODEL, folder)
    meta = yaml.safe_load((folder / "architecture.yaml").read_text())
    meta["architecture"]["layers"][0][2]["c2"] = width
    (folder / "architecture.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return folder


def official_cfg(path: Path, **changes: str) -> Path:
    """amc's tiny official-format cfg (tests/fixtures/mini.yaml) with top-level lines changed, as a user would
    type them (``width_multiple="1e5"`` writes ``width_multiple: 1e5``, which YAML 1.1 reads as a string)."""
    lines = (FIXTURES / "mini.yaml").read_text().splitlines()
    for key, value in changes.items():
        lines = [f"{key}: {value}" if line.startswith(f"{key}:") else line for line in lines]
    path.write_text("\n".join(lines) + "\n")
    return path


def build_all(out: Path) -> dict[str, Path]:
    """Every hostile input of issue 22, by name."""
    out.mkdir(parents=True, exist_ok=True)
    return {
        "zip-bomb": zip_bomb(out / "bomb.pt"),
        "width-1e9": wide_amc_model(out / "wide9", 10**9),
        "width-1e7": wide_amc_model(out / "wide7", 10**7),
        "width_multiple-1e5": official_cfg(out / "wm.yaml", width_multiple="1e5"),
        "nc-5": official_cfg(out / "nc.yaml", nc="-5"),
    }


if __name__ == "__main__":
    for name, p in build_all(Path(sys.argv[1])).items():
        print(name, p)
