"""KITTI reader on the real sample data (../shared/kitti_real) and on hand-made files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from compressdet.data.kitti import (
    KittiObject,
    difficulty,
    image_size,
    read_image,
    read_label_file,
    read_split,
    train_label,
)
from compressdet.errors import DataError

KITTI = Path(__file__).resolve().parents[2] / "shared" / "kitti_real"
needs_kitti = pytest.mark.skipif(not KITTI.is_dir(), reason=f"real KITTI sample not found at {KITTI} (../shared)")


@needs_kitti
def test_parse_all_7481_label_files_fast():
    files = sorted((KITTI / "training" / "label_2_all").glob("*.txt"))
    assert len(files) == 7481
    t0 = time.perf_counter()
    counts: dict[str, int] = {}
    for f in files:
        for o in read_label_file(f):
            counts[o.type] = counts.get(o.type, 0) + 1
    assert time.perf_counter() - t0 < 30  # generous: 2 shared cores
    # SOURCE.md: the class counts are exactly KITTI's
    assert counts["Car"] == 28742 and counts["Pedestrian"] == 4487 and counts["Cyclist"] == 1627
    assert counts["Van"] == 2914 and counts["Person_sitting"] == 222


@needs_kitti
def test_real_image_label_pairs_decode_and_boxes_fit():
    ids = read_split(KITTI / "ImageSets" / "real.txt")
    assert len(ids) == 29
    for i in ids[:29]:
        h, w = image_size(KITTI / "training" / "image_2" / f"{i}.png")
        objs = read_label_file(KITTI / "training" / "label_2" / f"{i}.txt")
        for o in objs:
            assert 0 <= o.bbox[0] <= o.bbox[2] <= w and 0 <= o.bbox[1] <= o.bbox[3] <= h
    img = read_image(KITTI / "training" / "image_2" / f"{ids[0]}.png")  # one full decode is enough
    assert img.dtype == torch.uint8 and img.shape[0] == 3
    assert tuple(img.shape[1:]) == image_size(KITTI / "training" / "image_2" / f"{ids[0]}.png")


@needs_kitti
def test_splits_are_the_standard_ones():
    assert len(read_split(KITTI / "ImageSets" / "train.txt")) == 3712
    assert len(read_split(KITTI / "ImageSets" / "val.txt")) == 3769


def test_missing_and_corrupt_image_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="000123.png: image not found"):
        read_image(tmp_path / "000123.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="bad.png: cannot decode"):
        read_image(bad)
    with pytest.raises(DataError, match="bad.png"):
        image_size(bad)


def test_class_mapping_drops_what_the_seed_dropped():
    classes = ["car", "pedestrian", "cyclist"]
    got = {t: train_label(KittiObject(t, (0, 0, 1, 1)), classes)
           for t in ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc", "DontCare")}
    assert got == {"Car": 0, "Van": None, "Truck": None, "Pedestrian": 1, "Person_sitting": None, "Cyclist": 2,
                   "Tram": None, "Misc": None, "DontCare": None}
    assert train_label(KittiObject("Car", (0, 0, 1, 1)), ["pedestrian"]) is None


def test_difficulty_levels_match_method_section_5():
    assert difficulty(KittiObject("Car", (0, 0, 10, 40.5), truncated=0.15, occluded=0)) == 0
    assert difficulty(KittiObject("Car", (0, 0, 10, 40), truncated=0.0, occluded=0)) == 1  # devkit: height > min
    assert difficulty(KittiObject("Car", (0, 0, 10, 30), truncated=0.3, occluded=1)) == 1
    assert difficulty(KittiObject("Car", (0, 0, 10, 30), truncated=0.5, occluded=2)) == 2
    assert difficulty(KittiObject("Car", (0, 0, 10, 24), truncated=0.0, occluded=0)) is None
    assert difficulty(KittiObject("Car", (0, 0, 10, 30), truncated=0.0, occluded=3)) is None


def test_bad_label_line_names_file_line_field(tmp_path):
    p = tmp_path / "000001.txt"
    p.write_text("Car 0.00 0 -1.5 1 2 3 4 1 1 1 1 1 1 0\nCar 0.00 x -1.5 1 2 3 4 1 1 1 1 1 1 0\n")
    with pytest.raises(DataError, match=r"000001.txt:2: field 'occluded'"):
        read_label_file(p)


def test_a_corrupt_image_is_a_data_error_after_ultralytics_patched_pil(tmp_path):
    """Importing Ultralytics replaces ``PIL.Image.open`` with a wrapper that pip-installs pi-heif on a file PIL
    cannot identify (ImportError offline: CI found this when a yolo test ran first in the same worker). The
    admission path still says DataError and never asks for an install; building a yolo model undoes the patch."""
    pytest.importorskip("ultralytics")
    from PIL import Image

    from compressdet.data.images import read_image

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    own = Image.open
    import ultralytics.utils.patches as patches  # noqa: F401 - applies its patch, as `import ultralytics` does

    try:
        Image.open = patches.image_open  # patched, whatever imported ultralytics earlier in this process
        with pytest.raises(DataError, match="bad.png: cannot decode image: not a PNG"):
            read_image(bad)
        with pytest.raises(DataError, match="bad.png"):
            image_size(bad)
        from compressdet.models.yolo import _ultralytics

        _ultralytics()
        assert Image.open is patches._image_open
    finally:
        Image.open = own
