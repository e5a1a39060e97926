"""Stage kind ``model_file``: a saved model (e.g. a teacher from another run) enters a recipe."""

from __future__ import annotations

import json

import pytest
import torch

from compressdet.cli import main
from compressdet.errors import RecipeError
from compressdet.models import build_model, load_model, save_model
from compressdet.recipe import parse_recipe

RECIPE = """
name: mf
seed: 0
device: cpu
data:
  format: synth
  image_size: [64, 192]
  synth: {{num_images: 8, size: [384, 128], seed: 0, cache_dir: {cache}}}
  max_val_images: 2
stages:
  - {{name: teacher, kind: model_file, path: {path}{sha}}}
  - name: student
    kind: train
    model: shuffledet_0.25x
    teacher: teacher
    imitation: {{weight: 1.0}}
    schedule: {{steps: 2, batch_size: 2, eval_every: 2, checkpoint_every: 2, log_every: 1, threads: 1}}
"""


def _teacher(tmp_path):
    torch.manual_seed(3)
    path = save_model(build_model("shuffledet_1x", image_size=(64, 192)), tmp_path / "random_1x.pt",
                      meta={"note": "untrained"})
    from compressdet._io import sha256_file

    return path, sha256_file(path)


def test_model_file_feeds_a_teacher(tmp_path):
    torch.set_num_threads(1)
    path, digest = _teacher(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(cache=tmp_path / "cache", path=path, sha=f", sha256: {digest}"))
    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), "--run-dir", str(run_dir)]) == 0
    man = json.loads((run_dir / "manifest.json").read_text())
    rec = man["stages"]["teacher"]
    assert rec["status"] == "done" and rec["artifacts"]["model"]["sha256"] == digest
    assert rec["meta"]["source_sha256"] == digest and rec["meta"]["source_meta"] == {"note": "untrained"}
    copied, _ = load_model(run_dir / rec["artifacts"]["model"]["path"])
    original, _ = load_model(path)
    for (k, a), b in zip(copied.state_dict().items(), original.state_dict().values()):
        assert torch.equal(a, b), k
    assert man["stages"]["student"]["status"] == "done"
    assert "imitation" in man["stages"]["student"]["metrics"]["final_losses"]
    assert main(["run", str(recipe), "--run-dir", str(run_dir), "--resume"]) == 0  # verified, skipped


def test_model_file_rejects_wrong_hash_and_missing_file(tmp_path):
    path, digest = _teacher(tmp_path)
    bad = "f" * 64
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(cache=tmp_path / "cache", path=path, sha=f", sha256: {bad}"))
    assert main(["run", str(recipe), "--run-dir", str(tmp_path / "a")]) == 2
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert "sha256" in man["stages"]["teacher"]["error"] and man["stages"]["student"]["status"] == "pending"
    recipe.write_text(RECIPE.format(cache=tmp_path / "cache", path=tmp_path / "nope.pt", sha=""))
    assert main(["run", str(recipe), "--run-dir", str(tmp_path / "b")]) == 2
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert "does not exist" in man["stages"]["teacher"]["error"]


def test_model_file_schema():
    with pytest.raises(RecipeError, match="path"):
        parse_recipe("name: x\nstages:\n  - {name: t, kind: model_file}\n")
    with pytest.raises(RecipeError, match="sha256"):
        parse_recipe("name: x\nstages:\n  - {name: t, kind: model_file, path: a.pt, sha256: xyz}\n")


def test_half_model_file_round_trips_within_fp16(tmp_path):
    """``save_model(half=True)`` (how shipped assets are stored) is half the bytes and loads as float32."""
    torch.manual_seed(0)
    model = build_model("shuffledet_0.25x", image_size=(64, 192)).eval()
    full = save_model(model, tmp_path / "full.pt")
    half = save_model(model, tmp_path / "half.pt", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    back, meta = load_model(half)
    assert meta["stored_dtype"] == "float16"
    for (k, a), b in zip(back.state_dict().items(), model.state_dict().values()):
        assert a.dtype == b.dtype, k
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
        else:
            assert torch.equal(a, b), k
    x = torch.rand(1, 3, 64, 192)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=1e-2, atol=1e-2)


def test_unknown_asset_is_a_one_line_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(cache=tmp_path / "cache", path="'asset:no_such_model'", sha=""))
    assert main(["run", str(recipe), "--run-dir", str(tmp_path / "a")]) == 2
    err = json.loads((tmp_path / "a" / "manifest.json").read_text())["stages"]["teacher"]["error"]
    assert "unknown asset 'no_such_model'" in err and "shuffledet_1x_synthkitti" in err
