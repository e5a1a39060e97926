"""The results tables of README and the docs pages (docs/results/*.md) are generated from
benchmarks/results/*.json and must match them."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import readme_tables  # noqa: E402


def test_readme_matches_results_json():
    assert readme_tables.main(["--check"]) == 0, "results pages are stale: run python benchmarks/readme_tables.py"


def test_every_results_block_has_a_json_and_a_changed_number_is_caught(tmp_path, capsys):
    pages = readme_tables.pages()
    assert pages[0] == ROOT / "README.md" and ROOT / "docs" / "results" / "speed.md" in pages
    names = {m.group("name") for p in pages for m in readme_tables.BLOCK.finditer(p.read_text())}
    assert {"imitation_gain.json", "imitation_gain.json:headline", "prune.json", "quant.json"} <= names
    assert set(readme_tables.GENERATORS) <= names, "a generator whose table no page shows"
    page = ROOT / "docs" / "results" / "speed.md"
    assert "<!-- results: quant.json -->" in page.read_text()
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results)
    r = json.loads((results / "quant.json").read_text())
    r["int8_speedup"] += 1.0  # a number the block shows
    (results / "quant.json").write_text(json.dumps(r))
    (tmp_path / "speed.md").write_text(page.read_text())
    assert readme_tables.main(["--check", "--readme", str(tmp_path / "speed.md"), "--results", str(results)]) == 1
    assert "speed.md" in (err := capsys.readouterr().err) and "quant.json" in err
    assert readme_tables.main(["--readme", str(tmp_path / "speed.md"), "--results", str(results)]) == 0
    assert f"{r['int8_speedup']:.2f}x" in (tmp_path / "speed.md").read_text()


def test_readme_headline_is_the_seeds_table_from_the_imitation_benchmark(tmp_path):
    """README's headline is METHOD.md's table format (FLOPs, params, per-class E/M/H, mAP), its numbers from the
    JSON: a changed AP changes the row, and the block stays within README's 200 lines."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200 and "make test" in readme
    block = readme.split("<!-- results: imitation_gain.json:headline -->")[1].split("<!-- /results -->")[0]
    assert "| model | FLOPs | params | car E/M/H | ped E/M/H | cyc E/M/H | mAP |" in block
    r = json.loads((ROOT / "benchmarks" / "results" / "imitation_gain.json").read_text())
    parity = json.loads((ROOT / "benchmarks" / "results" / "model_parity.json").read_text())
    r["test_ap40_seed0"]["0.25x-I"]["car"]["easy"] = 99.94
    text = readme_tables.imitation_headline(r, parity)
    row = next(ln for ln in text.splitlines() if ln.startswith("| 0.25x-I |"))
    assert row.startswith("| 0.25x-I | 0.67 G | 0.21 M | 99.9/") and row in text and row not in block


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
