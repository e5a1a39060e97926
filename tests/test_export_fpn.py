"""FPN int8 models (FCOS, RetinaNet) through the export and bench stages, as ShuffleDet's go.

Tiny SynthKITTI recipe at 64x192 (``tests/test_quant_fpn.py``'s): a saved float model, a ptq stage
(PTQ rather than QAT only for time: export and bench read the same artifacts), an ``export`` stage
from it (``formats: [onnx, onnx-int8]``: the fp32 graph of the float source and the stage's own QDQ
graph, re-verified against ORT fp32 and the ``.pt2`` program over all raw outputs, decoded by the
model's own postprocessor) and a ``bench`` stage with ``torch`` (the fp32 model and the ``.pt2`` int8
program), ``ort`` and ``ort-int8`` (RetinaNet: the int8 row only, plus OpenVINO's IR of the QDQ graph
when openvino is installed). Checks: files exist, the export's recorded checks passed, one bench cell
per backend with a finite latency and an mAP per row."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("torchao")
pytest.importorskip("onnxruntime")

from test_quant_fpn import PTQ, _run  # noqa: E402  (tests/ is on sys.path, as for _prune_models)

EXPORT_BENCH = """  - {name: export, kind: export, from: int8, formats: [onnx, onnx-int8]}
  - {name: bench, kind: bench, backends: [torch, ort, ort-int8], runs: 2, warmup: 1, rounds: 1,
     eval: {batch_size: 2}}"""
#: the int8 row only (cheaper); with OpenVINO installed also its IR of the stage's QDQ graph
EXPORT_BENCH_INT8 = """  - {{name: export, kind: export, from: int8, formats: [onnx, onnx-int8{ov}]}}
  - {{name: bench, kind: bench, stages: [int8], backends: [torch, ort-int8{ov}], runs: 2, warmup: 1, rounds: 1,
     eval: {{batch_size: 2}}}}"""


def _check_export_and_bench(run, model, want: dict[str, tuple[str, ...]]) -> dict:
    """Export checks recorded and passed; bench: rows ``want`` (label -> backends), each cell timed, an mAP."""
    man = json.loads((run / "manifest.json").read_text())["stages"]
    exp, bench = man["export"], man["bench"]
    assert exp["status"] == "done", exp.get("error")
    assert bench["status"] == "done", bench.get("error")
    for key in ("onnx", "onnx_int8"):
        assert (run / exp["artifacts"][key]["path"]).is_file()
    fmts = exp["meta"]["formats"]
    # fp32: ORT vs PyTorch on every raw output within the export tolerance
    assert fmts["onnx"]["outputs"] == list(model.export_outputs) and fmts["onnx"]["max_abs_diff"] <= 1e-3
    q = fmts["onnx-int8"]
    assert "quantized_check" not in q, q.get("quantized_check")  # the .pt2 program ran and was compared
    assert q["stage"] == "int8" and q["float_source"] == "student" and q["graph"]["float_convs"] == 0
    for k in ("max_abs_diff_vs_fp32", "max_abs_diff_vs_quantized", "detection_agreement",
              "detection_agreement_vs_quantized"):
        assert math.isfinite(q[k]), (k, q)
    # untrained models: agreement is only a range (degenerate boxes of random heads match nothing)
    assert 0.0 <= q["detection_agreement"] <= 1.0 and 0.0 <= q["detection_agreement_vs_quantized"] <= 1.0
    if "openvino-int8" in fmts:
        ov = fmts["openvino-int8"]
        assert (run / exp["artifacts"]["openvino_int8"]["path"]).is_file()
        assert math.isfinite(ov["max_abs_diff"]) and math.isfinite(ov["max_abs_diff_vs_ort_int8"]), ov

    report = json.loads((run / bench["artifacts"]["report"]["path"]).read_text())
    rows = {r["label"]: r for r in report["rows"]}
    assert set(rows) == set(want), set(rows)
    for label, backends in want.items():
        r = rows[label]
        assert set(r["latency"]) == set(backends), (label, r["latency"])
        for b in backends:
            cell = r["latency"][b]["b1"]
            assert math.isfinite(cell["median_ms"]) and cell["median_ms"] > 0, (label, b, cell)
            info = r["backends"][b]
            assert math.isfinite(info["max_abs_diff_vs_torch_fp32"]), (label, b, info)
            assert 0.0 <= info["detection_agreement_vs_torch_fp32"] <= 1.0, (label, b, info)
        m = r["eval"][report["map_key"]]
        assert math.isfinite(m) and 0.0 <= m <= 100.0, (label, r["eval"])
    if "student" in rows:  # fp32 torch and fp32 ORT compute the same thing
        assert rows["student"]["backends"]["ort"]["max_abs_diff_vs_torch_fp32"] <= 1e-3
    return report


def test_fcos_ptq_export_bench(tmp_path, cache):
    model, run, rec, recipe = _run(tmp_path, cache, "fcos_mnv3_small", PTQ + "\n" + EXPORT_BENCH)
    _check_export_and_bench(run, model, {"student": ("torch", "ort"), "int8 (ptq)": ("torch", "ort-int8")})
    _check_predict(tmp_path, run)


def _labels(out) -> dict[str, list[list[float]]]:
    """``{image: [[class index, score, x1, y1, x2, y2], ...]}`` from predict's KITTI files."""
    names = ["car", "pedestrian", "cyclist"]  # KITTI writes them capitalised
    res = {}
    for f in sorted((out / "labels").glob("*.txt")):
        rows = [ln.split() for ln in f.read_text().splitlines() if ln.strip()]
        res[f.stem] = [[names.index(r[0].lower()), float(r[15]), *map(float, r[4:8])] for r in rows]
    return res


def _check_predict(tmp_path, run):
    """predict decodes an FPN family's tuple outputs with its own postprocessor, on every backend: from
    the run (torch fp32, ORT fp32, ORT int8) and from the bare ONNX file (family rebuilt from its
    metadata); fp32 torch and ORT give the same detections."""
    import shutil

    import numpy as np

    from compressdet.cli import main
    from compressdet.predict.predictor import split_sources

    man = json.loads((run / "manifest.json").read_text())["stages"]
    src = tmp_path / "val_images"  # a plain folder: the bare ONNX file has no run to take split:val from
    src.mkdir()
    for _, p in split_sources(run, "val"):
        shutil.copy(p, src / p.name)
    outs = {}
    for key, args in {"torch": ["--model", str(run), "--backend", "torch", "--stage", "student"],
                      "ort": ["--model", str(run), "--backend", "ort", "--stage", "student"],
                      "onnx_file": ["--model", str(run / man["export"]["artifacts"]["onnx"]["path"])],
                      "ort-int8": ["--model", str(run), "--backend", "ort-int8", "--stage", "int8"]}.items():
        out = tmp_path / f"pred_{key}"
        assert main(["predict", str(src), *args, "--out", str(out), "--score-threshold", "0.0",
                     "--save-txt", "kitti", "--threads", "1"]) == 0, key
        assert len(list(out.glob("*.png"))) >= 1, key
        outs[key] = _labels(out)
    assert set(outs["torch"]) == set(outs["ort"]) == set(outs["ort-int8"]) and len(outs["torch"]) >= 1
    assert sum(len(v) for v in outs["torch"].values()) > 0  # threshold 0: a random head still yields boxes
    assert outs["onnx_file"] == outs["ort"]
    for name, dets in outs["torch"].items():
        a, b = np.array(dets).reshape(-1, 6), np.array(outs["ort"][name]).reshape(-1, 6)
        assert a.shape == b.shape and np.allclose(a, b, atol=0.02), name  # KITTI files keep 2 decimals
    for dets in outs["ort-int8"].values():
        assert np.isfinite(np.array(dets, dtype=float)).all()


@pytest.mark.slow  # ~50 s idle, ~100 s on the shared CPU: OpenVINO conversion + compile on top
def test_retinanet_ptq_export_bench_int8_row(tmp_path, cache):
    try:
        import openvino  # noqa: F401

        ov = ", openvino-int8"
    except ImportError:
        ov = ""
    model, run, rec, recipe = _run(tmp_path, cache, "retinanet_mnv3_small", PTQ + "\n" + EXPORT_BENCH_INT8.format(ov=ov))
    backends = ("torch", "ort-int8") + (("openvino-int8",) if ov else ())
    _check_export_and_bench(run, model, {"int8 (ptq)": backends})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synth")
