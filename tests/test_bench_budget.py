"""benchmarks/_budget.py: a long benchmark stops between runs when its time budget is spent (exit 3, the
next run named, nothing of it written), still reads back what its ledger holds, and continues later."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _budget  # noqa: E402
import imitation_gain as ig  # noqa: E402
from _ledger import Ledger  # noqa: E402

RECIPE = {"name": "r-budget-0123456789ab", "seed": 0, "device": "cpu", "stages": []}


def test_unset_means_no_limit_and_bad_values_are_one_line(monkeypatch):
    monkeypatch.delenv(_budget.ENV, raising=False)
    assert _budget.minutes() is None and not _budget.spent()
    _budget.check("anything")  # no exit
    monkeypatch.setenv(_budget.ENV, "1e9")
    assert not _budget.spent()
    for bad in ("ten", "-1", "nan", "inf"):
        monkeypatch.setenv(_budget.ENV, bad)
        with pytest.raises(SystemExit, match=f"{_budget.ENV}='{bad}': expected"):
            _budget.minutes()


def test_a_spent_budget_stops_before_a_run_and_writes_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(_budget.ENV, "0")
    with pytest.raises(SystemExit) as e:
        ig._run(dict(RECIPE), tmp_path / "work", Ledger(tmp_path / "ledger"))
    assert e.value.code == _budget.EXIT == 3
    err = capsys.readouterr().err
    assert f"stopping before run {RECIPE['name']}" in err and "run the same command again" in err
    assert not (tmp_path / "work").exists() and not (tmp_path / "ledger").exists()


def test_a_recorded_run_comes_back_with_the_budget_spent(monkeypatch, tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    run_dir = tmp_path / "made" / RECIPE["name"]
    (run_dir / "student").mkdir(parents=True)
    (run_dir / "student" / "model.pt").write_bytes(b"weights")
    man = {"recipe": RECIPE["name"], "stages": {"student": {"kind": "train", "status": "done", "metrics": {"map40": 1.5},
                                                            "artifacts": {"model": {"path": "student/model.pt"}}}}}
    ledger.put(RECIPE["name"], run_dir, man)
    monkeypatch.setenv(_budget.ENV, "0")
    got = ig._run(dict(RECIPE), tmp_path / "work", ledger)
    assert got["stages"]["student"]["metrics"]["map40"] == 1.5
    assert (tmp_path / "work" / "runs" / RECIPE["name"] / "student" / "model.pt").read_bytes() == b"weights"


def test_a_benchmark_run_as_a_user_types_it_stops_with_exit_3(tmp_path):
    env = {**os.environ, _budget.ENV: "0", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "imitation_gain.py"), "--preset", "smoke",
                        "--work", str(tmp_path / "work")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "time budget spent" in r.stderr and "stopping before run teacher-" in r.stderr
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "work").rglob("manifest.json"))  # no run started
