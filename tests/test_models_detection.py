"""Anchors, box coding, head split and post-processing against hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from compressdet.models import BoxCoder, ModelError, PostProcessor, generate_anchors, safe_exp, split_head_output
from compressdet.models.anchors import SEED_ANCHOR_SHAPES
from compressdet.models.postprocess import scores_and_labels

torch.set_num_threads(1)


def test_anchors_at_the_seed_size_follow_method_md():
    a = generate_anchors((384, 1248))
    assert a.shape == (16848, 4) and a.dtype == torch.float32
    # index (h*78 + w)*9 + b; centres x_k = k*1248/79, y_k = k*384/25 (k from 1)
    torch.testing.assert_close(a[0], torch.tensor([1248 / 79, 384 / 25, 36.0, 37.0]))
    torch.testing.assert_close(a[(5 * 78 + 7) * 9 + 4], torch.tensor([8 * 1248 / 79, 6 * 384 / 25, 38.0, 90.0]))
    torch.testing.assert_close(a[-1], torch.tensor([78 * 1248 / 79, 24 * 384 / 25, 72.0, 43.0]))
    shapes = a[:9, 2:].tolist()
    assert shapes == [list(s) for s in SEED_ANCHOR_SHAPES]
    assert shapes == [[36, 37], [366, 174], [115, 59], [162, 87], [38, 90], [258, 173], [224, 108], [78, 170],
                      [72, 43]]


def test_anchors_at_a_small_size_by_hand():
    # 32 x 48: grid 2 x 3; x_k = k*48/4, y_k = k*32/3; shapes scaled by 48/1248 and 32/384
    a = generate_anchors((32, 48))
    xs, ys = [12.0, 24.0, 36.0], [32 / 3, 64 / 3]
    sw, sh = 48 / 1248, 32 / 384
    expected = torch.tensor([[xs[w], ys[h], bw * sw, bh * sh]
                             for h in range(2) for w in range(3) for (bw, bh) in SEED_ANCHOR_SHAPES])
    torch.testing.assert_close(a, expected)
    b = generate_anchors((192, 624))  # half size: centres and shapes halve
    assert b.shape == (12 * 39 * 9, 4)
    torch.testing.assert_close(b[:9, 2:], generate_anchors((384, 1248))[:9, 2:] / 2)


def test_anchors_reject_sizes_not_divisible_by_16():
    with pytest.raises(ModelError, match="multiples of 16"):
        generate_anchors((100, 1248))


def test_safe_exp():
    x = torch.tensor([-3.0, 0.0, 1.0, 2.0, 50.0, 1e4])
    y = safe_exp(x)
    torch.testing.assert_close(y[:3], torch.exp(x[:3]))
    torch.testing.assert_close(y[3:], math.e * x[3:])
    assert torch.isfinite(y).all()


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    anchors = generate_anchors((64, 192))
    deltas = torch.rand(anchors.shape[0], 4, generator=g) - 0.5  # |dw| < 1: exp branch is exact
    boxes = BoxCoder().decode(deltas, anchors)
    torch.testing.assert_close(BoxCoder.encode(boxes, anchors), deltas, rtol=1e-4, atol=1e-5)
    # and the other way: boxes -> deltas -> boxes
    gt = torch.tensor([[100.0, 50.0, 40.0, 30.0], [20.0, 30.0, 10.0, 60.0]])
    a = torch.tensor([[90.0, 55.0, 30.0, 25.0], [25.0, 25.0, 12.0, 50.0]])  # size ratios below e: exact
    torch.testing.assert_close(BoxCoder().decode(BoxCoder.encode(gt, a), a), gt)
    # beyond e the size is linear (safe_exp), so a round trip shrinks it instead of overflowing
    big = BoxCoder().decode(BoxCoder.encode(gt, anchors[:2]), anchors[:2])
    assert (big[:, 2:] <= gt[:, 2:] + 1e-4).all()
    # targets of METHOD.md section 2 by hand
    d = BoxCoder.encode(gt[:1], torch.tensor([[90.0, 55.0, 20.0, 60.0]]))
    torch.testing.assert_close(d, torch.tensor([[0.5, -5 / 60, math.log(2.0), math.log(0.5)]]))


def test_decode_clips_to_the_image():
    coder = BoxCoder((64, 192))
    anchors = torch.tensor([[5.0, 5.0, 20.0, 20.0], [100.0, 30.0, 10.0, 10.0]])
    out = coder.decode(torch.zeros(2, 4), anchors)
    # first box xyxy (-5,-5,15,15) -> (0,0,15,15): cx,cy = 7.5, w,h = 15
    torch.testing.assert_close(out, torch.tensor([[7.5, 7.5, 15.0, 15.0], [100.0, 30.0, 10.0, 10.0]]))
    xyxy = coder.decode_xyxy(torch.tensor([[0.0, 0.0, 3.0, 0.0]]), torch.tensor([[180.0, 30.0, 40.0, 10.0]]))
    # w = 40 * e * 3, clipped at W - 1 = 191
    assert xyxy[0, 2].item() == 191.0 and xyxy[0, 0].item() == pytest.approx(180 - 20 * 3 * math.e)


def _compose_head(cls, conf, deltas, grid):
    """The inverse of split_head_output, written from the documented channel layout."""
    hg, wg = grid
    n = cls.shape[0]
    out = torch.zeros(n, 72, hg, wg)
    for i in range(hg * wg * 9):
        cell, b = divmod(i, 9)
        h, w = divmod(cell, wg)
        for c in range(3):
            out[:, b * 3 + c, h, w] = cls[:, i, c]
        out[:, 27 + b, h, w] = conf[:, i]
        for k in range(4):
            out[:, 36 + b * 4 + k, h, w] = deltas[:, i, k]
    return out


def test_split_head_output_layout():
    g = torch.Generator().manual_seed(1)
    grid = (2, 3)
    a = grid[0] * grid[1] * 9
    cls, conf, deltas = torch.randn(2, a, 3, generator=g), torch.randn(2, a, generator=g), torch.randn(2, a, 4,
                                                                                                        generator=g)
    out = _compose_head(cls, conf, deltas, grid)
    c2, f2, d2 = split_head_output(out)
    assert torch.equal(c2, cls) and torch.equal(f2, conf) and torch.equal(d2, deltas)
    c3, f3, d3 = split_head_output(out.to(memory_format=torch.channels_last))
    assert torch.equal(c3, cls) and torch.equal(f3, conf) and torch.equal(d3, deltas)
    with pytest.raises(ValueError, match="72"):
        split_head_output(torch.zeros(1, 70, 2, 3))


def test_score_is_max_over_classes_of_prob_times_confidence():
    cls = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]]])
    conf = torch.tensor([[0.5, -2.0]])
    scores, labels = scores_and_labels(cls, conf)
    expected = torch.softmax(cls, -1) * torch.sigmoid(conf)[..., None]
    torch.testing.assert_close(scores, expected.max(-1).values)
    assert labels.tolist() == [[0, 1]]


SIZE = (64, 192)  # grid 4 x 12


def _head_with(dets: list[tuple[int, int, float]], *, grid=(4, 12), deltas=None) -> torch.Tensor:
    """A head tensor where anchor i has class c with confidence logit z; all others score ~0."""
    a = grid[0] * grid[1] * 9
    cls = torch.zeros(1, a, 3)
    conf = torch.full((1, a), -30.0)
    for i, c, z in dets:
        cls[0, i, c] = 20.0
        conf[0, i] = z
    d = torch.zeros(1, a, 4) if deltas is None else deltas
    return _compose_head(cls, conf, d, grid)


def test_nms_keeps_the_expected_boxes():
    anchors = generate_anchors(SIZE)
    cell = (1 * 12 + 4) * 9  # anchors of cell (1, 4)
    # b=0 (36x37) and b=8 (72x43) share a centre: scaled IoU = (36*37)/(72*43) ~ 0.43 > 0.4
    # b=4 (38x90): IoU with b=0 is (36*37)/(38*90) ~ 0.39 < 0.4 -> kept
    # another class at the same place as b=0 is not suppressed (per-class NMS)
    far = (3 * 12 + 10) * 9 + 0
    out = _head_with([(cell + 0, 0, 3.0), (cell + 8, 0, 2.0), (cell + 4, 0, 1.0), (cell + 1, 1, 2.5),
                      (far, 0, 0.0)])
    pp = PostProcessor(SIZE, score_thresh=0.05)
    det = pp(out)[0]
    kept = {tuple(b.tolist()) for b in det["boxes"]}
    coder = BoxCoder(SIZE)

    def box(i):
        return tuple(coder.decode_xyxy(torch.zeros(1, 4), anchors[i:i + 1])[0].tolist())

    assert kept == {box(cell + 0), box(cell + 4), box(cell + 1), box(far)}
    assert det["scores"].tolist() == sorted(det["scores"].tolist(), reverse=True)
    assert det["labels"].tolist() == [0, 1, 0, 0]
    torch.testing.assert_close(det["scores"][0], torch.sigmoid(torch.tensor(3.0)), rtol=1e-5, atol=1e-6)
    # the same case with a looser IoU keeps b=8 too
    assert len(PostProcessor(SIZE, score_thresh=0.05, nms_thresh=0.5)(out)[0]["boxes"]) == 5


def test_topk_per_class_limit_threshold_and_rescaling():
    out = _head_with([((h * 12 + w) * 9, 0, 2.0 - 0.01 * (h * 12 + w)) for h in range(4) for w in range(12)])
    # the seed's defaults: 64 candidates, no score threshold
    det = PostProcessor(SIZE)(out)[0]
    assert len(det["boxes"]) <= 64
    assert (det["labels"] == 0).sum() <= 50
    det = PostProcessor(SIZE, topk_candidates=5)(out)[0]
    assert len(det["boxes"]) == 5
    det = PostProcessor(SIZE, detections_per_class=3, score_thresh=0.1)(out)[0]
    assert len(det["boxes"]) == 3 and (det["labels"] == 0).all()
    # boxes scaled to the original image size (H, W)
    pp = PostProcessor(SIZE, topk_candidates=5)
    small = pp(out)[0]["boxes"]
    big = pp(out, orig_sizes=[(128, 576)])[0]["boxes"]
    torch.testing.assert_close(big, small * torch.tensor([3.0, 2.0, 3.0, 2.0]))
    big_t = pp(out, orig_sizes=torch.tensor([[128, 576]]))[0]["boxes"]
    torch.testing.assert_close(big_t, big)


def test_postprocessor_batch_and_errors():
    out = torch.cat([_head_with([(0, 2, 1.0)]), _head_with([(9, 1, 1.0)])])
    dets = PostProcessor(SIZE, score_thresh=0.3)(out)
    assert [d["labels"].tolist() for d in dets] == [[2], [1]]
    with pytest.raises(ValueError, match="anchors"):
        PostProcessor((128, 192))(out)
    with pytest.raises(ValueError, match="orig_sizes"):
        PostProcessor(SIZE)(out, orig_sizes=[(1, 1)])


def test_postprocessor_from_recipe_config():
    from compressdet.recipe import PostprocessConfig

    cfg = PostprocessConfig()
    pp = PostProcessor.from_config(SIZE, cfg)
    assert (pp.score_thresh, pp.nms_thresh, pp.topk_candidates, pp.detections_per_class) == (0.0, 0.4, 64, 50)


@pytest.mark.parametrize("strict", [False, True])
def test_traceable_batched_nms_equals_torchvision_then_threshold(strict):
    """The inlined class-offset NMS keeps exactly what batched_nms + the threshold keep (both graphs use it)."""
    from torchvision.ops import batched_nms

    from compressdet.models.postprocess import traceable_batched_nms

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=g) * 30], 1)
    scores = torch.rand(200, generator=g)
    scores[:10] = 0.5  # ties at the threshold: strict drops them, >= keeps them
    labels = torch.randint(0, 3, (200,), generator=g)
    b, s, lab = traceable_batched_nms(boxes, scores, labels, 0.4, 0.5, strict=strict)
    keep = batched_nms(boxes, scores, labels, 0.4)
    keep = keep[scores[keep] > 0.5] if strict else keep[scores[keep] >= 0.5]
    assert 0 < len(keep) < 200
    assert torch.equal(b, boxes[keep]) and torch.equal(s, scores[keep]) and torch.equal(lab, labels[keep])
    assert bool((s[:-1] >= s[1:]).all())
    assert strict or bool((s == 0.5).any())
