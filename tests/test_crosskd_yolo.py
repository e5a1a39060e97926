"""CrossKD (adapter variant) on Ultralytics YOLO (issue #45): the student's P3-P5 through 1x1 adapters and the
teacher's frozen Detect branches, distilled to the teacher's outputs; through the recipe and a train stage."""

from __future__ import annotations

import json

import pytest
import torch

from compressdet.models.yolo import ultralytics_available

pytestmark = pytest.mark.skipif(not ultralytics_available(), reason="ultralytics not installed")
torch.set_num_threads(1)

HW = (64, 96)


def _model(name: str, seed: int):
    from compressdet.models import build_model

    torch.manual_seed(seed)
    return build_model(name, image_size=HW, num_classes=3)


def _taps(student, teacher, x):
    from compressdet.losses.distill import Taps

    s_head, s_feat = student.forward_with_features(x)
    with torch.no_grad():
        t_head, t_feat = teacher.forward_with_features(x)
    return Taps(s_feat=s_feat, s_head=s_head, t_feat=t_feat, t_head=t_head, mask=None)


def test_crosskd_through_the_teachers_detect_branches():
    from compressdet.losses.crosskd import YoloCrossKDLoss
    from compressdet.losses.distill import build_distiller
    from compressdet.recipe import DistillConfig

    teacher = _model("yolov8s", 1).eval().requires_grad_(False)
    student = _model("yolov8n", 0).train()
    x = torch.randn(2, 3, *HW) * 40
    d = build_distiller([DistillConfig(method="crosskd")], student, teacher, None)
    loss = d.methods["crosskd"].loss
    assert isinstance(loss, YoloCrossKDLoss)
    # one adapter per level, student width -> teacher width (yolov8n 64/128/256 -> yolov8s 128/256/512)
    assert [(a.in_channels, a.out_channels) for a in loss.adapt] == [(64, 128), (128, 256), (256, 512)]
    out = d(_taps(student, teacher, x), step=0)
    assert set(out) == {"crosskd_cls", "crosskd_box"} and all(torch.isfinite(v) and v > 0 for v in out.values())
    sum(out.values()).backward()
    # the gradient reaches the adapters and the student's neck, never the frozen teacher
    assert all(a.weight.grad is not None and a.weight.grad.abs().sum() > 0 for a in loss.adapt)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.net.model[-2].parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert student.head.cv2[0][0].conv.weight.grad is None  # the student's own head is not on the cross path


def test_crosskd_of_the_teacher_with_itself_has_no_box_term():
    """Own levels through own branches: the cross-head outputs are the teacher's, so every decoded box
    matches (GIoU 0) and the class term is the entropy of its own probabilities (its minimum)."""
    from compressdet.losses.crosskd import YoloCrossKDLoss
    from compressdet.quant.ptq import randomize_batchnorm

    # an untrained model's levels vanish at BN's init statistics, and its box branch spreads every DFL bin
    # evenly (every box alike): realistic BN statistics and a sharper box branch
    teacher = randomize_batchnorm(_model("yolov8n", 1)).eval().requires_grad_(False)
    with torch.no_grad():
        for seq in teacher.head.cv2:
            seq[-1].weight.mul_(50)
    x = torch.randn(2, 3, *HW) * 40
    (box, cls), feats = teacher.forward_with_features(x)
    loss = YoloCrossKDLoss([(f.shape[1], f.shape[1]) for f in feats], teacher)
    same = loss(feats, (box, cls))
    assert float(same["crosskd_box"]) < 1e-5
    g = torch.Generator().manual_seed(0)
    other = loss([torch.randn(f.shape, generator=g) for f in feats], (box, cls))
    assert float(other["crosskd_box"]) > 1e-3 and float(other["crosskd_cls"]) > float(same["crosskd_cls"])


def test_recipe_takes_crosskd_on_yolo_and_refuses_its_paper_variant(tmp_path):
    from compressdet.errors import RecipeError
    from compressdet.recipe import load_recipe

    base = """name: y
device: cpu
data: {{format: synth, image_size: [64, 96]}}
stages:
  - {{name: t, kind: train, model: yolov8s, schedule: {{steps: 1, batch_size: 2}}}}
  - {{name: s, kind: train, model: yolov8n, teacher: t, distill: {distill}, schedule: {{steps: 1, batch_size: 2}}}}
"""
    r = tmp_path / "r.yaml"
    r.write_text(base.format(distill="{method: crosskd}"))
    assert load_recipe(r).stages[1].distill[0].method == "crosskd"
    r.write_text(base.format(distill="{method: crosskd, variant: paper}"))
    with pytest.raises(RecipeError, match=r"stages\[1\]\.distill: stage 's': crosskd on a yolo student .* adapter"):
        load_recipe(r)
    r.write_text(base.format(distill="{method: crosskd, from_layer: 1}"))
    with pytest.raises(RecipeError, match="adapter"):
        load_recipe(r)


def test_train_stage_distils_a_yolo_student_with_crosskd(tmp_path):
    from compressdet.models import save_model
    from compressdet.pipeline import Pipeline
    from compressdet.recipe import parse_recipe

    save_model(_model("yolov8s", 1).eval(), tmp_path / "teacher.pt")
    text = f"""name: yolo_crosskd
seed: 0
device: cpu
data:
  format: synth
  image_size: [{HW[0]}, {HW[1]}]
  synth: {{num_images: 6, size: [384, 128], seed: 0, cache_dir: {tmp_path / "cache"}}}
  augment: {{enabled: false}}
  max_val_images: 2
stages:
  - {{name: teacher, kind: model_file, path: {tmp_path / "teacher.pt"}}}
  - name: student
    kind: train
    model: yolov8n
    teacher: teacher
    distill: [{{method: crosskd, weight: 1.0}}, {{method: pkd}}]
    schedule: {{steps: 2, batch_size: 2, lr: 0.001, eval_every: 2, checkpoint_every: 2, log_every: 1, threads: 1}}
"""
    run = Pipeline(parse_recipe(text, source="yolo_crosskd.yaml"), tmp_path / "run").run()
    rec = json.loads((run / "manifest.json").read_text())["stages"]["student"]
    assert rec["status"] == "done", rec.get("error")
    losses = rec["metrics"]["final_losses"]
    assert {"crosskd_cls", "crosskd_box", "pkd", "box", "cls", "dfl"} <= set(losses), losses
    assert losses["crosskd_cls"] > 0 and losses["crosskd_box"] > 0
