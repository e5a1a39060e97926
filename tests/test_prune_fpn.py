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


def _recipe_text(tmp_path, prune: str) -> str:
    """A model_file stage (``tmp_path/student.pt``) and a prune stage with ``prune`` (its YAML lines) on
    tiny SynthKITTI."""
    return f"""name: fpn_prune
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
    {prune}
    schedule: {{steps: 2, batch_size: 2, lr: 0.002, eval_every: 1, checkpoint_every: 1, log_every: 1, threads: 1}}
"""


def _prune_run(tmp_path, arch: str, prune: str):
    """A random ``arch`` student through :func:`_recipe_text`'s prune stage; returns the unpruned model,
    the run folder and the stage's manifest record."""
    torch.manual_seed(0)
    model = build_model(arch, image_size=HW).eval()
    save_model(model, tmp_path / "student.pt")
    recipe = parse_recipe(_recipe_text(tmp_path, prune), source="fpn_prune.yaml")
    run = Pipeline(recipe, tmp_path / "run").run()
    rec = json.loads((run / "manifest.json").read_text())["stages"]["pruned"]
    assert rec["status"] == "done", rec.get("error")
    return model, run, rec


@pytest.mark.parametrize("arch", ["fcos_mnv3_small", "retinanet_mnv2_050"])  # SE + HardSwish; inverted residuals
def test_fpn_iterative_prune_reaches_the_target_in_rounds(tmp_path, arch):
    model, run, rec = _prune_run(tmp_path, arch, "target: {macs: 0.5}\n    iterative_steps: 2")
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
    # the stage's default allocation (latency) on torch-pruning's groups, its multipliers per round recorded
    assert meta["pruned"]["allocation"] == "latency" and all(s["weights"] for s in hist["steps"])
    # the shared head and FPN outputs keep their widths: every level still fits the head
    assert [t.channels for t in pruned.feature_taps()] == [t.channels for t in model.feature_taps()]
    x = torch.randn(1, 3, *HW) * 50
    with torch.no_grad():
        out = pruned(x)
    assert [tuple(o.shape) for o in out] == [tuple(o.shape) for o in model(x)]


def test_fpn_latency_allocation_cuts_more_latency_per_mac_at_the_same_budget():
    """``allocation: latency`` on torch-pruning's groups: per-group multipliers from one trial cut each,
    clipped to the range, the MACs target met as with one uniform ratio, and more of the latency proxy
    saved per backbone MAC saved than the uniform cut (what the multipliers are for)."""
    import copy

    from compressdet.prune.cost import latency_proxy
    from compressdet.prune.fpn import prune_fpn_detector

    torch.manual_seed(0)
    base = build_model("retinanet_mnv2_050", image_size=HW).eval()
    x = torch.zeros(1, 3, *HW)
    cost0 = latency_proxy(base, x)
    saved = {}
    for alloc in ("uniform", "latency"):
        m = copy.deepcopy(base)
        rec = prune_fpn_detector(m, (48, 160), target_macs=0.6, allocation=alloc, weight_range=(0.5, 2.0))
        macs = rec["macs_after"] / rec["base_macs"]
        assert abs(macs - 0.6) < 0.05, (alloc, macs)
        assert rec["allocation"] == alloc
        saved[alloc] = (1 - latency_proxy(m, x) / cost0) / (1 - macs)
        if alloc == "latency":
            w = rec["weights"]
            assert len(w) > 10 and all(0.5 <= v <= 2.0 for v in w.values())
            assert max(w.values()) / min(w.values()) > 1.5  # the groups really differ
            assert set(w) <= {n for n, _ in m.named_modules()} and set(rec["efficiency"]) == set(w)
        else:
            assert "weights" not in rec
    assert saved["latency"] > saved["uniform"], saved


def test_fpn_prune_rejects_an_unknown_allocation():
    from compressdet.errors import UserError
    from compressdet.prune.fpn import prune_fpn_detector

    with pytest.raises(UserError, match="allocation: 'fastest' is not one of uniform, latency"):
        prune_fpn_detector(build_model("fcos_mnv2_050", image_size=HW), (32, 96), pruning_ratio=0.2,
                           allocation="fastest")


def test_retinanet_head_towers_pruned_through_the_stage(tmp_path):
    """``prune_head``: a fixed fraction of the towers' inner channels goes (one cut serves every level,
    kept widths multiples of 16, all of it in the first of two rounds), the prediction convs and the
    towers' input width stay, the MACs target is still the backbone's, and the file reloads with the
    same outputs."""
    model, run, rec = _prune_run(tmp_path, "retinanet_mnv2_050",
                                 "target: {macs: 0.6}\n    prune_head: 0.25\n    allocation: uniform\n    iterative_steps: 2")
    m = rec["metrics"]
    # two rounds: the backbone half-way then at the target; the head's cut whole in round 1 (not rounded twice)
    assert abs(m["rounds"][1]["backbone_macs_ratio"] - 0.6) < 0.06, m["rounds"]
    # 64 -> 48 channels in every tower conv: the towers' MACs to (48/64)^2 and 48/64 (first conv)
    assert 0.5 < m["macs_after"]["head"] / m["macs_before"]["head"] < 0.8, (m["macs_before"], m["macs_after"])
    pruned, meta = load_model(run / rec["artifacts"]["model"]["path"])
    assert meta["pruned"]["prune_head"] == 0.25

    def widths(net):
        return {n: (c.in_channels, c.out_channels) for n, c in net.det.head.named_modules()
                if isinstance(c, torch.nn.Conv2d)}

    before, after = widths(model), widths(pruned)
    towers = [n for n in before if ".conv." in f".{n}."]
    assert all(after[n][1] == before[n][1] - 16 for n in towers), (before, after)
    for n in ("classification_head.cls_logits", "regression_head.bbox_reg"):  # the detector's outputs
        assert after[n][1] == before[n][1]
    assert after["classification_head.conv.0.0"][0] == before["classification_head.conv.0.0"][0]  # FPN width
    x = torch.randn(1, 3, *HW) * 50
    again, _ = load_model(run / rec["artifacts"]["model"]["path"])
    with torch.no_grad():
        out, out2 = pruned(x), again(x)
    assert [tuple(o.shape) for o in out] == [tuple(o.shape) for o in model(x)]
    assert all(torch.equal(a, b) for a, b in zip(out, out2))


def test_prune_head_is_refused_where_it_cannot_apply():
    from compressdet.errors import UserError
    from compressdet.prune.fpn import prune_fpn_detector

    with pytest.raises(UserError, match=r"prune_head: the fcos head's towers are normalised by GroupNorm\(32, 64\)"):
        prune_fpn_detector(build_model("fcos_mnv2_050", image_size=HW), (32, 96), pruning_ratio=0.2, head_ratio=0.25)
    with pytest.raises(UserError, match=r"prune_head: 0.95 is not a fraction of channels in \[0, 0.9\)"):
        prune_fpn_detector(build_model("retinanet_mnv2_050", image_size=HW), (32, 96), pruning_ratio=0.2,
                           head_ratio=0.95)


def test_prune_head_on_shuffledet_is_a_clear_error(tmp_path, capsys):
    from compressdet.cli import main

    save_model(build_model("shuffledet_0.25x", image_size=HW), tmp_path / "student.pt")
    (tmp_path / "r.yaml").write_text(_recipe_text(tmp_path, "prune_head: 0.25"))
    assert main(["run", str(tmp_path / "r.yaml"), "--run-dir", str(tmp_path / "run")]) == 2
    assert "prune_head: ShuffleDet's head is one conv" in capsys.readouterr().err
    assert not (tmp_path / "run" / "pruned" / "model.pt").exists()
