"""The real ShuffleDet: MACs target, save/load, ONNX, history replay, and a prune stage from a tiny recipe."""

from __future__ import annotations

import json

import pytest
import torch

from compressdet.models import build_model, load_model, model_summary, save_model
from compressdet.prune import ChannelPruner, conv_macs, get_importance, load_history, replay_history, save_history

HW = (64, 192)


@pytest.fixture(scope="module")
def pruned():
    torch.manual_seed(0)
    model = build_model("shuffledet_0.25x", image_size=HW).eval()
    x = torch.randn(1, 3, *HW)
    before = model_summary(model, HW)
    pruner = ChannelPruner(model, x, get_importance("group_magnitude"), target_macs=0.6, iterative_steps=2,
                           ignored_layers=[model.head.conv], macs_fn=lambda m: conv_macs(m, x, m.backbone))
    pruner.step()
    pruner.step()
    return model, pruner, before, x


def test_macs_reach_target_within_5_percent(pruned):
    model, pruner, before, _ = pruned
    after = model_summary(model, HW)
    ratio = after["macs"]["backbone"] / before["macs"]["backbone"]
    assert abs(ratio / 0.6 - 1) <= 0.05, ratio
    assert after["params"]["total"] < before["params"]["total"]
    assert len(pruner.history) == 2 and pruner.history[0]["macs_after"] > pruner.history[1]["macs_after"]
    assert model.head.conv.out_channels == 72


def test_save_load_and_replay(pruned, tmp_path):
    model, pruner, _, x = pruned
    path = save_model(model, tmp_path / "m.pt")
    loaded, _ = load_model(path)
    torch.testing.assert_close(loaded(x), model(x))
    hist = save_history(tmp_path / "h.json", pruner.history, arch=model.arch)
    fresh = build_model("shuffledet_0.25x", image_size=HW).eval()
    replay_history(fresh, load_history(hist), x)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert json.loads(hist.read_text())["steps"][0]["ops"]


def test_onnx_export_matches(pruned, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, _, _, x = pruned
    f = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(f), input_names=["images"], output_names=["out"], opset_version=17,
                      dynamo=False)
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"images": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), model(x).detach(), atol=1e-4, rtol=1e-3)


RECIPE = """
name: prune-tiny
seed: 0
device: cpu
data:
  format: synth
  image_size: [64, 192]
  synth: {num_images: 12, size: [384, 128], seed: 0}
  max_val_images: 2
stages:
  - name: teacher
    kind: train
    model: shuffledet_0.25x
    schedule: {steps: 2, batch_size: 2, eval_every: 2, checkpoint_every: 2, log_every: 1}
    eval: {max_images: 2, batch_size: 2, num_images_logged: 0}
  - name: pruned
    kind: prune
    from: teacher
    teacher: teacher
    target: {macs: 0.6}
    imitation: {weight: 1.0}
    schedule: {steps: 2, batch_size: 2, lr: 0.005, eval_every: 2, checkpoint_every: 2, log_every: 1}
    eval: {max_images: 2, batch_size: 2, num_images_logged: 0}
"""


def test_prune_stage_from_tiny_recipe(tmp_path, capsys):
    from compressdet.bench.runner import param_bytes
    from compressdet.pipeline import run_recipe
    from compressdet.recipe import parse_recipe

    recipe = parse_recipe(RECIPE, source="tiny.yaml")
    run_dir = run_recipe(recipe, run_dir=tmp_path / "run")
    # piped (not a terminal): the pruning step and every fine-tune step say which stage they belong to
    out = capsys.readouterr().out
    assert "pruned: round 1/1: pruning (group_magnitude importance)" in out
    assert "pruned: round 1/1: " in out and "channels removed" in out
    assert "pruned: step 1/2" in out and "pruned: step 2/2" in out and "teacher: step 2/2" in out
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stage = manifest["stages"]["pruned"] if isinstance(manifest["stages"], dict) else \
        next(s for s in manifest["stages"] if s["name"] == "pruned")
    m = stage["metrics"]
    assert abs(m["macs_ratio"] / 0.6 - 1) <= 0.05
    assert m["macs_after"]["backbone"] < m["macs_before"]["backbone"]
    model_file = next(run_dir.rglob("pruned/model.pt"))
    model, meta = load_model(model_file)
    teacher, _ = load_model(next(run_dir.rglob("teacher/model.pt")))
    assert param_bytes(model) < param_bytes(teacher)  # the bench report's param bytes follow the pruning
    assert meta["pruning_history"] == "prune_history.json"
    assert (model_file.parent / "prune_history.json").is_file()
    assert model(torch.zeros(1, 3, *HW)).shape == (1, 72, 4, 12)
    # `compressdet export` rebuilds the pruned model from the manifest (arch + state_dict, no pickle)
    pytest.importorskip("onnxruntime")
    from compressdet.cli import main
    from compressdet.export.runtime import ort_run, ort_session

    assert main(["export", str(run_dir), "--stage", "pruned", "--onnx"]) == 0
    onnx_file = run_dir / "exports" / "pruned.onnx"
    x = torch.rand(1, 3, *HW) * 255
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    got = ort_run(ort_session(onnx_file), x.numpy())[0]
    assert got.shape == ref.shape == (1, 72, 4, 12)
    assert abs(got - ref).max() <= 1e-3 * max(1.0, abs(ref).max())


def test_search_survives_cut_combinations_that_would_empty_a_layer():
    """Each group's cuts are valid alone, but big cuts of several groups can together empty a shared
    layer (here: 432 of the 480 stream channels once the other groups are cut). Found with a
    memory-heavy latency proxy on this seed; the search must treat it as over-pruned, not crash."""
    from compressdet.prune.cost import latency_proxy
    from compressdet.stages.prune import build_pruner, example_input_size

    hw = (128, 384)
    x = torch.zeros(1, 3, *example_input_size(hw))
    torch.manual_seed(0)
    model = build_model("shuffledet_0.5x", image_size=hw).train()
    base = conv_macs(model, x, model.backbone)
    build_pruner(model, hw, target_macs=0.6, allocation="latency", weight_range=(0.5, 2.0),
                 cost_fn=lambda m: latency_proxy(m, x, mem_weight=48)).step()
    assert 0.6 * 0.95 <= conv_macs(model, x, model.backbone) / base <= 0.6
    assert model.eval()(torch.zeros(1, 3, *hw)).shape == (1, 72, hw[0] // 16, hw[1] // 16)
