"""bench: report keys, markdown, PNG, deltas, latest-run pick, bad backends; tiny hand-made run."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime")

from test_export_helpers import make_run  # noqa: E402

from compressdet.bench.latency import compare_latency, measure_latency  # noqa: E402
from compressdet.cli import main  # noqa: E402

torch.set_num_threads(1)


def test_measure_latency_counts_calls():
    calls = []
    r = measure_latency(lambda: calls.append(1), runs=7, warmup=2)
    assert len(calls) == 9 and r["runs"] == 7 and 0 <= r["min_ms"] <= r["median_ms"] <= r["p90_ms"]


def test_compare_latency_times_models_in_alternating_blocks():
    log = []
    r = compare_latency({"a": lambda: log.append("a"), "b": lambda: log.append("b")}, runs=5, block=3, warmup=1)
    # warm-up, then 2 rounds (5 runs -> 2 blocks of 3) of [a: 1 dropped + 3 timed][b: the same]
    assert log == ["a", "b"] + (["a"] * 4 + ["b"] * 4) * 2
    assert set(r) == {"a", "b"} and r["a"]["runs"] == r["b"]["runs"] == 6
    log.clear()  # the biased single-run interleaving: nothing dropped, a b a b ...
    r = compare_latency({"a": lambda: log.append("a"), "b": lambda: log.append("b")}, runs=3, block=1, warmup=0,
                        drop_first=False)
    assert log == ["a", "b"] * 3 and r["a"]["runs"] == 3
    with pytest.raises(ValueError, match="block"):
        compare_latency({"a": lambda: None}, block=0)


def test_bench_latest_run_writes_reports(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(run), "--stage", "pruned", "--onnx", "--int8", "--calibration-images", "2"]) == 0
    capsys.readouterr()
    rc = main(["bench", "--backends", "torch,ort,ort-int8", "--runs", "2", "--warmup", "1", "--batch-sizes", "1,2",
               "--threads", "1", "--rounds", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "using the latest run" in out
    rep = json.loads((run / "bench" / "report.json").read_text())
    assert {"rows", "threads", "backends", "batch_sizes", "qat_vs_ptq", "protocol"} <= set(rep)
    labels = [r["label"] for r in rep["rows"]]
    assert labels == ["student", "pruned", "pruned (int8)"]
    student, pruned, q = rep["rows"]
    for r in rep["rows"]:
        assert {"macs", "params", "file_bytes", "latency", "eval", "delta"} <= set(r)
        assert r["macs"]["backbone"] > 0 and r["eval"]["map40"] >= 0
        assert set(r["eval"]["ap"]) == {"car", "pedestrian", "cyclist"}
    assert set(student["latency"]) == {"torch", "ort"} and set(q["latency"]) == {"ort-int8"}
    assert student["latency"]["torch"]["b1"]["median_ms"] > 0
    # the run's export was static batch 1 -> batch 2 for int8 is skipped with the reason
    assert "static batch" in q["latency"]["ort-int8"]["b2"]["skipped"]
    assert pruned["delta"]["vs"] == "student" and q["delta"]["vs"] == "pruned"
    # CPU latency comes from isolated processes: one per (model, backend) and round, none of them this one
    import os

    assert rep["timer"] == "isolated_process" and rep["rounds"] == 2
    pids = []
    for r in rep["rows"]:
        for backend, cells in r["latency"].items():
            c = cells["b1"]
            assert c["timer"] == "isolated_process" and c["runs"] == 2 and len(c["pids"]) == 2, (r["label"], backend)
            pids += c["pids"]
        assert r["fastest_backend"] in r["latency"]
    assert len(set(pids)) == len(pids) == 2 * 5 and os.getpid() not in pids
    # what each backend computed in and how far its output is from PyTorch fp32
    assert student["backends"]["ort"]["precision"] == "fp32" and q["backends"]["ort-int8"]["precision"] == "int8"
    assert student["backends"]["ort"]["max_abs_diff_vs_torch_fp32"] < 1e-3
    assert 0 < q["backends"]["ort-int8"]["max_abs_diff_vs_torch_fp32"] < 10
    # speed-up vs the fp32 baseline (student) on the same backend; int8 backends vs their float one
    assert student["speedup_vs_baseline"]["ort"]["speedup"] == 1.0
    assert q["speedup_vs_baseline"]["ort-int8"]["vs_backend"] == "ort"
    assert q["speedup_vs_baseline"]["ort-int8"]["vs"] == "student" and q["baseline"] == "student"
    # the delta's speed-up compares one backend (int8 against its float one), never best against best
    assert q["delta"]["speedup_backends"] == "ort-int8 vs ort"
    assert q["delta"]["speedup"] == pytest.approx(pruned["latency"]["ort"]["b1"]["median_ms"]
                                                  / q["latency"]["ort-int8"]["b1"]["median_ms"], abs=0.01)
    assert q["eval_backend"] == "ort-int8" and q["file_bytes"] < pruned["file_bytes"]
    md = (run / "bench" / "report.md").read_text()
    assert "car E/M/H" in md and "| MACs |" in md and "| param bytes | file size |" in md and "pruned (int8)" in md
    # param bytes follow the model, not its file: the pruned model's parameters, the int8 row's int8 weights
    assert q["param_bytes"] < pruned["param_bytes"] <= student["param_bytes"]
    assert pruned["delta"]["param_bytes_pct"] == pytest.approx(
        100 * (pruned["param_bytes"] - student["param_bytes"]) / student["param_bytes"], abs=0.01)
    assert "| pruned (int8) | ort-int8 * | int8 |" in md and "own process" in md.replace("own processes", "own process")
    assert (run / "bench" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert rep["split"] == "val" and "val split" in md
    # --split test: the same models measured on the held-out split instead
    rc = main(["bench", str(run), "--backends", "torch", "--runs", "1", "--warmup", "0", "--batch-sizes", "1",
               "--threads", "1", "--rounds", "1", "--split", "test", "--stages", "student", "--out", str(tmp_path / "t")])
    assert rc == 0
    rep_t = json.loads((tmp_path / "t" / "report.json").read_text())
    assert rep_t["split"] == "test" and "test split" in (tmp_path / "t" / "report.md").read_text()
    from compressdet.data import build_dataset
    from compressdet.recipe import load_recipe

    n_test = len(build_dataset(load_recipe(run / "recipe.yaml").data, "test", train=False))
    assert rep_t["rows"][0]["eval"]["images"] == n_test


def test_bench_bad_backend_exit_2(tmp_path, capsys):
    run = make_run(tmp_path / "runs", stages=("student",))
    assert main(["bench", str(run), "--backends", "torch,onnxrt"]) == 2
    assert "unknown backend 'onnxrt'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, hint", [(["bench"], "pass RUN_DIR"), (["export", "--onnx"], "pass RUN_DIR or MODEL_FILE"),
                                        (["predict", "img.png"], "pass --model RUN_DIR|MODEL|ONNX|IR")])
def test_no_run_exit_2(tmp_path, monkeypatch, capsys, argv, hint):
    """bench, export and predict with no run named and none under runs/: one line, what to pass, exit 2."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img.png").write_bytes(b"")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"no run found under runs/ (run a recipe first, or {hint})") and "\n" not in err, err


def test_compare_onnx_isolated_times_each_model_in_its_own_process(tmp_path):
    from compressdet.bench.latency import compare_onnx_isolated

    paths = {}
    for name, width in (("small", 4), ("big", 32)):
        m = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(width, width, 3, padding=1)).eval()
        paths[name] = tmp_path / f"{name}.onnx"
        torch.onnx.export(m, (torch.zeros(1, 3, 64, 64),), str(paths[name]), input_names=["images"],
                          opset_version=17, dynamo=False)
    r = compare_onnx_isolated(paths, runs=6, rounds=2, threads=1, warmup=1)
    assert set(r) == {"small", "big"} and r["small"]["runs"] == r["big"]["runs"] == 6
    assert 0 < r["small"]["min_ms"] <= r["small"]["median_ms"]
    # 64x more MACs in the second conv: the isolated timer must see it
    assert r["big"]["median_ms"] > r["small"]["median_ms"]
    with pytest.raises(ValueError, match="rounds"):
        compare_onnx_isolated(paths, rounds=0)
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match="broken.onnx failed"):
        compare_onnx_isolated({"x": tmp_path / "broken.onnx"}, runs=1, rounds=1, threads=1)


def test_onnx_and_openvino_timing_children_start_without_torch(tmp_path):
    """An ONNX Runtime or OpenVINO timing child gets its input from the parent, so it never imports torch
    (seconds per child, many children per bench or deploy)."""
    import subprocess
    import sys

    import numpy as np

    from compressdet.bench.latency import TimingJob, time_isolated
    from compressdet.export._onnx import synthetic_image

    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    onnx_file = tmp_path / "m.onnx"
    torch.onnx.export(m, (torch.zeros(1, 3, 32, 48),), str(onnx_file), input_names=["images"], opset_version=17,
                      dynamo=False)
    r = time_isolated({"m": TimingJob("ort", str(onnx_file), (1, 2), (32, 48))}, runs=2, rounds=2, threads=1,
                      warmup=1)["m"]
    assert r["precision"] == "fp32" and r["b1"]["runs"] == 2 and len(r["pids"]) == 2
    assert r["b2"] == {"skipped": "graph has a static batch 1 (export with --dynamic-batch)"}

    img = tmp_path / "x.npy"
    np.save(img, synthetic_image((32, 48)).numpy())
    probe = ("import runpy, sys; sys.argv = ['latency', sys.argv[1], '--backend', 'ort', '--runs', '1', '--warmup', "
             "'0', '--threads', '1', '--input', sys.argv[2]]; "
             "runpy.run_module('compressdet.bench.latency', run_name='__main__'); "
             "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    backends = {"ort": onnx_file}
    try:
        import openvino as ov

        ov.save_model(ov.convert_model(str(onnx_file)), str(tmp_path / "m.xml"))
        backends["openvino"] = tmp_path / "m.xml"
    except ImportError:
        pass
    for backend, path in backends.items():
        out = subprocess.run([sys.executable, "-c", probe.replace("'ort'", repr(backend)), str(path), str(img)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        res, verdict = out.stdout.strip().splitlines()[-2:]
        assert verdict == "no torch" and json.loads(res)["times"]["b1"][0] > 0, backend

    np.save(img, np.zeros((3, 32, 48), np.float32))  # not one image: one line naming the file, exit 2
    out = subprocess.run([sys.executable, "-m", "compressdet.bench.latency", str(onnx_file), "--backend", "ort",
                          "--input", str(img)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"--input {img}: expected one image [1, 3, H, W], got shape [3, 32, 48]" in out.stderr
