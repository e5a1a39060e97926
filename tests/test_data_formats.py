"""Data formats (issue #21): KITTI (the 29 real images) and SynthKITTI converted to COCO, YOLO and VOC
and read back with the same boxes; bad data named by file and line/annotation; --skip-bad counts;
class mapping; datasets of every format give the trainer the same items."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from compressdet.cli import main
from compressdet.data.convert import convert, open_source, read_all_splits
from compressdet.data.formats import ClassMapper, Issues, list_formats, read_records, source_config
from compressdet.errors import DataError

FORMATS = ("coco", "yolo", "voc")


@pytest.fixture(scope="module")
def kitti29(tmp_path_factory) -> Path:
    """The 29 real KITTI images as a KITTI root with a train (12) / val (17) split."""
    from conftest import KITTI_REAL

    if not (KITTI_REAL / "training" / "label_2").is_dir():
        pytest.skip(f"real KITTI sample data not found at {KITTI_REAL} (../shared/kitti_real beside the repo)")
    root = tmp_path_factory.mktemp("kitti29")
    for kind in ("image_2", "label_2"):
        shutil.copytree(KITTI_REAL / "training" / kind, root / "training" / kind)
    (root / "ImageSets").mkdir()
    shutil.copy(KITTI_REAL / "ImageSets" / "real_train.txt", root / "ImageSets" / "train.txt")
    shutil.copy(KITTI_REAL / "ImageSets" / "real_val.txt", root / "ImageSets" / "val.txt")
    return root


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from compressdet.data.synth import generate_synth
    from compressdet.recipe import SynthConfig

    return generate_synth(tmp_path_factory.mktemp("s") / "synth", SynthConfig(num_images=8, size=(384, 128), seed=0))


def _by_id(data: dict) -> dict:
    return {(s, r.image_id): r for s, recs in data.items() for r in recs}


def _same_boxes(ref: dict, got: dict, fmt: str, tol: float = 1e-3) -> int:
    assert set(got) == set(ref)
    n = 0
    for key, a in ref.items():
        b = got[key]
        assert b.size == a.size, key
        keep_a = ~a.crowd if fmt == "yolo" else np.ones(len(a), bool)  # YOLO has no ignore regions
        if fmt == "voc":  # KITTI DontCare is no VOC class: its regions are left out
            keep_a = ~(a.crowd & (np.asarray(a.names, object) == "DontCare")) if len(a) else keep_a
        assert len(b) == int(keep_a.sum()), (fmt, key)
        np.testing.assert_allclose(b.boxes, a.boxes[keep_a], atol=tol, err_msg=f"{fmt} {key}")
        assert b.names == [x for x, k in zip(a.names, keep_a) if k]
        assert (b.crowd == a.crowd[keep_a]).all()
        n += len(b)
    return n


def test_registry_lists_every_format():
    assert set(list_formats()) == {"kitti", "synth", "coco", "yolo", "voc"}


@pytest.mark.parametrize("src", ["kitti29", "synth"])
def test_round_trip_through_every_format(src, request, tmp_path):
    root = request.getfixturevalue(src)
    ref_data, cats = read_all_splits(open_source(root, "kitti"), Issues())
    ref = _by_id(ref_data)
    assert sum(len(r) for r in ref.values()) > 0
    if src == "kitti29":
        assert len(ref) == 29 and "DontCare" in cats
    for fmt in FORMATS:
        rep = convert(root, src_format="synth" if src == "synth" else "kitti", dst_format=fmt, out=tmp_path / fmt)
        assert rep["images"] == len(ref)
        got, _ = read_all_splits(open_source(tmp_path / fmt, fmt), Issues())
        assert _same_boxes(ref, _by_id(got), fmt) == rep["boxes"]
        if fmt == "yolo":
            assert rep["dropped_ignore_regions"] == sum(int(r.crowd.sum()) for r in ref.values())
        # and back to KITTI: same boxes again (DontCare comes back from COCO iscrowd / VOC difficult)
        convert(tmp_path / fmt, src_format=fmt, dst_format="kitti", out=tmp_path / f"{fmt}_kitti")
        back, _ = read_all_splits(open_source(tmp_path / f"{fmt}_kitti", "kitti"), Issues())
        _same_boxes(ref, _by_id(back), fmt)


def test_convert_cli_drops_dontcare_with_a_count(kitti29, tmp_path, capsys):
    assert main(["data", "convert", str(kitti29), "--from", "kitti", "--to", "coco", "--out", str(tmp_path / "c"),
                 "--drop-ignore"]) == 0
    out = capsys.readouterr().out
    assert "29 images" in out and "dropped 55 ignore regions" in out
    gt = json.loads((tmp_path / "c" / "annotations" / "val.json").read_text())
    assert not any(a["iscrowd"] for a in gt["annotations"])
    assert "DontCare" not in {c["name"] for c in gt["categories"]}
    # without --drop-ignore, DontCare is a crowd (ignore) annotation
    assert main(["data", "convert", str(kitti29), "--from", "kitti", "--to", "coco", "--out", str(tmp_path / "d")]) == 0
    gt = json.loads((tmp_path / "d" / "annotations" / "val.json").read_text())
    dc = {c["id"] for c in gt["categories"] if c["name"] == "DontCare"}
    assert {a["iscrowd"] for a in gt["annotations"] if a["category_id"] in dc} == {1}
    assert main(["data", "convert", str(kitti29), "--from", "kitti", "--to", "coco", "--out", str(tmp_path / "d")]) == 2


def test_stats_cli_writes_png(kitti29, tmp_path, capsys):
    png, js = tmp_path / "s.png", tmp_path / "s.json"
    assert main(["data", "stats", str(kitti29), "--format", "kitti", "--png", str(png), "--json", str(js)]) == 0
    assert "train: 12 images" in capsys.readouterr().out
    from PIL import Image

    assert Image.open(png).size[0] > 100
    st = json.loads(js.read_text())
    assert st["splits"]["val"]["images"] == 17 and st["splits"]["train"]["boxes_per_class"]["Car"] > 0


# ---------------------------------------------------------------------------------------------- bad data
def _tiny_coco(root: Path, anns: list[dict], *, images=None, n_img: int = 2) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(1, n_img + 1):
        Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(root / "images" / f"im{i}.png")
    imgs = images or [{"id": i, "file_name": f"im{i}.png", "width": 40, "height": 30} for i in range(1, n_img + 1)]
    (root / "annotations").mkdir(exist_ok=True)
    gt = {"images": imgs, "annotations": anns,
          "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}]}
    (root / "annotations" / "val.json").write_text(json.dumps(gt))
    return root


def _ann(i, image_id, cat, bbox, **kw):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": 0, **kw}


GOOD = [_ann(1, 1, 1, [2, 3, 10, 8]), _ann(2, 2, 2, [0, 0, 40, 30])]


@pytest.mark.parametrize("bad, match", [
    (_ann(7, 1, 1, [35, 3, 10, 8]), r"annotation id 7: box xyxy \(35, 3, 45, 11\) is outside the 40x30 image"),
    (_ann(8, 1, 1, [5, 3, -2, 8]), r"annotation id 8: box xyxy .* has non-positive size"),
    (_ann(9, 2, 5, [5, 3, 2, 8]), r"annotation id 9: category_id 5 is not in 'categories'"),
    (_ann(10, 3, 1, [5, 3, 2, 8]), r"annotation id 10: image_id 3 is not in 'images'"),
])
def test_coco_bad_annotation_is_named_then_skipped(tmp_path, bad, match):
    root = _tiny_coco(tmp_path, GOOD + [bad])
    cfg = source_config("coco", root)
    with pytest.raises(DataError, match=match) as e:
        read_records(cfg, "val")
    assert str(root / "annotations" / "val.json") in str(e.value) and "\n" not in str(e.value)
    issues = Issues(skip_bad=True, logger=lambda m: None)
    recs, cats, _ = read_records(cfg, "val", issues=issues)
    assert sum(issues.counts.values()) == 1 and sum(len(r) for r in recs) == 2 and cats == ["car", "person"]


def test_coco_unreadable_image(tmp_path):
    root = _tiny_coco(tmp_path, GOOD)
    (root / "images" / "im2.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"val.json: image id 2: cannot read image .*im2.png"):
        read_records(source_config("coco", root), "val")
    recs, _, _ = read_records(source_config("coco", root, skip_bad=True), "val")
    assert [r.image_id for r in recs] == ["im1"]


def test_skip_bad_cli_counts(tmp_path, capsys):
    root = _tiny_coco(tmp_path / "c", GOOD + [_ann(7, 1, 1, [35, 3, 10, 8]), _ann(9, 2, 5, [5, 3, 2, 8])])
    assert main(["data", "convert", str(root), "--from", "coco", "--to", "voc", "--out", str(tmp_path / "v")]) == 2
    assert "annotation id 7" in capsys.readouterr().err
    assert main(["data", "convert", str(root), "--from", "coco", "--to", "voc", "--out", str(tmp_path / "v"),
                 "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped (--skip-bad): 1 bad boxes, 1 unknown category ids" in out and "2 boxes" in out


def _tiny_yolo(root: Path, labels: dict[str, str], images=("a", "b")) -> Path:
    from PIL import Image

    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for n in images:
        Image.new("RGB", (50, 20)).save(root / "images" / "val" / f"{n}.jpg")
    for n, text in labels.items():
        (root / "labels" / "val" / f"{n}.txt").write_text(text)
    (root / "data.yaml").write_text("path: .\nval: images/val\nnames:\n  0: car\n  1: person\n")
    return root


@pytest.mark.parametrize("labels, match", [
    ({"a": "0 0.5 0.5 0.2 0.2\n1 0.9 0.5 0.4 0.2\n"}, r"a.txt:2: box xyxy .* is outside the 50x20 image"),
    ({"a": "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0 0.2\n"}, r"a.txt:2: box .* has non-positive size"),
    ({"a": "3 0.5 0.5 0.2 0.2\n"}, r"a.txt:1: class id 3 is not in 'names'"),
    ({"a": "0 0.5 0.5 0.2\n"}, r"a.txt:1: expected 5 fields"),
    ({"a": "0 0.5 0.5 0.2 0.2\n", "c": "0 0.5 0.5 0.2 0.2\n"}, r"c.txt: label file without an image"),
])
def test_yolo_bad_lines_are_named(tmp_path, labels, match):
    root = _tiny_yolo(tmp_path, labels)
    with pytest.raises(DataError, match=match):
        read_records(source_config("yolo", root), "val")
    issues = Issues(skip_bad=True, logger=lambda m: None)
    read_records(source_config("yolo", root), "val", issues=issues)
    assert sum(issues.counts.values()) == 1


def test_yolo_reads_dataset_yaml_and_names(tmp_path):
    root = _tiny_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.5\n1 0.25 0.5 0.1 0.1\n"})
    recs, cats, _ = read_records(source_config("yolo", root), "val")
    assert cats == ["car", "person"] and [r.image_id for r in recs] == ["a", "b"]
    np.testing.assert_allclose(recs[0].boxes, [[20, 5, 30, 15], [10, 9, 15, 11]], atol=1e-9)
    assert recs[0].names == ["car", "person"] and len(recs[1]) == 0


def test_voc_and_kitti_label_without_image(kitti29, tmp_path):
    root = tmp_path / "k"
    shutil.copytree(kitti29, root)
    (root / "training" / "image_2" / "000003.png").unlink()
    with pytest.raises(DataError, match=r"label_2/000003.txt: label file without an image"):
        read_records(source_config("kitti", root), "train" if "000003" in (root / "ImageSets/train.txt").read_text()
                     else "val")
    convert(kitti29, src_format="kitti", dst_format="voc", out=tmp_path / "v", splits=["val"])
    xml = sorted((tmp_path / "v" / "Annotations").glob("*.xml"))[0]
    xml.write_text(xml.read_text().replace("<xmax>", "<xmax>-", 1))
    with pytest.raises(DataError, match=rf"{xml.name}: object 1: box .* has non-positive size"):
        read_records(source_config("voc", tmp_path / "v"), "val")


def test_voc_split_file_errors_name_the_file_line(tmp_path):
    """A bad id is named at its line in the split file, blank lines counted; recipe check's category scan
    reads the file the same way."""
    from compressdet.data.formats import voc

    main_dir = tmp_path / "ImageSets" / "Main"
    main_dir.mkdir(parents=True)
    (main_dir / "val.txt").write_text("a\n\nb\n../c\n")
    cfg = source_config("voc", tmp_path)
    for read in (lambda: read_records(cfg, "val"), lambda: voc.category_names(cfg, "val")):
        with pytest.raises(DataError, match=r"val.txt:4: expected an image id .*got '../c'"):
            read()
    (main_dir / "val.txt").write_bytes(b"a\xff\n")
    with pytest.raises(DataError, match=r"val.txt: cannot read the split file \(UnicodeDecodeError"):
        voc.category_names(cfg, "val")


# ---------------------------------------------------------------------------------------------- classes
def test_class_mapping_subset_rename_merge(tmp_path):
    cats = ["car", "van", "person", "bike"]
    m = ClassMapper(["vehicle", "pedestrian"], {"car": "vehicle", "van": "vehicle", "person": "pedestrian"}, cats, "x.json")
    assert [m(c) for c in cats] == [0, 0, 1, None]
    with pytest.raises(DataError, match=r"data.class_map: 'vna' is not a category of x.json \(did you mean 'van'"):
        ClassMapper(["vehicle"], {"car": "vehicle", "vna": "vehicle"}, cats, "x.json")
    with pytest.raises(DataError, match=r"^data.classes: 'tram' matches no category of x.json"):
        ClassMapper(["car", "tram"], None, cats, "x.json")
    assert ClassMapper(["car", "pedestrian", "cyclist"])("Car") == 0  # KITTI types, case-insensitive


def test_class_names_match_case_insensitively_and_keep_the_recipe_spelling():
    from compressdet.recipe import DataConfig

    cats = ["Car", "Van", "Person"]
    # keys, targets and categories in other cases; the model's names stay as data.classes spells them
    m = ClassMapper(["Vehicle", "person"], {"CAR": "vehicle", "van": "VEHICLE", "PERSON": "person"}, cats, "x.json")
    assert [m(c) for c in cats] == [0, 0, 1] and m.classes == ["Vehicle", "person"] and m("truck") is None
    assert [ClassMapper(["car", "PERSON"], None, cats, "x.json")(c) for c in cats] == [0, None, 1]
    cfg = DataConfig(format="coco", root="x", classes=["Vehicle"], class_map={"car": "vehicle"})
    assert cfg.classes == ["Vehicle"] and cfg.class_map == {"car": "vehicle"}
    with pytest.raises(Exception, match=r"class_map keys \['Car', 'car'\] are the same category"):
        DataConfig(format="coco", root="x", classes=["a", "b"], class_map={"car": "a", "Car": "b"})
    with pytest.raises(Exception, match="classes must be distinct"):
        DataConfig(format="coco", root="x", classes=["car", "Car"])


def test_coco_dataset_items_follow_class_map(tmp_path):
    from compressdet.data import build_dataset
    from compressdet.recipe import DataConfig

    root = _tiny_coco(tmp_path, GOOD + [_ann(3, 1, 2, [20, 5, 5, 20], iscrowd=1)])
    cfg = DataConfig(format="coco", root=str(root), coco={"val": "annotations/val.json"}, image_size=(32, 48),
                     classes=["vehicle", "human"], class_map={"car": "vehicle", "person": "human"})
    ds = build_dataset(cfg, "val", train=False)
    x, t = ds[0]
    assert x.shape == (3, 32, 48) and t["labels"].tolist() == [0] and t["orig_size"] == (30, 40)
    np.testing.assert_allclose(t["boxes"].numpy(), [[2 * 48 / 40, 3 * 32 / 30, 12 * 48 / 40, 11 * 32 / 30]], rtol=1e-5)
    assert ds[1][1]["labels"].tolist() == [1]  # the crowd box is no training target
    from compressdet.data.records import load_box_ground_truth

    gt, sizes = load_box_ground_truth(cfg, "val")
    assert gt["im1"]["labels"].tolist() == [0, 1] and gt["im1"]["crowd"].tolist() == [False, True]
    with pytest.raises(Exception, match="class_map targets"):
        DataConfig(format="coco", root=str(root), classes=["a"], class_map={"car": "b"})
    with pytest.raises(Exception, match="class_map is for coco/yolo/voc"):
        DataConfig(format="synth", class_map={"Car": "car"})


def test_example_recipes_check(tmp_path, capsys):
    for name in ("coco_example.yaml", "yolo_example.yaml"):
        assert main(["recipe", "check", str(Path(__file__).resolve().parents[1] / "recipes" / name),
                     "--runs-root", str(tmp_path)]) == 0, capsys.readouterr()


def test_every_format_gives_the_trainer_the_same_items(kitti29, tmp_path):
    """KittiDataset on the real images == RecordDataset on their COCO/YOLO/VOC conversions (boxes, labels)."""
    import torch

    from compressdet.data import build_dataset
    from compressdet.recipe import DataConfig

    ref = build_dataset(DataConfig(format="kitti", root=str(kitti29), image_size=(64, 192), max_val_images=6),
                        "val", train=False)
    for fmt in FORMATS:
        convert(kitti29, src_format="kitti", dst_format=fmt, out=tmp_path / fmt, splits=["val"])
        where = {"yolo": {"yolo": str(tmp_path / fmt / "data.yaml")}}.get(fmt, {"root": str(tmp_path / fmt)})
        ds = build_dataset(DataConfig(format=fmt, image_size=(64, 192), max_val_images=6,
                                      classes=["car", "pedestrian", "cyclist"], **where), "val", train=False)
        assert ds.ids == ref.ids
        for i in range(len(ds)):
            (xa, ta), (xb, tb) = ref[i], ds[i]
            assert torch.equal(xa, xb) and ta["orig_size"] == tb["orig_size"]
            assert ta["labels"].tolist() == tb["labels"].tolist(), (fmt, ta["image_id"])
            torch.testing.assert_close(ta["boxes"], tb["boxes"], atol=1e-3, rtol=0)
