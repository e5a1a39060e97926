"""Images are decoded whole before they are accepted (issue #44): a truncated JPEG or a corrupt PNG is one
DataError line naming the file, in every reader, converter and predict; a convert that stops on bad data
writes nothing, and with --skip-bad every written image has its label and split entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compressdet.cli import main
from compressdet.data.images import admit_image, read_image
from compressdet.errors import DataError


def _noise(h: int = 30, w: int = 40, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _save(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _coco_with_truncated_jpeg(root: Path) -> Path:
    """A COCO val split of three JPEGs with one box each; im2.jpg is cut short (its header still reads)."""
    images, anns = [], []
    for i in (1, 2, 3):
        _save(root / "images" / f"im{i}.jpg", _noise(seed=i))
        images.append({"id": i, "file_name": f"im{i}.jpg", "width": 40, "height": 30})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [2, 3, 10, 8], "iscrowd": 0})
    _truncate(root / "images" / "im2.jpg")
    (root / "annotations").mkdir()
    (root / "annotations" / "val.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "Car"}]}))
    return root


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image_is_refused_with_one_clean_line(tmp_path, suffix):
    good = _save(tmp_path / f"good{suffix}", _noise())
    assert admit_image(good) == (30, 40)
    assert tuple(read_image(good).shape) == (3, 30, 40)
    bad = _truncate(_save(tmp_path / f"cut{suffix}", _noise()))
    from PIL import Image

    with Image.open(bad) as im:  # the header alone still looks fine: that is what slipped through
        assert im.size == (40, 30)
    for fn in (admit_image, read_image):
        with pytest.raises(DataError) as e:
            fn(bad)
        msg = str(e.value)
        assert msg.startswith(f"{bad}: cannot decode image: ") and "truncated" in msg, msg
        assert "\n" not in msg and ".cpp" not in msg and "csrc" not in msg and len(msg) < 250


def test_garbage_and_missing_files_are_named(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(DataError, match=r"junk.png: cannot decode image: not a PNG, JPEG"):
        admit_image(junk)
    with pytest.raises(DataError, match=r"^ann.json: image id 4: image .*nope.jpg not found$"):
        admit_image(tmp_path / "nope.jpg", "ann.json: image id 4")


def test_pixels_equal_the_previous_decoder(tmp_path):
    """PNG decoding is lossless: the same pixels torchvision.io gave before (training data unchanged)."""
    import warnings

    from torchvision.io import decode_image, read_file

    p = _save(tmp_path / "a.png", _noise(17, 23))
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its io in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        assert (read_image(p) == decode_image(read_file(str(p)))).all()


def test_convert_truncated_jpeg_stops_and_writes_nothing(tmp_path):
    src = _coco_with_truncated_jpeg(tmp_path / "coco")
    out = tmp_path / "kitti"
    r = subprocess.run([sys.executable, "-m", "compressdet", "data", "convert", str(src), "--from", "coco",
                        "--to", "kitti", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    line = _one_error_line(r.stderr)
    assert f"cannot read image {src / 'images' / 'im2.jpg'}: image file is truncated" in line
    assert "val.json: image id 2" in line and "internal error" not in r.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["coco"]


@pytest.mark.parametrize("to", ["coco", "yolo", "voc", "kitti"])
def test_convert_with_skip_bad_writes_only_whole_items(tmp_path, capsys, to):
    src = _coco_with_truncated_jpeg(tmp_path / "coco")
    out = tmp_path / f"out_{to}"
    assert main(["data", "convert", str(src), "--from", "coco", "--to", to, "--out", str(out)]) == 2
    assert "im2.jpg" in _one_error_line(capsys.readouterr().err) and not out.exists()
    assert main(["data", "convert", str(src), "--from", "coco", "--to", to, "--out", str(out), "--skip-bad"]) == 0
    assert "skipped (--skip-bad): 1 unreadable images" in capsys.readouterr().out
    from compressdet.data.convert import open_source, read_all_splits
    from compressdet.data.formats import Issues

    data, _ = read_all_splits(open_source(out, to), Issues(False))  # reads back strictly: every image decodes
    recs = data["val"]
    assert len(recs) == 2 and all(len(r) == 1 for r in recs)
    images = [p for p in out.rglob("*") if p.suffix in (".jpg", ".png")]
    assert len(images) == 2  # the truncated image was not copied on


def test_stats_refuses_a_truncated_image(tmp_path, capsys):
    src = _coco_with_truncated_jpeg(tmp_path / "coco")
    png = tmp_path / "stats.png"
    assert main(["data", "stats", str(src), "--format", "coco", "--png", str(png)]) == 2
    assert "im2.jpg: image file is truncated" in _one_error_line(capsys.readouterr().err)
    assert not png.exists()


def test_predict_on_a_corrupt_png_names_it(tmp_path):
    bad = _truncate(_save(tmp_path / "frame.png", _noise(64, 96)), 0.5)
    out = tmp_path / "pred"
    r = subprocess.run([sys.executable, "-m", "compressdet", "predict", str(bad), "--model",
                        "asset:shuffledet_0.25x_imitated_synthkitti", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    line = _one_error_line(r.stderr)
    assert line == f"error: {bad}: cannot decode image: image file is truncated", line


def test_admission_ignores_a_global_pil_switch_that_pads_truncated_files(tmp_path, monkeypatch):
    from PIL import ImageFile

    bad = _truncate(_save(tmp_path / "cut.jpg", _noise()))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # another library set it
    with pytest.raises(DataError, match="truncated"):
        admit_image(bad)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # and it is left as it was
