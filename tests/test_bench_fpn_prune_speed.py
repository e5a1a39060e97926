"""benchmarks/fpn_prune_speed.py (uniform vs latency allocation on the FPN families, ORT latency): one row
end to end at 64x192 (both allocations meet the MACs budget with different cuts, every graph timed in a
process of its own), the table from the JSON, and bad arguments as usage errors."""

from __future__ import annotations

import json

import pytest
from _bench import load_bench, unload_bench  # tests/ is on sys.path


@pytest.fixture(scope="module")
def fps():
    yield load_bench("fpn_prune_speed")
    unload_bench("fpn_prune_speed")


@pytest.mark.slow
def test_one_row_end_to_end(fps, tmp_path):
    assert fps.main(["--preset", "smoke", "--rows", "retinanet-mnv2", "--round-to", "8", "--head", "0.25",
                     "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")]) == 0
    r = json.loads((tmp_path / "r" / "fpn_prune_speed.json").read_text())
    s = r["rows"]["retinanet-mnv2"]["sizes"]["64x192"]
    m = s["models"]
    assert list(m) == ["unpruned", "uniform-x8", "latency-x8", "latency-x8-head0.25"]
    assert m["unpruned"]["fp32_speedup"] == 1.0
    for name in ("uniform-x8", "latency-x8"):
        assert abs(m[name]["backbone_macs_ratio"] - 0.6) < 0.05
        assert m[name]["fp32_speedup"] == pytest.approx(m["unpruned"]["fp32_ms"] / m[name]["fp32_ms"])
        assert s["latency"][f"{name}/fp32"]["runs"] == 3
    assert m["uniform-x8"]["weights"] is None and len(m["latency-x8"]["weights"]) > 10
    assert m["uniform-x8"]["params"] != m["latency-x8"]["params"]  # different cuts at the same budget
    # the head variant: the same backbone budget, a quarter of every head tower's channels gone as well
    hv = m["latency-x8-head0.25"]
    assert abs(hv["backbone_macs_ratio"] - 0.6) < 0.05 and hv["macs"]["head"] < 0.8 * m["unpruned"]["macs"]["head"]
    md = (tmp_path / "r" / "fpn_prune_speed.md").read_text()
    assert "| retinanet-mnv2 | retinanet_mnv2_050 | 64x192 | latency-x8 |" in md


def test_table_from_json(fps):
    cell = lambda ms, x: {"backbone_macs_ratio": 0.6, "total_macs_ratio": 0.8, "fp32_ms": ms, "fp32_speedup": x,  # noqa: E731
                          "int8_ms": ms / 2, "int8_speedup": x}
    r = {"command": "python benchmarks/fpn_prune_speed.py", "threads": 2, "machine": "x86_64", "weights": "random",
         "target_backbone_macs": 0.6, "timer": {"runs": 60, "rounds": 3},
         "rows": {"fcos-mnv2": {"student": "fcos_mnv2_050", "sizes": {"192x624": {"models": {
             "unpruned": cell(10.0, 1.0), "uniform-x16": cell(8.0, 1.25), "latency-x16": cell(7.5, 1.333)}}}}}}
    rows = [ln for ln in fps.render_md(r).splitlines() if ln.startswith("| fcos-mnv2")]
    assert rows[2] == "| fcos-mnv2 | fcos_mnv2_050 | 192x624 | latency-x16 | 0.600 | 0.800 | 7.50 | x1.33 | 3.75 | x1.33 |"


@pytest.mark.parametrize("argv, says", [(["--macs", "1.5"], "expected a fraction in (0, 1)"),
                                        (["--rows", "shuffledet"], "invalid choice"),
                                        (["--round-to", "0"], "expected positive channel counts"),
                                        (["--head", "1.5"], "expected fractions in (0, 0.9)")])
def test_bad_arguments_are_usage_errors(fps, argv, says, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        fps.main([*argv, "--preset", "smoke", "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
