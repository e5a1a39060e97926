"""The train stage end to end through the CLI: teacher -> student with imitation (tiny synth run)."""

from __future__ import annotations

import json

import torch

from compressdet.cli import main

RECIPE = """
name: tiny
seed: 0
device: cpu
data:
  format: synth
  image_size: [64, 192]
  synth: {num_images: 16, size: [384, 128], seed: 0, cache_dir: CACHE}
  max_val_images: 3
stages:
  - name: teacher
    kind: train
    model: {arch: shuffledet_1x, dropout: 0.0}
    schedule: {steps: 4, batch_size: 2, eval_every: 2, checkpoint_every: 2, log_every: 1, threads: 1}
  - name: student
    kind: train
    model: shuffledet_0.25x
    teacher: teacher
    imitation: {weight: 1.0, normalizer: seed}
    schedule: {steps: 4, batch_size: 2, eval_every: 2, checkpoint_every: 2, log_every: 1, threads: 1}
"""


def test_teacher_then_student_via_cli(tmp_path):
    torch.set_num_threads(1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("CACHE", str(tmp_path / "cache")))
    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), "--run-dir", str(run_dir)]) == 0
    man = json.loads((run_dir / "manifest.json").read_text())
    for name in ("teacher", "student"):
        rec = man["stages"][name]
        assert rec["status"] == "done"
        assert (run_dir / rec["artifacts"]["model"]["path"]).is_file()
        m = rec["metrics"]
        assert 0.0 <= m["map40"] <= 100.0 and m["steps"] == 4 and m["best_step"] in (2, 4)
        assert set(m["ap40"]) == {"car", "pedestrian", "cyclist"} and m["train_img_per_s"] > 0
        assert (run_dir / name / "checkpoints" / "last.pt").is_file()
        assert any((run_dir / "tb" / name).iterdir())
    assert set(man["stages"]["student"]["metrics"]["final_losses"]) == {"class", "confidence", "box", "imitation",
                                                                          "total"}
    assert "imitation" not in man["stages"]["teacher"]["metrics"]["final_losses"]
    # detection PNGs at each evaluation; the imitating student also shows its imitation masks
    for name, with_masks in (("teacher", False), ("student", True)):
        pngs = sorted(p.name for p in (run_dir / name / "viz").glob("*.png"))
        dets = [p for p in pngs if "_mask_" not in p]
        masks = [p for p in pngs if "_mask_" in p]
        assert len(dets) == 2 * 3, pngs  # 2 evaluations x 3 val images
        assert len(masks) == (2 * 3 if with_masks else 0), pngs
    from PIL import Image

    mask_png = sorted((run_dir / "student" / "viz").glob("step000004_mask_*.png"))[0]
    assert Image.open(mask_png).size == (192, 64)  # drawn over the model input
    from compressdet.models import load_model

    student, meta = load_model(run_dir / man["stages"]["student"]["artifacts"]["model"]["path"])
    assert meta["teacher"] == "teacher" and student.arch["width"] == 0.25
    assert not any("adapt" in k for k in student.state_dict())  # the adaptation layer is not exported
    # a finished run resumes as a no-op (artifacts verified)
    assert main(["run", str(recipe), "--run-dir", str(run_dir), "--resume"]) == 0


def _files(root):
    """Every file under ``root``: bytes and mtime (a refused command must change neither)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_ctrl_c_then_resume_continues_from_the_step_and_refuses_other_settings(tmp_path, monkeypatch, capsys):
    """Ctrl-C after the step-2 checkpoint of 4: the CLI names the stage, the step and the command that
    continues it; a --resume with another batch size is refused with the run directory untouched (its
    checkpoints, recipe.yaml and manifest); the same settings resume from step 2 and give the model an
    uninterrupted run gives, byte for byte."""
    from compressdet.engine import hooks

    torch.set_num_threads(1)
    text = RECIPE.replace("CACHE", str(tmp_path / "cache")).split("  - name: student")[0]
    text = text.replace("eval_every: 2", "eval_every: 4")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    assert main(["run", str(recipe), "--run-dir", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())["stages"]["teacher"]

    save = hooks.PeriodicCheckpointer.after_step

    def save_then_ctrl_c(self):
        save(self)
        if self.trainer.iter + 1 == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(hooks.PeriodicCheckpointer, "after_step", save_then_ctrl_c)
    run_dir = tmp_path / "cut"
    capsys.readouterr()
    assert main(["run", str(recipe), "stages.teacher.schedule.lr=0.02", "--run-dir", str(run_dir)]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"interrupted: stage 'teacher', last checkpoint at step 2 of 4; continue it with: compressdet run {recipe} "
        f"stages.teacher.schedule.lr=0.02 --run-dir {run_dir} --resume")
    monkeypatch.setattr(hooks.PeriodicCheckpointer, "after_step", save)

    before = _files(run_dir)
    assert main(["run", str(recipe), "stages.teacher.schedule.batch_size=1", "--run-dir", str(run_dir),
                 "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: stage 'teacher' was interrupted at step 2 with different "
                                               "settings than the recipe now gives (stages.teacher.schedule."
                                               "batch_size: 2 -> 1)")
    assert "--from-stage teacher" in err[0]
    assert _files(run_dir) == before

    assert main(["run", str(recipe), "--run-dir", str(run_dir), "--resume"]) == 0
    assert "resuming stage 'teacher' from step 2 of 4" in capsys.readouterr().out
    cut = json.loads((run_dir / "manifest.json").read_text())["stages"]["teacher"]
    assert cut["status"] == "done" and cut["settings"]["stage"]["schedule"]["batch_size"] == 2
    assert cut["artifacts"]["model"]["sha256"] == whole["artifacts"]["model"]["sha256"]
