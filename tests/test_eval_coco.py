"""COCO box AP (faster-coco-eval) equals pycocotools to 1e-6; compressdet's arrays -> COCO dicts;
``compressdet eval --format coco``; the metric follows the data."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from compressdet.cli import main
from compressdet.eval.coco_eval import COCO_KEYS, evaluate_coco, evaluate_coco_json, to_coco_dicts


def _fixture(seed: int = 0) -> tuple[dict, list[dict]]:
    """6 images, 3 classes, small (< 32^2), medium and large boxes, crowd regions, jittered and false dets."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(1, 7):
        images.append({"id": i, "file_name": f"{i}.png", "height": 400, "width": 600})
        for k in range(8):
            s = [12, 50, 150][k % 3]
            x, y = rng.uniform(0, 600 - 1.3 * s), rng.uniform(0, 400 - 1.3 * s)
            w, h = s * rng.uniform(0.6, 1.2), s * rng.uniform(0.6, 1.2)
            c = int(rng.integers(1, 4))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x, y, w, h], "area": w * h,
                         "iscrowd": int(k == 7)})
            for _ in range(2):
                j = rng.normal(0, s * 0.1, 4)
                dets.append({"image_id": i, "category_id": c if rng.random() > 0.2 else int(rng.integers(1, 4)),
                             "bbox": [x + j[0], y + j[1], w + j[2], h + j[3]], "score": float(rng.random())})
        dets.append({"image_id": i, "category_id": 1, "bbox": [1, 1, 30, 30], "score": 0.99})  # a false positive
    cats = [{"id": c, "name": n} for c, n in ((1, "car"), (2, "pedestrian"), (3, "cyclist"))]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def _pycocotools(gt: dict, dets: list[dict]) -> np.ndarray:
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO()
        g.dataset = copy.deepcopy(gt)
        g.createIndex()
        e = COCOeval(g, g.loadRes(copy.deepcopy(dets)), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.asarray(e.stats) * 100


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_pycocotools(seed):
    gt, dets = _fixture(seed)
    res = evaluate_coco_json(gt, dets)
    ref = _pycocotools(gt, dets)
    areas = [a["area"] for a in gt["annotations"]]
    assert min(areas) < 32 ** 2 < 96 ** 2 < max(areas)  # small, medium and large all present
    for k, v in zip(COCO_KEYS, ref):
        assert res[k] == pytest.approx(v, abs=1e-6), k
    assert res["primary"] == res["ap"] and res["metric"] == "coco" and 0 < res["ap"] < 100


def test_arrays_with_ignore_regions_equal_the_json_path():
    """load_box_ground_truth's shape: label -1 (KITTI DontCare) ignores detections of every class."""
    gt = {"a": {"boxes": np.array([[10, 10, 60, 50], [100, 100, 200, 220], [300, 50, 340, 90]], float),
                "labels": np.array([0, 1, -1]), "crowd": np.array([False, False, True])}}
    dets = {"a": {"boxes": np.array([[11, 10, 60, 52], [300, 50, 340, 90], [302, 52, 338, 88], [0, 0, 5, 5]]),
                  "scores": np.array([0.9, 0.8, 0.7, 0.1]), "labels": np.array([0, 0, 1, 1])}}
    g, d = to_coco_dicts(gt, {"a": (240, 400)}, dets, ["car", "pedestrian"])
    crowd = [a for a in g["annotations"] if a["iscrowd"]]
    assert sorted(a["category_id"] for a in crowd) == [1, 2]  # the ignore region, once per class
    res = evaluate_coco(gt, {"a": (240, 400)}, dets, ["car", "pedestrian"])
    assert res == evaluate_coco_json(g, d)
    ref = _pycocotools(g, d)
    assert res["ap"] == pytest.approx(ref[0], abs=1e-6)
    # the detections on the ignore region are no false positives: car AP 100, pedestrian 0 (missed) -> 50
    assert res["ap50"] == pytest.approx(50.0)


def test_eval_cli_coco(tmp_path, capsys):
    gt, dets = _fixture(0)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    assert main(["eval", "--format", "coco", "--gt", str(tmp_path / "gt.json"), "--det", str(tmp_path / "dets.json"),
                 "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "| AP (%) | AP50 (%) | AP75 (%) | APs (%) | APm (%) | APl (%) | AR100 (%) |" in out
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["ap"] == pytest.approx(evaluate_coco_json(gt, dets)["ap"]) and written["ap_unit"] == "percent"
    dets[3]["category_id"] = 9
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    assert main(["eval", "--format", "coco", "--gt", str(tmp_path / "gt.json"), "--det", str(tmp_path / "dets.json")]) == 2
    assert "dets.json: detection 3: category_id 9 is not in the categories" in capsys.readouterr().err


def test_metric_follows_the_data():
    from compressdet.errors import UserError
    from compressdet.eval.evaluator import resolve_metric
    from compressdet.recipe import DataConfig, EvalConfig

    synth, coco = DataConfig(), DataConfig(format="coco", root="x", classes=["a"])
    assert resolve_metric(synth) == "kitti" and resolve_metric(coco) == "coco"
    assert resolve_metric(synth, EvalConfig(metric="coco")) == "coco"
    with pytest.raises(UserError, match="eval.metric: kitti needs kitti/synth data"):
        resolve_metric(coco, EvalConfig(metric="kitti"))


def test_kitti_data_scored_with_coco_metric(tmp_path):
    """eval.metric: coco on SynthKITTI: same loop, COCO keys; KITTI numbers unchanged by default."""
    import torch

    from compressdet.eval.evaluator import DetectionEvaluator
    from compressdet.models import PostProcessor, build_model
    from compressdet.recipe import DataConfig, SynthConfig

    torch.manual_seed(0)
    cfg = DataConfig(image_size=(64, 192), synth=SynthConfig(num_images=10, size=(384, 128), cache_dir=str(tmp_path)),
                     max_val_images=2)
    model = build_model("shuffledet_0.25x", image_size=(64, 192)).eval()
    post = PostProcessor((64, 192))
    fn = lambda x: model(x)  # noqa: E731
    with torch.no_grad():
        k = DetectionEvaluator(cfg, post=post)(fn)
        c = DetectionEvaluator(cfg, post=post, metric="coco")(fn)
    assert k["metric"] == "kitti" and k["primary"] == k["map40"] and "ap50" not in k
    assert c["metric"] == "coco" and set(COCO_KEYS) <= set(c) and c["images"] == 2
