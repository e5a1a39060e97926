"""The imitation benchmark's own logic: step planning within budgets, the exact teacher-feature
cache, and the seed-table columns (the runs themselves are benchmarks, not tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _bench import load_bench, unload_bench  # tests/ is on sys.path

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "imitation_gain.py"


@pytest.fixture(scope="module")
def ig():
    yield load_bench("imitation_gain")
    unload_bench("imitation_gain")


def test_students_see_three_passes_in_the_cpu_preset(ig):
    p = ig.PRESETS["cpu"]
    plan = ig.plan_steps(p, 1000)
    assert plan["student_steps"] == 1500 and plan["student_passes"] == pytest.approx(3.0)
    assert plan["teacher_passes"] >= plan["student_passes"]
    assert ig.plan_steps(ig.PRESETS["smoke"], 14)["student_steps"] == ig.PRESETS["smoke"]["student_steps"]
    # every arm gets the same number of tuned settings, chosen on val (lr for the baseline, weight for the others)
    assert len(p["lr_sweep"]) == len(p["sweep"]) and p["lr_sweep"][0] == 0.02 and p["sweep"][0] == 1.0
    assert len(p["seeds"]) >= 3


@pytest.mark.slow
def test_smoke_run_follows_the_protocol(ig, tmp_path):
    """The whole benchmark on a tiny set: selection on val, report on test, paired claims with CIs,
    the learning-curve PNG, and a second invocation resumes (no training) with the same numbers."""
    import json

    args = ["--preset", "smoke", "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r"),
            "--overhead-steps", "2", "--ledger", str(tmp_path / "l")]
    assert ig.main(args) == 0
    r = json.loads((tmp_path / "r" / "imitation_gain.json").read_text())
    assert (r["selection_split"], r["report_split"], r["seeds"]) == ("val", "test", [0, 1, 2])
    for key in ("gain", "control", "knowledge_vs_random_teacher"):
        assert set(r[key]) >= {"per_seed", "mean", "ci95"} and len(r[key]["per_seed"]) == 3
    assert r["gain_mean"] == pytest.approx(r["gain"]["mean"])
    assert r["data"]["test_images"] > 0 and r["teacher"]["test"]["split"] == "test"
    assert (tmp_path / "r" / "imitation_gain_curves.png").stat().st_size > 1000
    runs = sorted(p.name for p in (tmp_path / "w" / "smoke" / "runs").iterdir())
    assert len(runs) == 1 + 2 + 2 * 2 + 2 * 3  # teacher, lr sweep, two weight sweeps, two more seeds x 3 arms
    assert ig.main(args) == 0
    again = json.loads((tmp_path / "r" / "imitation_gain.json").read_text())
    assert again["map40"] == r["map40"] and sorted(p.name for p in (tmp_path / "w" / "smoke" / "runs").iterdir()) == runs
    assert r["ledger"]["path"] == str(tmp_path / "l") and len(r["ledger"]["runs"]) == len(runs)

    # a fresh machine: the local runs are gone, the (committed) ledger is not -> nothing trains again
    import shutil

    shutil.rmtree(tmp_path / "w")
    assert ig.main(args) == 0
    third = json.loads((tmp_path / "r" / "imitation_gain.json").read_text())
    assert third["map40"] == r["map40"] and third["teacher"]["sha256"] == r["teacher"]["sha256"]
    restored = tmp_path / "w" / "smoke" / "runs"
    assert sorted(p.name for p in restored.iterdir()) == runs
    assert not list(restored.glob("*/*/checkpoints")) and not list(restored.glob("*/recipe.yaml"))  # not re-run

    # bytes lost too: --remake-chosen trains the reported 0.25x-I students again, byte for byte
    shutil.rmtree(tmp_path / "w")
    for f in (tmp_path / "l").glob("I-*/student/model.pt"):
        f.unlink()
    assert ig.main([*args, "--remake-chosen", "0.25x-I"]) == 0
    assert len(list((tmp_path / "w" / "smoke" / "runs").glob("I-*/student/checkpoints"))) == 3  # trained, 3 seeds
    results = tmp_path / "r" / "imitation_gain.json"
    rec = json.loads(results.read_text())
    c = rec["chosen"]["0.25x-I"]
    name = next(k for k in rec["ledger"]["runs"] if k.startswith(f"I-lr{c['lr']}-w{c['weight']}-s0-"))
    rec["ledger"]["runs"][name]["files"]["student/model.pt"] = "0" * 64  # a record the re-made model cannot match
    results.write_text(json.dumps(rec))
    assert ig.main([*args, "--remake-chosen", "0.25x-I"]) == 1
    rec["teacher"]["sha256"] = "0" * 64  # another teacher: its students cannot be the reported ones
    results.write_text(json.dumps(rec))
    with pytest.raises(SystemExit, match="re-made teacher differs"):
        ig.main([*args, "--remake-chosen"])


def test_feature_store_exact_and_bounded(ig, tmp_path):
    store = ig.FeatureStore(tmp_path, "t", capacity=2)
    a, b, c = (np.full((4, 2, 3), v, np.float32) for v in (1.5, -2.0, 7.0))
    assert store.get(b"a") is None
    store.put(b"a", a)
    store.put(b"b", b)
    store.put(b"c", c)  # over capacity: not stored
    assert np.array_equal(store.get(b"a"), a) and np.array_equal(store.get(b"b"), b)
    assert store.get(b"c") is None
    assert (store.hits, store.misses) == (2, 2)
    assert not list(tmp_path.glob("t*.f32"))  # unlinked once mapped: a killed benchmark leaves no file behind
    store.close()


def test_cached_teacher_serves_identical_inputs_only(ig, tmp_path):
    from compressdet.models import build_model

    torch.manual_seed(0)
    teacher = build_model("shuffledet_1x", image_size=(32, 64)).eval()
    x = torch.randn(2, 3, 32, 64)
    assert ig.check_feature_cache(teacher, x) < 1e-4
    store, heads = ig.FeatureStore(tmp_path, "t", capacity=4), ig.FeatureStore(tmp_path, "h", capacity=4)
    cached = ig._cached_teacher_cls()(teacher, store, heads)
    h0, f0 = cached.forward_with_features(x)
    y = x.clone()
    y[0, 0, 0, 0] += 1.0  # one changed pixel must not hit
    h1, f1 = cached.forward_with_features(y)
    assert (store.hits, store.misses) == (1, 3) and (heads.hits, heads.misses) == (1, 3)
    with torch.no_grad():
        h_live, _ = teacher.forward_with_features(y)
    assert torch.allclose(h1, h_live, atol=1e-4) and torch.equal(h1[1], h0[1])  # the head is served too (CrossKD)
    store.close()
    heads.close()


@pytest.mark.parametrize("family", ["fcos", "retinanet"])
def test_cached_teacher_serves_fpn_levels_and_outputs(ig, tmp_path, family):
    """The FPN teachers' five levels and raw outputs come back in their structure, the values a live
    forward gives, and the distillers reach the teacher's head, box coder and priors through the wrapper."""
    from compressdet.losses.crosskd import FPNCrossKDLoss
    from compressdet.losses.distill import paired_taps
    from compressdet.models import build_model

    torch.manual_seed(0)
    teacher = build_model(f"{family}_mnv3_large", image_size=(64, 192)).eval()
    student = build_model(f"{family}_mnv2_050", image_size=(64, 192)).eval()
    x = torch.randn(2, 3, 64, 192)
    assert ig.check_feature_cache(teacher, x) < 1e-4
    store, heads = ig.FeatureStore(tmp_path, "t", capacity=4), ig.FeatureStore(tmp_path, "h", capacity=4)
    cached = ig._cached_teacher_cls()(teacher, store, heads)
    first = cached.forward_with_features(x)
    h, f = cached.forward_with_features(x)  # all hits
    assert (store.hits, heads.hits) == (2, 2)
    with torch.no_grad():
        h_live, f_live = teacher.forward_with_features(x)
    assert type(h) is type(h_live) and type(f) is type(f_live) and len(f) == 5
    for got, live, fresh in zip([*h, *f], [*h_live, *f_live], [*first[0], *first[1]]):
        assert got.shape == live.shape and got.dtype == torch.float32 and got.is_contiguous()
        assert torch.equal(got, fresh) and torch.allclose(got, live, atol=1e-5)
    assert cached.family == family and paired_taps(student, cached) == paired_taps(student, teacher)
    with torch.no_grad():
        s_feats = student.forward_with_features(x)[1]
        crosskd = FPNCrossKDLoss(paired_taps(student, teacher), cached)
        via_cache = crosskd(s_feats, h)
        object.__setattr__(crosskd, "_teacher", teacher)
        live_loss = crosskd(s_feats, h_live)
    for k in ("crosskd_cls", "crosskd_box"):
        assert torch.isfinite(via_cache[k]) and torch.allclose(via_cache[k], live_loss[k], atol=1e-5)
    store.close()
    heads.close()


def test_table_columns_match_method_macs(ig):
    flops, params = ig._flops_params((384, 1248))
    assert flops == {"1x": "5.238 G", "0.25x": "0.667 G"}  # METHOD.md section 6, analytic
    assert params == {"1x": "1.6291 M", "0.25x": "0.2095 M"}
    assert ig._flops_params((192, 624))[0]["1x"] == "1.309 G"  # MACs scale with the pixels


def test_teacher_run_name_is_the_committed_ledgers(ig, kitti_real):  # the cpu data's layouts are real KITTI labels
    """Every distillation benchmark reaches the cpu teacher through make_teacher_recipe; its name must stay
    the one the committed ledger holds, or the 100-minute teacher would be trained again."""
    from compressdet.recipe import DataConfig

    p = ig.PRESETS["cpu"]
    data_hash = ig.data_hash_of(DataConfig(**ig._data(p, True)))
    recipe = ig.make_teacher_recipe(p, "shuffledet_1x", ig.plan_steps(p, 1000)["teacher_steps"], data_hash)
    assert recipe["name"] == "teacher-95e346b509b8"
    assert (_PATH.parent / "ledger" / "imitation_gain" / "cpu" / recipe["name"]).is_dir()
    assert ig.make_teacher_recipe(p, "shuffledet_1x", 6000, data_hash, lr=0.01)["name"] != recipe["name"]


def test_a_student_that_trains_pins_the_teacher_made_for_it(ig, tmp_path, monkeypatch):
    """A teacher known by its record only is made before a student that must train, and the student's
    recipe pins the bytes it reads (on another CPU type: this platform's re-make, at its own path); a
    student the ledger already holds makes no teacher."""
    import _protocol

    from compressdet._io import sha256_file

    ledger = ig.Ledger(tmp_path / "ledger")
    runner = ig.student_runner(tmp_path / "w", ig.PRESETS["smoke"], 14, "k", test_dir=tmp_path / "t", ledger=ledger)
    recorded = tmp_path / "ledger" / "t-run" / "teacher" / "model.pt"  # the record's path: no bytes here
    remade = tmp_path / "ledger" / "t-run" / "platforms" / "here" / "teacher" / "model.pt"
    made = []

    def make_teacher():
        remade.parent.mkdir(parents=True, exist_ok=True)
        remade.write_bytes(b"teacher re-made here")
        made.append(1)
        return remade

    runner.make_teacher = make_teacher
    runner.teacher_sha[str(recorded)] = "ab" * 32  # the record's sha256, as distill_methods sets it
    recipes = []

    def fake_run(recipe, work, ledger=None, *, need_files=True):
        recipes.append(recipe)
        f = work / "runs" / recipe["name"] / "student" / "model.pt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(recipe["name"].encode())
        man = {"recipe": recipe["name"], "stages": {"student": {
            "kind": "train", "status": "done", "metrics": {"map40": 1.0}, "wall_time_s": 1.0,
            "artifacts": {"model": {"path": "student/model.pt"}}}}}
        ledger.put(recipe["name"], work / "runs" / recipe["name"], man)
        return man

    monkeypatch.setattr(ig, "_run", fake_run)
    monkeypatch.setattr(_protocol, "test_map", lambda *a, **k: {"map40": 2.0})
    out = runner.run("I-lr0.01-w1.0", 0, 0.01, 1.0, recorded)
    assert made == [1] and out["test"] == {"map40": 2.0}
    teacher_stage = recipes[0]["stages"][0]
    assert teacher_stage["path"] == str(remade) and teacher_stage["sha256"] == sha256_file(remade)
    # the same student again: the ledger holds it, so no teacher is made (the recipe still names the record)
    remade.unlink()
    runner.run("I-lr0.01-w1.0", 0, 0.01, 1.0, recorded)
    assert made == [1]
