"""amc's YOLOv7 loss equals the official ComputeLoss / ComputeLossOTA / ComputeLossAuxOTA, number for number."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from amc.models import YOLOv7, load_model, parse_cfg
from amc.train import YOLOv7Loss, bbox_iou, scale_hyp, smooth_bce
from amc.train.loss import SimOTAAssigner, bce_with_logits, find_candidates, pairwise_box_iou
from conftest import FIXTURES, fixture_io, fixture_meta, mini_cfg, randomize_

HYP_DIR = Path(__file__).parents[1] / "conf" / "hyp"
PARITY_ATOL = 1e-6  # measured: 0.0 with torch's default threads; reductions may round differently otherwise
# relative: the yolov7-e6e (four-level + auxiliary heads) losses differ from the official ones by 1.3e-5 relative on an
# AMD EPYC VM with numpy 2.4 (the same code gave 0.0 elsewhere): float32 sums in another order. A wrong term or
# assignment moves the loss by 1e-3 or more, far outside this.
PARITY_RTOL = 5e-5


def tiny_setup() -> tuple[YOLOv7, dict, dict[str, torch.Tensor], list[torch.Tensor]]:
    """The official yolov7-tiny fixture in train mode, its hyp and io, and its raw training outputs."""
    io, hyp = fixture_io("yolov7-tiny"), fixture_meta("yolov7-tiny")["hyp"]
    model, _ = load_model(FIXTURES / "yolov7-tiny.pt")
    model.train()
    with torch.no_grad():
        ours = model(io["input"].clone())
    bound = max(1e-4, 2 * fixture_meta("yolov7-tiny")["fp32_noise"]["train_raw"])
    preds = [io[f"train_raw_{i}"].clone() for i in range(len(ours))]
    for p, o in zip(preds, ours):
        assert (p - o).abs().max() <= bound  # amc's outputs are the official ones (to fp32 rounding) ...
    return model, hyp, io, preds  # ... and the loss is compared on exactly the official outputs


def assert_official(loss: torch.Tensor, items: torch.Tensor, ref_loss: torch.Tensor | list[float],
                    ref_items: torch.Tensor | list[float]) -> None:
    ref_loss, ref_items = torch.as_tensor(ref_loss).reshape(()), torch.as_tensor(ref_items)
    assert loss.shape == () and items.shape == (4,)
    torch.testing.assert_close(loss, ref_loss, atol=PARITY_ATOL, rtol=PARITY_RTOL)
    torch.testing.assert_close(items, ref_items, atol=PARITY_ATOL, rtol=PARITY_RTOL)


# ----------------------------------------------------------------------------------------------------
# Parity with the official fixture (yolov7-tiny checkpoint, 2 images of 96x128, 6 targets)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ota", [False, True], ids=["ComputeLoss", "ComputeLossOTA"])
def test_loss_matches_official_fixture(ota: bool) -> None:
    model, hyp, io, preds = tiny_setup()
    key = "_ota" if ota else ""
    loss, items = YOLOv7Loss(model, hyp, ota=ota)(preds, io["targets"], io["input"])
    assert_official(loss, items, io[f"loss{key}"], io[f"loss_items{key}"])


def test_ota_without_images_infers_the_height() -> None:
    model, hyp, io, preds = tiny_setup()
    loss, items = YOLOv7Loss(model, hyp, ota=True)(preds, io["targets"])
    assert_official(loss, items, io["loss_ota"], io["loss_items_ota"])


# Reference values computed by the official utils/loss.py (commit a207844) on the same outputs and targets.
FOCAL_HYP = {"fl_gamma": 1.5, "label_smoothing": 0.1, "cls_pw": 2.0, "obj_pw": 0.5}
OFFICIAL_FOCAL = {
    False: (0.33333855867385864, [0.11459082365036011, 0.0006780300755053759, 0.05140042304992676,
                                  0.16666927933692932]),
    True: (0.3670218884944916, [0.1272735297679901, 0.00011189637734787539, 0.056125517934560776,
                                0.1835109442472458]),
}


@pytest.mark.parametrize("ota", [False, True], ids=["ComputeLoss", "ComputeLossOTA"])
def test_focal_loss_label_smoothing_and_pos_weights_match_official(ota: bool) -> None:
    model, hyp, io, preds = tiny_setup()
    loss, items = YOLOv7Loss(model, {**hyp, **FOCAL_HYP}, ota=ota)(preds, io["targets"], io["input"])
    assert_official(loss, items, *OFFICIAL_FOCAL[ota])


# yolov7-e6e fixture (IAuxDetect, 4 levels, 20 classes, 2 images of 128x192): official values for the
# tiny fixture's targets with classes [0, 5, 17, 2, 2, 19], with the tiny fixture's hyp.
E6E_CLASSES = [0.0, 5.0, 17.0, 2.0, 2.0, 19.0]
OFFICIAL_E6E = {
    "ComputeLoss": (0.5768401026725769, [0.075489841401577, 0.007388023659586906, 0.20554219186306,
                                         0.28842005133628845]),
    "ComputeLossOTA": (0.5723164081573486, [0.08186854422092438, 0.0016658972017467022, 0.20262375473976135,
                                            0.2861582040786743]),
    "ComputeLossAuxOTA": (0.702709436416626, [0.09744484722614288, 0.0025076705496758223, 0.25140219926834106,
                                              0.351354718208313]),
}


@pytest.mark.parametrize("variant", list(OFFICIAL_E6E))
def test_four_level_and_auxiliary_heads_match_official(variant: str) -> None:
    io, hyp = fixture_io("yolov7-e6e"), fixture_meta("yolov7-tiny")["hyp"]
    targets = fixture_io("yolov7-tiny")["targets"].clone()
    targets[:, 1] = torch.tensor(E6E_CLASSES)
    model, _ = load_model(FIXTURES / "yolov7-e6e.pt")
    model.train()
    with torch.no_grad():
        preds = model(io["input"].clone())
    assert len(preds) == 2 * model.head.nl == 8
    if variant != "ComputeLossAuxOTA":
        preds = preds[: model.head.nl]  # lead maps only (what validation computes the loss on)
    loss, items = YOLOv7Loss(model, hyp, ota=variant != "ComputeLoss")(preds, targets, io["input"])
    assert_official(loss, items, *OFFICIAL_E6E[variant])


# ----------------------------------------------------------------------------------------------------
# Behaviour
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ota", [False, True], ids=["plain", "ota"])
def test_gradients_reach_the_head(ota: bool) -> None:
    model, hyp, io, _ = tiny_setup()
    model.zero_grad()
    loss, items = YOLOv7Loss(model, hyp, ota=ota)(model(io["input"].clone()), io["targets"], io["input"])
    loss.backward()
    assert not items.requires_grad
    for conv in model.head.m:
        assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
        assert conv.weight.grad.abs().sum() > 0
    assert torch.isfinite(model.model[0].conv.weight.grad).all()  # and through the whole network


@pytest.mark.parametrize("ota", [False, True], ids=["plain", "ota"])
def test_no_targets_gives_finite_objectness_only_loss(ota: bool) -> None:
    model, hyp, io, preds = tiny_setup()
    preds = [p.detach().requires_grad_() for p in preds]
    loss, items = YOLOv7Loss(model, hyp, ota=ota)(preds, torch.zeros((0, 6)), io["input"])
    assert torch.isfinite(loss) and torch.isfinite(items).all()
    box, obj, cls, total = items.tolist()
    assert box == 0.0 and cls == 0.0 and obj > 0.0 and total == obj
    assert loss.item() == pytest.approx(obj * 2)  # times the batch size
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in preds)


def test_images_without_targets_in_a_batch() -> None:
    model, hyp, io, preds = tiny_setup()
    only_first = io["targets"][io["targets"][:, 0] == 0]
    for ota in (False, True):
        loss, items = YOLOv7Loss(model, hyp, ota=ota)(preds, only_first, io["input"])
        assert torch.isfinite(loss) and items[0] > 0


def test_calls_keep_no_state() -> None:
    model, hyp, io, preds = tiny_setup()
    criterion = YOLOv7Loss(model, hyp, ota=True)
    first = criterion(preds, io["targets"], io["input"])
    criterion(preds, torch.zeros((0, 6)), io["input"])
    again = criterion(preds, io["targets"], io["input"])
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_single_class_model_has_no_class_loss() -> None:
    model, _ = load_model("training/yolov7-tiny.yaml", nc=1, width_multiple=0.25)
    model.train()
    hyp = scale_hyp(yaml.safe_load((HYP_DIR / "scratch-tiny.yaml").read_text()), 3, 1, 128)
    images = torch.rand(2, 3, 128, 128)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.4], [1, 0, 0.3, 0.6, 0.2, 0.1]])
    for ota in (False, True):
        loss, items = YOLOv7Loss(model, hyp, ota=ota)(model(images), targets, images)
        assert items[2] == 0.0 and items[0] > 0 and torch.isfinite(loss)


def test_auxiliary_heads() -> None:
    """IAuxDetect training outputs: lead and auxiliary terms, gradients into both, no plain variant."""
    model = randomize_(YOLOv7(parse_cfg(mini_cfg("IAuxDetect")))).train()
    hyp = scale_hyp(yaml.safe_load((HYP_DIR / "scratch-p5.yaml").read_text()), 3, model.nc, 64)
    images = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.5], [1, 0, 0.3, 0.6, 0.3, 0.2], [1, 1, 0.7, 0.4, 0.2, 0.3]])
    preds = model(images)
    assert len(preds) == 6
    both, both_items = YOLOv7Loss(model, hyp, ota=True)(preds, targets, images)
    lead, lead_items = YOLOv7Loss(model, hyp, ota=True)(preds[:3], targets, images)
    assert torch.isfinite(both) and both_items[3] != lead_items[3]
    both.backward()
    for convs in (model.head.m, model.head.m2):
        assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs)
    with pytest.raises(NotImplementedError, match="ComputeLossAuxOTA"):
        YOLOv7Loss(model, hyp, ota=False)(preds, targets, images)
    with pytest.raises(ValueError, match="prediction maps"):
        YOLOv7Loss(model, hyp, ota=True)(preds[:2], targets, images)


def test_simota_batch_equals_each_image_alone() -> None:
    """The batch-vectorized SimOTA (images padded to a common size) assigns each image as if it were alone."""
    model, hyp, io, preds = tiny_setup()
    g = torch.Generator().manual_seed(0)
    preds = [torch.cat([p, torch.randn(p.shape, generator=g)]) for p in preds]  # 4 images
    targets = torch.cat([io["targets"], torch.tensor([[2, 3, 0.5, 0.5, 0.6, 0.7]]),
                         torch.tensor([[3, 7, 0.2, 0.2, 0.1, 0.1], [3, 7, 0.8, 0.7, 0.3, 0.2]])])
    criterion = YOLOv7Loss(model, hyp, ota=True)
    grids = [(p.shape[2], p.shape[3]) for p in preds]

    def assign(ps: list[torch.Tensor], ts: torch.Tensor) -> list[list[tuple]]:
        cands = find_candidates(ts, criterion.anchors, grids, criterion.anchor_t)
        out = criterion.assigner(ps, ts, cands, 96.0)
        return [list(zip(t.anchor.tolist(), t.grid_y.tolist(), t.grid_x.tolist(), t.image.tolist(),
                         ts[t.target].tolist())) for t in out]

    batch = assign(preds, targets)
    for b in range(4):
        alone_targets = targets[targets[:, 0] == b].clone()
        alone_targets[:, 0] = 0
        alone = assign([p[b: b + 1] for p in preds], alone_targets)
        for level, rows in enumerate(batch):
            mine = [(a, y, x, [0.0] + t[1:]) for a, y, x, img, t in rows if img == b]
            assert mine == [(a, y, x, t) for a, y, x, _, t in alone[level]], (b, level)
    assert sum(len(rows) for rows in batch) > 0


def test_input_validation() -> None:
    model, hyp, io, preds = tiny_setup()
    criterion = YOLOv7Loss(model, hyp)
    with pytest.raises(ValueError, match="3 prediction maps"):
        criterion(preds[:2], io["targets"], io["input"])
    with pytest.raises(ValueError, match="85"):
        criterion([p[..., :10] for p in preds], io["targets"], io["input"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
@pytest.mark.parametrize("ota", [False, True], ids=["plain", "ota"])
def test_cuda_matches_cpu(ota: bool) -> None:
    model, hyp, io, preds = tiny_setup()
    cpu = YOLOv7Loss(model, hyp, ota=ota)(preds, io["targets"], io["input"])
    model.cuda()
    criterion = YOLOv7Loss(model, hyp, ota=ota)
    gpu_preds = [p.cuda().requires_grad_() for p in preds]
    loss, items = criterion(gpu_preds, io["targets"].cuda(), io["input"].cuda())
    assert loss.device.type == "cuda" and items.device.type == "cuda"
    torch.testing.assert_close(loss.cpu(), cpu[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(items.cpu(), cpu[1], atol=1e-5, rtol=1e-5)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in gpu_preds)
    # fp16 maps (autocast) are accepted and computed in fp32
    half, _ = criterion([p.detach().half() for p in gpu_preds], io["targets"].cuda(), io["input"].cuda())
    assert half.dtype == torch.float32 and torch.isfinite(half)


# ----------------------------------------------------------------------------------------------------
# Hyper-parameters and building blocks
# ----------------------------------------------------------------------------------------------------
def test_scale_hyp_reproduces_the_fixture_hyp() -> None:
    raw = yaml.safe_load((HYP_DIR / "scratch-tiny.yaml").read_text())
    fixture = fixture_meta("yolov7-tiny")["hyp"]  # official train.py's scaling: 3 levels, 80 classes, 128 px
    scaled = scale_hyp(raw, nl=3, nc=80, img_size=128)
    for key in ("box", "cls", "obj"):
        assert scaled[key] == pytest.approx(fixture[key], rel=1e-12), key
    assert scaled == pytest.approx(fixture)
    assert raw["obj"] == 1.0  # the input is not modified


def test_scale_hyp_formula() -> None:
    scaled = scale_hyp({"box": 0.05, "cls": 0.3, "obj": 0.7}, nl=4, nc=20, img_size=1280)
    assert scaled["box"] == pytest.approx(0.05 * 3 / 4)
    assert scaled["cls"] == pytest.approx(0.3 * 20 / 80 * 3 / 4)
    assert scaled["obj"] == pytest.approx(0.7 * 4 * 3 / 4)
    assert scaled["label_smoothing"] == 0.0


def test_hyp_files_have_the_official_keys() -> None:
    keys = ("lr0 lrf momentum weight_decay warmup_epochs warmup_momentum warmup_bias_lr box cls cls_pw obj "
            "obj_pw iou_t anchor_t fl_gamma hsv_h hsv_s hsv_v degrees translate scale shear perspective flipud "
            "fliplr mosaic mixup copy_paste paste_in loss_ota label_smoothing").split()
    tiny = yaml.safe_load((HYP_DIR / "scratch-tiny.yaml").read_text())
    p5 = yaml.safe_load((HYP_DIR / "scratch-p5.yaml").read_text())
    assert list(tiny) == keys and list(p5) == keys
    assert (p5["lrf"], p5["cls"], p5["obj"], p5["scale"], p5["mixup"]) == (0.1, 0.3, 0.7, 0.9, 0.15)
    assert (tiny["lrf"], tiny["cls"], tiny["obj"], tiny["scale"], tiny["mixup"]) == (0.01, 0.5, 1.0, 0.5, 0.05)


def test_smooth_bce() -> None:
    assert smooth_bce() == (1.0, 0.0)
    assert smooth_bce(0.1) == pytest.approx((0.95, 0.05))


def test_bbox_iou_kinds() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 0.0, 3.0, 2.0]])  # half overlap along x: IoU 2 / 6
    assert bbox_iou(a, b, xywh=False, kind="iou").item() == pytest.approx(1 / 3, abs=1e-6)
    assert bbox_iou(a, b, xywh=False, kind="giou").item() == pytest.approx(1 / 3, abs=1e-6)  # no empty area
    diou = 1 / 3 - 1 / (3**2 + 2**2)  # centre distance 1, enclosing diagonal^2 = 13
    assert bbox_iou(a, b, xywh=False, kind="diou").item() == pytest.approx(diou, abs=1e-6)
    assert bbox_iou(a, b, xywh=False, kind="ciou").item() == pytest.approx(diou, abs=1e-6)  # same aspect
    same = torch.tensor([[5.0, 5.0, 2.0, 3.0]])
    assert bbox_iou(same, same).item() == pytest.approx(1.0, abs=1e-6)
    wide = torch.tensor([[5.0, 5.0, 4.0, 1.5]])
    assert bbox_iou(same, wide).item() < bbox_iou(same, wide, kind="diou").item()  # aspect penalty
    with pytest.raises(ValueError):
        bbox_iou(a, b, kind="nope")  # type: ignore[arg-type]


def test_pairwise_iou_agrees_with_elementwise() -> None:
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(5, 2, generator=g) * 10
    boxes1 = torch.cat((xy, xy + 1 + torch.rand(5, 2, generator=g) * 5), 1)
    xy = torch.rand(7, 2, generator=g) * 10
    boxes2 = torch.cat((xy, xy + 1 + torch.rand(7, 2, generator=g) * 5), 1)
    matrix = pairwise_box_iou(boxes1, boxes2)
    paired = bbox_iou(boxes1[:, None], boxes2[None], xywh=False, kind="iou", eps=0.0)
    torch.testing.assert_close(matrix, paired, atol=1e-6, rtol=1e-5)
    assert pairwise_box_iou(boxes1[None], boxes2[None]).shape == (1, 5, 7)


def test_focal_bce() -> None:
    logits, targets, pw = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0])
    p = torch.sigmoid(logits)
    plain = -(torch.log(p[0]) + torch.log(1 - p[1])) / 2
    assert bce_with_logits(logits, targets, pw).item() == pytest.approx(plain.item(), rel=1e-6)
    focal = -(0.25 * (1 - p[0]) ** 1.5 * torch.log(p[0]) + 0.75 * p[1] ** 1.5 * torch.log(1 - p[1])) / 2
    assert bce_with_logits(logits, targets, pw, focal_gamma=1.5).item() == pytest.approx(focal.item(), rel=1e-6)


def test_simota_assigner_is_exposed_with_the_official_settings() -> None:
    model, hyp, _, _ = tiny_setup()
    criterion = YOLOv7Loss(model, hyp)
    assert isinstance(criterion.assigner, SimOTAAssigner)
    assert (criterion.assigner.top_k, criterion.aux_assigner.top_k) == (10, 20)
    assert criterion.balance == (4.0, 1.0, 0.4) and math.isclose(criterion.iou_ratio, 1.0)


def test_last_of_repeats_keeps_the_last_write_of_each_slot() -> None:
    from amc.train.loss import last_of_repeats

    image = torch.tensor([0, 1, 0, 0, 1])
    grid = torch.tensor([2, 3, 2, 1, 3])
    keep = last_of_repeats(image, grid, shape=(2, 4))
    assert keep.tolist() == [False, False, True, True, True]
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    plain = torch.zeros(2, 4)
    plain[image, grid] = values  # the CPU's last-write-wins
    deduped = torch.zeros(2, 4)
    deduped[image[keep], grid[keep]] = values[keep]  # what any device computes
    assert torch.equal(plain, deduped)
