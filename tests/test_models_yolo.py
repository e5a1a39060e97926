"""The yolo family (issue #45): Ultralytics' YOLOv8 / YOLO11 on the detector contract, its model files, the
Ultralytics checkpoint it goes back to, and the recipe checks around it. Skipped without Ultralytics."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from compressdet.models.yolo import ultralytics_available

pytestmark = pytest.mark.skipif(not ultralytics_available(),
                                reason="ultralytics not installed (pip install 'compressdet[ultralytics]')")


SIZE = (64, 192)
CLASSES = ["vehicle", "person"]


def _model(name: str = "yolov8n", seed: int = 0):
    from compressdet.models import build_model

    torch.manual_seed(seed)
    return build_model(name, image_size=SIZE, num_classes=len(CLASSES))


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *SIZE, generator=g) * 40
    targets = [{"boxes": torch.tensor([[10.0, 8.0, 70.0, 56.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[100.0, 4.0, 160.0, 60.0], [20.0, 20.0, 40.0, 44.0]]),
                "labels": torch.tensor([0, 1])}]
    return x, targets


def test_contract_members_shapes_and_taps():
    from compressdet.models import is_detector

    m = _model().eval()
    assert is_detector(m) and m.family == "yolo" and m.num_classes == 2 and m.image_size == SIZE
    x, _ = _batch()
    (box, cls), feats = m.forward_with_features(x)
    k = sum((SIZE[0] // s) * (SIZE[1] // s) for s in (8, 16, 32))
    assert box.shape == (2, 4 * 16, k) and cls.shape == (2, 2, k)
    taps = m.feature_taps()
    assert [t.stride for t in taps] == [8, 16, 32] and [t.name for t in taps] == ["p3", "p4", "p5"]
    assert [(f.shape[1], f.shape[2], f.shape[3]) for f in feats] == [
        (t.channels, SIZE[0] // t.stride, SIZE[1] // t.stride) for t in taps]
    assert m.priors().shape == (k, 4)
    meta = m.export_metadata()
    assert meta["family"] == "yolo" and meta["outputs"] == ["box_dist", "cls_logits"] and meta["strides"] == [8, 16, 32]
    # a box marks the P3 cells inside it, and nothing far from it
    mask = m.distill_mask([torch.tensor([[16.0, 16.0, 48.0, 48.0]])])
    assert [tuple(t.shape) for t in mask] == [(1, 8, 24), (1, 4, 12), (1, 2, 6)]
    assert mask[0][0, 3, 3] and not mask[0][0, 7, 20]


def test_loss_is_ultralytics_and_decreases():
    m = _model().train()
    x, targets = _batch()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    totals = []
    for _ in range(6):
        losses = m.build_loss()(m(x), targets)
        assert set(losses) == {"box", "cls", "dfl", "total"}
        assert torch.isfinite(losses["total"]) and losses["box"] > 0
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        totals.append(float(losses["total"]))
    assert totals[-1] < 0.8 * totals[0], totals


def test_decode_is_ultralytics_own_and_postprocess_shapes():
    m = _model().eval()
    x, _ = _batch()
    with torch.no_grad():
        out = m(x)
        ref, _ = m.net(m.to_ultralytics_input(x))  # Ultralytics' own eval forward: decoded [N, 4 + C, K]
    torch.testing.assert_close(m.decode(out), ref)
    dets = m.postprocessor({"score_thresh": 0.0, "detections_per_class": 5})(out, orig_sizes=[(128, 384)] * 2)
    assert len(dets) == 2
    for d in dets:
        assert 0 < len(d["boxes"]) <= 10 and d["boxes"].shape[1] == 4
        assert d["labels"].dtype == torch.int64 and int(d["labels"].max()) < 2
        assert float(d["boxes"][:, 2].max()) <= 384 + 1e-3 and float(d["boxes"][:, 3].max()) <= 128 + 1e-3
        assert torch.all(d["scores"][:-1] >= d["scores"][1:])
    none = m.postprocessor({"score_thresh": 1.0})(out)
    assert all(len(d["boxes"]) == 0 for d in none)


def test_model_file_reloads_without_the_yaml(tmp_path):
    from compressdet.models import load_model, save_model

    m = _model().eval()
    save_model(m, tmp_path / "m.pt", meta={"classes": CLASSES})
    m2, meta = load_model(tmp_path / "m.pt")
    assert m2.arch["cfg"]["nc"] == 2 and meta["classes"] == CLASSES
    x, _ = _batch()
    with torch.no_grad():
        for a, b in zip(m(x), m2(x)):
            torch.testing.assert_close(a, b)


def test_ultralytics_checkpoint_round_trip(tmp_path):
    """save_ultralytics -> YOLO(path) predicts with the same network; the .pt loads back as model.weights."""
    import numpy as np
    from ultralytics import YOLO

    from compressdet.models import ModelError, save_model
    from compressdet.models.yolo import build_yolo, save_ultralytics

    m = _model().eval()
    save_model(m, tmp_path / "m.pt", meta={"classes": CLASSES})
    pt = save_ultralytics(tmp_path / "m.pt", tmp_path / "ultra.pt")
    y = YOLO(str(pt))
    assert y.task == "detect" and list(y.names.values()) == CLASSES
    x, _ = _batch()
    with torch.no_grad():
        ref = m.decode(m(x))
        theirs = y.model.eval()(m.to_ultralytics_input(x))
        theirs = theirs[0] if isinstance(theirs, (tuple, list)) else theirs
    torch.testing.assert_close(theirs, ref, rtol=1e-4, atol=1e-3)
    res = y.predict(np.zeros((64, 192, 3), dtype=np.uint8), imgsz=list(SIZE), conf=0.0, verbose=False)
    assert len(res) == 1 and res[0].boxes is not None and res[0].names == dict(enumerate(CLASSES))
    # a user's Ultralytics .pt as model.weights: every tensor that fits (all of them for the same class count)
    again = build_yolo(name="yolov8n", num_classes=2, image_size=SIZE, weights=str(pt)).eval()
    three = build_yolo(name="yolov8n", num_classes=3, image_size=SIZE, weights=str(pt)).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x)[1], m(x)[1])
        torch.testing.assert_close(three(x)[0], m(x)[0])  # box branch transferred, class convs new
        assert three(x)[1].shape[1] == 3
    with pytest.raises(ModelError, match="another architecture.*yolov8n"):
        build_yolo(name="yolov8s", num_classes=2, image_size=SIZE, weights=str(pt))


def test_bad_weights_and_sizes_are_one_line_model_errors(tmp_path):
    from compressdet.models import ModelError, build_model
    from compressdet.models.yolo import save_ultralytics

    with pytest.raises(ModelError, match="does not exist"):
        build_model("yolov8n", image_size=SIZE, num_classes=2, weights=str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot be read as an Ultralytics checkpoint") as e:
        build_model("yolov8n", image_size=SIZE, num_classes=2, weights=str(tmp_path / "junk.pt"))
    assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match="multiples of 32"):
        build_model("yolov8n", image_size=(80, 192), num_classes=2)
    with pytest.raises(ModelError, match="only yolo models"):
        save_ultralytics(build_model("shuffledet_0.25x", image_size=(64, 192)), tmp_path / "x.pt")


def test_import_compressdet_does_not_import_ultralytics():
    code = ("import sys, compressdet, compressdet.models as m, compressdet.recipe; "
            "assert {'yolov8n', 'yolov8s', 'yolo11n', 'yolo11s'} <= set(m.list_models()); "
            "print('ultralytics' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


RECIPE = """name: y
device: cpu
data: {{format: synth, image_size: [64, 192]}}
stages:
  - {{name: a, kind: train, model: {arch}, schedule: {{steps: 1, batch_size: 2}}}}
{extra}"""


def test_recipe_without_ultralytics_names_the_field_and_the_extra(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text(RECIPE.format(arch="yolov8n", extra=""))
    code = ("import sys, compressdet.models.yolo as y; y.ultralytics_available = lambda: False; "
            "from compressdet.cli import main; sys.exit(main(['recipe', 'check', sys.argv[1]]))")
    out = subprocess.run([sys.executable, "-c", code, str(r)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "300"})
    assert out.returncode == 2, out.stdout + out.stderr
    err = [ln for ln in (out.stdout + out.stderr).splitlines() if "yolov8n" in ln]
    assert len(err) == 1 and "stages[0].model" in err[0] and "compressdet[ultralytics]" in err[0], out.stderr


def test_recipe_checks_of_a_yolo_model_up_front(tmp_path):
    from compressdet.errors import RecipeError
    from compressdet.recipe import load_recipe

    r = tmp_path / "r.yaml"
    r.write_text(RECIPE.format(arch="yolov8n", extra="  - {name: p, kind: prune, from: a, target: {macs: 0.7}}\n"
                               "  - {name: q, kind: qat, from: a}\n"))
    rec = load_recipe(r)  # prune and qat run on yolo models (tests/test_prune_yolo.py, tests/test_quant_yolo.py)
    assert [s.kind for s in rec.stages] == ["train", "prune", "qat"]
    r.write_text(RECIPE.format(arch="yolov8n", extra="  - {name: s, kind: train, model: yolov8n, teacher: a, "
                               "distill: {method: crosskd, variant: paper}}\n"))  # adapter only: test_crosskd_yolo.py
    with pytest.raises(RecipeError, match=r"stages\[1\]\.distill: stage 's': crosskd on a yolo student"):
        load_recipe(r)
    r.write_text(RECIPE.format(arch="yolov8n", extra="").replace("[64, 192]", "[80, 192]"))
    with pytest.raises(RecipeError, match=r"data\.image_size: 80x192: yolo models .* multiples of 32"):
        load_recipe(r)
    r.write_text(RECIPE.format(arch="yolov8n", extra="").replace("model: yolov8n",
                               f"model: {{arch: yolov8n, weights: {tmp_path / 'nope.pt'}}}"))
    with pytest.raises(RecipeError, match="weights"):
        load_recipe(r)
