"""benchmarks/distill_methods.py --preset smoke-calibrated: methods compared at equal gradient ratio (#41)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import distill_methods  # noqa: E402


@pytest.mark.slow
def test_smoke_calibrated_sweeps_ratios_and_records_calibration(tmp_path):
    args = ["--preset", "smoke-calibrated", "--family", "fcos", "--work", str(tmp_path / "w"),
            "--results", str(tmp_path / "r")]
    assert distill_methods.main(args) == 0
    r = json.loads((tmp_path / "r" / "distill_methods_calibrated.json").read_text())
    assert not (ROOT / "benchmarks" / "ledger" / "distill_methods" / "smoke-calibrated").exists()
    assert (r["selection_split"], r["report_split"]) == ("val", "test") and len(r["selection_seeds"]) >= 2
    st = r["students"]["fcos_mnv2_050"]
    grid = distill_methods.CALIBRATED["smoke-calibrated"]["ratios"]
    for m in ("fgfi", "pkd", "crosskd"):
        # the same ratio grid for every method, each point on every selection seed
        pts = {k for k in st["sweep"][m] if k.endswith("@per_tensor1")}
        assert pts == {f"{g:g}@per_tensor1" for g in grid}
        assert all(len(v) == len(r["selection_seeds"]) for v in st["sweep"][m].values())
        # weight: auto measured each run's ratio and hit it (the gradient is linear in the weight)
        assert sorted({round(v, 6) for v in st["calibration"][m].values()}) == sorted(grid)
        assert len(st["test_map40"][m]) == len(r["seeds"]) and len(st["auto_weight"][m]["test_map40"]) == len(r["seeds"])
    best_other = max(("pkd", "crosskd"), key=lambda m: st["chosen"][m]["val_map40"])
    swept_clip = {m for m in st["sweep"] if any(k.endswith("@global35") for k in st["sweep"][m])}
    assert "fgfi" in swept_clip and len(swept_clip) == 2  # fgfi and the best other method only
    assert st["best_vs_fgfi"]["method"] == best_other and len(st["best_vs_fgfi"]["ci95"]) == 2
    assert not (tmp_path / "r" / "distill_methods.json").exists()  # the uncalibrated results are left alone
    runs = sorted(p.name for p in (tmp_path / "w" / "smoke" / "runs").iterdir())
    assert distill_methods.main(args) == 0  # resumes: no new run
    assert sorted(p.name for p in (tmp_path / "w" / "smoke" / "runs").iterdir()) == runs


def test_the_ratio_grid_is_extended_while_the_best_point_sits_at_an_edge():
    """#41: "extended whenever the best point is at an edge" -- not once: a val mAP still rising past the
    first extension (peak near 1000x here) gets points until the best one is inside the grid."""
    import math

    def val(r):
        return -abs(math.log(r / 1000.0))

    grid, tried = [0.3, 1.0, 3.0, 10.0, 30.0, 100.0], []
    out = distill_methods.extend_past_edges(grid, tried.append, lambda: max(grid + tried, key=val))
    best = max(out, key=val)
    assert tried == out[len(grid):] and len(tried) >= 2 and out[0] < best < out[-1]
    tried.clear()  # the best inside from the start: nothing added
    assert distill_methods.extend_past_edges(grid, tried.append, lambda: 3.0) == grid and tried == []
    low = distill_methods.extend_past_edges(grid, tried.append, lambda: min(grid + tried), max_points=2)
    assert low[:2] == [0.027, 0.09] and tried == [0.09, 0.027]  # capped
