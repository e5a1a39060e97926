"""Hand-computed cases, one per devkit rule, for compressdet.eval (KITTI 2D AP).

With one GT the devkit produces one threshold, stored at sample 0: AP11 = 100/11 * precision,
AP40 = 0. Most cases therefore read ``curves`` (precision/recall at the chosen thresholds).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from compressdet.data.kitti import KittiObject
from compressdet.errors import UserError
from compressdet.eval import evaluate_kitti, format_table, predictions_to_kitti
from compressdet.eval.kitti_eval import ap_from_precision, get_thresholds

P11 = 100 / 11


def G(t, box, trunc=0.0, occ=0, alpha=0.0):
    return KittiObject(type=t, bbox=tuple(map(float, box)), truncated=trunc, occluded=occ, alpha=alpha)


def D(t, box, score, alpha=-10.0):
    return KittiObject(type=t, bbox=tuple(map(float, box)), score=score, alpha=alpha)


def ev(gt, dets, **kw):
    if isinstance(gt, list):
        gt, dets = {"000000": gt}, {"000000": dets}
    return evaluate_kitti(gt, dets, return_curves=True, **kw)


def cur(res, cls="car", lvl="moderate"):
    return res["curves"][cls][lvl]


CAR = (0, 0, 100, 50)  # height 50: easy


def test_iou_strictly_above_class_threshold():
    assert ev([G("Car", CAR)], [D("Car", (0, 0, 70, 50), 0.9)])["ap"]["car"]["easy"]["ap11"] == 0  # IoU 0.70
    r = ev([G("Car", CAR)], [D("Car", (0, 0, 71, 50), 0.9)])  # IoU 0.71
    assert r["ap"]["car"]["easy"] == {"ap11": pytest.approx(P11), "ap40": 0.0}


def test_pedestrian_and_cyclist_use_iou_05():
    box, det = (0, 0, 30, 60), (0, 0, 18, 60)  # IoU 0.6
    assert ev([G("Pedestrian", box)], [D("Pedestrian", det, 0.9)])["ap"]["pedestrian"]["easy"]["ap11"] == pytest.approx(P11)
    assert ev([G("Cyclist", box)], [D("Cyclist", det, 0.9)])["ap"]["cyclist"]["easy"]["ap11"] == pytest.approx(P11)
    assert ev([G("Car", box)], [D("Car", det, 0.9)])["ap"]["car"]["easy"]["ap11"] == 0


def test_gt_height_equal_to_min_is_ignored_not_counted():
    # height 40 is not > 40: ignored for easy (its detection is neither TP nor FP), counted for moderate
    gt = [G("Car", (0, 0, 100, 40)), G("Car", (200, 0, 300, 50))]
    dets = [D("Car", (0, 0, 100, 40), 0.95), D("Car", (200, 0, 300, 50), 0.9)]
    r = ev(gt, dets)
    assert cur(r, lvl="easy")["precision"][0] == 1.0 and cur(r, lvl="easy")["recall"] == [1.0]
    assert len(cur(r, lvl="moderate")["thresholds"]) == 2


def test_occlusion_levels():
    gt = [G("Car", CAR, occ=1), G("Car", (200, 0, 300, 50))]
    dets = [D("Car", CAR, 0.95), D("Car", (200, 0, 300, 50), 0.9)]
    r = ev(gt, dets)
    assert cur(r, lvl="easy")["thresholds"] == [0.9] and cur(r, lvl="easy")["precision"][0] == 1.0
    assert cur(r, lvl="moderate")["thresholds"] == [0.95, 0.9]
    r = ev([G("Car", CAR, occ=3)], [D("Car", CAR, 0.9)])
    assert all(r["ap"]["car"][lvl]["ap11"] == 0 for lvl in ("easy", "moderate", "hard"))


def test_truncation_compares_less_or_equal():
    assert ev([G("Car", CAR, trunc=0.15)], [D("Car", CAR, 0.9)])["ap"]["car"]["easy"]["ap11"] == pytest.approx(P11)
    assert ev([G("Car", CAR, trunc=0.16)], [D("Car", CAR, 0.9)])["ap"]["car"]["easy"]["ap11"] == 0
    assert ev([G("Car", CAR, trunc=0.16)], [D("Car", CAR, 0.9)])["ap"]["car"]["moderate"]["ap11"] == pytest.approx(P11)


@pytest.mark.parametrize("cls,kitti,neighbour", [("car", "Car", "Van"), ("pedestrian", "Pedestrian", "Person_sitting")])
def test_neighbour_class_is_ignored(cls, kitti, neighbour):
    a, b = (0, 0, 40, 80), (200, 0, 240, 80)
    dets = [D(kitti, b, 0.95), D(kitti, a, 0.9)]  # the higher score sits on the neighbour
    r = ev([G(kitti, a), G(neighbour, b)], dets)
    assert cur(r, cls)["precision"][0] == 1.0  # absorbed: not a FP
    r = ev([G(kitti, a), G("Truck", b)], dets)
    assert cur(r, cls)["precision"][0] == 0.5  # a Truck is nobody's neighbour: FP


def test_dontcare_absorbs_by_intersection_over_detection_area():
    gt = [G("Car", CAR), G("DontCare", (300, 0, 700, 200))]
    inside = D("Car", (400, 50, 460, 100), 0.95)  # IoU with the region 0.04, but fully inside
    r = ev(gt, [inside, D("Car", CAR, 0.9)])
    assert cur(r, "car", "easy")["precision"][0] == 1.0
    half = D("Car", (670, 50, 730, 100), 0.95)  # half inside: 0.5 < 0.7 for car -> FP
    assert cur(ev(gt, [half, D("Car", CAR, 0.9)]), "car", "easy")["precision"][0] == 0.5
    ped_gt = [G("Pedestrian", (0, 0, 30, 60)), G("DontCare", (300, 0, 700, 200))]
    ped = D("Pedestrian", (676, 50, 716, 110), 0.95)  # 0.6 inside > 0.5 for pedestrian
    assert cur(ev(ped_gt, [ped, D("Pedestrian", (0, 0, 30, 60), 0.9)]), "pedestrian", "easy")["precision"][0] == 1.0


def test_short_detections_ignored_official_but_not_seed():
    gt = [G("Car", CAR)]
    dets = [D("Car", (500, 0, 560, 24.9), 0.95), D("Car", CAR, 0.9)]  # int(24.9) = 24 < 25
    assert cur(ev(gt, dets, protocol="official"))["precision"][0] == 1.0
    assert cur(ev(gt, dets, protocol="seed"))["precision"][0] == 0.5
    dets25 = [D("Car", (500, 0, 560, 25.0), 0.95), D("Car", CAR, 0.9)]  # 25 is not < 25: counts
    assert cur(ev(gt, dets25, protocol="official"))["precision"][0] == 0.5


def test_short_detection_of_other_class_absorbs_gt_official_quirk():
    # the devkit tests height before class: a 24 px pedestrian detection is an *ignored* detection in
    # the car evaluation, so it can take the 30 px car GT, which is then neither TP nor FN
    gt = [G("Car", (0, 0, 60, 30)), G("Car", (200, 0, 300, 50))]
    dets = [D("Pedestrian", (0, 3, 60, 27), 0.95), D("Car", (200, 0, 300, 50), 0.9)]
    assert cur(ev(gt, dets))["recall"] == [1.0]
    assert cur(ev(gt, dets, protocol="seed"))["recall"] == [0.5]


def test_greedy_order_pass2_takes_largest_iou_in_file_order():
    a, b = G("Car", (0, 0, 100, 50)), G("Car", (20, 0, 120, 50))
    d1 = D("Car", (10, 0, 110, 50), 0.9)   # IoU 0.818 with both
    d2 = D("Car", (0, 0, 80, 50), 0.95)    # IoU 0.8 with a, 0.5 with b
    r = ev([a, b], [d1, d2])
    # pass 1 (by score): a<-d2, b<-d1: thresholds [0.95, 0.9]; pass 2 at 0.9: a<-d1 (IoU), b none, d2 FP
    assert cur(r)["thresholds"] == [0.95, 0.9]
    assert cur(r)["precision"][:3] == [1.0, 0.5, 0.0] and cur(r)["recall"] == [0.5, 0.5]
    r = ev([b, a], [d1, d2])  # b first takes d1, then a takes d2
    assert cur(r)["precision"][:2] == [1.0, 1.0] and cur(r)["recall"] == [0.5, 1.0]


def test_threshold_selection_gives_41_samples_and_ap40_ap11():
    gt, dets = {}, {}
    for i in range(80):
        gt[f"{i:06d}"] = [G("Car", CAR)]
        dets[f"{i:06d}"] = [D("Car", CAR, 1.0 - i / 100)]
    r = evaluate_kitti(gt, dets, return_curves=True)
    assert len(r["curves"]["car"]["easy"]["thresholds"]) == 41
    assert r["ap"]["car"]["easy"] == {"ap11": pytest.approx(100.0), "ap40": pytest.approx(100.0)}
    # 40 GTs: 40 thresholds, sample 40 stays 0 -> AP40 39/40, AP11 10/11
    r = evaluate_kitti({k: gt[k] for k in list(gt)[:40]}, {k: dets[k] for k in list(gt)[:40]})
    assert r["ap"]["car"]["easy"] == {"ap11": pytest.approx(1000 / 11), "ap40": pytest.approx(97.5)}
    assert get_thresholds([0.9, 0.8], 2) == [0.9, 0.8]
    assert get_thresholds([0.1, 0.9, 0.5, 0.7], 80) == [0.9, 0.7, 0.1]  # 0.5: recall 3/80 is nearer 0.05 from above


def test_ap11_every_fourth_sample_ap40_samples_1_to_40():
    p = np.array([1.0] * 21 + [0.0] * 20)
    ap11, ap40 = ap_from_precision(p)
    assert ap11 == pytest.approx(600 / 11) and ap40 == pytest.approx(50.0)
    p = np.zeros(41)
    p[0] = 1.0
    assert ap_from_precision(p) == (pytest.approx(P11), 0.0)


def test_aos_when_alpha_given_and_not_when_missing():
    r = ev([G("Car", CAR, alpha=0.0)], [D("Car", CAR, 0.9, alpha=math.pi / 2)])
    assert r["aos"] and r["ap"]["car"]["easy"]["aos11"] == pytest.approx(P11 * 0.5)
    r = ev([G("Car", CAR)], [D("Car", CAR, 0.9, alpha=0.1), D("Car", (300, 0, 400, 50), 0.2, alpha=-10)])
    assert not r["aos"] and "aos11" not in r["ap"]["car"]["easy"]


def test_class_with_no_detections():
    r = ev([G("Car", CAR), G("Pedestrian", (200, 0, 230, 60))], [D("Car", CAR, 0.9)])
    assert r["evaluated"] == {"car": True, "pedestrian": False, "cyclist": False}
    assert r["ap"]["pedestrian"]["easy"] == {"ap11": 0.0, "ap40": 0.0}
    assert r["map11"] == pytest.approx(3 * P11 / 9)


def test_empty_and_missing_result_files(tmp_path):
    from compressdet.cli import main

    gt_dir, det_dir = tmp_path / "gt", tmp_path / "det"
    gt_dir.mkdir(), det_dir.mkdir()
    (gt_dir / "000001.txt").write_text("Car 0.00 0 -1.0 0 0 100 50 1 1 1 1 1 1 0\n")
    (gt_dir / "000002.txt").write_text("Pedestrian 0.00 0 -1.0 0 0 30 60 1 1 1 1 1 1 0\n")
    (det_dir / "000001.txt").write_text("Car -1 -1 -10 0 0 100 50 -1 -1 -1 -1000 -1000 -1000 -10 0.9\n")
    assert main(["eval", "--gt", str(gt_dir), "--det", str(det_dir)]) == 2  # 000002.txt missing
    (det_dir / "000002.txt").write_text("")
    out = tmp_path / "r.json"
    assert main(["eval", "--gt", str(gt_dir), "--det", str(det_dir), "--json", str(out)]) == 0
    import json

    res = json.loads(out.read_text())
    assert res["protocol"] == "official" and res["ap"]["car"]["easy"]["ap11"] == pytest.approx(P11)
    with pytest.raises(UserError, match="missing"):
        evaluate_kitti({"1": []}, {})


def _random_set(seed, n_img=30):
    rng = random.Random(seed)
    gt, dets = {}, {}
    for i in range(n_img):
        g = [G(rng.choice(["Car", "Pedestrian", "Cyclist", "Van", "DontCare"]),
               (x := rng.uniform(0, 900), y := rng.uniform(0, 200), x + rng.uniform(10, 150), y + rng.uniform(20, 120)),
               trunc=rng.choice([0, 0.2, 0.4]), occ=rng.randint(0, 2)) for _ in range(rng.randint(0, 5))]
        d = []
        for o in g:
            if o.type != "DontCare" and rng.random() < 0.7:
                t = "Car" if o.type == "Van" else o.type
                d.append(D(t, tuple(v + rng.uniform(-3, 3) for v in o.bbox), rng.random()))
        gt[f"{i:06d}"], dets[f"{i:06d}"] = g, d
    return gt, dets


def test_perfect_detections_give_100_and_none_give_0():
    gt, dets = {}, {}
    for i in range(120):
        cls = ("Car", "Pedestrian", "Cyclist")[i % 3]
        gt[f"{i:06d}"] = [G(cls, (0, 0, 40, 80)), G(cls, (100, 0, 140, 80))]
        dets[f"{i:06d}"] = [D(cls, (0, 0, 40, 80), 0.5 + i / 1000), D(cls, (100, 0, 140, 80), 0.4 + i / 1000)]
    r = evaluate_kitti(gt, dets)
    assert r["map11"] == pytest.approx(100.0) and r["map40"] == pytest.approx(100.0)
    r = evaluate_kitti(gt, {k: [] for k in gt})
    assert r["map11"] == 0.0 and r["map40"] == 0.0


def test_shuffling_image_order_changes_nothing():
    gt, dets = _random_set(1)
    keys = list(gt)
    random.Random(0).shuffle(keys)
    a = evaluate_kitti(gt, dets)
    b = evaluate_kitti({k: gt[k] for k in keys}, {k: dets[k] for k in reversed(keys)})
    assert a == b and a["map40"] > 0


def test_predictions_to_kitti_and_table():
    torch = pytest.importorskip("torch")
    pred = {"boxes": torch.tensor([[0.0, 0.0, 100.0, 50.0], [5, 5, 20, 40]]), "scores": torch.tensor([0.9, 0.3]),
            "labels": torch.tensor([0, 2])}
    objs = predictions_to_kitti(pred, ("car", "pedestrian", "cyclist"))
    assert [o.type for o in objs] == ["Car", "Cyclist"] and objs[0].bbox == (0.0, 0.0, 100.0, 50.0)
    assert objs[1].score == pytest.approx(0.3)
    with pytest.raises(UserError):
        predictions_to_kitti({**pred, "labels": torch.tensor([0, 3])}, ("car", "pedestrian", "cyclist"))
    r = ev([G("Car", CAR)], objs[:1])
    t = format_table(r, models="1x", flops="5.1 G", params="1.6 M", extra={"latency": "3 ms"})
    lines = t.splitlines()
    assert lines[0] == "| model | FLOPs | params | car E/M/H | ped E/M/H | cyc E/M/H | mAP | latency |"
    assert lines[2] == "| 1x | 5.1 G | 1.6 M | 0.0/0.0/0.0 | 0.0/0.0/0.0 | 0.0/0.0/0.0 | 0.0 | 3 ms |"
    assert "9.1/9.1/9.1" in format_table(r, metrics="ap11")


def test_table_from_stage_metrics_both_shapes():
    """Manifest metrics store AP per level as a number (train/prune) or {"ap40", "ap11"} (int8 stages)."""
    from compressdet.eval.table import result_from_ap40

    plain = {"car": {"easy": 64.1, "moderate": 47.1, "hard": 41.9}, "pedestrian": {"easy": 30.8, "moderate": 28.0,
             "hard": 27.1}}
    nested = {c: {lvl: {"ap40": v, "ap11": v / 2} for lvl, v in lv.items()} for c, lv in plain.items()}
    rows = format_table([result_from_ap40(plain), result_from_ap40(nested)], models=["a", "b"]).splitlines()
    assert rows[2] == "| a |  |  | 64.1/47.1/41.9 | 30.8/28.0/27.1 | - | 39.8 |"
    assert rows[3] == rows[2].replace("| a |", "| b |")
    assert "32.0/23.6/20.9" in format_table(result_from_ap40(nested), metrics="ap11")


def test_real_val_labels_perfect_detections():
    root = Path(__file__).resolve().parents[2] / "shared" / "kitti_real"
    if not (root / "training" / "label_2").is_dir():
        pytest.skip(f"real KITTI sample data not found at {root}")
    from compressdet.data.kitti import read_label_file, read_split

    ids = read_split(root / "ImageSets" / "real.txt")
    gt = {k: read_label_file(root / "training" / "label_2" / f"{k}.txt") for k in ids}
    dets = {k: [D(o.type, o.bbox, 0.5) for o in v if o.type in ("Car", "Pedestrian", "Cyclist")] for k, v in gt.items()}
    from compressdet.eval._reference import reference_evaluate_kitti

    a, b = evaluate_kitti(gt, dets), reference_evaluate_kitti(gt, dets)
    assert a == b
    # equal scores still give one threshold per recall step, all with precision 1
    assert a["ap"]["car"]["moderate"] == {"ap11": pytest.approx(100.0), "ap40": pytest.approx(100.0)}
