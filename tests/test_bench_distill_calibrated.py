"""benchmarks/distill_methods.py --preset smoke-calibrated: methods compared at equal gradient ratio (#41)."""

from __future__ import annotations

import json
import math
import statistics
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
    at_one = {}
    for m in ("fgfi", "pkd", "crosskd"):
        # the same ratio grid for every method, each point on every selection seed
        pts = {k for k in st["sweep"][m] if k.endswith("@per_tensor1")}
        assert pts == {f"{g:g}@per_tensor1" for g in grid}
        assert all(len(v) == len(r["selection_seeds"]) for v in st["sweep"][m].values())
        # weight: auto's chosen weight next to the ratio it measured at weight 1, on the backbone + neck:
        # every grid point on every seed, weight x ratio(1) = the target
        cal = st["calibration"][m]
        assert sorted({e["auto_ratio"] for e in cal.values()}) == sorted(grid)
        assert {(e["auto_ratio"], e["seed"]) for e in cal.values()} >= {(g, s) for g in grid for s in r["selection_seeds"]}
        for w, e in cal.items():
            assert float(w) * e["grad_ratio_at_1"] == pytest.approx(e["auto_ratio"], rel=1e-4)
            assert e["params"] == "backbone+neck"
        # measured before training: the ratio at weight 1 does not depend on the target (same seed, same batches)
        for s in r["selection_seeds"]:
            by_seed = [e["grad_ratio_at_1"] for e in cal.values() if e["seed"] == s and e["auto_ratio"] in grid]
            assert max(by_seed) == pytest.approx(min(by_seed), rel=1e-6)
        at_one[m] = statistics.mean(e["grad_ratio_at_1"] for e in cal.values())
        assert len(st["test_map40"][m]) == len(r["seeds"]) and len(st["auto_weight"][m]["test_map40"]) == len(r["seeds"])
    # the methods' strengths at weight 1 differ (why weights are not comparable across methods)
    assert len({round(math.log10(v), 2) for v in at_one.values()}) == 3
    # the combination, calibrated per term at its members' chosen ratios
    combo = st["chosen"]["pkd+crosskd"]
    assert combo["ratios"] == {m: st["chosen"][m]["ratio"] for m in ("pkd", "crosskd")} and combo["scale"] == 1.0
    for m in ("pkd", "crosskd"):
        terms = st["calibration"][f"pkd+crosskd:{m}"].items()
        assert {e["seed"] for _, e in terms} == set(r["selection_seeds"])
        assert all(float(w) * e["grad_ratio_at_1"] == pytest.approx(combo["ratios"][m], rel=1e-4) for w, e in terms)
    assert len(st["test_map40"]["pkd+crosskd"]) == len(r["seeds"]) and "pkd+crosskd" in st["vs_fgfi"]
    best_single = max(("pkd", "crosskd"), key=lambda m: st["chosen"][m]["val_map40"])
    swept_clip = {m for m in st["sweep"] if any(k.endswith("@global35") for k in st["sweep"][m])}
    assert "fgfi" in swept_clip and best_single in swept_clip  # fgfi and the best other method only
    assert swept_clip <= {"fgfi", best_single, "pkd+crosskd"}
    best_other = max(("pkd", "crosskd", "pkd+crosskd"), key=lambda m: st["chosen"][m]["val_map40"])
    assert st["best_vs_fgfi"]["method"] == best_other and len(st["best_vs_fgfi"]["ci95"]) == 2
    assert not (tmp_path / "r" / "distill_methods.json").exists()  # the uncalibrated results are left alone
    import readme_tables  # the distillation page's block: the written markdown, without its title

    md = (tmp_path / "r" / "distill_methods_calibrated.md").read_text()
    block = readme_tables.GENERATORS["distill_methods_calibrated.json"](r)
    assert md.startswith("# Distillation methods, calibrated") and block in md and not block.startswith("#")
    assert "## fcos_mnv2_050" in block and all(f"| {a} |" in block for a in st["test_map40"])
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
