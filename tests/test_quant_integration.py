"""Quantized (qat/ptq) stages as first-class export and bench sources, in one tiny pipeline run.

student (train, 2 steps) -> int8 (qat, 2 steps) -> ptq -> export (from: int8) -> bench, at 64x192.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torchao")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from test_quant_stage import RECIPE  # noqa: E402

from compressdet._io import sha256_file  # noqa: E402
from compressdet.cli import main  # noqa: E402
from compressdet.export.quantized import graph_sha256  # noqa: E402
from compressdet.export.runtime import onnx_metadata  # noqa: E402
from compressdet.pipeline import Pipeline  # noqa: E402
from compressdet.recipe import parse_recipe  # noqa: E402

# the qat/ptq stage test's recipe (2 QAT steps, observers frozen after 1) plus export and bench
TAIL = """  - name: export
    kind: export
    from: int8
    formats: [onnx, onnx-int8]
  - name: bench
    kind: bench
    backends: [torch, ort, ort-int8]
    runs: 2
    warmup: 1
    rounds: 1
    threads: 1
"""


@pytest.fixture(scope="module")
def quant_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant_chain")
    recipe = parse_recipe(RECIPE.format(cache=root / "synth", qat_steps=2, freeze_obs=1) + TAIL, source="tiny.yaml")
    run = Pipeline(recipe, root / "run").run()
    return run, json.loads((run / "manifest.json").read_text())


def test_export_stage_from_qat_uses_its_own_int8_graph(quant_run):
    run, man = quant_run
    for name in ("student", "int8", "ptq", "export", "bench"):
        assert man["stages"][name]["status"] == "done", man["stages"][name].get("error")
    arts = {k: run / a["path"] for k, a in man["stages"]["export"]["artifacts"].items()}
    assert set(arts) == {"onnx", "onnx_int8"} and all(p.is_file() for p in arts.values())
    qat_graph = run / man["stages"]["int8"]["artifacts"]["onnx_int8"]["path"]
    # the INT8 export is the qat stage's graph (same graph hash), not a PTQ of the float model
    assert graph_sha256(arts["onnx_int8"]) == graph_sha256(qat_graph)
    meta8 = onnx_metadata(arts["onnx_int8"])
    assert meta8["stage"] == "int8" and meta8["stage_kind"] == "qat" and meta8["quantization"].startswith("qat")
    assert meta8["float_source_stage"] == "student" and meta8["graph_sha256"] == graph_sha256(qat_graph)
    # the fp32 export is the float source (the qat stage's 'from')
    student = run / man["stages"]["student"]["artifacts"]["model"]["path"]
    meta32 = onnx_metadata(arts["onnx"])
    assert meta32["stage"] == "student" and meta32["source_sha256"] == sha256_file(student)
    info = man["stages"]["export"]["meta"]
    assert info["from"] == "int8" and info["float_source"] == "student"
    assert "copied from qat stage 'int8'" in info["formats"]["onnx-int8"]["source"]


def test_bench_has_qat_and_ptq_rows(quant_run):
    run, man = quant_run
    rep = json.loads((run / man["stages"]["bench"]["artifacts"]["report"]["path"]).read_text())
    rows = {r["label"]: r for r in rep["rows"]}
    assert list(rows) == ["student", "int8 (qat)", "ptq (ptq)"]  # no fresh PTQ row of the float model
    q, p, s = rows["int8 (qat)"], rows["ptq (ptq)"], rows["student"]
    for r in (q, p):
        assert r["precision"] == "int8" and r["float_source"] == "student"
        assert r["latency"]["ort-int8"]["b1"]["median_ms"] > 0 and r["eval_backend"] == "ort-int8"
        assert 0.0 <= r["eval"]["map40"] <= 100.0
        assert r["macs"] == s["macs"] and r["weights_bytes"] < s["weights_bytes"]
        assert r["delta"]["vs"] == "student"
        torch_cell = r["latency"]["torch"]  # the .pt2 program, or n/a with the reason
        assert "b1" in torch_cell or "skipped" in torch_cell
    assert q["kind"] == "qat" and p["kind"] == "ptq" and q["quantization"].startswith("qat")
    assert q["files"]["ort-int8"] == man["stages"]["int8"]["artifacts"]["onnx_int8"]["path"]
    vs = rep["qat_vs_ptq"]
    assert vs["qat"] == "int8 (qat)" and vs["ptq"] == "ptq (ptq)" and vs["same_float_source"]
    assert vs["map_gain"] is not None and vs["latency_qat_ms"] > 0 and vs["latency_ptq_ms"] > 0
    md = (run / "bench" / "report.md").read_text()
    assert "QAT vs PTQ" in md and "weights" in md
    assert man["stages"]["bench"]["metrics"]["int8/mAP"] == q["eval"]["map40"]


def test_cli_export_picks_last_int8_stage(quant_run, capsys):
    run, _ = quant_run
    rc = main(["export", str(run), "--onnx", "--int8", "--out", str(run / "cli_exports")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "using stage 'ptq' (ptq;" in out and "float source 'student'" in out
    assert (run / "cli_exports" / "student.onnx").is_file()
    ptq_graph = run / "ptq" / "model_int8.onnx"
    assert graph_sha256(run / "cli_exports" / "ptq.int8.onnx") == graph_sha256(ptq_graph)
    idx = json.loads((run / "cli_exports" / "ptq.export.json").read_text())
    assert idx["stage"] == "ptq" and idx["kind"] == "ptq" and idx["float_source"] == "student"
