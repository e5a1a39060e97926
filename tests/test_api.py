"""The Python API (issue #43): ``compressdet.run`` on a dict recipe, ``Run`` reading its manifest, ``load`` +
``Detector.predict`` against ``compressdet predict``'s own output, and ``compress`` on a tiny torchvision FCOS the
test builds (saved, reloaded by its factory in the stages, predicted with the data's class names)."""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import compressdet
from compressdet import Detections, Run, UserError
from compressdet.errors import RecipeError

torch.set_num_threads(1)

SCHED = {"steps": 1, "batch_size": 2, "lr": 0.01, "eval_every": 1, "checkpoint_every": 1, "log_every": 1,
         "threads": 1}
DATA = {"format": "synth", "image_size": [64, 128], "classes": ["car", "pedestrian"],
        "synth": {"num_images": 6, "size": [384, 128], "seed": 0}, "augment": {"enabled": False},
        "max_val_images": 2, "max_test_images": 2}


def tiny_fcos(num_classes, width=4, fpn_channels=64):
    """A tiny torchvision FCOS (five stride-2 conv blocks, FPN, one-conv head): the model a user holds."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.fcos import FCOSHead
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    w = width
    body = nn.Sequential(OrderedDict(stem=block(3, w), c2=block(w, w), c3=block(w, 2 * w), c4=block(2 * w, 4 * w),
                                     c5=block(4 * w, 8 * w)))
    backbone = BackboneWithFPN(body, {"c3": "0", "c4": "1", "c5": "2"}, [2 * w, 4 * w, 8 * w], fpn_channels,
                               extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
    return FCOS(backbone, num_classes, head=FCOSHead(fpn_channels, 1, num_classes, num_convs=1))


def _recipe(name: str = "api") -> dict:
    return {"name": name, "seed": 0, "device": "cpu", "data": DATA,
            "stages": [{"name": "train", "kind": "train", "model": "shuffledet_0.25x", "schedule": SCHED}]}


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (96, 256, 3), dtype=np.uint8)


def test_run_a_dict_recipe_and_read_the_run(tmp_path):
    run = compressdet.run(_recipe(), runs_root=tmp_path / "runs")
    assert isinstance(run, Run) and run.path.parent == tmp_path / "runs" / "api"
    assert [(s.name, s.kind, s.status) for s in run.stages] == [("train", "train", "done")]
    assert run.recipe.data.classes == ["car", "pedestrian"] and run.recipe.stage("train").schedule.steps == 1
    assert run.metrics("train")["steps"] == 1 and "map40" in run.metrics("train")  # what the stage reported
    arts = run.artifacts("train")
    assert arts["model"].is_file() and run.model_path() == arts["model"] == run.model_path("train")
    assert run.report is None and run.deploy is None
    # the latest run, under the runs root or the recipe's own folder
    assert Run.latest(tmp_path / "runs") == run == Run.latest(tmp_path / "runs" / "api")
    # resume: the finished stage is verified and skipped, the same directory comes back
    assert compressdet.run(_recipe(), resume=True, runs_root=tmp_path / "runs") == run
    with pytest.raises(UserError, match="no stage 'nope'.*stages: train"):
        run.metrics("nope")


def test_run_refuses_a_bad_dict_by_field_and_writes_nothing(tmp_path):
    bad = _recipe()
    bad["stages"][0]["schedule"] = {**SCHED, "stepz": 3}
    with pytest.raises(RecipeError, match=r"stages\[0\]\.schedule.*stepz"):
        compressdet.run(bad, runs_root=tmp_path / "runs")
    with pytest.raises(RecipeError, match="steps"):
        compressdet.run(_recipe(), overrides=["stages.train.schedule.steps=0"], runs_root=tmp_path / "runs")
    with pytest.raises(UserError, match="expected a path, a compressdet.Recipe or a dict"):
        compressdet.run(42)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(UserError, match="not a run directory"):
        Run(tmp_path)
    with pytest.raises(UserError, match="no run found"):
        Run.latest(tmp_path)


def test_cli_run_goes_through_the_api(tmp_path, monkeypatch, capsys):
    import yaml

    from compressdet import api
    from compressdet.cli import main

    seen = {}

    def fake_run(recipe, overrides=None, **kw):
        seen.update(recipe=recipe, overrides=overrides, **kw)
        (tmp_path / "r").mkdir()
        (tmp_path / "r" / "manifest.json").write_text(json.dumps({"stages": {}}))
        return Run(tmp_path / "r")

    monkeypatch.setattr(api, "run", fake_run)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(_recipe()))
    assert main(["run", str(tmp_path / "recipe.yaml"), "seed=3", "--resume", "--runs-root", str(tmp_path)]) == 0
    assert seen["recipe"] == tmp_path / "recipe.yaml" and seen["overrides"] == ["seed=3"] and seen["resume"] is True
    assert f"finished: {tmp_path / 'r'}" in capsys.readouterr().out


def test_compress_a_torchvision_fcos_then_load_and_predict(tmp_path):
    torch.manual_seed(0)
    student, teacher = tiny_fcos(2), tiny_fcos(2, width=8)
    stages = [{"name": "finetune", "kind": "train", "from": "student", "teacher": "teacher",
               "distill": [{"method": "fgfi", "weight": 1.0}], "schedule": SCHED}]
    run = compressdet.compress(student, teacher, data=DATA, stages=stages, name="mine", runs_root=tmp_path / "runs",
                               overrides=["device=cpu"], student_factory=tiny_fcos,
                               teacher_factory=functools.partial(tiny_fcos, width=8))
    assert [(s.name, s.kind, s.status) for s in run.stages] == [
        ("student", "model_file", "done"), ("teacher", "model_file", "done"), ("finetune", "train", "done")]
    # the staged files are named by their bytes and pinned in the recipe; their arch names the factory
    staged = sorted(p.name for p in (tmp_path / "runs" / "mine" / "_inputs").iterdir())
    assert [n.split("-")[0] for n in staged] == ["student", "teacher"]
    assert run.recipe.stage("student").sha256 and run.recipe.stage("student").path.endswith(staged[0])
    arch = torch.load(run.model_path(), weights_only=True)["arch"]
    assert arch["factory"] == f"{Path(__file__).resolve()}:tiny_fcos" and arch["classes"] == ["car", "pedestrian"]
    teacher_arch = torch.load(run.model_path("teacher"), weights_only=True)["arch"]
    assert teacher_arch["args"] == {"width": 8}
    # the staged student holds the instance's weights (wrapped, not re-initialised)
    sd = torch.load(run.model_path("student"), weights_only=True)["state_dict"]
    assert torch.equal(sd["det.backbone.body.stem.0.weight"], student.backbone.body.stem[0].weight.detach())

    det = compressdet.load(run)
    assert det.classes == ["car", "pedestrian"] and det.image_size == (64, 128) and det.backend == "torch"
    img = _image()
    out = det.predict(img, score_threshold=0.0)
    assert isinstance(out, Detections) and len(out) > 0
    assert set(out.class_names) <= {"car", "pedestrian"}
    assert out.class_names == [det.classes[i] for i in out.labels]
    assert out.boxes.shape == (len(out), 4) and out.boxes[:, 2].max() <= 256 + 1e-3 and out.boxes[:, 3].max() <= 96 + 1e-3
    assert (out.scores >= 0).all() and len(det.predict(img, score_threshold=1.0)) == 0

    # the same detections as `compressdet predict` on the same image (same transform, decode, threshold)
    from PIL import Image

    from compressdet.cli import main

    (tmp_path / "imgs").mkdir()
    Image.fromarray(img).save(tmp_path / "imgs" / "a.png")
    assert main(["predict", str(tmp_path / "imgs"), "--model", str(run.path), "--out", str(tmp_path / "pred"),
                 "--save-txt", "kitti", "--score-threshold", "0"]) == 0
    lines = (tmp_path / "pred" / "labels" / "a.txt").read_text().splitlines()
    cli = [(ln.split()[0].lower(), np.array([float(v) for v in ln.split()[4:8]])) for ln in lines]
    assert len(cli) == len(out)  # KITTI files keep 2 decimals: every box has its line within 0.01 px
    for name, box in zip(out.class_names, out.boxes):
        assert any(n == name.lower() and np.abs(b - box).max() <= 0.011 for n, b in cli), (name, box)
    # a path, a PIL image and a list give the same; a wrong array is one line
    from_path = det.predict(str(tmp_path / "imgs" / "a.png"), score_threshold=0.0)
    pair = det.predict([Image.fromarray(img), img], score_threshold=0.0)
    assert np.allclose(from_path.boxes, out.boxes) and len(pair) == 2 and np.allclose(pair[0].scores, out.scores)
    with pytest.raises(UserError, match=r"images\[1\]: expected an H x W x 3 uint8 RGB array, got shape \(4, 4\)"):
        det.predict([img, np.zeros((4, 4), np.uint8)])


def test_compress_refuses_what_it_cannot_rebuild_and_writes_nothing(tmp_path):
    student = tiny_fcos(2)
    roots = tmp_path / "runs"
    with pytest.raises(UserError, match="student: a torchvision FCOS cannot be rebuilt.*student_factory="):
        compressdet.compress(student, data=DATA, stages=[], runs_root=roots)
    with pytest.raises(UserError, match="student_factory: .*lambda or nested function"):
        compressdet.compress(student, data=DATA, runs_root=roots, student_factory=lambda num_classes: student)
    with pytest.raises(UserError, match="student: expected a torchvision FCOS / RetinaNet or a detector"):
        compressdet.compress(nn.Linear(2, 2), data=DATA, runs_root=roots)
    with pytest.raises(RecipeError, match="data.*image_size"):  # the data block is checked before any file is saved
        compressdet.compress(student, data={**DATA, "image_size": [60, 128]}, runs_root=roots,
                             student_factory=tiny_fcos)
    # a factory that cannot build the model again: said before any run starts
    with pytest.raises(UserError, match="student: the saved model does not load again.*tiny_fcos' failed"):
        compressdet.compress(student, data=DATA, runs_root=roots, student_factory=functools.partial(tiny_fcos, width="x"))
    with pytest.raises(UserError, match="positional arguments"):
        compressdet.compress(student, data=DATA, runs_root=roots, student_factory=functools.partial(tiny_fcos, 2))
    from compressdet.recipe import DataConfig

    with pytest.raises(UserError, match="student: a torchvision FCOS cannot be rebuilt"):  # a DataConfig is data too
        compressdet.compress(student, data=DataConfig.model_validate(DATA), runs_root=roots)
    assert not roots.exists()


def test_default_stages_make_a_valid_recipe():
    import yaml

    from compressdet.api import default_stages
    from compressdet.recipe import parse_recipe

    refs = [{"name": "student", "kind": "model_file", "path": "s.pt"}, {"name": "teacher", "kind": "model_file",
                                                                       "path": "t.pt"}]
    recipe = parse_recipe(yaml.safe_dump({"name": "x", "data": DATA, "stages": refs + default_stages(True)}),
                          check_paths=False)
    kinds = [(s.name, s.kind) for s in recipe.stages]
    assert kinds[2:] == [("finetune", "train"), ("int8", "ptq"), ("export", "export"), ("bench", "bench")]
    ft = recipe.stage("finetune")
    assert ft.teacher == "teacher" and [d.method for d in ft.distill] == ["fgfi"]
    assert recipe.stage("export").from_ == "int8" and "onnx-int8" in recipe.stage("export").formats
    plain = [s["name"] for s in default_stages(False, quantize=False)]
    assert plain == ["finetune", "export", "bench"] and "teacher" not in default_stages(False)[0]


def test_run_reads_reports_and_refuses_a_stage_without_a_model(tmp_path):
    """``report`` / ``deploy``: the last finished bench / deploy stage's file, else the commands' folders."""
    run_dir = tmp_path / "r"
    for rel, body in {"a/model.pt": "m", "b1/report.json": '{"n": 1}', "b2/report.json": '{"n": 2}',
                      "deploy/deploy.json": '{"chosen": "ort"}'}.items():
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / rel).write_text(body)
    stages = {"a": {"kind": "train", "status": "done", "artifacts": {"model": {"path": "a/model.pt"}}},
              "b1": {"kind": "bench", "status": "done", "artifacts": {"report": {"path": "b1/report.json"}}},
              "b2": {"kind": "bench", "status": "done", "artifacts": {"report": {"path": "b2/report.json"}}},
              "b3": {"kind": "bench", "status": "failed"}}
    (run_dir / "manifest.json").write_text(json.dumps({"recipe": "x", "stages": stages}))
    run = Run(run_dir)
    assert run.report == {"n": 2} and run.deploy == {"chosen": "ort"}
    assert [s.status for s in run.stages] == ["done", "done", "done", "failed"] and run.metrics("b3") == {}
    assert run.model_path() == run_dir / "a" / "model.pt"
    with pytest.raises(UserError, match="stage 'b1' has no model file \\(stages with one: a\\)"):
        run.model_path("b1")
    (run_dir / "manifest.json").write_text(json.dumps({"recipe": "x", "stages": {"a": stages["a"]}}))
    (run_dir / "bench").mkdir()
    (run_dir / "bench" / "report.json").write_text('{"n": 3}')
    assert run.report == {"n": 3}  # what `compressdet bench RUN` wrote; the manifest is read again


def test_run_applies_overrides_to_a_recipe_object(tmp_path):
    from compressdet import load_recipe
    from compressdet.api import _as_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml")
    changed = _as_recipe(recipe, ["stages.teacher.schedule.steps=7"])
    assert changed.stage("teacher").schedule.steps == 7 and recipe.stage("teacher").schedule.steps != 7
    assert _as_recipe(recipe, None) is recipe
    with pytest.raises(RecipeError, match="teachr"):
        compressdet.run(recipe, overrides=["stages.teachr.schedule.steps=7"], runs_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_load_a_shipped_model_file_and_predict():
    det = compressdet.load("asset:shuffledet_0.25x_imitated_synthkitti")
    assert det.backend == "torch" and det.classes == ["car", "pedestrian", "cyclist"]
    found = det.predict(_image(), score_threshold=0.0)
    assert len(found) > 0 and set(found.class_names) <= set(det.classes)
    with pytest.raises(UserError, match="unknown backend 'onnx'"):
        compressdet.load("asset:shuffledet_0.25x_imitated_synthkitti", backend="onnx")
    with pytest.raises(UserError, match="score_threshold 2"):
        det.predict(_image(), score_threshold=2)


@pytest.mark.slow
def test_compress_default_stages_run_end_to_end(tmp_path):
    """The default chain (distilled fine-tune, PTQ, export, bench) on a held FCOS: bench's timing processes and
    ``load(..., backend="ort-int8")`` rebuild the model from the factory recorded in its file."""
    quick = ["device=cpu", "stages.finetune.schedule.steps=1", "stages.finetune.schedule.batch_size=2",
             "stages.finetune.schedule.eval_every=1", "stages.finetune.schedule.threads=1",
             "stages.int8.quant.calibration_images=2", "stages.bench.stages=[finetune,int8]",
             "stages.bench.backends=[ort,ort-int8]", "stages.bench.runs=1", "stages.bench.rounds=1",
             "stages.bench.warmup=0", "stages.bench.threads=1"]
    run = compressdet.compress(tiny_fcos(2), tiny_fcos(2, width=8), data=DATA, runs_root=tmp_path / "runs",
                               overrides=quick, student_factory=tiny_fcos,
                               teacher_factory=functools.partial(tiny_fcos, width=8))
    assert [(s.name, s.status) for s in run.stages] == [(n, "done") for n in
                                                        ("student", "teacher", "finetune", "int8", "export", "bench")]
    assert [r["label"] for r in run.report["rows"]] == ["finetune", "int8 (ptq)"]
    assert {"onnx", "onnx_int8"} <= set(run.artifacts("export"))
    det = compressdet.load(run, stage="int8", backend="ort-int8")
    assert det.path.name.endswith(".onnx") and det.classes == ["car", "pedestrian"]
    assert set(det.predict(_image(), score_threshold=0.0).class_names) <= {"car", "pedestrian"}
