"""benchmarks/distill_methods.py: the head-to-head of distillers follows the evidence protocol."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import distill_methods  # noqa: E402


@pytest.mark.slow
def test_smoke_run_selects_on_val_and_reports_claims_against_fgfi(tmp_path):
    args = ["--preset", "smoke", "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r"),
            "--ledger", str(tmp_path / "l")]
    assert distill_methods.main(args) == 0
    r = json.loads((tmp_path / "r" / "distill_methods.json").read_text())
    assert (r["selection_split"], r["report_split"], r["seeds"]) == ("val", "test", [0, 1, 2])
    st = r["students"]["shuffledet_0.25x"]
    assert st["arms"] == ["none", "fgfi", "pkd", "crosskd", "pkd+crosskd"]
    b = st["best_vs_fgfi"]
    assert b["method"] in ("pkd", "crosskd", "pkd+crosskd") and len(b["per_seed"]) == 3 and len(b["ci95"]) == 2
    # equal tuning budget: every arm tried as many settings on val as the baseline's lr sweep
    sizes = {a: len(next(iter(v.values()))) for a, v in st["sweeps_seed0_val"].items()}
    assert len(set(sizes.values())) == 1
    assert (tmp_path / "r" / "distill_methods.png").stat().st_size > 1000
    runs = sorted(p.name for p in (tmp_path / "w" / "smoke" / "runs").iterdir())
    assert distill_methods.main(args) == 0  # resumes: no new run
    assert sorted(p.name for p in (tmp_path / "w" / "smoke" / "runs").iterdir()) == runs
    # a fresh machine (run folders and every model's bytes gone, the record kept): the students are leaves,
    # so their records and cached test evaluations stand in for them, and nothing trains, not even the teacher
    shutil.rmtree(tmp_path / "w")
    for model in (tmp_path / "l").glob("*/*/model.pt"):
        model.unlink()
    assert distill_methods.main(args) == 0
    assert not (tmp_path / "w" / "smoke" / "runs").exists()
    again = json.loads((tmp_path / "r" / "distill_methods.json").read_text())
    assert again["students"]["shuffledet_0.25x"]["test_map40"] == st["test_map40"]
    # one student never recorded: it trains, so its teacher is first made again (and must match its record)
    gone = next((tmp_path / "l").glob("D-pkd-*-s1-*"))
    shutil.rmtree(gone)
    assert distill_methods.main(args) == 0
    assert sorted(p.name for p in (tmp_path / "w" / "smoke" / "runs").iterdir()) == sorted([r["teacher"]["run"], gone.name])
    assert json.loads((tmp_path / "r" / "distill_methods.json").read_text()) ["students"]["shuffledet_0.25x"][
        "test_map40"] == st["test_map40"]
    # a torchvision family on the same data and protocol: its own teacher, its entry added beside ShuffleDet's
    assert distill_methods.main(args + ["--family", "fcos"]) == 0
    r = json.loads((tmp_path / "r" / "distill_methods.json").read_text())
    assert set(r["students"]) == {"shuffledet_0.25x", "fcos_mnv2_050"}
    fc = r["students"]["fcos_mnv2_050"]
    assert fc["family"] == "fcos" and fc["teacher"]["arch"] == "fcos_mnv3_large"
    assert fc["arms"] == st["arms"] and len(fc["best_vs_fgfi"]["per_seed"]) == 3
    assert all(0.0 <= v <= 100.0 for vals in fc["test_map40"].values() for v in vals)
    assert r["teacher"] == r["students"]["shuffledet_0.25x"]["teacher"]  # top-level keys stay ShuffleDet's
    assert (tmp_path / "r" / "distill_methods_fcos.png").is_file()
    md = (tmp_path / "r" / "distill_methods.md").read_text()
    assert "## shuffledet_0.25x" in md and "## fcos_mnv2_050" in md
    import readme_tables  # the README block: every arm with its chosen settings, both comparisons, the verdict

    block = readme_tables.GENERATORS["distill_methods.json"](r)
    for model, s in r["students"].items():
        assert f"| {model} (teacher {s['teacher']['arch']}" in block
        for a in s["arms"]:
            assert f"| {a} | lr {s['chosen'][a]['lr']}" in block
    assert block.count("Best non-FGFI method by val") == 2 and "| reference |" in block
