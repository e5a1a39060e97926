"""The prune and INT8 benchmarks under the evidence protocol (issue 19): their smoke presets end to
end (selection on val, report on test, paired claims with CIs over 3 seeds, the learning-curve PNG,
a second invocation resumes without training), and the README generators for their protocol JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import readme_tables  # noqa: E402
from _bench import load_bench  # noqa: E402  (tests/ is on sys.path)


def _trained(work: Path) -> dict[str, float]:
    """Every trained or quantized artifact under ``work`` and its mtime (a resumed run touches none)."""
    return {str(p): p.stat().st_mtime for pat in ("model.pt", "quantized.pt2") for p in work.rglob(pat)}


def _claims_ok(r: dict, names: tuple[str, ...]) -> None:
    assert (r["selection_split"], r["report_split"], r["seeds"]) == ("val", "test", [0, 1, 2])
    for k in names:
        c = r["claims"][k]
        assert set(c) >= {"per_seed", "mean", "ci95", "significant"} and len(c["per_seed"]) == 3
        assert r[k] == pytest.approx(c["mean"])  # top-level keys: the test-split means


def test_presets_choose_from_as_many_options_per_arm():
    prune, quant = load_bench("prune"), load_bench("quant")
    for p in prune.PRESETS.values():
        assert len(p["seeds"]) >= 3 and p["ft_lr"][0] == 0.005  # the prune stage's default lr first
    assert prune.PRESETS["cpu"]["student_passes"] >= 3 and prune.PRESETS["gpu"]["student_steps"] == 40000
    for p in quant.PRESETS.values():
        assert len(p["seeds"]) >= 3
        assert len({len(p[k]) for k in ("calib", "qat_lr", "imit_weight", "ft_lr")}) == 1


@pytest.mark.slow
def test_prune_smoke_follows_the_protocol(tmp_path):
    prune = load_bench("prune")
    args = ["--preset", "smoke", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r"), "--runs", "3"]
    assert prune.main(args) == 0
    r = json.loads((tmp_path / "r" / "prune.json").read_text())
    _claims_ok(r, ("map_drop", "map_drop_vs_equal_budget", "imitation_effect"))
    assert r["teacher"]["test"]["split"] == "test" and r["data"]["test_images"] > 0
    assert set(r["chosen"]) == {"pruned", "pruned_noimit", "student_ft"}
    assert all(len(v["ft_lr"]) == 2 for v in r["sweeps_seed0_val"].values())
    assert r["macs_ratio"] <= 0.6 and r["ort_speedup"] > 0 and r["ort_speedup_384x1248"] > 0
    assert r["fp32_rewrites"]
    assert (tmp_path / "r" / "prune_curves.png").stat().st_size > 1000
    before = _trained(tmp_path / "w")
    assert len(before) >= 1 + 3 + 3 * 2 + 2 * 3  # teacher, students, seed-0 sweeps, other seeds
    # on test: the teacher and the chosen run of every arm and seed, nothing that lost a selection
    evals = list((tmp_path / "w" / "smoke" / "test_eval").glob("test-*.json"))
    assert len(evals) == 1 + 4 * 3, len(evals)
    assert prune.main(args) == 0
    again = json.loads((tmp_path / "r" / "prune.json").read_text())
    assert again["map40"] == r["map40"] and _trained(tmp_path / "w") == before


@pytest.mark.bench_smoke  # ~10 int8 stages: minutes even at smoke size; `make test-bench`
def test_quant_accuracy_smoke_follows_the_protocol(tmp_path):
    quant = load_bench("quant")
    args = ["--results", str(tmp_path / "r"), "accuracy", "--preset", "smoke", "--work", str(tmp_path / "w"),
            "--runs", "3"]
    assert quant.main(args) == 0
    r = json.loads((tmp_path / "r" / "quant.json").read_text())
    _claims_ok(r, ("ptq_map_drop", "qat_map_drop", "qat_map_drop_vs_equal_budget", "ort_vs_torch"))
    assert set(r["chosen"]) == {"ptq", "qat", "qat_imitation", "fp32_ft"}
    assert all(len(r["ort_map40"][a]) == 3 for a in ("ptq", "qat", "qat_imitation"))
    assert r["int8_speedup"] > 0 and r["int8_speedup_at_run_size"] > 0 and r["fp32_rewrites"]
    assert (tmp_path / "r" / "quant_curves.png").stat().st_size > 1000
    # on test: the chosen run of every arm and seed (int8 arms: the PyTorch program and ORT), the students,
    # nothing that lost a selection
    evals = list((tmp_path / "w" / "smoke" / "test_eval").glob("test-*.json"))
    assert len(evals) == 3 + 3 * 3 * 2 + 3, len(evals)
    before = _trained(tmp_path / "w")
    assert quant.main(args) == 0
    again = json.loads((tmp_path / "r" / "quant.json").read_text())
    assert again["map40"] == r["map40"] and _trained(tmp_path / "w") == before


def _claim(vals):
    from compressdet.eval.stats import paired_difference

    return paired_difference(vals, [0.0] * len(vals), seeds=[0, 1, 2])


def test_readme_renders_protocol_prune_and_quant_json():
    data = {"train_images": 1000, "val_images": 500, "test_images": 1000, "image_size": [192, 624]}
    pr = {"report_split": "test", "seeds": [0, 1, 2], "command": "python benchmarks/prune.py --preset cpu",
          "data": data, "steps": {"batch": 2, "student": 1500, "fine_tune": 500, "student_passes": 3.0},
          "macs_ratio": 0.59, "map40": {"student": [10.0, 11.0, 12.0], "pruned": [9.0, 10.5, 11.0],
                                        "pruned_noimit": [8.0, 9.0, 9.5], "student_ft": [10.5, 11.0, 12.5]},
          "chosen": {a: {"ft_lr": 0.0025} for a in ("pruned", "pruned_noimit", "student_ft")},
          "claims": {"map_drop": _claim([1.0, 0.5, 1.0]), "map_drop_vs_equal_budget": _claim([1.5, 0.5, 1.5]),
                     "imitation_effect": _claim([1.0, 1.5, -1.5])},
          "ort_speedup": 1.4, "ort_speedup_384x1248": 1.35}
    text = readme_tables.prune(pr)
    assert "10.00, 11.00, 12.00" in text and "fine-tune lr 0.0025" in text and "1.35x at 384x1248" in text
    assert "95% CI [" in text and "not significant" in text  # imitation_effect's interval holds 0
    qr = {"report_split": "test", "seeds": [0, 1, 2], "command": "python benchmarks/quant.py accuracy --preset cpu",
          "data": data, "steps": {"batch": 2, "qat": 500},
          "map40": {a: [5.0, 6.0, 7.0] for a in ("student", "fp32_ft", "ptq", "qat", "qat_imitation")},
          "ort_map40": {a: [4.9, 6.0, 7.1] for a in ("ptq", "qat", "qat_imitation")},
          "chosen": {"ptq": {"calib": 64}, "qat": {"lr": 0.001}, "qat_imitation": {"lr": 0.001, "weight": 0.5},
                     "fp32_ft": {"weight": 0.5, "lr": 0.0005}},
          "claims": {k: _claim([0.1, -0.2, 0.3]) for k in ("ptq_map_drop", "qat_map_drop",
                                                           "qat_map_drop_vs_equal_budget", "ort_vs_torch")},
          "int8_speedup": 2.1, "int8_speedup_at_run_size": 1.8}
    text = readme_tables.quant(qr)
    assert "4.90, 6.00, 7.10" in text and "lr 0.001, weight 0.5" in text and "2.10x at 384x1248" in text
    # the pre-protocol JSON still renders the old way
    old = json.loads((ROOT / "benchmarks" / "results" / "quant.json").read_text())
    if "report_split" not in old:
        assert readme_tables.quant(old).startswith("**Pre-protocol")
