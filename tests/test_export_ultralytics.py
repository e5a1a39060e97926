"""``compressdet export --ultralytics``: a yolo model file -> an Ultralytics checkpoint that ``YOLO(path)`` loads
and predicts with; refused in one line (exit 2, nothing written) for the other families."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from compressdet.models.yolo import ultralytics_available

SIZE = (64, 96)
CLASSES = ["vehicle", "person"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200",
            "YOLO_CONFIG_DIR": os.environ["YOLO_CONFIG_DIR"]}


def _export(path, *flags):
    return subprocess.run([sys.executable, "-m", "compressdet", "export", str(path), *flags], capture_output=True,
                          text=True, env=_env(), timeout=300)


def test_flags_map_to_formats():
    from compressdet.cli.export import formats_from_flags
    from compressdet.errors import UserError
    from compressdet.export.formats import BACKENDS, get_format

    assert formats_from_flags(False, False, False, ultralytics=True) == ["ultralytics"]
    assert formats_from_flags(True, False, False, ultralytics=True) == ["onnx", "ultralytics"]
    with pytest.raises(UserError, match="--ultralytics"):
        formats_from_flags(False, False, False)
    assert get_format("ultralytics").suffix == ".ultralytics.pt"
    assert "ultralytics" not in BACKENDS.values() and None not in BACKENDS  # no bench backend for it


@pytest.mark.skipif(not ultralytics_available(), reason="ultralytics not installed")
def test_yolo_model_file_exports_to_a_checkpoint_ultralytics_predicts_with(tmp_path):
    from compressdet.models import build_model, save_model

    torch.manual_seed(0)
    model = build_model("yolov8n", image_size=SIZE, num_classes=len(CLASSES))
    with torch.no_grad():  # a confident class bias everywhere, so Ultralytics' predictor returns boxes
        for seq in model.head.cv3:
            seq[-1].bias.fill_(4.0)
    src = save_model(model, tmp_path / "student.pt", meta={"classes": CLASSES})
    r = _export(src, "--ultralytics")
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "student.ultralytics.pt"
    assert out.is_file() and "ultralytics.YOLO(" in r.stdout
    assert not (tmp_path / "student.onnx").exists()  # --ultralytics alone builds no ONNX graph
    assert src.is_file() and (tmp_path / "student.export.json").is_file()
    code = (
        "import sys, numpy as np\n"
        "from ultralytics import YOLO\n"
        "m = YOLO(sys.argv[1])\n"
        "assert m.task == 'detect', m.task\n"
        "assert list(m.names.values()) == ['vehicle', 'person'], m.names\n"
        "r = m.predict(np.full((64, 96, 3), 128, np.uint8), imgsz=96, conf=0.5, verbose=False)[0]\n"
        "assert len(r.boxes) > 0, 'no boxes'\n"
        "print('boxes', len(r.boxes))\n")
    p = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "boxes" in p.stdout


def test_non_yolo_model_is_refused_in_one_line(tmp_path):
    from compressdet.models import build_model, save_model

    src = save_model(build_model("shuffledet_0.25x", image_size=SIZE), tmp_path / "det.pt")
    r = _export(src, "--onnx", "--ultralytics")
    assert r.returncode == 2, r.stdout + r.stderr
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "'ultralytics' is for yolo models" in err[0] and "shuffledet" in err[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.pt"]  # nothing written, not even the ONNX


@pytest.mark.skipif(not ultralytics_available(), reason="ultralytics not installed")
def test_export_stage_writes_the_ultralytics_checkpoint(tmp_path):
    import json

    from compressdet.models import build_model, load_model, save_model
    from compressdet.models.yolo import load_ultralytics_checkpoint
    from compressdet.pipeline import Pipeline
    from compressdet.recipe import parse_recipe

    torch.manual_seed(0)
    save_model(build_model("yolov8n", image_size=SIZE, num_classes=3), tmp_path / "student.pt")
    text = f"""name: yolo_export
seed: 0
device: cpu
data:
  format: synth
  image_size: [{SIZE[0]}, {SIZE[1]}]
  classes: [car, pedestrian, cyclist]
  synth: {{num_images: 4, size: [384, 128], seed: 0, cache_dir: {tmp_path / "cache"}}}
stages:
  - {{name: student, kind: model_file, path: {tmp_path / "student.pt"}}}
  - {{name: export, kind: export, from: student, formats: [ultralytics]}}
"""
    run = Pipeline(parse_recipe(text, source="yolo_export.yaml"), tmp_path / "run").run()
    rec = json.loads((run / "manifest.json").read_text())["stages"]["export"]
    assert rec["status"] == "done", rec.get("error")
    assert set(rec["artifacts"]) == {"ultralytics"} and rec["metrics"]["ultralytics_max_abs_diff"] <= 1e-3
    net = load_ultralytics_checkpoint(run / rec["artifacts"]["ultralytics"]["path"])
    assert list(net.names.values()) == ["car", "pedestrian", "cyclist"]
    model, _ = load_model(tmp_path / "student.pt")
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in model.parameters())


def test_recipe_refuses_the_ultralytics_format_for_other_models(tmp_path):
    from compressdet.errors import RecipeError
    from compressdet.recipe import load_recipe

    r = tmp_path / "r.yaml"
    r.write_text("""name: x
device: cpu
data: {format: synth, image_size: [64, 192]}
stages:
  - {name: a, kind: train, model: shuffledet_0.25x, schedule: {steps: 1, batch_size: 2}}
  - {name: e, kind: export, from: a, formats: [onnx, ultralytics]}
""")
    with pytest.raises(RecipeError, match=r"stages\[1\]\.formats: stage 'e': format 'ultralytics' is for yolo models"):
        load_recipe(r)
