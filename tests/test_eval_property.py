"""Property tests: the vectorised evaluator equals the loop reference (1e-6) on random inputs."""

from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from compressdet.data.kitti import KittiObject  # noqa: E402
from compressdet.eval._reference import reference_evaluate_kitti  # noqa: E402
from compressdet.eval.kitti_eval import evaluate_kitti  # noqa: E402

GT_TYPES = ["Car", "Van", "Pedestrian", "Person_sitting", "Cyclist", "DontCare", "Truck"]
DET_TYPES = ["Car", "Pedestrian", "Cyclist", "Van"]
# heights on the level boundaries on purpose (25, 40, 24.9, 39.5)
coord = st.sampled_from([0.0, 10.0, 20.0, 35.5]) | st.floats(0, 120, allow_nan=False)
height = st.sampled_from([25.0, 40.0, 24.9, 39.5, 60.0]) | st.floats(5, 90, allow_nan=False)
width = st.floats(5, 90, allow_nan=False)


@st.composite
def box(draw):
    x, y = draw(coord), draw(coord)
    return (x, y, x + draw(width), y + draw(height))


@st.composite
def image(draw, with_alpha):
    gts = [KittiObject(type=draw(st.sampled_from(GT_TYPES)), bbox=draw(box()),
                       truncated=draw(st.sampled_from([0.0, 0.15, 0.2, 0.3, 0.5, 0.7])),
                       occluded=draw(st.integers(0, 3)), alpha=draw(st.floats(-3, 3)))
           for _ in range(draw(st.integers(0, 5)))]
    dets = []
    for _ in range(draw(st.integers(0, 6))):
        if gts and draw(st.booleans()):  # near a GT: matches happen
            g = draw(st.sampled_from(gts))
            j = draw(st.floats(-6, 6))
            b = (g.bbox[0] + j, g.bbox[1], g.bbox[2] + j, g.bbox[3] + draw(st.floats(-4, 4)))
            b = (b[0], b[1], b[2], max(b[1], b[3]))
        else:
            b = draw(box())
        score = draw(st.sampled_from([0.5, 0.9]) | st.floats(0, 1))
        dets.append(KittiObject(type=draw(st.sampled_from(DET_TYPES)), bbox=b, score=score,
                                alpha=draw(st.floats(-3, 3)) if with_alpha else -10.0))
    return gts, dets


@st.composite
def dataset(draw):
    with_alpha = draw(st.booleans())
    imgs = draw(st.lists(image(with_alpha), min_size=1, max_size=6))
    return ({f"{i:06d}": g for i, (g, _) in enumerate(imgs)}, {f"{i:06d}": d for i, (_, d) in enumerate(imgs)})


def _flat(res):
    return {(c, lvl, k): v for c in res["ap"] for lvl in res["ap"][c] for k, v in res["ap"][c][lvl].items()}


@settings(max_examples=150, deadline=None)
@given(dataset(), st.sampled_from(["official", "seed"]))
def test_vectorised_equals_reference(data, protocol):
    gt, dets = data
    a, b = evaluate_kitti(gt, dets, protocol=protocol), reference_evaluate_kitti(gt, dets, protocol=protocol)
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert abs(fa[k] - fb[k]) <= 1e-6, k
    assert abs(a["map11"] - b["map11"]) <= 1e-6 and abs(a["map40"] - b["map40"]) <= 1e-6
