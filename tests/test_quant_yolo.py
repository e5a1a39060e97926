"""INT8 PTQ and QAT of Ultralytics YOLO (issue #45) through the pipeline: the model captured as it is (PT2E,
``quant._fpn.YoloFeatureWrapper``), the Detect branches' last convs (box distribution, class logits) int8 in
and float out, the DFL decode float outside the graph. ONNX Runtime's INT8 numerics are not checked here (its
u8s8 kernels saturate on CPUs without VNNI, see ``needs_int8_dot`` in tests/test_quant.py): the torch INT8
program is compared with the fp32 model instead."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compressdet.models.yolo import ultralytics_available

pytest.importorskip("torchao")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(not ultralytics_available(), reason="ultralytics not installed")
torch.set_num_threads(1)

HW = (64, 96)
PTQ = "  - {name: int8, kind: ptq, from: student, quant: {calibration_images: 4}, eval: {batch_size: 2}}"
QAT = """  - name: int8
    kind: qat
    from: student
    teacher: student
    distill: [{method: fgfi, weight: 1.0}]
    schedule: {steps: 3, batch_size: 2, lr: 0.0005, log_every: 1}
    freeze_observers_step: 2
    eval: {batch_size: 2}"""


def _run(tmp_path, stage: str):
    from compressdet.models import build_model, save_model
    from compressdet.pipeline import Pipeline
    from compressdet.quant.ptq import randomize_batchnorm
    from compressdet.recipe import load_recipe

    torch.manual_seed(0)
    model = randomize_batchnorm(build_model("yolov8n", image_size=HW, num_classes=3)).eval()
    save_model(model, tmp_path / "student.pt")
    path = tmp_path / "yolo_int8.yaml"
    path.write_text(f"""name: yolo_int8
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
{stage}
""")
    recipe = load_recipe(path)  # the recipe checks (which refused qat / ptq on yolo) pass
    run = Pipeline(recipe, tmp_path / "run").run()
    rec = json.loads((run / "manifest.json").read_text())["stages"]["int8"]
    assert rec["status"] == "done", rec.get("error")
    assert {"quantized", "onnx_int8", "report"} <= set(rec["artifacts"])
    for key in ("map40", "ort_map40"):
        assert 0.0 <= rec["metrics"][key] <= 100.0
    return model, run, rec, recipe


def _check_program(model, run, rec, recipe) -> dict:
    """The .pt2 reloads and gives the raw outputs close to the fp32 model's; the head stays int8 in, float out."""
    from compressdet.data import build_dataset

    ds = build_dataset(recipe.data, "val", train=False)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    prog = torch.export.load(str(run / rec["artifacts"]["quantized"]["path"])).module()
    with torch.no_grad():
        q, f = prog(x), model(x)
    assert isinstance(q, tuple) and [tuple(t.shape) for t in q] == [tuple(t.shape) for t in f]
    out = {}
    for name, a, b in zip(model.export_outputs, q, f):
        a, b = a.numpy().ravel(), b.numpy().ravel()
        rel = float(np.abs(a - b).mean() / np.abs(b).mean())
        corr = float(np.corrcoef(a, b)[0, 1])
        out[name] = {"rel_mean_err": rel, "corr": corr}
        assert rel < 0.1 and corr > 0.98, (name, out[name])
    graph = rec["metrics"]["graph"]
    # every conv int8; the 6 prediction convs (box + class, 3 levels) int8 matmuls with float outputs
    assert graph["float_convs"] == 0 and graph["int8_matmuls"] == 6, graph
    return out


def test_ptq_stage_on_yolo(tmp_path):
    model, run, rec, recipe = _run(tmp_path, PTQ)
    print("ptq int8 vs fp32:", _check_program(model, run, rec, recipe))
    assert rec["metrics"]["calibration_images"] == 4


def test_qat_stage_on_yolo_with_teacher(tmp_path):
    model, run, rec, recipe = _run(tmp_path, QAT)
    met = rec["metrics"]
    assert met["imitation"] is True and met["distill"] == ["fgfi"] and met["steps"] == 3
    losses = met["final_losses"]
    assert {"box", "cls", "dfl", "imitation", "total"} <= set(losses), losses
    assert all(np.isfinite(v) for v in losses.values())
    prog = torch.export.load(str(run / rec["artifacts"]["quantized"]["path"])).module()
    with torch.no_grad():
        out = prog(torch.zeros(1, 3, *HW))
    assert [tuple(t.shape) for t in out] == [tuple(t.shape) for t in model(torch.zeros(1, 3, *HW))]


def test_ptq_of_a_pruned_yolo_model():
    """The chain's order (prune, then INT8): the pruned widths capture and quantize like the original's."""
    from compressdet.models import build_model
    from compressdet.prune.yolo import prune_yolo_detector
    from compressdet.quant.ptq import quantize_ptq, randomize_batchnorm
    from compressdet.recipe import QuantConfig

    torch.manual_seed(0)
    model = randomize_batchnorm(build_model("yolo11n", image_size=HW, num_classes=3))
    prune_yolo_detector(model, HW, pruning_ratio=0.3, round_to=8)
    model.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, *HW, generator=g) * 40
    prog = quantize_ptq(model, [x[:2], x[2:]], QuantConfig(calibration_images=4), observer="minmax")
    with torch.no_grad():
        (qb, qc), feats = prog(x)
        fb, fc = model(x)
    assert [f.shape[1] for f in feats] == [t.channels for t in model.feature_taps()]
    for a, b in ((qb, fb), (qc, fc)):
        a, b = a.numpy().ravel(), b.numpy().ravel()
        assert float(np.corrcoef(a, b)[0, 1]) > 0.98


def test_qat_decays_the_yolo_detect_head_as_float_training_does():
    """The seed's weight-decay rule (head + adapters) on a captured yolo graph: its Detect layer keeps the
    float model's name (``net.model.<last>``), so QAT decays exactly the head's parameters, as float training's
    ``seed_param_groups`` does on ``model.head``; ``weight_decay_on: all`` decays everything."""
    from compressdet.models import build_model
    from compressdet.quant.qat import prepare_qat, qat_training
    from compressdet.recipe import QuantConfig, ScheduleConfig

    torch.manual_seed(0)
    model = build_model("yolov8n", image_size=HW, num_classes=3).eval()
    prepared = prepare_qat(model, torch.zeros(2, 3, *HW), QuantConfig())
    head = next(n for n, m in model.named_modules() if m is model.head)
    n_head = sum(p.requires_grad for p in model.head.parameters())  # the DFL's fixed bins are not trained
    for on in ("seed", "all"):
        student, settings = qat_training(prepared, ScheduleConfig(weight_decay=5e-4, weight_decay_on=on), 2, 1)
        decay, no_decay = settings["param_groups"](prepared, None)
        names = {id(p): n for n, p in prepared.named_parameters()}
        decayed = [names[id(p)] for p in decay["params"]]
        assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
        if on == "seed":
            assert len(decayed) == n_head and all(n.startswith(f"{head}.") for n in decayed), decayed[:3]
            assert no_decay["params"]
        else:
            assert not no_decay["params"] and len(decayed) == sum(p.requires_grad for p in prepared.parameters())
