"""benchmarks/pareto.py and its runner (benchmarks/_declare.py): the front / dominance / compression-for-free
analysis on hand-made points, and a tiny declared benchmark run end to end (1-step arms, resumed)."""

from __future__ import annotations

import json

import pytest
from _bench import load_bench, unload_bench


@pytest.fixture(scope="module")
def par():
    yield load_bench("pareto")
    unload_bench("pareto")


def _pt(model, mean, ms, role="compressdet", seeds_map=None, **extra):
    m = seeds_map or [mean] * 3
    return {"model": model, "chain": "shuffledet", "role": role, "mean": mean, "latency_ms": ms, "seeds": [0, 1, 2],
            "map": m, "final": extra.pop("final", False), "baseline": extra.pop("baseline", None), **extra}


def test_front_dominance_and_compression_for_free(par):
    pts = [_pt("1x", 30.0, 40.0, role="teacher"), _pt("0.25x", 10.0, 6.0, role="direct", seeds_map=[9.0, 10.0, 11.0]),
           _pt("0.5x", 15.0, 10.0, role="direct"),
           _pt("0.25x-I", 12.0, 6.0),  # dominates the 0.25x (more accurate, as fast)
           _pt("0.25x-I-p0.6-int8", 11.0, 1.5, final=True, baseline="0.25x", seeds_map=[10.0, 11.0, 12.0]),
           _pt("slow-bad", 5.0, 50.0)]
    assert par.pareto_front(pts) == ["0.25x-I-p0.6-int8", "0.25x-I", "0.5x", "1x"]  # fastest first
    dom = par.dominates_direct(pts)
    assert dom == {"0.25x": {"dominated": True, "by": "0.25x-I"}, "0.5x": {"dominated": False, "by": None}}
    cff = par.compression_for_free(pts, [0, 1, 2])
    assert [c["model"] for c in cff] == ["0.25x-I-p0.6-int8"]
    assert cff[0]["map_diff"]["per_seed"] == [1.0, 1.0, 1.0] and cff[0]["speedup"] == pytest.approx(4.0)
    g = par.goals(cff, dom)
    assert g["chain_final_as_accurate_at_3x"] == {"met": True, "by": ["0.25x-I-p0.6-int8"]}
    assert g["every_direct_student_dominated"] == {"met": False, "not_dominated": ["0.5x"]}
    # slower than 3x, or a CI reaching below 0: not met
    pts[4]["latency_ms"] = 2.5
    assert par.goals(par.compression_for_free(pts, [0, 1, 2]), dom)["chain_final_as_accurate_at_3x"]["met"] is False


def test_equal_points_do_not_dominate_each_other(par):
    a, b = _pt("a", 10.0, 5.0), _pt("b", 10.0, 5.0)
    assert not par.dominates(a, b) and sorted(par.pareto_front([a, b])) == ["a", "b"]
    d = _pt("d", 10.0, 5.0, role="direct")  # an equal compressdet model is "at least as accurate and fast"
    assert par.dominates_direct([a, d])["d"] == {"dominated": True, "by": "a"}


def test_readme_block_from_the_json(par):
    import readme_tables

    ap = {c: {lvl: 1.0 for lvl in ("easy", "moderate", "hard")} for c in ("car", "pedestrian", "cyclist")}
    pts = [dict(_pt("0.25x", 10.0, 6.0, role="direct"), backend="openvino-int8-nncf", precision="int8", flops="0.1 G",
                params="0.2 M", ap40_seed0=ap, latency_ms_by_size={"192x624": 6.0, "384x1248": 20.0}, ci95=[9.0, 11.0])]
    r = {"command": "python benchmarks/pareto.py --preset cpu", "seeds": [0, 1, 2], "points": pts, "front": ["0.25x"],
         "compression_for_free": [], "dominates_direct": {"0.25x": {"dominated": False, "by": None}},
         "goals": par.goals([], {"0.25x": {"dominated": False, "by": None}}), "goal_speedup": 3.0}
    md = readme_tables.pareto(r)
    assert "| **0.25x** | 0.1 G | 0.2 M | 1.0/1.0/1.0 |" in md and "| 6.0 | 20.0 | openvino-int8-nncf (int8) |" in md
    assert "direct 0.25x: not dominated" in md


def test_cpu_declaration_has_the_issue_arms(par):
    b = par.declare("cpu", 1000, "h")
    names = [a.name for a in b.arms]
    for n in ("1x", "0.5x", "0.25x", "0.5x-I", "0.25x-I", "0.5x-I-p0.6", "0.5x-I-p0.4", "0.25x-I-p0.4-int8",
              "fcos", "fcos-s", "fcos-s-I", "fcos-s-I-p0.6", "fcos-s-I-p0.6-int8"):
        assert n in names, n
    by = {a.name: a for a in b.arms}
    assert all(names.index(a.parent) < names.index(a.name) for a in b.arms if a.parent)  # parents declared first
    assert by["0.25x-I-p0.4"].parent == "0.25x-I" and by["0.25x-I-p0.4"].teacher == "1x"
    assert by["0.25x-I-p0.4"].stages({"lr": 0.005})[0]["target"] == {"macs": 0.4}
    assert by["fcos-s-I"].stages({"w": 1.0})[0]["distill"] == [{"method": "fgfi", "weight": 1.0}]
    assert b.seeds == [0, 1, 2] and b.deploy_sizes[-1] == [384, 1248]
    assert {a.tags.get("baseline") for a in b.arms if a.tags.get("final")} == {"0.5x", "0.25x", "fcos-s"}


def test_runner_chooses_on_mean_val_and_wires_inputs_by_seed(par, tmp_path, monkeypatch):
    """The runner's protocol with training stubbed: the setting with the best *mean* val over seeds wins (seed 0
    alone would pick the other), a child's recipe pins the same seed's parent model and the teacher's seed-0
    model by sha256, every seed is tested once, the claim is paired by seed."""
    import _declare as d
    from _ledger import Ledger

    val = {("0.25x", 0.01, 0): 5.0, ("0.25x", 0.01, 1): 1.0, ("0.25x", 0.02, 0): 4.0, ("0.25x", 0.02, 1): 4.0}
    trained = []

    def fake_train(self, arm, setting, seed):
        recipe = self.recipe(arm, setting, seed)
        trained.append((arm.name, seed, recipe))
        f = tmp_path / f"{arm.name}-{setting.get('lr')}-{seed}.pt"
        f.write_text(f"{arm.name} {setting} {seed}")
        return {"run": recipe["name"], "val": {"map40": val.get((arm.name, setting.get("lr"), seed), 1.0)}, "model": f,
                "float_model": f, "kind": "torch", "setting": setting, "wall_s": 1.0}

    tests = []

    def fake_test(model, data, cache, kind="torch"):
        tests.append(model.name)
        return {"map40": 10.0 + len(model.name) + int(model.stem[-1]), "ap40": {}}

    monkeypatch.setattr(d.Runner, "train", fake_train)
    monkeypatch.setattr(d, "test_map", fake_test)
    stage = [{"name": "model", "kind": "train", "model": {"arch": "shuffledet_0.25x"}}]
    arms = [d.Arm("1x", lambda s: stage, seeds=[0]),
            d.Arm("0.25x", lambda s: stage, grid=[{"lr": 0.01}, {"lr": 0.02}]),
            d.Arm("0.25x-I", lambda s: stage, teacher="1x", parent="0.25x")]
    bench = d.Bench("t", "smoke", {"format": "synth"}, [0, 1], arms, claims={"c": ("0.25x-I", "0.25x")})
    res = d.Runner(bench, tmp_path / "w", Ledger(None), log=lambda *_: None).run_all()
    a = res["arms"]
    assert a["0.25x"]["chosen"] == {"lr": 0.02} and a["0.25x"]["val_mean_by_setting"] == {"lr=0.01": 3.0, "lr=0.02": 4.0}
    from compressdet._io import sha256_file

    child = {seed: r for name, seed, r in trained if name == "0.25x-I"}
    for seed in (0, 1):
        ins = {s["name"]: s for s in child[seed]["stages"] if s["kind"] == "model_file"}
        assert ins["parent"]["path"].endswith(f"0.25x-0.02-{seed}.pt")  # the chosen setting, the same seed
        assert ins["teacher"]["path"].endswith("1x-None-0.pt")  # a one-seed arm: its seed 0 for every seed
        assert ins["parent"]["sha256"] == sha256_file(ins["parent"]["path"])
    assert child[0]["name"] != child[1]["name"] and child[0]["seed"] == 0
    assert sorted(tests) == sorted(["1x-None-0.pt", "0.25x-0.02-0.pt", "0.25x-0.02-1.pt", "0.25x-I-None-0.pt",
                                    "0.25x-I-None-1.pt"])  # once per chosen model and seed
    assert res["claims"]["c"]["per_seed"] == [2.0, 2.0] and res["seeds"] == [0, 1]


@pytest.mark.bench_smoke  # ~5 min on a loaded core: 9 CLI runs (a QAT among them), then all read back
def test_tiny_declared_benchmark_end_to_end(par, tmp_path):
    """Teacher -> direct student (2 lrs chosen on mean val) and imitating student -> QAT INT8 from it: the
    runner chooses, tests each seed once, pairs the claims, records every run and resumes from the ledger."""
    import _declare as d
    import imitation_gain as ig
    from _ledger import Ledger

    igp = ig.PRESETS["smoke"]
    data = ig._data(igp, True)

    def train(arch, lr, n=1, **extra):
        return ig._stage("model", arch, n, igp, 1, lr=lr, **extra)

    arms = [d.Arm("1x", lambda s: [train("shuffledet_1x", 0.01)], seeds=[0]),
            d.Arm("0.25x", lambda s: [train("shuffledet_0.25x", s["lr"])], grid=[{"lr": 0.01}, {"lr": 0.02}]),
            d.Arm("0.25x-I", lambda s: [train("shuffledet_0.25x", 0.01, teacher="teacher", imitation={"weight": 1.0})],
                  teacher="1x"),
            d.Arm("0.25x-I-int8", lambda s: [{"name": "model", "kind": "qat", "from": "parent",
                                              "schedule": {"steps": 1, "batch_size": 2, "lr": 0.001, "eval_every": 1,
                                                           "checkpoint_every": 1, "log_every": 1},
                                              "quant": {"calibration_images": 2}, "eval": {"batch_size": 16}}],
                  parent="0.25x-I")]
    bench = d.Bench("tiny", "smoke", data, [0, 1], arms, claims={"I - direct": ("0.25x-I", "0.25x")})
    ledger = Ledger(tmp_path / "ledger")
    res = d.Runner(bench, tmp_path / "w", ledger).run_all()
    a = res["arms"]
    assert a["1x"]["seeds"] == [0] and a["0.25x"]["seeds"] == [0, 1]
    vals = a["0.25x"]["val_mean_by_setting"]
    assert set(vals) == {"lr=0.01", "lr=0.02"}
    assert d.setting_key(a["0.25x"]["chosen"]) == max(vals, key=lambda k: (vals[k], k == "lr=0.01"))
    assert a["0.25x-I-int8"]["models"][0].endswith("quantized.pt2")  # tested as the int8 program
    c = res["claims"]["I - direct"]
    assert c["per_seed"] == pytest.approx([a["0.25x-I"]["test_map40"][s] - a["0.25x"]["test_map40"][s] for s in (0, 1)])
    runs = {r for arm in a.values() for r in arm["runs"].values()}
    assert runs <= set(ledger.entries())  # every chosen run recorded
    # resumed in a fresh work folder: every run comes back from the ledger, the numbers unchanged
    again = d.Runner(bench, tmp_path / "w2", ledger).run_all()
    assert json.dumps(again["claims"]) == json.dumps(res["claims"])
    assert not (tmp_path / "w2" / "runs").exists() or not any((tmp_path / "w2").glob("*.yaml"))
