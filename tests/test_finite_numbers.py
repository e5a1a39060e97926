"""Numbers read from user files are finite where they must be (issue #44): NaN / Infinity in a detections
JSON, a COCO annotation, a KITTI label or a YOLO line is one DataError line naming the file and the item."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from compressdet.errors import DataError

GT = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "iscrowd": 0}],
      "categories": [{"id": 1, "name": "car"}]}


def _det(**kw):
    return {"image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "score": 0.9, **kw}


def test_eval_coco_nan_score_is_exit_2_naming_file_and_detection(tmp_path):
    gt, det = tmp_path / "gt.json", tmp_path / "dets.json"
    gt.write_text(json.dumps(GT))
    det.write_text(json.dumps([_det(), _det(score=float("nan"))]))  # Python writes the literal NaN
    assert "NaN" in det.read_text()
    r = subprocess.run([sys.executable, "-m", "compressdet", "eval", "--format", "coco", "--gt", str(gt),
                        "--det", str(det), "--json", str(tmp_path / "res.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {det}: detection 1: score must be a finite number, got nan"], r.stderr
    assert not (tmp_path / "res.json").exists()


@pytest.mark.parametrize("det, match", [
    (_det(score=float("inf")), r"detection 0: score must be a finite number, got inf"),
    (_det(score="0.9"), r"detection 0: score must be a finite number, got '0.9'"),
    (_det(bbox=[2, float("nan"), 10, 8]), r"detection 0: bbox \[2, nan, 10, 8\] is not finite"),
    (_det(bbox=[2, 3, float("-inf"), 8]), r"detection 0: bbox .* is not finite"),
    (_det(bbox=[2, 3, "10", 8]), r"detection 0: bbox must be \[x, y, w, h\] \(4 numbers\)"),
    (_det(image_id=[1]), r"detection 0: 'image_id' must be an int, got \[1\]"),
])
def test_detections_must_be_finite(tmp_path, det, match):
    from compressdet.eval import load_coco_pair

    gt, path = tmp_path / "gt.json", tmp_path / "dets.json"
    gt.write_text(json.dumps(GT))
    path.write_text(json.dumps([det]))
    with pytest.raises(DataError, match=match) as e:
        load_coco_pair(gt, path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_ground_truth_boxes_must_be_finite(tmp_path):
    from compressdet.eval import load_coco_pair

    gt, path = tmp_path / "gt.json", tmp_path / "dets.json"
    bad = json.loads(json.dumps(GT))
    bad["annotations"][0]["bbox"][2] = float("inf")
    gt.write_text(json.dumps(bad))
    path.write_text(json.dumps([_det()]))
    with pytest.raises(DataError, match=r"gt.json: annotation id 1: bbox \[2, 3, inf, 8\] is not finite"):
        load_coco_pair(gt, path)


def test_kitti_label_infinity_is_named():
    from compressdet.data.kitti import parse_label_lines

    good = "Car 0.00 0 -1.57 2.00 3.00 20.00 25.00 1.50 1.60 3.90 1.00 1.50 20.00 -1.57"
    assert len(parse_label_lines([good])) == 1
    for tok in ("inf", "-Infinity", "nan", "1e999"):
        with pytest.raises(DataError, match=rf"lab.txt:2: field 'y1': expected a finite number, got '{tok}'"):
            parse_label_lines([good, good.replace(" 3.00 ", f" {tok} ", 1)], "lab.txt")


def test_coco_annotation_and_yolo_line_nan_are_named(tmp_path):
    from PIL import Image

    from compressdet.data.formats import read_records, source_config

    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(root / "images" / "a.png")
    (root / "annotations").mkdir()
    gt = json.loads(json.dumps(GT))
    gt["annotations"][0]["bbox"] = [2, 3, float("nan"), 8]
    (root / "annotations" / "val.json").write_text(json.dumps(gt))
    with pytest.raises(DataError, match=r"val.json: annotation id 1: box .* is not finite"):
        read_records(source_config("coco", root), "val")

    y = tmp_path / "yolo"
    (y / "images" / "val").mkdir(parents=True)
    (y / "labels" / "val").mkdir(parents=True)
    Image.new("RGB", (50, 20)).save(y / "images" / "val" / "a.png")
    (y / "labels" / "val" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 nan 0.2 0.2\n")
    (y / "data.yaml").write_text("path: .\nval: images/val\nnames:\n  0: car\n")
    with pytest.raises(DataError, match=r"a.txt:2: box .* is not finite"):
        read_records(source_config("yolo", y), "val")


@pytest.mark.parametrize("ann_id, match", [(None, r"annotations\[1\]: 'id' must be an int, got None"),
                                           ([], r"annotations\[1\]: 'id' must be an int, got \[\]"),
                                           (1, r"annotation id 1: duplicate annotation id \(annotations\[0\] has it")])
def test_ground_truth_annotation_ids_index_the_file(tmp_path, ann_id, match):
    """COCO indexes annotations by id: a missing, unhashable or repeated id is named, not a crash or a silent
    overwrite (found by fuzzing with another seed)."""
    from compressdet.eval import load_coco_pair

    gt = {**GT, "annotations": [*GT["annotations"], {**GT["annotations"][0], "id": ann_id}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "d.json").write_text(json.dumps([_det()]))
    with pytest.raises(DataError, match=match):
        load_coco_pair(tmp_path / "gt.json", tmp_path / "d.json")


@pytest.mark.parametrize("raw", ["²", "--3", "٣", " 3x"])
def test_coco_id_text_that_int_refuses_is_named_not_a_crash(tmp_path, raw):
    """A string id counts as an id only in ASCII digits: ``int('²')`` and ``int('--3')`` raise ValueError
    (``str.isdigit`` took them), ``'٣'`` would be silently read as 3."""
    from compressdet.data.formats import read_records, source_config

    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    gt = {**GT, "categories": [{"id": raw, "name": "car"}]}
    (tmp_path / "annotations" / "val.json").write_text(json.dumps(gt))
    with pytest.raises(DataError, match=r"val.json: category .*: expected 'id' \(int\) and 'name'"):
        read_records(source_config("coco", tmp_path), "val")


@pytest.mark.parametrize("key", ["²", "٣"])
def test_yolo_names_key_that_int_refuses_is_named_not_a_crash(tmp_path, key):
    from compressdet.data.formats.yolo import load_dataset_yaml

    (tmp_path / "data.yaml").write_text(f"path: .\nval: images\nnames:\n  '{key}': car\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"'names' keys must be class ids 0..N-1"):
        load_dataset_yaml(tmp_path / "data.yaml")
