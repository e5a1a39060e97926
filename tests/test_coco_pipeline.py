"""End to end on your own data: recipes/quickstart.yaml with data.format switched to COCO (SynthKITTI
converted by ``compressdet data convert``), made tiny by overrides; two model classes mapped from the
file's categories (merge + rename); stages and bench report COCO AP."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compressdet.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_on_coco_reports_coco_ap(tmp_path, capsys):
    torch.set_num_threads(1)
    assert main(["data", "synth", "--out", str(tmp_path / "synth"), "--num-images", "16", "--size", "384x128"]) == 0
    assert main(["data", "convert", str(tmp_path / "synth"), "--from", "synth", "--to", "coco",
                 "--out", str(tmp_path / "coco")]) == 0
    tiny = [f"stages.teacher.schedule.{k}" for k in ("steps=2", "batch_size=2", "eval_every=2", "checkpoint_every=2",
                                                      "threads=1", "channels_last=false", "log_every=1")]
    ov = [*tiny, "data.format=coco", f"data.root={tmp_path / 'coco'}", "data.image_size=[64,192]",
          "data.max_val_images=3", "device=cpu", "stages.bench.runs=2", "stages.bench.warmup=1",
          "stages.bench.backends=[torch]", "stages.bench.stages=[teacher]", "data.classes=[vehicle,human]",
          "data.class_map={Car: vehicle, Van: vehicle, Pedestrian: human, Cyclist: human}"]
    recipe, run = str(REPO / "recipes" / "quickstart.yaml"), str(tmp_path / "run")
    for stage in ("teacher", "bench"):
        assert main(["run", recipe, "--run-dir", run, "--only", stage, *ov]) == 0, capsys.readouterr().err
    man = json.loads((tmp_path / "run" / "manifest.json").read_text())
    m = man["stages"]["teacher"]["metrics"]
    assert m["metric"] == "coco" and m["primary"] == m["coco"]["ap"] and "map40" not in m and m["ap_unit"] == "percent"
    assert set(m["coco"]) == {"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar100"}
    assert 0.0 <= m["coco"]["ap"] <= 100.0 and m["best_step"] == 2
    rep = json.loads((tmp_path / "run" / "bench" / "report.json").read_text())
    assert rep["metric"] == "coco" and rep["map_key"] == "ap" and rep["ap_unit"] == "percent"
    (row,) = rep["rows"]
    assert row["eval"]["metric"] == "coco" and 0.0 <= row["eval"]["ap"] <= 100.0 and row["eval"]["images"] == 3
    md = (tmp_path / "run" / "bench" / "report.md").read_text()
    assert "| model | MACs | params | AP (%) | AP50 (%) | AP75 (%) | APs (%) | APm (%) | APl (%) | AR100 (%) |" in md
    assert "COCO box AP@[.5:.95]" in md and "car E/M/H" not in md
    assert man["stages"]["bench"]["metrics"]["teacher/mAP"] == row["eval"]["ap"]
    assert man["stages"]["bench"]["metrics"]["ap_unit"] == "percent"
    from compressdet.models import load_model

    model, meta = load_model(tmp_path / "run" / man["stages"]["teacher"]["artifacts"]["model"]["path"])
    assert model.num_classes == 2 and meta["classes"] == ["vehicle", "human"]
