"""OpenVINO: IR export (fp32 and from the INT8 QDQ graph) checked against PyTorch, bench backends with the
precision each really computed in; skipped cleanly without the openvino extra."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime")

from test_export_helpers import make_run  # noqa: E402

from compressdet.cli import main  # noqa: E402

torch.set_num_threads(1)


def test_formats_and_backends_table():
    from compressdet.cli.export import formats_from_flags
    from compressdet.export.formats import BACKENDS, FORMATS, backend_format

    assert FORMATS["openvino"].requires == ("onnx",) and FORMATS["openvino-int8"].requires == ("onnx-int8",)
    assert FORMATS["openvino"].extra == "openvino" and FORMATS["openvino-int8"].artifact == "openvino_int8"
    assert {"openvino", "openvino-f32", "openvino-int8"} <= set(BACKENDS)
    assert backend_format("openvino-f32").name == "openvino"
    assert formats_from_flags(False, True, False, openvino=True) == ["onnx", "onnx-int8", "openvino", "openvino-int8"]


def test_missing_openvino_is_a_clear_exit_2(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    run = make_run(tmp_path / "runs", stages=("student",))
    assert main(["export", str(run), "--openvino"]) == 2
    assert "pip install 'compressdet[openvino]'" in capsys.readouterr().err
    assert not (run / "exports").exists()  # failed before any work
    assert main(["bench", str(run), "--backends", "openvino"]) == 2
    assert "openvino" in capsys.readouterr().err


def test_export_and_bench_openvino(tmp_path, capsys):
    pytest.importorskip("openvino")
    from compressdet.export._openvino import OpenVINORunner, convert_to_ir

    run = make_run(tmp_path / "runs")
    assert main(["export", str(run), "--stage", "pruned", "--onnx", "--int8", "--openvino",
                 "--calibration-images", "2"]) == 0
    ex = run / "exports"
    index = json.loads((ex / "pruned.export.json").read_text())["formats"]
    f32, i8 = index["openvino"], index["openvino-int8"]
    assert (ex / "pruned.xml").is_file() and (ex / "pruned.bin").is_file() and (ex / "pruned.int8.bin").is_file()
    assert f32["precision"] == "fp32" and f32["max_abs_diff"] < 1e-3 and f32["detection_agreement"] == 1.0
    assert f32["default_precision"] in ("bf16", "fp32")
    assert i8["precision"] == "int8" and 0 <= i8["detection_agreement"] <= 1 and "max_abs_diff_vs_ort_int8" in i8
    # converting the same ONNX again gives the same bytes (no counter-made names, no local paths)
    convert_to_ir(ex / "pruned.onnx", tmp_path / "again.xml")
    assert (tmp_path / "again.xml").read_bytes() == (ex / "pruned.xml").read_bytes()
    assert (tmp_path / "again.bin").read_bytes() == (ex / "pruned.bin").read_bytes()
    assert b"/tmp" not in (ex / "pruned.xml").read_bytes()
    # the precision a runner reports is read back from the compiled model
    assert OpenVINORunner(ex / "pruned.xml", threads=1, precision="f32").precision == "fp32"
    capsys.readouterr()

    rc = main(["bench", str(run), "--stages", "pruned", "--backends", "ort,openvino,openvino-f32,openvino-int8",
               "--runs", "2", "--warmup", "1", "--batch-sizes", "1", "--threads", "1", "--rounds", "1", "--no-val"])
    assert rc == 0, capsys.readouterr().out
    rep = json.loads((run / "bench" / "report.json").read_text())
    fp, q = rep["rows"]
    assert set(fp["latency"]) == {"ort", "openvino", "openvino-f32"} and set(q["latency"]) == {"openvino-int8"}
    assert fp["files"]["openvino"] == "exports/pruned.xml" and q["files"]["openvino-int8"] == "exports/pruned.int8.xml"
    b = fp["backends"]
    assert b["openvino-f32"]["precision"] == "fp32" and b["openvino-f32"]["max_abs_diff_vs_torch_fp32"] < 1e-3
    assert b["openvino"]["precision"] in ("bf16", "fp32") and b["openvino"]["threads"] == 1
    assert q["backends"]["openvino-int8"]["precision"] == "int8"
    for r in (fp, q):
        for cells in r["latency"].values():
            assert cells["b1"]["timer"] == "isolated_process" and cells["b1"]["median_ms"] > 0
    assert q["speedup_vs_baseline"]["openvino-int8"]["vs_backend"] == "openvino"
    assert fp["fastest_backend"] in fp["latency"]
    md = (run / "bench" / "report.md").read_text()
    assert "| pruned | openvino-f32" in md and "precision" in md and rep["openvino"]


def test_export_and_nncf_ir_save_the_same_way(tmp_path):
    """convert_to_ir and NNCF's INT8 IR share save_ir: metadata under compressdet's key, byte-identical
    files from the same inputs, no temporary folder left beside them."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from compressdet.deploy._nncf import quantize_ir
    from compressdet.export._openvino import convert_to_ir, ir_metadata

    w = numpy_helper.from_array(np.random.RandomState(0).randn(8, 3, 3, 3).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["images", "w"], ["head"], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("head", TensorProto.FLOAT, [1, 8, 32, 32])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.add(key="classes", value='["car"]')
    onnx.save(model, tmp_path / "m.onnx")
    convert_to_ir(tmp_path / "m.onnx", tmp_path / "m.xml")
    assert ir_metadata(tmp_path / "m.xml") == {"classes": '["car"]'}
    images = [np.random.RandomState(i).randn(1, 3, 32, 32).astype(np.float32) for i in range(3)]
    for name in ("a", "b"):
        quantize_ir(tmp_path / "m.xml", tmp_path / f"{name}.xml", images)
    assert ir_metadata(tmp_path / "a.xml") == {"classes": '["car"]', "precision": "int8",
                                               "quantization": "nncf-ptq openvino"}
    for suffix in (".xml", ".bin"):
        assert (tmp_path / f"a{suffix}").read_bytes() == (tmp_path / f"b{suffix}").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.xml", "b.bin", "b.xml", "m.bin", "m.onnx",
                                                          "m.xml"]
