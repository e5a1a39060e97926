"""Structured pruning of Ultralytics YOLO (issue #45): torch-pruning through C2f / C3k2, SPPF, the neck's
concatenations and the Detect branches, the DFL and the outputs untouched; the pruned model trains, reloads
from its file and exports to ONNX; the prune stage runs on a yolo model."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from compressdet.models.yolo import ultralytics_available

pytestmark = pytest.mark.skipif(not ultralytics_available(), reason="ultralytics not installed")
torch.set_num_threads(1)

HW = (64, 96)


def _model(name: str):
    from compressdet.models import build_model

    torch.manual_seed(0)
    return build_model(name, image_size=HW, num_classes=3)


def _targets():
    return [{"boxes": torch.tensor([[10.0, 8.0, 50.0, 56.0]]), "labels": torch.tensor([1])},
            {"boxes": torch.tensor([[40.0, 4.0, 90.0, 60.0]]), "labels": torch.tensor([2])}]


@pytest.mark.parametrize("name", ["yolov8n", "yolo11n"])  # C2f; C3k2 + C2PSA + depthwise class branch
def test_prune_reaches_the_macs_target_and_keeps_the_detect_head_consistent(tmp_path, name):
    from ultralytics.nn.modules import C2f

    from compressdet.models import load_model, save_model
    from compressdet.prune.yolo import prune_yolo_detector

    model = _model(name)
    ref = copy.deepcopy(model).eval()
    # round_to 1: the bisection's own precision (at the stage's 16 a nano model's 32-wide groups go 32 -> 16
    # at once, so the target is met from below with a coarse step)
    rec = prune_yolo_detector(model, (48, 80), target_macs=0.6, round_to=1)
    ratio = rec["macs_after"] / rec["base_macs"]
    assert 0.55 < ratio <= 0.6, ratio
    assert rec["ops"] and rec["macs_scope"] == "model"
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 0.8 * sum(p.numel() for p in ref.parameters())
    # DFL and the output convs untouched: 16 bins, 4 x reg_max box channels, one logit per class
    head = model.head
    assert head.reg_max == 16 and tuple(head.dfl.conv.weight.shape) == (1, 16, 1, 1)
    assert [s[-1].out_channels for s in head.cv2] == [64] * 3 and [s[-1].out_channels for s in head.cv3] == [3] * 3
    # the neck outputs (P3-P5) were pruned, and the taps follow
    assert sum(t.channels for t in model.feature_taps()) < sum(t.channels for t in ref.feature_taps())
    # every C2f / C3k2 still splits its cv1 into two halves of its stored width
    for m in model.net.modules():
        if isinstance(m, C2f):
            assert m.cv1.conv.out_channels == 2 * m.c
    # forward, loss and backward still work, outputs keep their shapes
    x = torch.randn(2, 3, *HW) * 40
    model.train()
    out = model(x)
    assert [tuple(o.shape) for o in out] == [tuple(o.shape) for o in ref(x)]
    loss = model.loss(out, _targets())
    assert torch.isfinite(loss["total"]) and {"box", "cls", "dfl"} <= set(loss)
    loss["total"].backward()
    assert all(p.grad is not None for p in model.head.cv2[0][0].parameters() if p.requires_grad)
    # the model file reloads with the pruned shapes and the same outputs
    model.eval()
    path = save_model(model, tmp_path / "pruned.pt", meta={"classes": ["a", "b", "c"]})
    back, _ = load_model(path)
    with torch.no_grad():
        for a, b in zip(model(x), back(x)):
            torch.testing.assert_close(a, b)
    if name != "yolov8n":
        return  # one ONNX export is enough (the slow part)
    # and exports to ONNX (checked in ONNX Runtime against PyTorch by the exporter)
    from compressdet.export.exporter import export_model

    _, res = export_model(path, ["onnx", "ultralytics"], log=lambda s: None)
    assert res["onnx"]["max_abs_diff"] <= 1e-3 and os.path.getsize(res["onnx"]["path"]) > 0
    # and goes back to Ultralytics: the pruned modules are pickled as they are
    from ultralytics import YOLO

    ul = YOLO(res["ultralytics"]["path"])
    assert sum(p.numel() for p in ul.model.parameters()) == n_params
    import numpy as np

    r = ul.predict(np.full((*HW, 3), 128, np.uint8), imgsz=HW[1], verbose=False)
    assert len(r) == 1 and r[0].boxes is not None


def test_prune_refuses_what_is_not_wired_for_yolo():
    from compressdet.errors import UserError
    from compressdet.prune.yolo import prune_yolo_detector

    model = _model("yolov8n")
    with pytest.raises(UserError, match="allocation: 'fastest' is not one of uniform, latency"):
        prune_yolo_detector(model, HW, pruning_ratio=0.3, allocation="fastest")
    with pytest.raises(UserError, match="prune_head"):
        prune_yolo_detector(model, HW, pruning_ratio=0.3, head_ratio=0.25)


def test_latency_allocation_on_yolo_saves_more_latency_per_mac_at_the_same_whole_model_budget():
    """``allocation: latency`` on a yolo model: per-group multipliers from trial cuts counted in whole-model
    MACs, the MACs target met as with the uniform ratio, more of the latency proxy saved per MAC saved, and
    the model's mode and BatchNorm statistics untouched by the trial tracing."""
    from compressdet.prune.cost import latency_proxy
    from compressdet.prune.yolo import prune_yolo_detector

    base = _model("yolov8n").eval()
    x = torch.zeros(1, 3, *HW)
    cost0 = latency_proxy(base, x)
    saved = {}
    for alloc in ("uniform", "latency"):
        m = copy.deepcopy(base).train()
        bn = next(b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d))
        rec = prune_yolo_detector(m, HW, target_macs=0.6, allocation=alloc, round_to=8)
        assert m.training  # the stage's mode is restored
        assert bn.num_batches_tracked.item() == 0  # no statistics from the tracing input
        macs = rec["macs_after"] / rec["base_macs"]
        assert 0.5 < macs <= 0.62, (alloc, macs)
        saved[alloc] = (1 - latency_proxy(m.eval(), x) / cost0) / (1 - macs)
        if alloc == "latency":
            w = rec["weights"]
            assert len(w) > 10 and all(0.5 <= v <= 2.0 for v in w.values())
            assert max(w.values()) / min(w.values()) > 1.2
            assert set(w) <= {n for n, _ in m.named_modules()}
        else:
            assert "weights" not in rec
    assert saved["latency"] > saved["uniform"], saved


def test_prune_stage_on_a_yolo_model(tmp_path):
    from compressdet.models import load_model, save_model
    from compressdet.pipeline import Pipeline
    from compressdet.recipe import parse_recipe

    model = _model("yolov8n").eval()
    save_model(model, tmp_path / "student.pt")
    text = f"""name: yolo_prune
seed: 0
device: cpu
data:
  format: synth
  image_size: [{HW[0]}, {HW[1]}]
  synth: {{num_images: 6, size: [384, 128], seed: 0, cache_dir: {tmp_path / "cache"}}}
  augment: {{enabled: false}}
  max_val_images: 2
stages:
  - {{name: student, kind: model_file, path: {tmp_path / "student.pt"}}}
  - name: pruned
    kind: prune
    from: student
    target: {{macs: 0.6}}
    iterative_steps: 2
    schedule: {{steps: 2, batch_size: 2, lr: 0.002, eval_every: 1, checkpoint_every: 1, log_every: 1, threads: 1}}
"""
    run = Pipeline(parse_recipe(text, source="yolo_prune.yaml"), tmp_path / "run").run()
    rec = json.loads((run / "manifest.json").read_text())["stages"]["pruned"]
    assert rec["status"] == "done", rec.get("error")
    m = rec["metrics"]
    assert [r["step"] for r in m["rounds"]] == [1, 2]
    # whole-model MACs for yolo, met from below (round_to 16: coarse steps on a nano model)
    assert 0.3 < m["rounds"][1]["backbone_macs_ratio"] <= 0.6, m["rounds"]
    assert m["total_macs_ratio"] <= 0.62 and m["params_ratio"] < 1.0
    pruned, meta = load_model(run / rec["artifacts"]["model"]["path"])
    assert pruned.family == "yolo" and meta["pruned"]["allocation"] == "uniform"
    x = torch.randn(1, 3, *HW) * 40
    with torch.no_grad():
        assert [tuple(o.shape) for o in pruned(x)] == [tuple(o.shape) for o in model(x)]
