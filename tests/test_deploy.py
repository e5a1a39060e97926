"""compressdet deploy (issue #40): candidates measured, the fastest within the mAP tolerance chosen, the
``kind: deploy`` stage, ``predict --model RUN/deploy``, the run without OpenVINO, refusals.

One tiny run (the shipped 0.25x student at 192x624 on 24 SynthKITTI images, a PTQ stage, a deploy stage)
is made once for the module; the shipped model detects, so candidates' mAPs differ and a tolerance can
reject some.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("torchao")

from compressdet.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)

RECIPE = """name: tiny_deploy
seed: 0
data:
  format: synth
  image_size: [192, 624]
  synth: {{num_images: 24, size: [1242, 375], seed: 7, val_fraction: 0.25, test_fraction: 0.25, cache_dir: {cache}}}
  max_val_images: 6
stages:
  - {{name: student, kind: model_file, path: "asset:shuffledet_0.25x_imitated_synthkitti"}}
  - name: int8
    kind: ptq
    from: student
    quant: {{calibration_images: 2}}
    eval: {{batch_size: 6}}
  - name: deploy
    kind: deploy
    from: int8
    runs: 2
    rounds: 1
    warmup: 1
    threads: 1
    calibration_images: 2
"""

TIMING = ["--runs", "2", "--rounds", "1", "--warmup", "1", "--threads", "1", "--calibration-images", "2"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from compressdet.pipeline import Pipeline
    from compressdet.recipe import parse_recipe

    root = tmp_path_factory.mktemp("deploy")
    recipe = parse_recipe(RECIPE.format(cache=root / "synth"), source="tiny_deploy.yaml")
    return Pipeline(recipe, root / "run").run()


def _measured(rep):
    return [c for c in rep["candidates"] if c["status"] not in ("skipped", "failed")]


def _check_choice(rep):
    """The chosen candidate is the fastest of those within the tolerance, by the report's own numbers."""
    ok = [c for c in _measured(rep) if c["map_drop"] <= rep["max_map_drop"]]
    assert rep["chosen"] == min(ok, key=lambda c: c["latency"]["median_ms"])["name"]
    for c in _measured(rep):
        assert (c["status"] == "rejected") == (c["map_drop"] > rep["max_map_drop"]), c
        assert c["map_drop"] == pytest.approx(rep["reference"]["map"] - c["map"], abs=1e-3)
        assert 0 < c["latency"]["median_ms"] <= c["latency"]["p90_ms"] and c["latency"]["timer"] == "isolated_process"


@pytest.mark.slow
def test_deploy_stage_measures_every_cpu_candidate_and_keeps_the_fastest(run):
    man = json.loads((run / "manifest.json").read_text())["stages"]["deploy"]
    assert man["status"] == "done", man.get("error")
    rep = json.loads((run / "deploy" / "deploy.json").read_text())
    by = {c["name"]: c for c in rep["candidates"]}
    assert set(by) == {"ort-fp32", "openvino-f32", "openvino-default", "ort-int8-qdq", "openvino-int8-qdq",
                       "openvino-int8-nncf"}
    assert all(c["status"] != "skipped" for c in by.values()), by
    # precision read back from each runtime; the exact candidates are exact
    assert by["ort-fp32"]["precision"] == by["openvino-f32"]["precision"] == "fp32"
    assert by["openvino-default"]["precision"] in ("fp32", "bf16")
    assert {by[n]["precision"] for n in ("ort-int8-qdq", "openvino-int8-qdq", "openvino-int8-nncf")} == {"int8"}
    assert abs(by["ort-fp32"]["map_drop"]) < 0.05 and abs(by["openvino-f32"]["map_drop"]) < 0.05
    assert by["openvino-int8-nncf"]["file"].endswith(".nncf.int8.xml")
    _check_choice(rep)
    assert man["metrics"]["chosen"] == rep["chosen"] and rep["artifact"]["name"] == rep["chosen"]
    for f in rep["artifact"]["files"]:
        assert (run / "deploy" / f).is_file()
    assert (run / man["artifacts"]["deployed"]["path"]).name == rep["artifact"]["file"]
    assert rep["speedup_vs_best_exact_fp32"] > 0 and rep["best_exact_fp32"] in ("ort-fp32", "openvino-f32")
    assert (run / "deploy" / "deploy.png").read_bytes()[:4] == b"\x89PNG"
    md = (run / "deploy" / "deploy.md").read_text()
    assert rep["summary"] in md and "deploy.png" in md and rep["artifact"]["file"] in rep["summary"]


@pytest.mark.slow
def test_deploy_cli_rejects_over_the_tolerance_and_predict_runs_the_choice(run, tmp_path):
    """A tolerance only the most accurate candidates meet rejects the others; the choice stays the fastest
    accepted one and ``predict --model DEPLOY_DIR`` runs it."""
    first = json.loads((run / "deploy" / "deploy.json").read_text())
    drops = sorted(c["map_drop"] for c in _measured(first))
    assert drops[0] < drops[-1], drops  # the shipped student: int8/bf16 candidates score differently
    tol = drops[0] + 1e-3
    out = tmp_path / "cli"
    res = subprocess.run([sys.executable, "-m", "compressdet", "deploy", str(run), "--stage", "int8",
                          f"--max-map-drop={tol}", "--out", str(out), *TIMING], capture_output=True, text=True,
                         env=_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads((out / "deploy.json").read_text())
    assert rep["max_map_drop"] == pytest.approx(tol) and rep["model"]["quant_stage"] == "int8"
    assert any(c["status"] == "rejected" and "--max-map-drop" in c["reason"] for c in rep["candidates"])
    _check_choice(rep)
    assert (out / "deploy.png").read_bytes()[:4] == b"\x89PNG"
    assert rep["summary"] in res.stdout.replace("\n", "")
    pred = tmp_path / "pred"
    res = subprocess.run([sys.executable, "-m", "compressdet", "predict", "split:val", "--model", str(out),
                          "--max-images", "1", "--out", str(pred), "--threads", "1"], capture_output=True, text=True,
                         env=_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"deployed {rep['chosen']}" in res.stdout and len(list(pred.glob("*.png"))) == 1


@pytest.mark.slow
def test_deploy_without_openvino_still_measures_onnx_runtime(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    monkeypatch.setitem(sys.modules, "nncf", None)
    out = tmp_path / "noov"
    assert main(["deploy", str(run), "--stage", "int8", "--out", str(out), *TIMING]) == 0
    rep = json.loads((out / "deploy.json").read_text())
    by = {c["name"]: c for c in rep["candidates"]}
    assert {n for n, c in by.items() if c["status"] != "skipped"} == {"ort-fp32", "ort-int8-qdq"}
    for n in ("openvino-f32", "openvino-default", "openvino-int8-qdq", "openvino-int8-nncf"):
        assert "compressdet[openvino]" in by[n]["reason"], by[n]
    assert rep["chosen"] in ("ort-fp32", "ort-int8-qdq") and rep["artifact"]["file"].endswith(".onnx")
    assert "compressdet[openvino]" in capsys.readouterr().out
    _check_choice(rep)


def test_deploy_model_file_without_data_is_refused(tmp_path, capsys):
    from test_export_helpers import make_model

    from compressdet.models import save_model

    p = save_model(make_model(), tmp_path / "m.pt")
    assert main(["deploy", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data RECIPE" in err and str(p) in err
    assert not (tmp_path / "deploy").exists()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_deploy_tolerance_must_be_finite(tmp_path, capsys, value):
    """A NaN tolerance would accept every candidate (no drop compares greater than NaN): refused up front."""
    assert main(["deploy", str(tmp_path / "none"), f"--max-map-drop={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --max-map-drop {float(value)}: expected a finite number of mAP points"


def test_deploy_dir_without_report_is_refused_by_predict(tmp_path):
    from compressdet.errors import UserError
    from compressdet.predict.predictor import resolve_model

    (tmp_path / "deploy" / "candidates").mkdir(parents=True)  # a deploy that stopped half way
    with pytest.raises(UserError, match="unfinished deploy"):
        resolve_model(tmp_path / "deploy")


def test_model_at_size_keeps_the_weights_and_follows_the_size():
    from test_export_helpers import make_model

    from compressdet.deploy.runner import model_at_size

    m = make_model()  # 64x192
    big = model_at_size(m, (128, 384))
    assert tuple(big.image_size) == (128, 384) and big.arch["image_size"] == [128, 384]
    for (k, a), b in zip(m.state_dict().items(), big.state_dict().values()):
        assert torch.equal(a, b), k
    with torch.no_grad():
        assert big(torch.zeros(1, 3, 128, 384)).shape[-2:] == (8, 24)
    assert model_at_size(m, (64, 192)) is m


@pytest.mark.parametrize("stage, msg", [("{name: d, kind: deploy}", "needs 'from: <stage name>'"),
                                        ("{name: d, kind: deploy, from: s, image_size: [100, 624]}", "multiples of 16"),
                                        ("{name: d, kind: deploy, from: s, target: tpu}", "target")])
def test_deploy_stage_schema(stage, msg):
    from compressdet.errors import RecipeError
    from compressdet.recipe import parse_recipe

    text = f"name: r\nstages:\n  - {{name: s, kind: train, model: shuffledet_0.25x}}\n  - {stage}\n"
    with pytest.raises(RecipeError, match=msg):
        parse_recipe(text, source="r.yaml")
