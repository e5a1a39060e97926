"""ONNX / INT8 / TensorRT export: real exports of a tiny ShuffleDet, checked in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from test_export_helpers import SIZE, make_model, make_run  # noqa: E402

from compressdet.cli import main  # noqa: E402
from compressdet.errors import UserError  # noqa: E402
from compressdet.export._onnx import ExportVerificationError, export_onnx, synthetic_image  # noqa: E402
from compressdet.export.formats import backend_format, get_format, validate_options  # noqa: E402
from compressdet.export.runtime import onnx_metadata, ort_run, ort_session  # noqa: E402

torch.set_num_threads(1)


def test_format_table_validation():
    assert get_format("onnx-int8").artifact == "onnx_int8"
    with pytest.raises(UserError, match="did you mean 'onnx-int8'"):
        get_format("onnx_int8")
    with pytest.raises(UserError, match="not valid for format 'onnx-int8'"):
        validate_options("onnx-int8", {"with_postprocess": True})
    validate_options("onnx", {"with_postprocess": True, "dynamic_batch": False})
    with pytest.raises(UserError, match="unknown backend 'ort8'"):
        backend_format("ort8")


def test_onnx_head_matches_torch_and_has_metadata(tmp_path):
    m = make_model()
    info = export_onnx(m, tmp_path / "m.onnx", image_size=SIZE, metadata={"stage": "s", "classes": ["car"]},
                       dynamic_batch=True, log=lambda s: None)
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    meta = onnx_metadata(tmp_path / "m.onnx")
    assert meta["stage"] == "s" and meta["classes"] == '["car"]' and meta["exporter"] == "dynamo"
    sess = ort_session(tmp_path / "m.onnx")
    assert [o.name for o in sess.get_outputs()] == ["head"] and sess.get_inputs()[0].name == "images"
    x = torch.cat([synthetic_image(SIZE, 1), synthetic_image(SIZE, 2)])
    out = ort_run(sess, x.numpy())[0]
    assert out.shape == (2, 72, SIZE[0] // 16, SIZE[1] // 16)
    with torch.no_grad():
        ref = m(x).numpy()
    assert np.abs(out - ref).max() < 1e-3 and info["max_abs_diff"] < 1e-3


def test_mismatch_fails_and_leaves_no_file(tmp_path):
    with pytest.raises(ExportVerificationError, match="differs from PyTorch"):
        export_onnx(make_model(), tmp_path / "m.onnx", image_size=SIZE, tolerance=1e-12, log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


def test_with_postprocess_matches_postprocessor(tmp_path):
    from compressdet.models.postprocess import PostProcessor

    m = make_model()
    export_onnx(m, tmp_path / "d.onnx", image_size=SIZE, with_postprocess=True, anchors=m.anchors(),
                postprocess={"topk_candidates": 32, "detections_per_class": 5}, log=lambda s: None)
    sess = ort_session(tmp_path / "d.onnx")
    assert [o.name for o in sess.get_outputs()] == ["boxes", "scores", "labels"]
    for seed in (3, 4):  # images unseen at export time: the NMS must be in the graph, not traced
        x = synthetic_image(SIZE, seed)
        boxes, scores, labels = ort_run(sess, x.numpy())
        with torch.no_grad():
            ref = PostProcessor(SIZE, topk_candidates=32, detections_per_class=5)(m(x))[0]
        assert len(boxes) == len(ref["boxes"]) > 0
        np.testing.assert_allclose(boxes, ref["boxes"].numpy(), atol=1e-3)
        np.testing.assert_allclose(scores, ref["scores"].numpy(), atol=1e-5)
        np.testing.assert_array_equal(labels, ref["labels"].numpy())
        assert np.bincount(labels, minlength=3).max() <= 5


def test_cli_int8_on_latest_run(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    rc = main(["export", "--onnx", "--int8", "--calibration-images", "4"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "using the latest run" in out and "using stage 'pruned'" in out and "next: compressdet bench" in out
    q = run / "exports" / "pruned.int8.onnx"
    ops = [n.op_type for n in onnx.load(str(q)).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert onnx_metadata(q)["source_sha256"] == onnx_metadata(run / "exports" / "pruned.onnx")["source_sha256"]
    out8 = ort_run(ort_session(q), synthetic_image(SIZE).numpy())[0]
    assert out8.shape == (1, 72, 4, 12) and np.isfinite(out8).all()


@pytest.mark.parametrize("argv, msg", [
    (["--int8"], "--int8 needs --onnx"),
    ([], "nothing to export"),
    (["--onnx", "--with-postprocess", "--dynamic-batch"], "batch-1 graph"),
    (["--onnx", "--stage", "nope"], "stage 'nope' has no finished model"),
])
def test_cli_bad_options_exit_2(tmp_path, capsys, argv, msg):
    run = make_run(tmp_path / "runs")
    assert main(["export", str(run), *argv]) == 2
    assert msg in capsys.readouterr().err


def test_cli_model_file_bad_int8(tmp_path, capsys):
    run = make_run(tmp_path / "runs", stages=("student",))
    assert main(["export", str(run / "student" / "model.pt"), "--int8"]) == 2
    assert "--int8 needs --onnx" in capsys.readouterr().err


def test_tensorrt_missing_exit_2(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        if torch.cuda.is_available():
            pytest.skip("TensorRT and CUDA are present: the missing-dependency path cannot be exercised")
    except ImportError:
        pass
    run = make_run(tmp_path / "runs", stages=("student",))
    assert main(["export", str(run), "--tensorrt"]) == 2
    err = capsys.readouterr().err
    assert "TensorRT export needs" in err
    assert not (run / "exports").exists()  # failed before any work


def test_export_stage_artifacts(tmp_path):
    from compressdet.recipe import ExportStage, load_recipe
    from compressdet.stages import StageContext, StageInput
    from compressdet.stages.export import run as export_stage

    run = make_run(tmp_path / "runs", stages=("student",))
    src = StageInput("student", "train", {"model": run / "student" / "model.pt"})
    cfg = ExportStage(name="export", **{"from": "student"}, formats=["onnx-int8"], calibration_images=2)
    ctx = StageContext(name="export", cfg=cfg, recipe=load_recipe(run / "recipe.yaml"), run_dir=run,
                       stage_dir=run / "export", inputs={"from": src}, all_stages={"student": src})
    res = export_stage(ctx)
    assert set(res.artifacts) == {"onnx", "onnx_int8"} and all(p.is_file() for p in res.artifacts.values())
    assert res.metrics["onnx_max_abs_diff"] < 1e-3 and 0 <= res.metrics["int8_detection_agreement"] <= 1
