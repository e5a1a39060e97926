"""benchmarks/families.py, the cross-family table: its results JSON carries the evidence protocol and the
table is built from it alone (made-up numbers, fast); the smoke preset end to end, resuming without a new
run (`make test-bench`: minutes, the PTQ stages and the isolated-process timing dominate)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _bench import load_bench, unload_bench  # tests/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fam():
    yield load_bench("families")
    unload_bench("families")


def _fake_result(fam, diffs: dict[str, list[float]]) -> dict:
    seeds = [0, 1, 2]
    families = {}
    for i, (name, d) in enumerate(diffs.items()):
        none = {s: 10.0 + s for s in seeds}
        families[name] = fam.family_entry(
            seeds, {"none": none, "distilled": {s: none[s] + d[s] for s in seeds}},
            student=fam.FAMILIES[name]["student"], macs=(i + 1) * 2.5e8, params=(i + 1) * 1.2e6, lr=0.01,
            ort_fp32_ms=10.0 + i, ort_int8_ms=5.0 + i, int8={"test_map40_ort": 9.5},
            teacher={"arch": fam.FAMILIES[name]["teacher"], "macs": 1.5e9, "lr": 0.02, "val_map40": 30.0,
                     "test_map40": 29.0})
    return {"preset": "cpu", "command": "python benchmarks/families.py --preset cpu", "seeds": seeds,
            "data": {"train_images": 1000, "val_images": 500, "test_images": 1000, "image_size": [192, 624]},
            "steps": {"batch": 2, "teacher_steps": 6000, "teacher_passes": 12.0, "student_steps": 1500,
                      "student_passes": 3.0},
            "settings": {"weight": 1.0}, "latency": {"note": "isolated"}, "int8_note": "ptq", "families": families}


def test_json_blocks_and_table_from_per_seed_numbers(fam):
    r = _fake_result(fam, {"shuffledet": [2.0, 3.0, 4.0], "fcos": [1.0, -1.0, 0.5]})
    sd, fc = r["families"]["shuffledet"], r["families"]["fcos"]
    assert sd["test_map40"] == {"none": [10.0, 11.0, 12.0], "distilled": [12.0, 14.0, 16.0]}
    assert sd["distill_vs_none"]["per_seed"] == pytest.approx([2.0, 3.0, 4.0])
    assert sd["distill_vs_none"]["mean"] == pytest.approx(3.0) and sd["distill_vs_none"]["significant"]
    lo, hi = fc["distill_vs_none"]["ci95"]
    assert lo < 0 < hi and not fc["distill_vs_none"]["significant"]
    md = fam.render_md(r)
    rows = [ln for ln in md.splitlines() if ln.startswith("| shuffledet |") or ln.startswith("| fcos |")]
    assert len(rows) == 2 and all(len(ln.split("|")) == 12 for ln in rows)  # 10 columns
    assert "| 0.250 G | 1.200 M | 10.00 | 5.00 | 11.00 (10.00, 11.00, 12.00) | 14.00 (12.00, 14.00, 16.00) |" in rows[0]
    assert "not significant" not in rows[0] and "not significant" in rows[1]
    assert "- fcos: +0.17 mAP (95% CI [" in md and md.count(": not significant") == 1
    import readme_tables  # README's block is the same table, without the title

    block = readme_tables.GENERATORS["families.json"](r)
    assert not block.startswith("#") and rows[0] in block and rows[1] in block


def test_presets_train_on_imitation_gains_schedule_and_share_its_runs(fam):
    """families' students are imitation_gain's / distill_methods' runs: same preset, same runner, same names."""
    import distill_methods as dm
    import imitation_gain as ig  # on sys.path once families.py is loaded

    assert set(fam.PRESETS) <= set(ig.PRESETS)
    for p in fam.PRESETS.values():
        assert set(p["lr"]) == set(fam.FAMILIES) == set(dm.TEACHER_LR)
        assert not {"data", "student_passes", "student_evals", "teacher_passes", "batch"} & set(p)  # no schedule of its own
    assert fam.PRESETS["cpu"]["lr"]["shuffledet"] in ig.PRESETS["cpu"]["lr_sweep"]
    assert fam.PRESETS["cpu"]["weight"] in ig.PRESETS["cpu"]["sweep"]
    h, w = ig.PRESETS["cpu"]["data"]["image_size"]
    assert h <= 192 and w <= 624 and ig.PRESETS["cpu"]["student_passes"] >= 3 and len(ig.PRESETS["cpu"]["seeds"]) == 3
    assert {f: (v["teacher"], v["student"]) for f, v in fam.FAMILIES.items()} == dm.FAMILIES


def test_unknown_family_is_a_usage_error(fam, tmp_path):
    with pytest.raises(SystemExit) as e:
        fam.main(["--preset", "smoke", "--work", str(tmp_path), "--families", "fcos,yolo"])
    assert e.value.code == 2


def _artifacts(work: Path) -> dict[str, float]:
    """Every trained, quantized or exported file under ``work`` and its mtime (a resumed run touches none)."""
    return {str(p): p.stat().st_mtime for pat in ("model.pt", "quantized.pt2", "*.onnx") for p in work.rglob(pat)}


@pytest.mark.bench_smoke  # ~3 min on one thread: 21 runs, 3 PTQ stages, 6 graphs timed in processes of their own
def test_smoke_preset_follows_the_protocol_and_resumes(fam, tmp_path):
    args = ["--preset", "smoke", "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")]
    assert fam.main(args) == 0
    r = json.loads((tmp_path / "r" / "families.json").read_text())
    assert (r["selection_split"], r["report_split"], r["seeds"]) == ("val", "test", [0, 1, 2])
    assert r["preset"] == "smoke" and r["command"] == "python benchmarks/families.py --preset smoke"
    assert r["settings"]["distill"] == [{"method": "fgfi", "weight": r["settings"]["weight"]}]
    assert list(r["families"]) == list(fam.FAMILIES) and r["data"]["test_images"] > 0
    for name, e in r["families"].items():
        c = e["distill_vs_none"]
        assert set(c) >= {"per_seed", "mean", "ci95"} and len(c["per_seed"]) == 3 and len(c["ci95"]) == 2
        assert e["student"] == fam.FAMILIES[name]["student"] and e["macs"] > 0 and e["params"] > 0
        for key in ("ort_fp32_ms", "ort_int8_ms"):
            assert math.isfinite(e[key]) and e[key] > 0
        maps = [*e["test_map40"]["none"], *e["test_map40"]["distilled"], e["int8"]["test_map40_ort"],
                e["teacher"]["test_map40"]]
        assert all(0 <= v <= 100 for v in maps)
        assert e["teacher"]["test"]["split"] == "test" and e["teacher"]["test"]["images"] == r["data"]["test_images"]
    # RetinaNet's teacher and student share anchors sized on the training boxes; the others are plain names
    rb = r["families"]["retinanet"]["model_blocks"]
    assert rb["teacher"]["anchor_scale"] == rb["student"]["anchor_scale"] > 0
    assert rb["teacher"]["head"] == rb["student"]["head"] == "v2"
    assert isinstance(r["families"]["fcos"]["model_blocks"]["student"], str)
    md = (tmp_path / "r" / "families.md").read_text()
    assert all(f"| {name} | {e['student']} |" in md for name, e in r["families"].items())
    runs = sorted(p.name for p in (tmp_path / "w" / "smoke" / "runs").iterdir())
    assert len(runs) == 3 * (1 + 2 * 3 + 1)  # per family: teacher, two arms x three seeds, ptq
    # the students are imitation_gain's / distill_methods' runs by name (so those benchmarks' runs are reused)
    assert sum(n.startswith("base-lr0.01-s") for n in runs) == sum(n.startswith("I-lr0.01-w1.0-s") for n in runs) == 9
    before = _artifacts(tmp_path / "w")
    assert fam.main(args) == 0  # resumes: no new run, nothing re-trained or re-exported, same numbers
    again = json.loads((tmp_path / "r" / "families.json").read_text())
    assert sorted(p.name for p in (tmp_path / "w" / "smoke" / "runs").iterdir()) == runs
    assert _artifacts(tmp_path / "w") == before
    r.pop("total_minutes_this_invocation"), again.pop("total_minutes_this_invocation")
    assert again == r


def test_a_subset_never_overwrites_the_whole_table(fam):
    assert fam.results_stem(list(fam.FAMILIES), told=False) == "families"
    assert fam.results_stem(["shuffledet"], told=False) == "families-shuffledet"
    assert fam.results_stem(["shuffledet", "fcos"], told=False) == "families-shuffledet-fcos"
    assert fam.results_stem(["fcos"], told=True) == "families"  # --results: a folder of the caller's own
