"""load_model for every source kind, amc's own format (round trip, atomic writes) and bad input."""

from __future__ import annotations

import copy
import os
import zipfile

import pytest
import torch

from amc.errors import AmcError, CheckpointError, ConfigError
from amc.models import YOLOv7, load_model, parse_cfg, save_model
from amc.models.io import ARCH_FILE, WEIGHTS_FILE
from conftest import FIXTURES, fixture_io, fixture_meta, irregular, mini_cfg, parity_bound, randomize_


def _same_outputs(a: YOLOv7, b: YOLOv7, x: torch.Tensor) -> None:
    with torch.no_grad():
        assert torch.equal(a(x.clone())[0], b(x.clone())[0])


def test_official_checkpoint_is_fp32_eval_with_names() -> None:
    model, names = load_model(FIXTURES / "yolov7-tiny.pt")
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert names[0] == "person" and len(names) == 80 == model.nc


def test_ema_is_preferred_over_model() -> None:
    """yolov7-tiny.pt is a mid-training checkpoint holding both ``model`` and ``ema``: the ema is loaded."""
    from amc.models.safe_pickle import load_pickled_checkpoint, read_official_checkpoint

    raw = load_pickled_checkpoint(FIXTURES / "yolov7-tiny.pt")
    assert raw["ema"] is not None and raw["model"] is not None
    assert read_official_checkpoint(FIXTURES / "yolov7-tiny.pt").source == "ema"
    model, _ = load_model(FIXTURES / "yolov7-tiny.pt")
    io, meta = fixture_io("yolov7-tiny"), fixture_meta("yolov7-tiny")
    with torch.no_grad():
        pred = model(io["input"])[0]
    assert (pred - io["eval_pred"]).abs().max() <= parity_bound(meta, "eval_pred")  # reference: the ema


def test_cfg_and_packaged_names_build_fresh_models() -> None:
    a, names = load_model("training/yolov7-tiny.yaml", nc=3, width_multiple=0.25)
    b, _ = load_model("yolov7-tiny.yaml", nc=3, width_multiple=0.25)
    assert a.nc == 3 and names == ["0", "1", "2"]
    assert a.model[0].conv.out_channels == 8
    _same_outputs(a, b, torch.rand(1, 3, 64, 64))  # same seed: a cfg always gives the same weights


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("head", ["Detect", "IDetect", "IAuxDetect"])
def test_amc_format_round_trip_with_irregular_widths(tmp_path, head: str, fused: bool) -> None:
    model = randomize_(YOLOv7(irregular(parse_cfg(mini_cfg(head)), seed=5), names=["cat", "dog"])).eval()
    if fused:
        model.fuse()
    out = save_model(model, tmp_path / "pruned", extra={"note": "round trip"})
    assert sorted(os.listdir(out)) == [ARCH_FILE, WEIGHTS_FILE]
    text = (out / ARCH_FILE).read_text()
    assert "note: round trip" in text and "- [-1, Conv, {c2:" in text  # readable rows with actual widths
    for source in (out, out / ARCH_FILE, out / WEIGHTS_FILE):
        again, names = load_model(source)
        assert names == ["cat", "dog"] and again.fused == fused
        assert again.arch == model.arch
        _same_outputs(model, again, torch.rand(2, 3, 64, 96))


def test_save_replaces_atomically_and_leaves_no_temporaries(tmp_path) -> None:
    first = randomize_(YOLOv7(parse_cfg(mini_cfg())), seed=1).eval()
    second = randomize_(YOLOv7(parse_cfg(mini_cfg())), seed=2).eval()
    save_model(first, tmp_path / "m")
    save_model(second, tmp_path / "m")
    assert os.listdir(tmp_path) == ["m"]
    _same_outputs(second, load_model(tmp_path / "m")[0], torch.rand(1, 3, 64, 64))


def test_a_failed_save_keeps_the_previous_model(tmp_path, monkeypatch) -> None:
    model = randomize_(YOLOv7(parse_cfg(mini_cfg()))).eval()
    save_model(model, tmp_path / "m")

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("amc.models.io.save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, tmp_path / "m")
    assert os.listdir(tmp_path) == ["m"]
    _same_outputs(model, load_model(tmp_path / "m")[0], torch.rand(1, 3, 64, 64))


def test_missing_and_unknown_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="nope.pt: file not found"):
        load_model(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match="junk.pt.*neither an official YOLOv7 checkpoint nor an amc model"):
        load_model(junk)
    with pytest.raises(CheckpointError, match="not an amc model"):
        load_model(tmp_path)


def test_a_torch_save_of_a_plain_state_dict_is_refused(tmp_path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"model": {"model.0.conv.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="weights.pt"):
        load_model(path)


def test_amc_model_with_missing_or_corrupt_weights(tmp_path) -> None:
    out = save_model(YOLOv7(parse_cfg(mini_cfg())), tmp_path / "m")
    (out / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(out)
    (out / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="weights.safetensors: file not found"):
        load_model(out)


def test_wrong_shapes_name_the_tensor(tmp_path) -> None:
    out = save_model(YOLOv7(parse_cfg(mini_cfg())), tmp_path / "m")
    wide = copy.deepcopy(mini_cfg())
    wide["width_multiple"] = 2.0
    save_model(YOLOv7(parse_cfg(wide)), tmp_path / "wide")
    os.replace(tmp_path / "wide" / WEIGHTS_FILE, out / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match=r"weights do not fit the architecture: .*shape mismatch.*model\.0\.conv"):
        load_model(out)


def test_overrides_are_refused_for_weights() -> None:
    with pytest.raises(ConfigError, match="only apply to a cfg"):
        load_model(FIXTURES / "yolov7.pt", nc=3)


def test_official_archive_with_a_foreign_model_is_refused(tmp_path) -> None:
    src = FIXTURES / "yolov7.pt"
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    entries[pkl] = entries[pkl].replace(b"models.yolo", b"models.yolx")
    bad = tmp_path / "other.pt"
    with zipfile.ZipFile(bad, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    with pytest.raises(AmcError, match="other.pt"):
        load_model(bad)
