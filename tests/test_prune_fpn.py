"""Iterative pruning of the FPN families (FCOS on MobileNetV3, RetinaNet on MobileNetV2): k rounds of
prune -> fine-tune, each round a fraction i/k of the way to the MACs target, the shared head untouched,
the result reloadable from its file."""

from __future__ import annotations

import json

import pytest
import torch

from compressdet.models import build_model, load_model, save_model
from compressdet.pipeline import Pipeline
from compressdet.recipe import parse_recipe

torch.set_num_threads(1)
HW = (64, 192)


@pytest.mark.parametrize("arch", ["fcos_mnv3_small", "retinanet_mnv2_050"])  # SE + HardSwish; inverted residuals
def test_fpn_iterative_prune_reaches_the_target_in_rounds(tmp_path, arch):
    torch.manual_seed(0)
    model = build_model(arch, image_size=HW).eval()
    save_model(model, tmp_path / "student.pt")
    recipe = parse_recipe(f"""name: fpn_iter
seed: 0
device: cpu
data:
  format: synth
  image_size: [{HW[0]}, {HW[1]}]
  synth: {{num_images: 8, size: [384, 128], seed: 0, cache_dir: {tmp_path / "cache"}}}
  augment: {{enabled: false}}
  max_val_images: 2
stages:
  - {{name: student, kind: model_file, path: {tmp_path / "student.pt"}}}
  - name: pruned
    kind: prune
    from: student
    target: {{macs: 0.5}}
    iterative_steps: 2
    schedule: {{steps: 2, batch_size: 2, lr: 0.002, eval_every: 1, checkpoint_every: 1, log_every: 1, threads: 1}}
""", source="fpn_iter.yaml")
    run = Pipeline(recipe, tmp_path / "run").run()
    rec = json.loads((run / "manifest.json").read_text())["stages"]["pruned"]
    assert rec["status"] == "done", rec.get("error")
    m = rec["metrics"]
    rounds = m["rounds"]
    assert [r["step"] for r in rounds] == [1, 2] and all(r["steps"] == 1 for r in rounds)
    # linear schedule: half-way (0.75) after round 1, the target (0.5) after round 2 (bisection, rounding)
    assert abs(rounds[0]["backbone_macs_ratio"] - 0.75) < 0.06, rounds
    assert abs(rounds[1]["backbone_macs_ratio"] - 0.5) < 0.06, rounds
    assert all(r["channels_removed"] > 0 for r in rounds)
    assert abs(m["macs_ratio"] - 0.5) < 0.08 and m["params_ratio"] < 1.0
    # each round fine-tuned in its own folder; the history has both rounds
    stage_dir = run / "pruned"
    assert (stage_dir / "round1").is_dir() and (stage_dir / "round2").is_dir()
    hist = json.loads((stage_dir / "prune_history.json").read_text())
    assert len(hist["torch_pruning_history"]) == 2 and len(hist["steps"]) == 2
    pruned, meta = load_model(run / rec["artifacts"]["model"]["path"])
    assert meta["pruned"]["iterative_steps"] == 2 and len(meta["pruned"]["ratio"]) == 2
    # the shared head and FPN outputs keep their widths: every level still fits the head
    assert [t.channels for t in pruned.feature_taps()] == [t.channels for t in model.feature_taps()]
    x = torch.randn(1, 3, *HW) * 50
    with torch.no_grad():
        out = pruned(x)
    assert [tuple(o.shape) for o in out] == [tuple(o.shape) for o in model(x)]
