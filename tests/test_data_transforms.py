"""The seed's augmentation: flip involution, drift never cuts a box, boxes follow the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compressdet.data.transforms import (
    MEAN_BGR,
    AugmentParams,
    DetectionTransform,
    apply_geometry,
    denormalize,
    hflip,
    normalize,
    sample_params,
    to_original,
)
from compressdet.recipe import AugmentConfig

torch.set_num_threads(1)


def _scene(h=60, w=100, boxes=((10, 12, 30, 40), (50, 5, 90, 55))):
    """Black image with each box painted a distinct solid colour, so boxes can be recovered from pixels."""
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        img[:, y1:y2, x1:x2] = torch.tensor([60 + 60 * k, 200 - 50 * k, 255]).view(3, 1, 1)
    return img, torch.tensor(boxes, dtype=torch.float32)


def test_flip_twice_is_identity():
    img, boxes = _scene()
    i2, b2 = hflip(*hflip(img, boxes))
    assert torch.equal(i2, img) and torch.equal(b2, boxes)
    p = AugmentParams(flip=True)
    i1, b1 = apply_geometry(img, boxes, p, (60, 100))
    i2, b2 = apply_geometry(i1, b1, p, (60, 100))
    assert torch.equal(i2, img) and torch.allclose(b2, boxes)
    assert b1[0].tolist() == [70, 12, 90, 40]  # x -> W - x


@pytest.mark.parametrize("seed", range(40))
def test_drift_never_cuts_a_box(seed):
    rng = np.random.default_rng(seed)
    boxes = torch.tensor([[rng.uniform(0, 200), rng.uniform(0, 80), 0, 0]], dtype=torch.float32)
    boxes[:, 2:] = boxes[:, :2] + torch.tensor([20.0, 15.0])
    cfg = AugmentConfig(brightness=0, contrast=None, flip=0.0)
    p = sample_params(cfg, rng, boxes)
    assert -150 <= p.drift[0] <= 150 and -100 <= p.drift[1] <= 100
    img = torch.zeros(3, 120, 260)
    out, ob = apply_geometry(img, boxes, p, (120 - p.drift[1], 260 - p.drift[0]))  # no resize: same pixels
    assert (ob[:, :2] >= 0).all()
    assert torch.allclose(ob[:, 2:] - ob[:, :2], boxes[:, 2:] - boxes[:, :2])  # never clipped


@pytest.mark.parametrize("box", [(10, 12, 30, 40), (50, 5, 90, 55), (0, 0, 100, 60)])
def test_boxes_consistent_with_resized_image(box):
    img, boxes = _scene(boxes=(box,))
    p = AugmentParams(drift=(-7, 4), flip=True)
    out, ob = apply_geometry(img, boxes, p, (96, 160))
    m = out[0].float() > 30  # the painted box (R=60) against black, after drift, flip and resize
    ys, xs = torch.nonzero(m, as_tuple=True)
    got = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    assert torch.allclose(got, ob[0], atol=1.5), (got, ob[0])


def test_normalize_is_bgr_minus_mean_and_inverts():
    img = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2)
    x = normalize(img)
    assert torch.allclose(x[:, 0, 0], torch.tensor([30 - MEAN_BGR[0], 20 - MEAN_BGR[1], 10 - MEAN_BGR[2]]))
    assert torch.equal(denormalize(x), img)


def test_to_original_inverts_eval_transform():
    img, boxes = _scene(h=75, w=124)
    t = DetectionTransform((48, 160), None)
    x, b = t(img, boxes)
    assert x.shape == (3, 48, 160) and x.dtype == torch.float32
    assert torch.allclose(to_original(b, (48, 160), (75, 124)), boxes, atol=1e-4)


def test_photometric_ranges_and_switches():
    rng = np.random.default_rng(0)
    cfg = AugmentConfig()
    draws = [sample_params(cfg, rng, torch.zeros(0, 4)) for _ in range(300)]
    bs = np.array([d.brightness for d in draws])
    cs = np.array([d.contrast for d in draws])
    assert bs.min() >= -50 and bs.max() <= 50 and np.all(bs == np.round(bs)) and len(set(bs)) > 40
    assert cs.min() >= 0.5 and cs.max() <= 1.5
    assert 0.35 < np.mean([d.flip for d in draws]) < 0.65
    off = sample_params(AugmentConfig(enabled=False), rng, torch.zeros(0, 4))
    assert off == AugmentParams()
    none = sample_params(AugmentConfig(brightness=0, contrast=None, drift=None, flip=0), rng, torch.zeros(0, 4))
    assert none == AugmentParams()


def test_augmentation_is_a_function_of_the_rng_seed():
    img, boxes = _scene()
    t = DetectionTransform((64, 96), AugmentConfig())
    a = t(img, boxes, np.random.default_rng((1, 2, 3)))
    b = t(img, boxes, np.random.default_rng((1, 2, 3)))
    c = t(img, boxes, np.random.default_rng((1, 2, 4)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
