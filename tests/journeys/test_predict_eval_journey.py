"""Journeys: a model's own class names through predict (every cheap backend) and predict -> eval, run as a
user types them (the compressdet CLI in a subprocess, in a temp dir), checked on the files that come out.

Issue #39: a model with classes [vehicle, traffic light] failed in predict on every backend; predict's
COCO ids did not line up with a ground truth and `eval --format coco` scored 40 perfect detections 0.00.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

CLASSES = ["vehicle", "traffic light"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def cli(*args, cwd, ok=True):
    """``compressdet ARGS`` in a fresh process; asserts exit 0 (or returns the result to check a refusal)."""
    r = subprocess.run([sys.executable, "-m", "compressdet", *map(str, args)], cwd=cwd, env=ENV, capture_output=True,
                       text=True, timeout=300)
    if ok:
        assert r.returncode == 0, f"compressdet {' '.join(map(str, args))}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def _images(folder: Path, n: int = 4) -> list[Path]:
    """Small PNGs (noise and bright boxes), different sizes so ids mixed up would show."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    out = []
    for i in range(n):
        h, w = 96 + 8 * i, 256
        a = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        a[20:60, 30 + 20 * i:110 + 20 * i] = 230
        Image.fromarray(a).save(folder / f"img_{i}.png")
        out.append(folder / f"img_{i}.png")
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny 2-class ShuffleDet file (classes in its meta) exported to ONNX and OpenVINO IR by the CLI."""
    import torch

    from compressdet.models import build_model, save_model

    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    save_model(build_model("shuffledet_0.25x", image_size=(64, 160), num_classes=2), d / "m.pt",
               meta={"classes": CLASSES, "image_size": [64, 160]})
    formats = ["--onnx"]
    try:
        import openvino  # noqa: F401

        formats.append("--openvino")
    except ImportError:
        pass
    cli("export", d / "m.pt", *formats, "--out", d / "exp", cwd=d)
    _images(d / "imgs")
    return d


def _png_colours(path: Path) -> set[tuple[int, int, int]]:
    from PIL import Image

    a = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    return {tuple(int(v) for v in c) for c in np.unique(a, axis=0)}


def test_custom_class_names_on_every_backend(model_dir, tmp_path):
    """PNGs, KITTI txt and COCO JSON carry the model's own names on torch, ort and openvino (an IR alone,
    without its ONNX: the classes travel in its rt_info); the KITTI protocol refuses them in one line."""
    from compressdet.eval.viz import class_colour

    imgs = model_dir / "imgs"
    out = tmp_path / "torch"
    cli("predict", imgs, "--model", model_dir / "m.pt", "--out", out, "--save-txt", "kitti", "--score-threshold",
        "0.05", cwd=tmp_path)
    types = {ln.split()[0] for p in (out / "labels").glob("*.txt") for ln in p.read_text().splitlines()}
    assert types and types <= {"vehicle", "traffic_light"}, types  # spaces become underscores in a KITTI type
    colours = set().union(*(_png_colours(p) for p in out.glob("*.png")))
    assert {class_colour(t, CLASSES) for t in types} <= colours  # each class drawn in its own colour
    assert class_colour("vehicle", CLASSES) != class_colour("traffic_light", CLASSES)

    cli("predict", imgs, "--model", model_dir / "exp" / "m.onnx", "--out", tmp_path / "ort", "--save-txt", "coco",
        "--no-images", "--score-threshold", "0.05", cwd=tmp_path)
    coco = json.loads((tmp_path / "ort" / "detections.coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == CLASSES and coco["annotations"]

    if (model_dir / "exp" / "m.xml").is_file():
        alone = tmp_path / "ir"
        alone.mkdir()
        for suffix in (".xml", ".bin"):
            shutil.copy(model_dir / "exp" / f"m{suffix}", alone / f"m{suffix}")
        cli("predict", imgs, "--model", alone / "m.xml", "--out", tmp_path / "ov", "--save-txt", "kitti", "--no-images",
            "--score-threshold", "0.05", cwd=tmp_path)
        ov_types = {ln.split()[0] for p in (tmp_path / "ov" / "labels").glob("*.txt") for ln in p.read_text().splitlines()}
        assert ov_types and ov_types <= {"vehicle", "traffic_light"}

    gt = tmp_path / "gt_labels"
    gt.mkdir()
    for p in (out / "labels").glob("*.txt"):
        (gt / p.name).write_text("")
    r = cli("eval", "--gt", gt, "--det", out / "labels", cwd=tmp_path, ok=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "is not a KITTI class" in r.stderr and "--format coco" in r.stderr


def _pycocotools_ap(gt: Path, results: list) -> float:
    import contextlib
    import io

    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO(str(gt))
        ev = COCOeval(g, g.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]) * 100.0


def test_predict_coco_gt_then_eval_equals_pycocotools(model_dir, tmp_path):
    """--coco-gt writes that file's ids (images by file name, categories by name: ids numbered elsewhere);
    eval --format coco on them equals pycocotools on the same files; predict without a GT writes its own
    ids, which eval lines up by name to the same AP."""
    imgs = sorted((model_dir / "imgs").glob("*.png"))
    sizes = {p.name: _size(p) for p in imgs}
    skeleton = {"images": [{"id": 100 + 7 * k, "file_name": f"val/{p.name}", "height": sizes[p.name][0],
                            "width": sizes[p.name][1]} for k, p in enumerate(reversed(imgs))],
                "categories": [{"id": 7, "name": "person"}, {"id": 3, "name": "Traffic Light"},
                               {"id": 12, "name": "vehicle"}],
                "annotations": []}
    (tmp_path / "skeleton.json").write_text(json.dumps(skeleton))
    out = tmp_path / "with_gt"
    cli("predict", model_dir / "imgs", "--model", model_dir / "m.pt", "--out", out, "--save-txt", "coco",
        "--coco-gt", tmp_path / "skeleton.json", "--no-images", "--score-threshold", "0.05", cwd=tmp_path)
    results = json.loads((out / "detections.results.json").read_text())
    assert results and {d["category_id"] for d in results} <= {3, 12}
    assert {d["image_id"] for d in results} <= {im["id"] for im in skeleton["images"]}
    # a ground truth made from half of the detections (shifted a little), plus objects nothing found
    anns = []
    for i, d in enumerate(sorted(results, key=lambda d: -d["score"])[::2]):
        x, y, w, h = d["bbox"]
        anns.append({"id": i + 1, "image_id": d["image_id"], "category_id": d["category_id"],
                     "bbox": [x + 2.0, y + 1.0, w, h], "area": w * h, "iscrowd": 0})
    anns.append({"id": len(anns) + 1, "image_id": 100, "category_id": 7, "bbox": [1, 1, 30, 30], "area": 900,
                 "iscrowd": 0})
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({**skeleton, "annotations": anns}))
    cli("eval", "--format", "coco", "--gt", gt, "--det", out / "detections.coco.json", "--json", tmp_path / "ev.json",
        cwd=tmp_path)
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["ap_unit"] == "percent"
    ref = _pycocotools_ap(gt, results)
    assert 0.0 < ev["ap"] < 100.0 and ev["ap"] == pytest.approx(ref, abs=1e-4), (ev["ap"], ref)

    own = tmp_path / "own_ids"
    cli("predict", model_dir / "imgs", "--model", model_dir / "m.pt", "--out", own, "--save-txt", "coco",
        "--no-images", "--score-threshold", "0.05", cwd=tmp_path)
    mine = json.loads((own / "detections.coco.json").read_text())
    assert {c["id"]: c["name"] for c in mine["categories"]} == {1: "vehicle", 2: "traffic light"}
    r = cli("eval", "--format", "coco", "--gt", gt, "--det", own / "detections.coco.json", "--json",
            tmp_path / "ev2.json", cwd=tmp_path)
    assert json.loads((tmp_path / "ev2.json").read_text())["ap"] == pytest.approx(ev["ap"], abs=1e-9)
    assert "AP (%)" in r.stdout and "ids rewritten" in r.stderr


def _size(p: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(p) as im:
        return im.height, im.width


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_eval_coco_matches_names_or_refuses(tmp_path, capsys):
    """The issue's case: 40 perfect pedestrian detections under predict's own ids score 100 (matched by
    file name and category name); a category id that means another name, or a category the ground truth
    lacks, is refused with one line naming both."""
    images = [{"id": 11 + k, "file_name": f"val/{k:06d}.png", "height": 200, "width": 400} for k in range(4)]
    boxes = [[20.0 + 35 * j, 30.0 + 10 * k, 30.0, 60.0] for k in range(4) for j in range(10)]
    gt = _write(tmp_path / "gt.json", {
        "images": images, "categories": [{"id": 1, "name": "Pedestrian"}],
        "annotations": [{"id": n + 1, "image_id": 11 + n // 10, "category_id": 1, "bbox": b, "area": b[2] * b[3],
                         "iscrowd": 0} for n, b in enumerate(boxes)]})
    # what predict writes without a ground truth: images 1..N in input order, categories by class index
    own_images = [{"id": k + 1, "file_name": f"/data/images/val/{3 - k:06d}.png", "height": 200, "width": 400}
                  for k in range(4)]
    dets = {"images": own_images,
            "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "pedestrian"}, {"id": 3, "name": "cyclist"}],
            "annotations": [{"id": n + 1, "image_id": 4 - n // 10, "category_id": 2, "bbox": b, "score": 0.9}
                            for n, b in enumerate(boxes)]}
    det = _write(tmp_path / "det.json", dets)
    cli("eval", "--format", "coco", "--gt", gt, "--det", det, "--json", tmp_path / "ev.json", cwd=tmp_path)
    assert json.loads((tmp_path / "ev.json").read_text())["ap"] == pytest.approx(100.0)

    # the refusals, in this process (the same main() the command runs): one line each, exit 2
    from compressdet.cli import main

    def refused(det_obj, name):
        assert main(["eval", "--format", "coco", "--gt", str(gt), "--det", str(_write(tmp_path / name, det_obj))]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), err
        return err[0]

    # category id 1 is 'car' in the detections but 'Pedestrian' in the ground truth, which has no car
    msg = refused({**dets, "annotations": [{**a, "category_id": 1} for a in dets["annotations"]]}, "bad.json")
    assert "category_id 1 is 'car' in the detections but 'Pedestrian' in" in msg
    # a category the ground truth does not have at all
    msg = refused({**dets, "categories": [*dets["categories"], {"id": 9, "name": "tram"}],
                   "annotations": [{**dets["annotations"][0], "category_id": 9}]}, "other.json")
    assert "category 'tram' (id 9) is not a category of" in msg
    # a plain result list (no names): its ids must exist in the ground truth
    msg = refused([{"image_id": 11, "category_id": 2, "bbox": boxes[0], "score": 0.9}], "plain.json")
    assert "category_id 2 is not in the categories of" in msg
    # an image that is not in the ground truth
    msg = refused({**dets, "images": [{**own_images[0], "file_name": "elsewhere.png"}, *own_images[1:]]}, "stray.json")
    assert "image 'elsewhere.png' (id 1) is not in" in msg


def test_real_kitti_predict_eval_in_both_formats(kitti_real, tmp_path):
    """The shipped student on the 29 real KITTI images, scored by KITTI's protocol and by COCO AP: both are
    computed (near zero: it was trained on synthetic images), on the same detections."""
    from compressdet.data.kitti import read_label_file

    images, labels = kitti_real / "training" / "image_2", kitti_real / "training" / "label_2"
    model = "asset:shuffledet_0.25x_imitated_synthkitti"
    cli("predict", images, "--model", model, "--out", tmp_path / "k", "--save-txt", "kitti", "--no-images",
        cwd=tmp_path)
    cli("eval", "--gt", labels, "--det", tmp_path / "k" / "labels", "--json", tmp_path / "kitti.json", cwd=tmp_path)
    kitti = json.loads((tmp_path / "kitti.json").read_text())
    assert kitti["num_images"] == 29 and 0.0 <= kitti["map40"] <= 100.0 and kitti["ap_unit"] == "percent"

    # a COCO ground truth of the same labels (DontCare as ignore regions, other types left out)
    cats = {"Car": 1, "Pedestrian": 2, "Cyclist": 3}
    gt = {"images": [], "annotations": [], "categories": [{"id": v, "name": k} for k, v in cats.items()]}
    for n, p in enumerate(sorted(images.glob("*.png")), 1):
        h, w = _size(p)
        gt["images"].append({"id": n, "file_name": p.name, "height": h, "width": w})
        for o in read_label_file(labels / f"{p.stem}.txt"):
            x1, y1, x2, y2 = o.bbox
            for c in ([cats[o.type]] if o.type in cats else cats.values() if o.type == "DontCare" else []):
                gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": n, "category_id": c,
                                          "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                          "iscrowd": int(o.type == "DontCare")})
    gt_path = _write(tmp_path / "gt.json", gt)
    cli("predict", images, "--model", model, "--out", tmp_path / "c", "--save-txt", "coco", "--coco-gt", gt_path,
        "--no-images", cwd=tmp_path)
    cli("eval", "--format", "coco", "--gt", gt_path, "--det", tmp_path / "c" / "detections.coco.json", "--json",
        tmp_path / "coco.json", cwd=tmp_path)
    coco = json.loads((tmp_path / "coco.json").read_text())
    results = json.loads((tmp_path / "c" / "detections.results.json").read_text())
    assert coco["images"] == 29 and coco["ap"] is not None and 0.0 <= coco["ap"] <= 100.0
    assert coco["ap"] == pytest.approx(_pycocotools_ap(gt_path, results), abs=1e-4)
    # the same detections in both formats: per image and class, the same boxes (KITTI txt has 2 decimals)
    names = {im["id"]: Path(im["file_name"]).stem for im in gt["images"]}
    by_cat = {v: k for k, v in cats.items()}
    from_coco = sorted((names[d["image_id"]], by_cat[d["category_id"]], round(d["bbox"][0], 2), round(d["bbox"][1], 2))
                       for d in results)
    from_kitti = sorted((p.stem, o.type, round(o.bbox[0], 2), round(o.bbox[1], 2))
                        for p in (tmp_path / "k" / "labels").glob("*.txt") for o in read_label_file(p))
    assert len(from_coco) == len(from_kitti) > 0
    assert all(a[:2] == b[:2] and abs(a[2] - b[2]) <= 0.011 and abs(a[3] - b[3]) <= 0.011
               for a, b in zip(from_coco, from_kitti))
