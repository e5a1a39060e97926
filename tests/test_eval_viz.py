"""Visualisation: arrays and figures of the right shape that actually changed pixels."""

from __future__ import annotations

import numpy as np
import pytest

from compressdet.data.kitti import KittiObject
from compressdet.errors import UserError
from compressdet.eval import evaluate_kitti
from compressdet.eval.viz import draw_detections, draw_mask, gt_level, imitation_mask_for_boxes, plot_pr_curves


def test_draw_detections_draws_in_class_colours():
    img = np.zeros((60, 120, 3), np.uint8)
    gt = [KittiObject(type="Car", bbox=(10, 10, 50, 55))]
    det = [KittiObject(type="Pedestrian", bbox=(60, 15, 100, 58), score=0.8)]
    out = draw_detections(img, gt, det)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert tuple(out[30, 10]) == (230, 60, 50)  # car GT left edge
    assert tuple(out[40, 61]) == (40, 170, 70)  # pedestrian detection edge
    assert not img.any()  # input untouched
    with pytest.raises(UserError):
        draw_detections(np.zeros((4, 4), np.uint8), gt, det)
    assert gt_level(gt[0]) == "easy" and gt_level(KittiObject(type="Car", bbox=(0, 0, 9, 40))) == "moderate"


def test_draw_mask_and_imitation_mask():
    torch = pytest.importorskip("torch")
    from compressdet.models.anchors import generate_anchors

    h, w = 64, 192
    mask = imitation_mask_for_boxes(torch.tensor([[60.0, 20.0, 110.0, 50.0]]), generate_anchors((h, w)), (4, 12))
    assert mask.shape == (4, 12) and mask.dtype == torch.bool and 0 < int(mask.sum()) < 48
    img = np.full((h, w, 3), 128, np.uint8)
    out = draw_mask(img, mask)
    assert out.shape == img.shape
    rows, cols = np.nonzero(mask.numpy())
    assert (out[rows[0] * 16 + 8, cols[0] * 16 + 8] != 128).any()  # masked cell coloured
    off = np.argwhere(~mask.numpy())[0]
    assert (out[off[0] * 16 + 8, off[1] * 16 + 8] == 128).all()  # the rest untouched


def test_plot_pr_curves_returns_figure():
    gt = {"0": [KittiObject(type="Car", bbox=(0, 0, 100, 50))]}
    dets = {"0": [KittiObject(type="Car", bbox=(0, 0, 100, 50), score=0.9)]}
    fig = plot_pr_curves(evaluate_kitti(gt, dets, return_curves=True))
    assert len(fig.axes) == 3
    with pytest.raises(UserError, match="return_curves"):
        plot_pr_curves(evaluate_kitti(gt, dets))
