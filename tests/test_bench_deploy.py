"""benchmarks/deploy.py: goals and table from the results alone; the smoke preset end to end, resumed."""

from __future__ import annotations

import json

import pytest
from _bench import load_bench, unload_bench


@pytest.fixture(scope="module")
def dep():
    yield load_bench("deploy")
    unload_bench("deploy")


def _entry(chosen, fp, ov, drop):
    cands = [{"name": "ort-fp32", "precision": "fp32", "latency": {"median_ms": 10.0}, "map_drop": 0.0},
             {"name": chosen, "precision": "int8", "latency": {"median_ms": 10.0 / fp}, "map_drop": drop}]
    return {"candidates": cands, "chosen": chosen, "speedup_vs_best_exact_fp32": fp,
            "speedup_vs_openvino_default": ov, "map_drop": drop}


def test_goals_and_table_follow_the_numbers(dep):
    results = {"shuffledet/student@192x624": _entry("openvino-int8-nncf", 2.6, 1.6, 0.3),
               "fcos/student@192x624": _entry("openvino-default", 2.0, 1.0, 0.0),
               "shuffledet/teacher@192x624": _entry("ort-int8-qdq", 1.1, 0.9, 0.7)}
    g = dep.goals(results)
    assert set(g) == {"shuffledet/student@192x624", "fcos/student@192x624"}  # the teachers carry no goal
    assert g["shuffledet/student@192x624"] == {"vs_exact_fp32": True, "vs_openvino_default": True, "map_drop": True}
    assert g["fcos/student@192x624"] == {"vs_exact_fp32": False, "vs_openvino_default": False, "map_drop": True}
    r = {"preset": "cpu", "command": "python benchmarks/deploy.py --preset cpu", "cpu": "x",
         "settings": {"max_map_drop": 0.5, "runs": 60, "rounds": 3, "threads": 2},
         "candidate_names": ["ort-fp32", "openvino-default", "openvino-int8-nncf", "ort-int8-qdq"],
         "results": results, "goals": g}
    md = dep.render_md(r)
    assert "| shuffledet/student@192x624 |" in md and "**3.8 ms, int8, +0.30**" in md and "2.60x" in md
    import readme_tables  # the speed page's block: the same table without its title

    block = readme_tables.GENERATORS["deploy.json"](r)
    assert not block.startswith("#") and block in md and "**3.8 ms, int8, +0.30**" in block


@pytest.mark.bench_smoke  # ~5 min on one thread: 2 PTQ stages, 2 deploys of 6 candidates each
def test_smoke_preset_deploys_and_resumes(dep, tmp_path):
    args = ["--preset", "smoke", "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")]
    assert dep.main(args) == 0
    r = json.loads((tmp_path / "r" / "deploy.json").read_text())
    assert set(r["results"]) == {"shuffledet/student@64x192", "shuffledet/teacher@64x192"}
    for key, e in r["results"].items():
        names = {c["name"] for c in e["candidates"]}
        assert e["chosen"] in names and set(r["candidate_names"]) <= names, key
        assert e["speedup_vs_best_exact_fp32"] > 0 and e["map_drop"] <= r["settings"]["max_map_drop"]
    md = (tmp_path / "r" / "deploy.md").read_text()
    assert all(f"| {k} |" in md for k in r["results"])
    assert dep.main(args) == 0  # resumes: the finished runs are read back, not re-timed
    again = json.loads((tmp_path / "r" / "deploy.json").read_text())
    assert again["results"] == r["results"]


def test_families_flag_narrows_and_marks_the_table_partial(dep, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:  # argparse's error: exit 2, one line naming the flag
        dep.main(["--preset", "cpu", "--families", "shuffledet,yolo", "--work", str(tmp_path)])
    assert e.value.code == 2 and "--families" in capsys.readouterr().err
    seen = {}

    def models(preset, families):  # stops before any run: the narrowing is what is checked
        seen["families"] = families
        raise SystemExit(0)

    monkeypatch.setattr(dep, "models", models)
    with pytest.raises(SystemExit):
        dep.main(["--preset", "cpu", "--families", "retinanet, shuffledet", "--work", str(tmp_path), "--no-ledger"])
    assert seen["families"] == ["shuffledet", "retinanet"]  # the preset's order, not the flag's
    r = {"preset": "cpu", "command": "python benchmarks/deploy.py --preset cpu --families shuffledet", "cpu": "x",
         "families": ["shuffledet"], "complete": False, "goals": {},
         "settings": {"max_map_drop": 0.5, "runs": 60, "rounds": 3, "threads": 2},
         "candidate_names": ["ort-fp32"], "results": {"shuffledet/student@192x624": _entry("ort-fp32", 1.0, 1.0, 0.0)}}
    assert "Partial: families shuffledet only" in dep.render_md(r)
    assert "Partial" not in dep.render_md({**r, "complete": True})
