"""Hand-computed cases for squeezeDet's loss and the imitation mask/loss (tiny hand-made anchors)."""

from __future__ import annotations

import math

import pytest
import torch

from compressdet.losses import (
    AdaptationLayer,
    ImitationLoss,
    SqueezeDetLoss,
    assign_anchors,
    imitation_mask,
    normalizer_factor,
)

torch.set_num_threads(1)


def _t(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.long)}


# ------------------------------------------------------------------ assignment
ANCHORS = torch.tensor([[10.0, 10, 10, 10], [12, 10, 10, 10], [50, 50, 10, 10]])  # cx, cy, w, h


def test_assign_highest_iou():
    gt = torch.tensor([[45.0, 45, 55, 55], [5, 5, 15, 15]])
    assert assign_anchors(gt, ANCHORS).tolist() == [2, 0]


def test_assign_taken_anchor_goes_to_next_best():
    gt = torch.tensor([[5.0, 5, 15, 15], [5, 5, 15, 15]])  # identical boxes: the 2nd takes anchor 1
    assert assign_anchors(gt, ANCHORS).tolist() == [0, 1]


def test_assign_nearest_anchor_when_no_overlap():
    # (40,40)-(44,44) overlaps no anchor: nearest in (cx,cy,w,h) L2 is anchor 2
    assert assign_anchors(torch.tensor([[40.0, 40, 44, 44]]), ANCHORS).tolist() == [2]
    # three identical boxes: 0, then 1 (IoU > 0), then only anchor 2 is free and it does not overlap
    gt = torch.tensor([[5.0, 5, 15, 15]] * 3)
    assert assign_anchors(gt, ANCHORS).tolist() == [0, 1, 2]


def test_assign_empty():
    assert assign_anchors(torch.zeros(0, 4), ANCHORS).numel() == 0


# ------------------------------------------------------------------ loss values
# one cell row of 2 cells, 1 anchor per cell, 3 classes: head channels = 1*(3+5) = 8
TWO = torch.tensor([[8.0, 8, 16, 16], [24, 8, 16, 16]])


def _loss(**kw):
    return SqueezeDetLoss(TWO, num_classes=3, num_anchors=1, **kw)


def test_loss_hand_computed_single_image():
    out = torch.zeros(1, 8, 1, 2)  # logits 0 -> softmax 1/3, sigmoid 0.5, deltas 0
    gt = _t([[4.0, -8, 20, 24]], [0])  # cxcywh (12, 8, 16, 32) -> anchor 0 (IoU 1/3 vs 1/7)
    loss = _loss()(out, [gt])
    bce = -math.log(1 / 3) - 2 * math.log(2 / 3)
    assert loss["class"].item() == pytest.approx(bce, rel=1e-5)
    assert loss["box"].item() == pytest.approx(5 * (0.25 ** 2 + math.log(2) ** 2), rel=1e-5)
    iou = 192 / 576  # decoded box = anchor 0
    conf = 75 / 1 * (0.5 - iou) ** 2 + 100 / (2 - 1) * 0.25
    assert loss["confidence"].item() == pytest.approx(conf, rel=1e-5)
    assert loss["total"].item() == pytest.approx(bce + conf + 5 * (0.0625 + math.log(2) ** 2), rel=1e-5)


def test_loss_confidence_weights_over_batch():
    """N counts the batch's positives; the per-image confidence sums are averaged over images."""
    out = torch.zeros(2, 8, 1, 2)
    loss = _loss()(out, [_t([[4.0, -8, 20, 24]], [0]), _t([], [])])
    iou = 192 / 576
    conf = (75 * (0.5 - iou) ** 2 + 100 / 1 * 0.25 + 100 / 1 * 0.25 * 2) / 2
    assert loss["confidence"].item() == pytest.approx(conf, rel=1e-5)


def test_loss_class_is_bce_on_softmax():
    out = torch.zeros(1, 8, 1, 2)
    out[0, 0:3, 0, 1] = torch.tensor([0.0, 2.0, -1.0])  # anchor 1's class logits
    loss = _loss()(out, [_t([[16.0, 0, 32, 16]], [1])])  # exactly anchor 1, class 1
    p = torch.tensor([0.0, 2.0, -1.0]).softmax(0)
    bce = -(math.log(p[1]) + math.log(1 - p[0]) + math.log(1 - p[2]))
    assert loss["class"].item() == pytest.approx(bce, rel=1e-5)
    assert loss["box"].item() == pytest.approx(0.0, abs=1e-7)


def test_confidence_target_is_detached_from_box():
    out = torch.zeros(1, 8, 1, 2, requires_grad=True)
    loss = _loss()(out, [_t([[4.0, -8, 20, 24]], [0])])
    loss["confidence"].backward()
    assert out.grad[:, 4:].abs().sum() == 0  # no gradient reaches the deltas through the IoU target
    assert out.grad[:, 3].abs().sum() > 0


def test_decoded_box_is_clipped_for_the_iou_target():
    out = torch.zeros(1, 8, 1, 2)
    gt = _t([[0.0, 0, 16, 15]], [0])
    clipped = _loss(image_size=(16, 32))(out, [gt])  # anchor 0 clipped to (0,0,16,15) -> IoU 1
    unclipped = _loss()(out, [gt])  # (0,0,16,16) -> IoU 15/16
    assert unclipped["confidence"].item() == pytest.approx(75 * (0.5 - 15 / 16) ** 2 + 25, rel=1e-5)
    assert clipped["confidence"].item() == pytest.approx(75 * 0.25 + 100 * 0.25, rel=1e-5)


def test_loss_rejects_wrong_anchor_count():
    with pytest.raises(ValueError, match="anchors"):
        _loss()(torch.zeros(1, 8, 1, 3), [_t([], [])])


def test_loss_on_model_sized_head():
    from compressdet.models.anchors import generate_anchors

    anchors = generate_anchors((64, 192))
    crit = SqueezeDetLoss(anchors, image_size=(64, 192))
    out = torch.randn(2, 72, 4, 12, requires_grad=True)
    loss = crit(out, [_t([[10.0, 10, 50, 40], [100, 5, 180, 60]], [0, 2]), _t([[20.0, 20, 40, 60]], [1])])
    assert set(loss) == {"class", "confidence", "box", "total"}
    loss["total"].backward()
    assert torch.isfinite(out.grad).all()


# ------------------------------------------------------------------ imitation mask
# grid 1x2, 2 anchors per cell: cell 0 = (8,8,16,16),(8,8,4,4); cell 1 = (24,8,16,16),(24,8,4,4)
MASK_ANCHORS = torch.tensor([[8.0, 8, 16, 16], [8, 8, 4, 4], [24, 8, 16, 16], [24, 8, 4, 4]])


def _mask(boxes_list, psi=0.5):
    return imitation_mask([torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes_list],
                          MASK_ANCHORS, grid=(1, 2), num_anchors=2, psi=psi)


def test_mask_keeps_cells_above_psi_of_max():
    m = _mask([[[0, 0, 16, 16]], [[8, 0, 24, 16]], []])
    assert m.shape == (3, 1, 2) and m.dtype == torch.bool
    assert m[0].tolist() == [[True, False]]  # IoU 1 with cell 0 only
    assert m[1].tolist() == [[True, True]]  # IoU 1/3 with both big anchors
    assert m[2].tolist() == [[False, False]]  # no GT: nothing imitated


def test_mask_threshold_is_per_gt_and_ored():
    # GT A sits on cell 0 (max 1), GT B half on both cells (max 1/3): OR of both
    m = _mask([[[0, 0, 16, 16], [8, 0, 24, 16]]])
    assert m[0].tolist() == [[True, True]]
    # psi close to 1 keeps only each GT's best anchors; a tie keeps both
    assert _mask([[[8, 0, 24, 16]]], psi=0.99)[0].tolist() == [[True, True]]
    assert _mask([[[0, 0, 16, 16]]], psi=0.99)[0].tolist() == [[True, False]]


def test_mask_checks_grid():
    with pytest.raises(ValueError, match="grid"):
        imitation_mask([torch.zeros(0, 4)], MASK_ANCHORS, grid=(2, 2), num_anchors=2)


# ------------------------------------------------------------------ imitation loss
def _imit(normalizer="paper", width=None):
    loss = ImitationLoss(2, 3, normalizer=normalizer, student_width=width)
    with torch.no_grad():
        loss.adapt[0].weight.zero_()
        loss.adapt[0].bias.fill_(2.0)  # adapt(student) == 2 everywhere
    return loss


def test_imitation_normalisers():
    s, t = torch.randn(2, 2, 1, 2), torch.zeros(2, 3, 1, 2)
    mask = torch.tensor([[[True, False]], [[True, True]]])  # N_p = 3
    per_cell = 3 * 2.0 ** 2
    assert _imit()(s, t, mask).item() == pytest.approx(3 * per_cell / (2 * 3))
    assert _imit("seed", 0.25)(s, t, mask).item() == pytest.approx(3 * per_cell / (4 * 3))
    assert _imit("seed", 0.5)(s, t, mask).item() == pytest.approx(3 * per_cell / (2 * 3))
    assert normalizer_factor("seed", 0.25) == 4 and normalizer_factor("paper", 0.25) == 2


def test_imitation_ignores_unmasked_cells_and_empty_mask():
    s, t = torch.randn(1, 2, 1, 2), torch.zeros(1, 3, 1, 2)
    t[0, :, 0, 1] = 100.0  # huge error only where the mask is off
    assert _imit()(s, t, torch.tensor([[[True, False]]])).item() == pytest.approx(12 / 2)
    assert _imit()(s, t, torch.zeros(1, 1, 2, dtype=torch.bool)).item() == 0.0


def test_adaptation_layer_shape_and_grad_to_student_only():
    layer = AdaptationLayer(4, 6)
    assert layer(torch.randn(1, 4, 3, 5)).shape == (1, 6, 3, 5)
    loss = ImitationLoss(4, 6)
    s = torch.randn(1, 4, 3, 5, requires_grad=True)
    t = torch.randn(1, 6, 3, 5, requires_grad=True)
    loss(s, t, torch.ones(1, 3, 5, dtype=torch.bool)).backward()
    assert s.grad is not None and t.grad is None
