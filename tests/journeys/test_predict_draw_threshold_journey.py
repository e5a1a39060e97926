"""Journey (issue #42): `compressdet predict`'s pictures show one box per object, not every NMS survivor.

Evaluation keeps every detection (score_thresh 0), and predict used to draw them all (or whatever
--score-threshold the user guessed): the shipped 0.25x student drew 3-6 overlapping boxes on most cars.
predict now draws at the score maximising F1 on the run's val split, writes that threshold (and the boxes
drawn) to OUT/predict.json, and still writes every detection to the results. Run as a user types it: a run
holding the shipped student on a few small SynthKITTI images, the CLI in a subprocess.
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
import yaml

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
ASSET = "asset:shuffledet_0.25x_imitated_synthkitti"


def cli(*args, cwd):
    r = subprocess.run([sys.executable, "-m", "compressdet", *map(str, args)], cwd=cwd, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"compressdet {' '.join(map(str, args))}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run whose one stage is the shipped 0.25x student, on 36 SynthKITTI images at the model's input size."""
    from compressdet._io import sha256_file
    from compressdet.assets import resolve_model_path

    root = tmp_path_factory.mktemp("runs")
    run = root / "assetrun" / "20260101-000000"
    (run / "student").mkdir(parents=True)
    shutil.copy(resolve_model_path(ASSET), run / "student" / "model.pt")
    recipe = {"name": "assetrun", "data": {"format": "synth", "image_size": [192, 624],
                                           "synth": {"num_images": 36, "size": [624, 192], "seed": 7,
                                                     "val_fraction": 0.35, "test_fraction": 0.3,
                                                     "cache_dir": str(root / "synth")}},
              "stages": [{"name": "student", "kind": "model_file", "path": ASSET}]}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    man = {"recipe": "assetrun", "run_id": run.name, "stages": {"student": {
        "kind": "model_file", "status": "done", "inputs": {},
        "artifacts": {"model": {"path": "student/model.pt", "sha256": sha256_file(run / "student" / "model.pt")}}}}}
    (run / "manifest.json").write_text(json.dumps(man))
    return run


def _boxes_per_object(run: Path, drawn: dict[str, list[dict]]) -> np.ndarray:
    """For each test object with a drawn box on it (IoU > 0.3, any class), how many drawn boxes are on it."""
    from compressdet.data.records import load_box_ground_truth
    from compressdet.predict.threshold import _iou
    from compressdet.recipe import load_recipe

    gt, _ = load_box_ground_truth(load_recipe(run / "recipe.yaml").data, "test")
    counts = []
    for name, boxes in drawn.items():
        g = gt[name]
        gb = g["boxes"][~g["crowd"]]
        if not len(gb) or not boxes:
            continue
        on = (_iou(gb, np.asarray([b["box"] for b in boxes], np.float64)) > 0.3).sum(1)
        counts += [int(c) for c in on if c > 0]
    return np.asarray(counts)


def test_predict_draws_one_box_per_object_at_the_val_threshold(run, tmp_path):
    new, old = tmp_path / "new", tmp_path / "old"
    r = cli("predict", "split:test", "--model", run, "--out", new, "--save-txt", "kitti", "--threads", "1",
            cwd=tmp_path)
    rep = json.loads((new / "predict.json").read_text())
    t = rep["draw_threshold"]
    assert t["source"].startswith("max F1") and t["val"]["images"] > 0 and 0 < t["value"] < 1, t
    assert f"{t['value']:.3f}" in r.stdout and "predict.json" in r.stdout  # said aloud, and where it is written
    assert (run / "predict_thresholds.json").is_file()  # chosen once, cached in the run
    assert rep["results_score_threshold"] == 0.0  # results keep every detection: eval scores what bench does
    n_results = sum(len(p.read_text().splitlines()) for p in (new / "labels").glob("*.txt"))
    assert n_results > sum(len(v) for v in rep["drawn"].values())
    assert all(b["score"] >= t["value"] for v in rep["drawn"].values() for b in v)

    # the old default: every detection the evaluation keeps drawn (score_thresh 0)
    cli("predict", "split:test", "--model", run, "--out", old, "--draw-threshold", "0", "--threads", "1",
        cwd=tmp_path)
    old_rep = json.loads((old / "predict.json").read_text())
    assert old_rep["draw_threshold"] == {"value": 0.0, "source": "--draw-threshold"}
    now, before = _boxes_per_object(run, rep["drawn"]), _boxes_per_object(run, old_rep["drawn"])
    assert len(now) and len(before)
    dup_now, dup_before = float((now > 1).mean()), float((before > 1).mean())
    assert (now == 1).mean() > 0.5, now  # most objects found: one box
    assert dup_now <= 0.5 * dup_before, (dup_now, dup_before)  # duplicates at least halved
    assert now.mean() < before.mean()


def test_stage_deploy_of_the_latest_run_draws_what_deploy_chose(run, tmp_path):
    """`make demo-predict`: `predict split:test --runs-root runs --stage deploy` runs the file the run's deploy
    stage chose (what the user takes home), at a drawing threshold chosen on val for that file."""
    dep = run / "deploy"
    dep.mkdir(exist_ok=True)
    shutil.copy(run / "student" / "model.pt", dep / "deployed.pt")
    (dep / "deploy.json").write_text(json.dumps({
        "chosen": "torch-fp32", "artifact": {"file": "deployed.pt", "backend": "torch"},
        "classes": ["car", "pedestrian", "cyclist"], "postprocess": {}, "model": {"run_dir": str(run)}}))
    out = tmp_path / "demo_predictions"
    r = cli("predict", "split:test", "--runs-root", run.parent.parent, "--stage", "deploy", "--max-images", "2",
            "--out", out, "--threads", "1", cwd=tmp_path)
    rep = json.loads((out / "predict.json").read_text())
    assert rep["model"].startswith("deployed torch-fp32") and rep["path"] == str(dep / "deployed.pt"), rep["model"]
    assert rep["draw_threshold"]["source"].startswith("max F1") and len(rep["drawn"]) == 2
    assert "deployed torch-fp32" in r.stdout
