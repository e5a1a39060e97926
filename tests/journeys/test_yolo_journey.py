"""An Ultralytics user's journey (issue #45): their YOLO-format data as it is, a yolov8s teacher, a yolov8n
student distilled from it (fgfi and pkd on P3-P5), its ONNX graph, ``compressdet predict`` on one image, and
the student back in Ultralytics (``YOLO(path)``). Each command in a process of its own, as a user types it;
a few steps on twelve real KITTI images, so what is checked is that every file comes out right, not mAP."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compressdet.models.yolo import ultralytics_available

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not ultralytics_available(),
                                 reason="ultralytics not installed (pip install 'compressdet[ultralytics]')")]

KITTI_REAL = Path(__file__).resolve().parents[3] / "shared" / "kitti_real"
CLASSES = ["vehicle", "person"]
CLASS_MAP = {"car": "vehicle", "van": "vehicle", "truck": "vehicle", "pedestrian": "person",
             "cyclist": "person", "misc": None}
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
SCHED = "{steps: 2, batch_size: 2, lr: 0.01, eval_every: 2, checkpoint_every: 2, threads: 1, log_every: 1}"


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "compressdet"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "compressdet"]
    p = subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"compressdet {' '.join(args)} -> {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def test_yolo_teacher_distilled_student_export_predict(tmp_path):
    if not (KITTI_REAL / "training" / "label_2").is_dir():
        pytest.skip(f"real KITTI sample data not found at {KITTI_REAL}")
    cfg_dir = tmp_path / "ultralytics-settings"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "YOLO_CONFIG_DIR": str(cfg_dir)}
    sets = KITTI_REAL / "ImageSets"
    data = tmp_path / "my_yolo"
    run(["data", "convert", str(KITTI_REAL), "--from", "kitti", "--to", "yolo", "--out", str(data),
         "--split-file", f"train={sets / 'real_train.txt'}", "--split-file", f"val={sets / 'real_val.txt'}",
         "--split-file", f"test={sets / 'real_val.txt'}"], tmp_path, env)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""name: yolo_journey
seed: 0
device: cpu
data:
  format: yolo
  root: {data}
  yolo: {data / 'data.yaml'}
  classes: {json.dumps(CLASSES)}
  class_map: {json.dumps(CLASS_MAP)}
  image_size: [64, 192]
  max_val_images: 4
stages:
  - {{name: teacher, kind: train, model: yolov8s, schedule: {SCHED}}}
  - {{name: student, kind: train, model: yolov8n, teacher: teacher, distill: {{method: fgfi}}, schedule: {SCHED}}}
  - {{name: student_pkd, kind: train, model: yolov8n, teacher: teacher, distill: {{method: pkd}}, schedule: {SCHED}}}
  - {{name: export, kind: export, from: student, formats: [{"onnx, openvino" if HAVE_OPENVINO else "onnx"}]}}
""")
    run(["run", str(recipe), "--run-dir", "run"], tmp_path, env)
    rd = tmp_path / "run"
    man = json.loads((rd / "manifest.json").read_text())
    assert all(man["stages"][s]["status"] == "done" for s in ("teacher", "student", "student_pkd", "export"))
    for s, loss in (("student", "imitation"), ("student_pkd", "pkd")):
        final = man["stages"][s]["metrics"]["final_losses"]
        assert {"box", "cls", "dfl", loss} <= set(final), final  # Ultralytics' loss terms + the distillation term

    from compressdet.models import load_model

    model, meta = load_model(rd / man["stages"]["student"]["artifacts"]["model"]["path"])
    assert model.family == "yolo" and model.arch["name"] == "yolov8n" and meta["classes"] == CLASSES
    import onnx

    graph = rd / "export" / "student.onnx"
    props = {p.key: p.value for p in onnx.load(str(graph), load_external_data=False).metadata_props}
    assert json.loads(props["classes"]) == CLASSES and props["family"] == "yolo"
    if HAVE_OPENVINO:  # the IR, checked against PyTorch by the export stage
        assert (rd / "export" / "student.xml").is_file() and man["stages"]["export"]["metrics"]["openvino_max_abs_diff"] < 1e-3

    image = sorted((data / "images" / "test").iterdir())[0]
    run(["predict", str(image), "--model", str(graph), "--save-txt", "coco", "--score-threshold", "0.0",
         "--out", "preds"], tmp_path, env)
    dets = json.loads((tmp_path / "preds" / "detections.coco.json").read_text())
    assert [c["name"] for c in dets["categories"]] == CLASSES
    (img,) = dets["images"]
    assert dets["annotations"], "no detections at score 0"
    for a in dets["annotations"]:
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= img["width"] + 0.5 and y + h <= img["height"] + 0.5 and 0 <= a["score"] <= 1
    assert (tmp_path / "preds" / f"{image.stem}.png").is_file()

    # the student back in Ultralytics, predicting with Ultralytics' own tooling
    code = ("import sys; from compressdet.models.yolo import save_ultralytics; "
            "p = save_ultralytics(sys.argv[1], sys.argv[2]); "
            "from ultralytics import YOLO; y = YOLO(str(p)); r = y.predict(sys.argv[3], imgsz=[64, 192], conf=0.0, "
            "verbose=False); print(list(y.names.values()), len(r[0].boxes))")
    out = subprocess.run([sys.executable, "-c", code, str(rd / "student" / "model.pt"), str(tmp_path / "ul.pt"),
                          str(image)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    names, n = out.stdout.strip().rsplit("] ", 1)
    assert names + "]" == str(CLASSES) and int(n) > 0
    # Ultralytics' settings went where the environment said, not into the home
    assert (cfg_dir / "Ultralytics" / "settings.json").is_file()
