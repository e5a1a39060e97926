"""PKD and CrossKD losses: what each computes, and that gradients go where the papers send them."""

from __future__ import annotations

import pytest
import torch

from compressdet.losses.crosskd import CrossKDLoss
from compressdet.losses.pkd import PKDLoss, channel_standardize
from compressdet.models import build_model


def test_pkd_is_scale_invariant_and_one_minus_pearson():
    torch.manual_seed(0)
    t = torch.randn(2, 4, 5, 6)
    loss = PKDLoss(4, 4)
    assert loss(t * 7.0 + 3.0, t).item() == pytest.approx(0.0, abs=1e-6)  # magnitude is not imitated
    s = torch.randn(2, 4, 5, 6)
    zs, zt = channel_standardize(s), channel_standardize(t)
    r = (zs * zt).flatten(2).transpose(0, 1).reshape(4, -1).mean(1)  # Pearson r per channel
    assert loss(s, t).item() == pytest.approx((1 - r).mean().item(), rel=1e-4)
    adapted = PKDLoss(3, 4)
    out = adapted(torch.randn(2, 3, 5, 6, requires_grad=True), t)
    out.backward()
    assert adapted.adapt.weight.grad is not None


def test_crosskd_zero_when_student_path_equals_teacher_and_grads_skip_teacher_head():
    torch.manual_seed(0)
    hw = (64, 192)
    teacher = build_model("shuffledet_0.5x", image_size=hw).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        t_head, t_feat = teacher.forward_with_features(x)
    loss = CrossKDLoss(t_feat.shape[1], t_feat.shape[1], teacher.head.conv, teacher.anchors())
    same = loss(t_feat, t_head)
    kl_only = same["crosskd_cls"] - torch.nn.functional.binary_cross_entropy_with_logits(
        *(lambda c: (c, torch.sigmoid(c)))(t_head[:, 27:36].permute(0, 2, 3, 1).reshape(2, -1)))
    assert abs(kl_only.item()) < 1e-5 and same["crosskd_box"].item() < 1e-5
    student = build_model("shuffledet_0.25x", image_size=hw)
    s_head, s_feat = student.forward_with_features(x)
    kd = CrossKDLoss(s_feat.shape[1], t_feat.shape[1], teacher.head.conv, teacher.anchors())
    out = kd(s_feat, t_head)
    sum(out.values()).backward()
    assert set(out) == {"crosskd_cls", "crosskd_box"} and all(torch.isfinite(v) for v in out.values())
    assert kd.adapt.weight.grad is not None and student.backbone.stem[0].weight.grad is not None
    assert teacher.head.conv.weight.grad is None  # the teacher head is a frozen path, not trained
    assert student.head.conv.weight.grad is None  # the student's own head learns from ground truth only
    assert not any(n.startswith("_teacher") for n, _ in kd.named_parameters())
