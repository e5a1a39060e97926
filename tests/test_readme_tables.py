"""README's results tables are generated from benchmarks/results/*.json and must match them."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import readme_tables  # noqa: E402


def test_readme_matches_results_json():
    assert readme_tables.main(["--check"]) == 0, "README results are stale: run python benchmarks/readme_tables.py"


def test_every_results_block_has_a_json_and_a_changed_number_is_caught(tmp_path, capsys):
    readme = (ROOT / "README.md").read_text()
    names = [m.group("name") for m in readme_tables.BLOCK.finditer(readme)]
    assert {"imitation_gain.json", "prune.json", "quant.json"} <= set(names)
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results)
    r = json.loads((results / "quant.json").read_text())
    r["int8_speedup"] += 1.0  # a number the block shows
    (results / "quant.json").write_text(json.dumps(r))
    (tmp_path / "README.md").write_text(readme)
    assert readme_tables.main(["--check", "--readme", str(tmp_path / "README.md"), "--results", str(results)]) == 1
    assert "quant.json" in capsys.readouterr().err
    assert readme_tables.main(["--readme", str(tmp_path / "README.md"), "--results", str(results)]) == 0
    assert f"{r['int8_speedup']:.2f}x" in (tmp_path / "README.md").read_text()


def test_protocol_results_render_claims_with_intervals():
    """A results JSON written under the protocol renders per-seed test values and each claim's CI."""
    claim = {"per_seed": [1.0, 2.0, 0.5], "mean": 7 / 6, "ci95": [-0.7, 3.0], "significant": False, "seeds": [0, 1, 2]}
    r = {"report_split": "test", "seeds": [0, 1, 2], "command": "python benchmarks/imitation_gain.py --preset cpu",
         "data": {"train_images": 1000, "val_images": 500, "test_images": 1000, "image_size": [192, 624]},
         "steps": {"batch": 2, "teacher": 6000, "student": 1500}, "plan": {"student_passes": 3.0},
         "map40": {"1x": 30.0, "0.25x": [8.0, 9.0, 7.0], "0.25x-I": [9.0, 11.0, 7.5], "0.25x-I-random": [6.0, 6.0, 6.0]},
         "chosen": {"0.25x": {"lr": 0.02, "weight": 0.0}, "0.25x-I": {"lr": 0.02, "weight": 1.0},
                    "0.25x-I-random": {"lr": 0.02, "weight": 0.25}},
         "gain": claim, "control": claim, "knowledge_vs_random_teacher": claim, "teacher_gap": 22.0,
         "minutes": 100.0, "teacher_minutes": 40.0}
    text = readme_tables.imitation_gain(r)
    assert "9.00, 11.00, 7.50" in text and "95% CI [-0.70, +3.00]" in text and "not significant" in text
    assert "weight 0.25" in text
