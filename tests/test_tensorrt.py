"""TensorRT: missing-dependency errors (CLI exit 2), the recipe skip path on CPU, and the real GPU path.

The first two groups fake an absent ``tensorrt`` (or an absent CUDA) so they run on every machine;
the last one needs the ``tensorrt`` extra and a CUDA device and is skipped elsewhere.
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

pytest.importorskip("onnxruntime")

from test_export_helpers import make_run  # noqa: E402

from compressdet.cli import main  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(params=["no_package", "no_cuda"])
def no_tensorrt(request, monkeypatch):
    """TensorRT unusable: the package absent, or installed (faked) with no CUDA device."""
    if request.param == "no_package":
        monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
        return "tensorrt is not installed"
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.0-fake"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return "needs a CUDA device"


def test_bench_cli_tensorrt_missing_exit_2(tmp_path, capsys, no_tensorrt):
    run = make_run(tmp_path / "runs", stages=("student",))
    rc = main(["bench", str(run), "--backends", "torch,tensorrt", "--runs", "1", "--warmup", "0", "--no-val"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "bench tensorrt backend" in err and no_tensorrt in err
    assert not (run / "bench").exists()  # failed before any work


def test_export_cli_tensorrt_missing_exit_2(tmp_path, capsys, no_tensorrt):
    run = make_run(tmp_path / "runs", stages=("student",))
    assert main(["export", str(run), "--onnx", "--tensorrt"]) == 2
    err = capsys.readouterr().err
    assert "TensorRT export needs" in err and no_tensorrt in err
    assert not (run / "exports").exists()


RECIPE = """
name: tiny_trt
seed: 0
device: cpu
data:
  format: synth
  image_size: [64, 192]
  synth: {num_images: 6, size: [384, 128], seed: 0, cache_dir: CACHE}
  max_val_images: 2
stages:
  - name: student
    kind: train
    model: shuffledet_0.25x
    schedule: {steps: 2, batch_size: 2, eval_every: 2, checkpoint_every: 2, log_every: 1, threads: 1}
  - name: export
    kind: export
    from: student
    formats: [onnx, tensorrt]
  - name: bench
    kind: bench
    backends: [torch, tensorrt]
    runs: 2
    warmup: 1
    threads: 1
"""


def test_recipe_stages_skip_tensorrt_without_it(tmp_path, capsys, monkeypatch):
    """Shipped recipes list tensorrt for GPU machines; on CPU the export and bench stages skip it."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("CACHE", str(tmp_path / "cache")))
    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "skipping format tensorrt" in out and "skipping the tensorrt backend" in out
    man = json.loads((run_dir / "manifest.json").read_text())["stages"]
    exp = man["export"]
    assert exp["status"] == "done" and set(exp["artifacts"]) == {"onnx"}
    assert "tensorrt is not installed" in exp["metrics"]["tensorrt_skipped"]
    assert "tensorrt is not installed" in man["bench"]["metrics"]["tensorrt_skipped"]
    rep = json.loads((run_dir / "bench" / "report.json").read_text())
    assert "tensorrt is not installed" in rep["skipped_backends"]["tensorrt"]
    (row,) = rep["rows"]
    assert "tensorrt is not installed" in row["latency"]["tensorrt"]["skipped"]
    assert row["latency"]["torch"]["b1"]["median_ms"] > 0 and row["eval"]["map40"] >= 0
    assert "tensorrt backend skipped" in (run_dir / "bench" / "report.md").read_text()


def _need_gpu_tensorrt():
    pytest.importorskip("tensorrt", reason="the 'tensorrt' extra is not installed (GPU machines only)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but no CUDA device is available")


def test_tensorrt_engine_runs_and_benches(tmp_path, capsys):
    """Real path: export an engine, run it against PyTorch, bench it (CUDA events) and evaluate it."""
    _need_gpu_tensorrt()
    from compressdet.export._onnx import synthetic_image
    from compressdet.export._tensorrt import TensorRTRunner
    from compressdet.models import load_model

    run = make_run(tmp_path / "runs", stages=("student",))
    assert main(["export", str(run), "--onnx", "--tensorrt", "--dynamic-batch"]) == 0
    engine = run / "exports" / "student.engine"
    assert engine.is_file()
    trt = TensorRTRunner(engine)
    model, _ = load_model(run / "student" / "model.pt")
    x = synthetic_image(tuple(model.image_size)).repeat(2, 1, 1, 1)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    got = trt(x.numpy())
    assert got.shape == ref.shape
    assert abs(got - ref).max() < 5e-2 * max(1.0, abs(ref).max())  # fp16 kernels
    capsys.readouterr()
    assert main(["bench", str(run), "--backends", "torch,tensorrt", "--runs", "5", "--warmup", "2",
                 "--batch-sizes", "1,2"]) == 0
    rep = json.loads((run / "bench" / "report.json").read_text())
    (row,) = rep["rows"]
    for b in ("b1", "b2"):
        cell = row["latency"]["tensorrt"][b]
        assert cell["median_ms"] > 0 and cell["p90_ms"] >= cell["median_ms"] and cell["timer"] == "cuda_events"
    assert row["eval_by_backend"]["tensorrt"]["map40"] >= 0 and rep["cuda_device"]
