"""Pipeline: order, inputs, manifest, resume with hash checks, atomic writes under SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pipeline_plugin  # noqa: F401  (registers the 'echo' stage kind)
import pytest

from compressdet.cli import main

RECIPE = """name: chain
data: {format: synth, image_size: [64, 192]}
stages:
  - {name: a, kind: echo, text: "A"}
  - {name: b, kind: echo, from: a, text: "B"}
  - {name: c, kind: echo, from: b, text: "C"}
"""


@pytest.fixture
def recipe(tmp_path):
    p = tmp_path / "chain.yaml"
    p.write_text(RECIPE)
    pipeline_plugin.CALLS.clear()
    return p


def run(*args):
    return main(["run", *map(str, args)])


def test_runs_in_order_and_passes_artifacts(recipe, tmp_path):
    assert run(recipe, "--run-dir", tmp_path / "r") == 0
    assert pipeline_plugin.CALLS == ["a", "b", "c"]
    assert (tmp_path / "r" / "c" / "out.txt").read_text() == "ABC"


def test_manifest_contents(recipe, tmp_path):
    run(recipe, "--run-dir", tmp_path / "r")
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["recipe"] == "chain"
    assert set(m["versions"]) >= {"python", "torch", "compressdet", "git_commit", "cpu"}
    b = m["stages"]["b"]
    assert b["status"] == "done" and b["inputs"] == {"from": "a"}
    assert b["metrics"] == {"length": 2} and b["meta"] == {"text": "B"}
    assert b["artifacts"]["out"]["path"] == "b/out.txt"
    import hashlib

    assert b["artifacts"]["out"]["sha256"] == hashlib.sha256(b"AB").hexdigest()
    assert b["wall_time_s"] >= 0
    assert (tmp_path / "r" / "recipe.yaml").is_file()


def test_default_run_dir_under_runs_root(recipe, tmp_path):
    assert run(recipe, "--runs-root", tmp_path / "runs") == 0
    (run_dir,) = (tmp_path / "runs" / "chain").iterdir()
    assert (run_dir / "manifest.json").is_file()


def test_resume_skips_done_stages(recipe, tmp_path):
    run(recipe, "--run-dir", tmp_path / "r")
    pipeline_plugin.CALLS.clear()
    assert run(recipe, "--run-dir", tmp_path / "r", "--resume") == 0
    assert pipeline_plugin.CALLS == []


def test_existing_run_dir_needs_resume(recipe, tmp_path, capsys):
    run(recipe, "--run-dir", tmp_path / "r")
    assert run(recipe, "--run-dir", tmp_path / "r") == 2
    assert "pass --resume" in capsys.readouterr().err


def test_changed_artifact_is_an_error_not_a_rerun(recipe, tmp_path, capsys):
    run(recipe, "--run-dir", tmp_path / "r")
    (tmp_path / "r" / "a" / "out.txt").write_text("tampered")
    pipeline_plugin.CALLS.clear()
    assert run(recipe, "--run-dir", tmp_path / "r", "--resume") == 2
    err = capsys.readouterr().err
    assert "a/out.txt: sha256" in err and "does not match the manifest" in err and "--from-stage a" in err
    assert pipeline_plugin.CALLS == []


def test_missing_artifact_is_an_error(recipe, tmp_path, capsys):
    run(recipe, "--run-dir", tmp_path / "r")
    (tmp_path / "r" / "b" / "out.txt").unlink()
    assert run(recipe, "--run-dir", tmp_path / "r", "--resume") == 2
    assert "artifact 'out' of finished stage 'b' is missing" in capsys.readouterr().err


def test_changed_settings_of_done_stage_are_detected(recipe, tmp_path, capsys):
    run(recipe, "--run-dir", tmp_path / "r")
    assert run(recipe, "stages.b.text=Z", "--run-dir", tmp_path / "r", "--resume") == 2
    assert "stage 'b' ran with different settings" in capsys.readouterr().err


def test_from_stage_and_only(recipe, tmp_path):
    run(recipe, "--run-dir", tmp_path / "r")
    pipeline_plugin.CALLS.clear()
    assert run(recipe, "stages.b.text=Z", "--run-dir", tmp_path / "r", "--from-stage", "b") == 0
    assert pipeline_plugin.CALLS == ["b", "c"]
    assert (tmp_path / "r" / "c" / "out.txt").read_text() == "AZC"
    pipeline_plugin.CALLS.clear()
    assert run(recipe, "stages.b.text=Z", "--run-dir", tmp_path / "r", "--only", "c") == 0
    assert pipeline_plugin.CALLS == ["c"]


def test_only_needs_finished_inputs(recipe, tmp_path, capsys):
    assert run(recipe, "--run-dir", tmp_path / "r", "--only", "b") == 2
    assert "stage 'a' is needed by the selected stages" in capsys.readouterr().err


def test_failed_stage_is_recorded_and_resume_gets_its_checkpoint(recipe, tmp_path, monkeypatch):
    text = RECIPE.replace('text: "B"}', 'text: "B", fail_once_env: FAIL_B}')
    recipe.write_text(text)
    monkeypatch.setenv("FAIL_B", "1")
    assert run(recipe, "--run-dir", tmp_path / "r") == 1
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["stages"]["a"]["status"] == "done"
    assert m["stages"]["b"]["status"] == "failed" and "simulated crash" in m["stages"]["b"]["error"]
    monkeypatch.delenv("FAIL_B")
    pipeline_plugin.CALLS.clear()
    assert run(recipe, "--run-dir", tmp_path / "r", "--resume") == 0
    assert pipeline_plugin.CALLS == ["b", "c"]
    info = json.loads((tmp_path / "r" / "b" / "info.json").read_text())
    assert info["resumed_from"] == "checkpoint of b"
    # a fresh (non-resumed) stage gets no checkpoint
    assert json.loads((tmp_path / "r" / "c" / "info.json").read_text())["resumed_from"] is None


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root``: bytes and mtime (a refused command must change neither)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_interrupted_stage_with_changed_settings_is_refused_and_nothing_changes(recipe, tmp_path, monkeypatch,
                                                                                capsys):
    """A failed attempt's checkpoint belongs to its settings: after a recipe change, --resume neither
    resumes from it nor deletes it; it refuses as for a finished stage, and --from-stage starts fresh."""
    recipe.write_text(RECIPE.replace('text: "B"}', 'text: "B", fail_once_env: FAIL_B}'))
    monkeypatch.setenv("FAIL_B", "1")
    assert run(recipe, "--run-dir", tmp_path / "r") == 1
    assert (tmp_path / "r" / "b" / "checkpoints" / "last.pt").is_file()
    monkeypatch.delenv("FAIL_B")
    before = _snapshot(tmp_path / "r")
    capsys.readouterr()
    assert run(recipe, "stages.b.text=Z", "--run-dir", tmp_path / "r", "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: stage 'b' was interrupted with different settings than the recipe now gives "
                   "(stages.b.text: \"B\" -> \"Z\"); nothing was changed: resume with the settings it ran with, "
                   "re-run it from step 0 with --from-stage b (deletes its checkpoints), or leave out --resume for "
                   "a new run directory"]
    assert _snapshot(tmp_path / "r") == before  # recipe.yaml, manifest.json, the checkpoint: all as they were
    assert pipeline_plugin.CALLS == ["a", "b"]  # nothing ran
    # the same settings resume from the checkpoint
    assert run(recipe, "--run-dir", tmp_path / "r", "--resume") == 0
    assert json.loads((tmp_path / "r" / "b" / "info.json").read_text())["resumed_from"] == "checkpoint of b"
    # a changed finished stage is refused the same way, naming the field; --from-stage re-runs it fresh
    before = _snapshot(tmp_path / "r")
    assert run(recipe, "stages.b.text=Z", "--run-dir", tmp_path / "r", "--resume") == 2
    assert ("stage 'b' ran with different settings than the recipe now gives (stages.b.text: \"B\" -> \"Z\")"
            in capsys.readouterr().err)
    assert _snapshot(tmp_path / "r") == before
    assert run(recipe, "stages.b.text=Z", "--run-dir", tmp_path / "r", "--from-stage", "b") == 0
    assert json.loads((tmp_path / "r" / "b" / "info.json").read_text())["resumed_from"] is None
    assert (tmp_path / "r" / "c" / "out.txt").read_text() == "AZC"
    assert "text: Z" in (tmp_path / "r" / "recipe.yaml").read_text()


def test_interrupted_stage_without_checkpoints_starts_fresh_with_new_settings(recipe, tmp_path):
    """No saved work, nothing to lose: an interrupted stage with no checkpoint runs with the new settings."""
    assert run(recipe, "--run-dir", tmp_path / "r") == 0
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    m["stages"]["c"]["status"] = "running"
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(m))
    import shutil

    shutil.rmtree(tmp_path / "r" / "c" / "checkpoints")
    assert run(recipe, "stages.c.text=Q", "--run-dir", tmp_path / "r", "--resume") == 0
    assert (tmp_path / "r" / "c" / "out.txt").read_text() == "ABQ"
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["stages"]["c"]["settings"]["stage"]["text"] == "Q"  # the attempt that made the artifacts


def test_selected_stages_refuse_an_input_that_ran_with_other_settings(recipe, tmp_path, capsys):
    """--from-stage / --only keep the stages before them: if the recipe now describes one of those
    differently, the run's recipe.yaml would no longer describe its artifacts."""
    assert run(recipe, "--run-dir", tmp_path / "r") == 0
    before = _snapshot(tmp_path / "r")
    capsys.readouterr()
    assert run(recipe, "stages.a.text=Q", "--run-dir", tmp_path / "r", "--from-stage", "b") == 2
    assert capsys.readouterr().err.strip() == (
        "error: stage 'a' ran with different settings than the recipe now gives (stages.a.text: \"A\" -> \"Q\") "
        "and the selected stages read it; nothing was changed: re-run from it with --from-stage a")
    assert _snapshot(tmp_path / "r") == before


def test_sigkill_mid_write_leaves_no_partial_artifact(tmp_path):
    recipe = tmp_path / "slow.yaml"
    recipe.write_text(RECIPE.replace('text: "B"}', 'text: "B", slow_bytes: 4000000}'))
    code = ("import sys; sys.path.insert(0, %r); import pipeline_plugin; from compressdet.cli import main; "
            "sys.exit(main(['run', %r, '--run-dir', %r]))") % (str(Path(__file__).parent), str(recipe),
                                                              str(tmp_path / "r"))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    b_dir = tmp_path / "r" / "b"
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until the temp file of b's artifact is being written
        if b_dir.is_dir() and any(p.name.startswith(".out.txt.") for p in b_dir.iterdir()):
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("stage b never started writing")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (b_dir / "out.txt").exists()  # only the temp file may remain, never a half artifact
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())  # still valid JSON
    assert m["stages"]["a"]["status"] == "done" and m["stages"]["b"]["status"] == "running"
    pipeline_plugin.CALLS.clear()
    recipe.write_text(RECIPE)  # other settings (no slow write): b re-runs from the start, asked for by name
    assert main(["run", str(recipe), "--run-dir", str(tmp_path / "r"), "--from-stage", "b", "stages.b.text=B"]) == 0
    assert (tmp_path / "r" / "c" / "out.txt").read_text() == "ABC"


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    from compressdet._io import atomic_path

    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise ValueError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]



def test_fingerprints_survive_a_later_optional_field():
    """Adding a recipe field must not make every finished run's stages look changed (``--resume``
    refuses those): a stage with a ``model:`` block had this fingerprint before ``model.anchor_scale``
    existed, and keeps it while the field is unset; setting it changes the fingerprint."""
    from compressdet.pipeline import recipe_fingerprints
    from compressdet.recipe import parse_recipe

    text = """
name: fp
data:
  format: synth
  image_size: [64, 192]
stages:
  - name: student
    kind: train
    model: {arch: retinanet_mnv2_050, dropout: 0.5}
    schedule: {steps: 2, batch_size: 2}
"""
    assert recipe_fingerprints(parse_recipe(text, check_paths=False)) == {"student": "bd44f4125ea11388"}
    set_ = parse_recipe(text.replace("dropout: 0.5", "anchor_scale: 2.0"), check_paths=False)
    assert recipe_fingerprints(set_)["student"] != "bd44f4125ea11388"
    # schedule.amp's new default (auto) is true's new name and schedule.clip unset is the old clip: both keep it;
    # another amp or an explicit clip mode are other settings
    fp = lambda t: recipe_fingerprints(parse_recipe(t, check_paths=False))["student"]  # noqa: E731
    assert fp(text.replace("batch_size: 2}", "batch_size: 2, amp: true}")) == "bd44f4125ea11388"
    assert fp(text.replace("batch_size: 2}", "batch_size: 2, amp: false}")) != "bd44f4125ea11388"
    assert fp(text.replace("batch_size: 2}", "batch_size: 2, clip: {mode: global}}")) != "bd44f4125ea11388"


def test_reduce_range_auto_is_fingerprinted_as_this_cpu_applies_it(monkeypatch):
    """``quant.reduce_range: auto`` is the 8-bit model runs made before the field (on a CPU with an int8 dot
    product) and a 7-bit one elsewhere: the fingerprint follows what is made, not the spelling."""
    from compressdet import _cpu
    from compressdet.pipeline import recipe_fingerprints
    from compressdet.recipe import parse_recipe

    text = """
name: fp
data: {format: synth, image_size: [64, 192]}
stages:
  - {name: student, kind: train, model: {arch: shuffledet_0.25x}, schedule: {steps: 2, batch_size: 2}}
  - {name: int8, kind: ptq, from: student}
"""
    fp = lambda t: recipe_fingerprints(parse_recipe(t, check_paths=False))["int8"]  # noqa: E731
    explicit = {v: fp(text.replace("from: student}", f"from: student, quant: {{reduce_range: {v}}}}}"))
                for v in ("true", "false")}
    assert explicit["true"] != explicit["false"]
    for vnni, bits in ((True, "false"), (False, "true")):
        monkeypatch.setattr(_cpu, "int8_dot_product", lambda v=vnni: v)
        assert fp(text) == explicit[bits]
