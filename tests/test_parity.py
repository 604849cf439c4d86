"""amc's YOLOv7 equals the official one: same weights and input give the same outputs."""

from __future__ import annotations

import copy

import torch

from amc.models import load_model
from amc.models.safe_pickle import read_official_checkpoint
from conftest import FIXTURES, fixture_io, fixture_meta, fused_bound, parity_bound


def test_official_state_dict_names_match_exactly(official_name: str) -> None:
    ckpt = read_official_checkpoint(FIXTURES / f"{official_name}.pt")
    model, _ = load_model(FIXTURES / f"{official_name}.pt")
    assert list(model.state_dict()) == list(ckpt.state_dict)  # same names, same order
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt.state_dict[key]), key


def test_eval_decoded_output_matches_official(official_name: str) -> None:
    meta, io = fixture_meta(official_name), fixture_io(official_name)
    model, names = load_model(FIXTURES / f"{official_name}.pt")
    assert names == meta["names"]
    assert model.stride.tolist() == meta["stride"]
    assert type(model.head).__name__ == meta["head"]
    with torch.no_grad():
        pred, raw = model(io["input"].clone())
    assert pred.shape == io["eval_pred"].shape
    assert (pred - io["eval_pred"]).abs().max().item() <= parity_bound(meta, "eval_pred")
    assert len(raw) == len(meta["stride"])


def test_train_raw_outputs_match_official(official_name: str) -> None:
    meta, io = fixture_meta(official_name), fixture_io(official_name)
    model, _ = load_model(FIXTURES / f"{official_name}.pt")
    model.train()
    with torch.no_grad():
        raw = model(io["input"].clone())
    assert len(raw) == meta["train_raw_outputs"]
    for i, r in enumerate(raw):
        ref = io[f"train_raw_{i}"]
        assert r.shape == ref.shape, i
        assert (r - ref).abs().max().item() <= parity_bound(meta, "train_raw"), i


def test_fused_output_matches_official_fused_and_unfused(official_name: str) -> None:
    meta, io = fixture_meta(official_name), fixture_io(official_name)
    model, _ = load_model(FIXTURES / f"{official_name}.pt")
    fused = copy.deepcopy(model).fuse()
    assert fused.fused and not model.fused
    with torch.no_grad():
        pred = fused(io["input"].clone())[0]
    assert (pred - io["fused_eval_pred"]).abs().max().item() <= fused_bound(meta)
    assert (pred - io["eval_pred"]).abs().max().item() <= fused_bound(meta)
