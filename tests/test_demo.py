"""``make demo``'s parts: the shipped models are the files their card describes and they detect; the
demo recipe runs end to end (tiny overrides) and ``predict`` draws its INT8 model's detections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compressdet._io import sha256_file
from compressdet.assets import ASSETS, asset_path

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def test_shipped_models_are_the_files_their_card_records():
    rec = json.loads((REPO / "benchmarks" / "results" / "demo_assets.json").read_text())
    card = (REPO / "compressdet" / "assets" / "CARD.md").read_text()
    assert set(rec["models"]) == set(ASSETS)
    for name, m in rec["models"].items():
        assert sha256_file(asset_path(name)) == m["sha256"], f"{name}: re-run python benchmarks/demo_assets.py"
        assert f"`{name}`" in card and f"{m['test_map40']['demo_fp16_file']:.2f}" in card


def test_shipped_teacher_detects_and_an_untrained_one_does_not(tmp_path):
    """On 12 fresh SynthKITTI images (a seed the assets never saw), the fp16 teacher file scores
    car AP40 (moderate) well above an untrained 1x (~0): the shipped weights are trained weights."""
    from compressdet.engine.launch import build_evaluate_fn
    from compressdet.models import build_model, load_model
    from compressdet.recipe import DataConfig, EvalConfig, PostprocessConfig

    data = DataConfig(format="synth", image_size=(192, 624), max_val_images=12,
                      synth={"num_images": 24, "size": (1242, 375), "seed": 123, "val_fraction": 0.5,
                             "cache_dir": str(tmp_path / "synth")})
    teacher, meta = load_model(asset_path("shuffledet_1x_synthkitti"))
    assert meta["asset"] == "shuffledet_1x_synthkitti" and next(teacher.parameters()).dtype == torch.float32
    evaluate = build_evaluate_fn(data, eval_cfg=EvalConfig(num_images_logged=0), postprocess=PostprocessConfig())
    car = lambda res: res["ap"]["car"]["moderate"]  # noqa: E731  (the class with enough boxes in 12 images)
    got = car(evaluate(teacher.eval(), 0))
    torch.manual_seed(0)
    untrained = car(evaluate(build_model("shuffledet_1x", image_size=(192, 624)).eval(), 0))
    assert got > 15.0 and got > untrained + 15.0, (got, untrained)  # measured: 28.3 vs 0.0


@pytest.mark.slow
def test_demo_recipe_runs_end_to_end_and_predict_draws_the_deployed_detections(tmp_path):
    """recipes/demo.yaml as ``make demo`` runs it, shrunk (few images, 2 steps per stage, 2 timing runs in one round),
    its deploy stage's choice, then ``make demo-predict``'s command on the run's test split with the deployed file."""
    pytest.importorskip("onnxruntime")
    from compressdet.cli import main

    runs = tmp_path / "runs"
    over = ["data.synth.num_images=24", "data.image_size=[192,624]"]
    over += [f"stages.pruned.schedule.{k}=2" for k in ("steps", "eval_every", "checkpoint_every", "batch_size")]
    over += ["stages.bench.runs=2", "stages.bench.rounds=1", "stages.bench.backends=[ort,ort-int8]"]
    over += ["stages.deploy.runs=2", "stages.deploy.rounds=1", "stages.deploy.warmup=1",
             "stages.deploy.calibration_images=2"]
    assert main(["run", str(REPO / "recipes" / "demo.yaml"), "--runs-root", str(runs), *over]) == 0
    run = next((runs / "demo").iterdir())
    report = json.loads((run / "bench" / "report.json").read_text())
    assert report["split"] == "test"
    by_stage = {r["stage"]: r for r in report["rows"]}
    assert {"teacher", "student", "pruned"} <= set(by_stage)
    assert any(r["precision"] == "int8" for r in report["rows"])
    deployed = json.loads((run / "deploy" / "deploy.json").read_text())  # the demo ends deploying the student
    assert deployed["chosen"] and (run / "deploy" / deployed["artifact"]["file"]).is_file()
    out = tmp_path / "pred"
    assert main(["predict", "split:test", "--runs-root", str(runs), "--stage", "deploy", "--max-images", "2",
                 "--out", str(out), "--threads", "1"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    pred = json.loads((out / "predict.json").read_text())  # the deployed file, drawn at a val-chosen threshold
    assert pred["path"] == str(run / "deploy" / deployed["artifact"]["file"])
    assert pred["draw_threshold"]["value"] >= 0.0 and pred["draw_threshold"]["source"]
