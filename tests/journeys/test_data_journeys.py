"""Your data, your classes: the whole chain from the command line, as a user types it.

Real KITTI images (``../shared/kitti_real``) converted to COCO / YOLO / VOC by ``compressdet data convert``,
their seven categories merged into two custom classes by ``class_map`` (keys in another case than the
files' names), then teacher -> distilled student -> prune -> QAT -> export fp32 + INT8 -> bench -> predict
-> ``eval --format coco``, each command in a process of its own. The numbers are near zero (a few steps on
twelve images); what is checked is that every file and number comes out, carries the user's class names,
and that ``eval`` scores the predictions exactly as pycocotools does on the same files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

KITTI_REAL = Path(__file__).resolve().parents[3] / "shared" / "kitti_real"
CLASSES = ["vehicle", "person"]
# source names in lower case: the files say Car / Pedestrian ... (matched case-insensitively)
CLASS_MAP = {"car": "vehicle", "van": "vehicle", "truck": "vehicle", "pedestrian": "person",
             "cyclist": "person", "misc": None}


def cli() -> list[str]:
    """The installed ``compressdet`` script beside this interpreter (what a user types), else ``-m``."""
    exe = Path(sys.executable).parent / "compressdet"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "compressdet"]


def run(args: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    p = subprocess.run([*cli(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert p.returncode == 0, f"compressdet {' '.join(args)} -> {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def data_block(fmt: str, root: Path) -> str:
    extra = {"coco": "  coco: {train: annotations/train.json, val: annotations/val.json, "
                     "test: annotations/test.json, images: images}\n",
             "yolo": f"  yolo: {root / 'data.yaml'}\n",
             "voc": ""}[fmt]
    return (f"data:\n  format: {fmt}\n  root: {root}\n{extra}"
            f"  classes: {json.dumps(CLASSES)}\n  class_map: {json.dumps(CLASS_MAP)}\n"
            "  image_size: [64, 192]\n")


SCHED = "{steps: %d, batch_size: 2, lr: 0.01, eval_every: %d, checkpoint_every: %d, threads: 1, log_every: 1}"


def recipe_text(fmt: str, root: Path) -> str:
    s = lambda n: SCHED % (n, n, n)
    return f"""name: journey_{fmt}
seed: 0
device: cpu
{data_block(fmt, root)}stages:
  - {{name: teacher, kind: train, model: shuffledet_1x, schedule: {s(4)}}}
  - {{name: student, kind: train, model: shuffledet_0.25x, teacher: teacher, distill: {{method: fgfi}}, schedule: {s(4)}}}
  - {{name: pruned, kind: prune, from: student, teacher: teacher, target: {{macs: 0.7}}, distill: {{method: fgfi}},
      schedule: {s(2)}}}
  - {{name: int8, kind: qat, from: pruned, teacher: teacher, distill: {{method: fgfi}}, schedule: {s(2)}}}
  - {{name: export, kind: export, from: int8, formats: [onnx, onnx-int8]}}
  - {{name: bench, kind: bench, backends: {BENCH[fmt][1]}, stages: {BENCH[fmt][0]}, runs: 2, warmup: 1, rounds: 1}}
"""


#: (stages, backends) bench measures: every model on coco; the data-independent part once is enough for yolo / voc
BENCH = {"coco": ("[teacher, student, pruned, int8]", "[torch, ort, ort-int8]"),
         "yolo": ("[int8]", "[torch, ort-int8]"), "voc": ("[int8]", "[torch, ort-int8]")}


@pytest.fixture(scope="module")
def kitti_src(tmp_path_factory) -> Path:
    if not (KITTI_REAL / "training" / "label_2").is_dir():
        pytest.skip(f"real KITTI sample data not found at {KITTI_REAL} (../shared/kitti_real beside the repo)")
    return KITTI_REAL


@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc"])
def test_custom_classes_through_the_whole_chain(fmt, kitti_src, tmp_path):
    sets = kitti_src / "ImageSets"
    data = tmp_path / f"my_{fmt}"
    run(["data", "convert", str(kitti_src), "--from", "kitti", "--to", fmt, "--out", str(data),
         "--split-file", f"train={sets / 'real_train.txt'}", "--split-file", f"val={sets / 'real_val.txt'}",
         "--split-file", f"test={sets / 'real_val.txt'}"], tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text(fmt, data))

    chk = run(["recipe", "check", str(recipe)], tmp_path)
    assert "ok" in chk.stdout
    run(["run", str(recipe), "--run-dir", "run"], tmp_path)
    rd = tmp_path / "run"
    man = json.loads((rd / "manifest.json").read_text())
    assert all(man["stages"][s]["status"] == "done" for s in ("teacher", "student", "pruned", "int8", "export", "bench"))

    # the model file, the ONNX graphs and the bench report all carry the user's classes
    from compressdet.models import load_model

    model, meta = load_model(rd / man["stages"]["pruned"]["artifacts"]["model"]["path"])
    assert meta["classes"] == CLASSES and model.num_classes == 2
    import onnx

    for onnx_file in sorted(rd.rglob("*.onnx")):
        props = {p.key: p.value for p in onnx.load(str(onnx_file), load_external_data=False).metadata_props}
        assert json.loads(props["classes"]) == CLASSES, onnx_file
    rep = json.loads((rd / "bench" / "report.json").read_text())
    assert {r["stage"] for r in rep["rows"]} == set(BENCH[fmt][0].strip("[]").split(", "))
    assert all(r["eval"]["images"] == 17 for r in rep["rows"])

    # predict the held-out split on the INT8 graph: PNGs drawn with the custom names, a COCO JSON whose ids
    # are the ground truth's; eval scores it as pycocotools does
    run(["predict", "split:test", "--model", "run", "--backend", "ort-int8", "--save-txt", "coco",
         "--score-threshold", "0.0", "--out", "preds"], tmp_path)
    pngs = sorted((tmp_path / "preds").glob("*.png"))
    assert len(pngs) == 17
    dets_file = tmp_path / "preds" / "detections.coco.json"
    assert dets_file.is_file()
    # the class_map renames and merges, so the split's ground truth as the model sees it is written beside
    # the detections (the ids they use); for coco it is checked against the converted file's own boxes
    gt_file = tmp_path / "preds" / "ground_truth.coco.json"
    assert gt_file.is_file()
    _same_boxes_as_the_source(gt_file, _ground_truth_json(fmt, data, tmp_path))
    out = run(["eval", "--format", "coco", "--gt", str(gt_file), "--det", str(dets_file), "--json", "eval.json"],
              tmp_path)
    ours = json.loads((tmp_path / "eval.json").read_text())
    ref = _pycocotools_ap(gt_file, dets_file)
    ap = _ap_fraction(ours)
    assert ap == pytest.approx(ref, abs=1e-6), (ours, ref, out.stdout)


def _ground_truth_json(fmt: str, data: Path, tmp_path: Path) -> Path:
    """The test split's ground truth as a COCO file: the converted one, or converted for yolo / voc."""
    if fmt == "coco":
        return data / "annotations" / "test.json"
    coco = tmp_path / "gt_coco"
    if not coco.is_dir():
        src = data if fmt == "voc" else data / "data.yaml"
        run(["data", "convert", str(src), "--from", fmt, "--to", "coco", "--out", str(coco), "--split", "test"],
            tmp_path)
    return coco / "annotations" / "test.json"


def _same_boxes_as_the_source(written: Path, source: Path) -> None:
    """Every box of the source test split whose category maps to a class is in the written ground truth,
    under that class's name, on the same image."""
    w, src = json.loads(written.read_text()), json.loads(source.read_text())
    w_cat = {c["id"]: c["name"] for c in w["categories"]}
    w_img = {im["id"]: Path(im["file_name"]).stem for im in w["images"]}
    s_cat = {c["id"]: c["name"].lower() for c in src["categories"]}
    s_img = {im["id"]: Path(im["file_name"]).stem for im in src["images"]}
    assert sorted(w_img.values()) == sorted(s_img.values())
    got = sorted((w_img[a["image_id"]], w_cat[a["category_id"]], tuple(round(v, 1) for v in a["bbox"]))
                 for a in w["annotations"] if not a["iscrowd"])
    want = sorted((s_img[a["image_id"]], CLASS_MAP[s_cat[a["category_id"]]], tuple(round(v, 1) for v in a["bbox"]))
                  for a in src["annotations"] if CLASS_MAP.get(s_cat[a["category_id"]]) and not a.get("iscrowd"))
    assert got == want and len(got) > 50


def _pycocotools_ap(gt_file: Path, dets_file: Path) -> float:
    """AP@[.5:.95] (0-1) by pycocotools, directly on the files predict and convert wrote."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(gt_file))
    raw = json.loads(dets_file.read_text())
    dets = raw["annotations"] if isinstance(raw, dict) else raw
    if not dets:
        return 0.0
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    assert all(d["category_id"] in names for d in dets)
    e = COCOeval(gt, gt.loadRes([{k: d[k] for k in ("image_id", "category_id", "bbox", "score")} for d in dets]), "bbox")
    e.evaluate()
    e.accumulate()
    e.summarize()
    return float(max(e.stats[0], 0.0))


def _ap_fraction(result: dict) -> float:
    """The eval JSON's AP@[.5:.95] as a 0-1 fraction, whatever unit key it states."""
    for key, scale in (("ap_fraction", 1.0), ("ap", None)):
        if key in result:
            unit = result.get("unit", "percent")
            return float(result[key]) / (100.0 if scale is None and unit == "percent" else 1.0)
    raise AssertionError(f"no AP in {result}")

