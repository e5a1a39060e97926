"""The ``qat`` and ``ptq`` stage kinds inside a pipeline run (tiny SynthKITTI recipe, 64x192)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torchao")
pytest.importorskip("onnxruntime")

from compressdet.pipeline import Pipeline  # noqa: E402
from compressdet.recipe import parse_recipe  # noqa: E402

RECIPE = """name: tiny_quant
seed: 0
data:
  format: synth
  image_size: [64, 192]
  synth: {{num_images: 12, size: [248, 75], seed: 0, cache_dir: {cache}}}
  augment: {{enabled: false}}
  max_val_images: 4
stages:
  - name: student
    kind: train
    model: shuffledet_0.25x
    schedule: {{steps: 2, batch_size: 2, eval_every: 2, checkpoint_every: 2, log_every: 1}}
    eval: {{batch_size: 4}}
  - name: int8
    kind: qat
    from: student
    teacher: student
    imitation: {{weight: 1.0}}
    quant: {{calibration_images: 2}}
    schedule: {{steps: {qat_steps}, batch_size: 2, lr: 0.001, log_every: 1}}
    freeze_observers_step: {freeze_obs}
    eval: {{batch_size: 4}}
  - name: ptq
    kind: ptq
    from: student
    quant: {{calibration_images: 2, activations: s8_symmetric}}
    eval: {{batch_size: 4}}
"""


def test_qat_and_ptq_stages_run(tmp_path):
    recipe = parse_recipe(RECIPE.format(cache=tmp_path / "synth", qat_steps=3, freeze_obs=2), source="tiny.yaml")
    run = Pipeline(recipe, tmp_path / "run").run()
    man = json.loads((run / "manifest.json").read_text())
    for name in ("int8", "ptq"):
        rec = man["stages"][name]
        assert rec["status"] == "done", rec.get("error")
        assert {"quantized", "onnx_int8"} <= set(rec["artifacts"])
        for key in ("map40", "ort_map40"):
            assert 0.0 <= rec["metrics"][key] <= 100.0
        # the head: int8 weights, float output; ORT's graph runs it as an integer matmul, the
        # TensorRT graph (s8_symmetric) keeps the Q/DQ conv TensorRT runs in int8 with a float output
        graph = rec["metrics"]["graph"]
        assert graph["float_convs"] == 0 and graph["int8_matmuls"] == (1 if name == "int8" else 0), graph
    # ptq has activations: s8_symmetric, the graph TensorRT takes; the u8 qat graph is refused for it
    from compressdet.errors import ArtifactError
    from compressdet.quant.onnx_int8 import check_int8_graph

    check_int8_graph(run / man["stages"]["ptq"]["artifacts"]["onnx_int8"]["path"], tensorrt=True)
    with pytest.raises(ArtifactError, match="s8_symmetric"):
        check_int8_graph(run / man["stages"]["int8"]["artifacts"]["onnx_int8"]["path"], tensorrt=True)
    assert man["stages"]["int8"]["metrics"]["imitation"] is True
    assert "imitation" in man["stages"]["int8"]["metrics"]["final_losses"]
    # the .pt2 artifact reloads and runs
    import torch

    ep = torch.export.load(str(run / man["stages"]["int8"]["artifacts"]["quantized"]["path"]))
    out = ep.module()(torch.zeros(1, 3, 64, 192))
    assert out.shape == (1, 72, 4, 12)


def test_qat_stage_rejects_bad_settings_before_running(tmp_path):
    from compressdet.errors import RecipeError

    msg = r"tiny.yaml:\d+: stages\[1\].*freeze_observers_step=9 is after the last step"
    with pytest.raises(RecipeError, match=msg):
        parse_recipe(RECIPE.format(cache=tmp_path / "synth", qat_steps=3, freeze_obs=9), source="tiny.yaml")
    bad = RECIPE.format(cache=tmp_path / "synth", qat_steps=3, freeze_obs=2).replace("    teacher: student\n", "")
    with pytest.raises(RecipeError, match="needs 'teacher"):
        parse_recipe(bad, source="tiny.yaml")


def test_ptq_calibration_draw_setting():
    """``calibration_draw``: the first images by default, or a draw seeded by the recipe's seed."""
    import pydantic

    from compressdet.recipe import PtqStage

    assert PtqStage(name="p", **{"from": "s"}).calibration_draw == "first"
    assert PtqStage(name="p", **{"from": "s", "calibration_draw": "random"}).calibration_draw == "random"
    with pytest.raises(pydantic.ValidationError):
        PtqStage(name="p", **{"from": "s", "calibration_draw": "last"})
