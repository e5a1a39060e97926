"""benchmarks/fpn_speed.py (INT8 vs fp32 ORT latency of the FPN families) and run_all's choice of scripts:
the table comes from the JSON alone, bad arguments are usage errors, and one family end to end at 64x192
(a real int8 graph, each graph timed in a process of its own)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _bench import load_bench, unload_bench  # tests/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fs():
    yield load_bench("fpn_speed")
    unload_bench("fpn_speed")


def test_table_from_json(fs):
    lat = {"median_ms": 1.0, "p90_ms": 1.0, "mean_ms": 1.0, "min_ms": 1.0, "runs": 4}
    r = {"command": "python benchmarks/fpn_speed.py", "machine": "x86_64", "threads": 2,
         "timer": {"runs": 60, "rounds": 3, "note": "isolated"}, "fp32": "fast", "int8": "ptq", "weights": "random or trained",
         "families": {"fcos": {"student": "fcos_mnv3_small", "weights": "trained", "model": "/x/model.pt", "sizes": {
             "192x624": {"macs": 4.2e8, "fp32_ms": 30.0, "int8_ms": 20.0, "int8_speedup": 1.5, "latency": lat},
             "384x1248": {"macs": 1.68e9, "fp32_ms": 110.0, "int8_ms": 125.0, "int8_speedup": 0.88, "latency": lat}}}}}
    md = fs.render_md(r)
    rows = [ln for ln in md.splitlines() if ln.startswith("| fcos |")]
    assert rows == ["| fcos | fcos_mnv3_small | trained | 192x624 | 0.420 G | 30.00 | 20.00 | x1.50 |",
                    "| fcos | fcos_mnv3_small | trained | 384x1248 | 1.680 G | 110.00 | 125.00 | x0.88 |"]
    assert "`python benchmarks/fpn_speed.py`" in md and "Where the time goes" not in md
    r["families"]["fcos"]["sizes"]["192x624"]["op_profile"] = {
        "fp32": {"top": [["Conv", 0.8, 8.0], ["Mul", 0.2, 2.0]]},
        "int8": {"top": [["QLinearConv", 0.5, 3.0], ["Mul", 0.3, 1.8], ["HardSigmoid", 0.2, 1.2]]}}
    md = fs.render_md(r)
    assert "| fcos | 192x624 | Conv 80%, Mul 20% | QLinearConv 50%, Mul 30%, HardSigmoid 20% |" in md
    assert "| fcos | 384x1248 |" not in md  # no profile, no row


def test_profile_counts_only_the_timed_runs(fs):
    """Kernel events of the warm-up runs are left out, also for a node name that appears twice."""
    def run(ts):
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": 90}

    def kern(name, op, ts, dur):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [run(0), kern("conv", "Conv", 10, 1000), kern("dup", "Mul", 50, 1000),
              run(100), kern("conv", "Conv", 110, 7), kern("dup", "Mul", 150, 3), kern("dup", "Mul", 160, 2)]
    per_op, n = fs.kernel_us_per_op(events, warmup=1)
    assert n == 1 and per_op == {"Conv": 7, "Mul": 5}
    per_op, n = fs.kernel_us_per_op(events, warmup=0)
    assert n == 2 and per_op == {"Conv": 1007, "Mul": 1005}
    with pytest.raises(ValueError, match="2 runs"):
        fs.kernel_us_per_op(events, warmup=2)


@pytest.mark.parametrize("argv, says", [
    (["--sizes", "72x200"], "multiples of 16"),
    (["--sizes", "big"], "expected HxW"),
    (["--model", "shuffledet=x.pt"], "expected ROW=PATH with ROW one of fcos, fcos-mnv2, retinanet"),
    (["--model", "fcos=/no/such/model.pt"], "no such file"),
    (["--runs", "0"], "must be positive"),
    (["--profile-runs", "-1"], "--profile-runs >= 0"),
])
def test_bad_arguments_are_usage_errors(fs, argv, says, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        fs.main([*argv, "--preset", "smoke", "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_model_arguments_must_match_the_families(fs, tmp_path, capsys):
    from compressdet.models import build_model, save_model

    path = save_model(build_model("fcos_mnv3_small", image_size=(64, 192)), tmp_path / "f.pt")
    (tmp_path / "file").write_text("x")
    for argv, says in [(["--model", f"fcos={path}", "--families", "retinanet"], "not in --families"),
                       (["--model", f"fcos={path}", "--model", f"fcos={path}"], "given 2 times"),
                       (["--results", str(tmp_path / "file")], "is not a folder")]:
        with pytest.raises(SystemExit) as e:
            fs.main([*argv, "--preset", "smoke", "--work", str(tmp_path / "w")] +
                    ([] if "--results" in argv else ["--results", str(tmp_path / "r")]))
        assert e.value.code == 2 and says in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pt", "file"]


def test_model_file_of_another_family_is_refused(fs, tmp_path, capsys):
    from compressdet.models import build_model, save_model

    path = save_model(build_model("retinanet_mnv3_small", image_size=(64, 192)), tmp_path / "r.pt")
    model, weights = fs._model("retinanet", (64, 192), path)
    assert model.family == "retinanet" and weights == "trained" and not model.training
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        fs.main(["--model", f"fcos={path}", "--preset", "smoke", "--work", str(tmp_path / "w"), "--results", str(out)])
    assert e.value.code == 2 and "holds a retinanet model" in capsys.readouterr().err and not out.exists()


@pytest.mark.slow
def test_fcos_end_to_end(fs, tmp_path):
    import onnx

    assert fs.main(["--preset", "smoke", "--families", "fcos", "--runs", "2", "--work", str(tmp_path / "w"),
                    "--results", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "fpn_speed.json").read_text())
    assert r["preset"] == "smoke" and r["timer"]["protocol"] == "isolated_process" and list(r["families"]) == ["fcos"]
    s = r["families"]["fcos"]["sizes"]["64x192"]
    assert s["int8_speedup"] == pytest.approx(s["fp32_ms"] / s["int8_ms"])
    assert s["latency"]["fp32"]["runs"] == 2 and s["latency"]["int8"]["runs"] == 2
    assert s["macs"] > 0
    ops = {n.op_type for n in onnx.load(tmp_path / "w" / "fcos-64x192" / "random" / "int8.onnx").graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    f32 = {n.op_type for n in onnx.load(tmp_path / "w" / "fcos-64x192" / "random" / "fp32.onnx").graph.node}
    assert "QuantizeLinear" not in f32
    prof = s["op_profile"]
    assert prof["int8"]["kernel_ms_per_run"] > 0
    # ranked by kernel time over 2 runs of a tiny input: the order moves when the machine is shared, membership not
    assert any(op == "QLinearConv" for op, _, _ in prof["int8"]["top"]) and "Conv" in [op for op, _, _ in prof["fp32"]["top"]]
    # what ORT's optimizer made of each graph: int8 convs in the int8 one, float convs with fused activations
    assert prof["int8"]["optimized_ops"].get("QLinearConv", 0) > 0 and "QLinearConv" not in prof["fp32"]["optimized_ops"]
    assert prof["fp32"]["conv_fused_activations"].get("HardSwish", 0) > 0  # MobileNetV3's activation, fused in fp32
    assert not list((tmp_path / "w" / "fcos-64x192" / "random").glob("profile-*/*"))  # profiler files removed
    md = (tmp_path / "fpn_speed.md").read_text()
    assert "| fcos | fcos_mnv3_small | random | 64x192 |" in md and "| fcos | 64x192 | Conv " in md


def test_run_all_runs_benchmarks_only(tmp_path, capsys):
    run_all = load_bench("run_all")
    try:
        for name in ["_protocol", "readme_tables", "gpu_check", "demo_assets", "run_all", "quant", "zeta", "fpn_speed",
                     "eval_speed"]:
            (tmp_path / f"{name}.py").write_text("")
        assert list(run_all.benchmark_scripts(tmp_path)) == ["eval_speed", "quant", "fpn_speed", "zeta"]
        names = list(run_all.benchmark_scripts())  # this checkout: every ORDER entry exists
        assert names[: len(run_all.ORDER)] == run_all.ORDER and "readme_tables" not in names
        text = (ROOT / "benchmarks" / "fpn_speed.py").read_text()
        assert run_all.invocations("fpn_speed", text, "smoke", "/tmp/r") == [["--results", "/tmp/r", "--preset", "smoke"]]
        assert run_all.invocations("fpn_speed", text, "full") == [["--preset", "full"]]
        with pytest.raises(SystemExit) as e:  # a typo runs nothing and says so
            run_all.main(["--only", "fpn_sped"])
        assert e.value.code == 2 and "not a benchmark here" in capsys.readouterr().err
    finally:
        unload_bench("run_all")
