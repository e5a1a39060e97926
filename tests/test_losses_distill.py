"""PKD and CrossKD losses: what each computes, and that gradients go where the papers send them."""

from __future__ import annotations

import pytest
import torch

from compressdet.losses.crosskd import CrossKDLoss
from compressdet.losses.pkd import PKDLoss, channel_standardize
from compressdet.models import build_model


def test_pkd_is_scale_invariant_and_one_minus_pearson():
    torch.manual_seed(0)
    t = torch.randn(2, 4, 5, 6)
    loss = PKDLoss(4, 4)
    assert loss(t * 7.0 + 3.0, t).item() == pytest.approx(0.0, abs=1e-6)  # magnitude is not imitated
    s = torch.randn(2, 4, 5, 6)
    zs, zt = channel_standardize(s), channel_standardize(t)
    r = (zs * zt).flatten(2).transpose(0, 1).reshape(4, -1).mean(1)  # Pearson r per channel
    assert loss(s, t).item() == pytest.approx((1 - r).mean().item(), rel=1e-4)
    adapted = PKDLoss(3, 4)
    out = adapted(torch.randn(2, 3, 5, 6, requires_grad=True), t)
    out.backward()
    assert adapted.adapt.weight.grad is not None


def test_crosskd_zero_when_student_path_equals_teacher_and_grads_skip_teacher_head():
    torch.manual_seed(0)
    hw = (64, 192)
    teacher = build_model("shuffledet_0.5x", image_size=hw).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        t_head, t_feat = teacher.forward_with_features(x)
    loss = CrossKDLoss(t_feat.shape[1], t_feat.shape[1], teacher.head.conv, teacher.anchors())
    same = loss(t_feat, t_head)
    kl_only = same["crosskd_cls"] - torch.nn.functional.binary_cross_entropy_with_logits(
        *(lambda c: (c, torch.sigmoid(c)))(t_head[:, 27:36].permute(0, 2, 3, 1).reshape(2, -1)))
    assert abs(kl_only.item()) < 1e-5 and same["crosskd_box"].item() < 1e-5
    student = build_model("shuffledet_0.25x", image_size=hw)
    s_head, s_feat = student.forward_with_features(x)
    kd = CrossKDLoss(s_feat.shape[1], t_feat.shape[1], teacher.head.conv, teacher.anchors())
    out = kd(s_feat, t_head)
    sum(out.values()).backward()
    assert set(out) == {"crosskd_cls", "crosskd_box"} and all(torch.isfinite(v) for v in out.values())
    assert kd.adapt.weight.grad is not None and student.backbone.stem[0].weight.grad is not None
    assert teacher.head.conv.weight.grad is None  # the teacher head is a frozen path, not trained
    assert student.head.conv.weight.grad is None  # the student's own head learns from ground truth only
    assert not any(n.startswith("_teacher") for n, _ in kd.named_parameters())


RECIPE = """
name: tinyd
seed: 0
device: cpu
data:
  format: synth
  image_size: [64, 192]
  synth: {num_images: 10, size: [384, 128], seed: 0, cache_dir: CACHE}
  max_val_images: 2
stages:
  - name: teacher
    kind: train
    model: {arch: shuffledet_0.5x, dropout: 0.0}
    schedule: {steps: 2, batch_size: 2, eval_every: 2, checkpoint_every: 2, log_every: 1, threads: 1}
  - name: student
    kind: train
    model: shuffledet_0.25x
    teacher: teacher
    distill: [{method: pkd, weight: 2.0}, {method: crosskd, weight: 1.0, tau: 2.0}]
    schedule: {steps: 2, batch_size: 2, eval_every: 2, checkpoint_every: 2, log_every: 1, threads: 1}
"""


def test_distill_list_through_the_cli_logs_each_sub_loss(tmp_path):
    import json

    from compressdet.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("CACHE", str(tmp_path / "cache")))
    run = tmp_path / "run"
    assert main(["run", str(recipe), "--run-dir", str(run)]) == 0
    man = json.loads((run / "manifest.json").read_text())
    losses = man["stages"]["student"]["metrics"]["final_losses"]
    assert {"pkd", "crosskd_cls", "crosskd_box"} <= set(losses) and "imitation" not in losses
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(next((run / "tb" / "student").glob("events*"))))
    ev.Reload()
    assert {"loss/pkd", "loss/crosskd_cls", "loss/crosskd_box"} <= set(ev.Tags()["scalars"])


@pytest.mark.parametrize("stage, message", [
    ("imitation: {weight: 1.0}\n    distill: {method: pkd}", "either 'imitation'"),
    ("distill: {method: pkd, psi: 0.3}", "method 'pkd' takes no psi"),
    ("distill: [{method: pkd}, {method: pkd, weight: 2}]", "lists a method twice"),
    ("distill: {method: dkd}", "method"),
])
def test_bad_distill_blocks_are_one_line_errors(tmp_path, capsys, stage, message):
    from compressdet.cli import main

    text = RECIPE.replace("CACHE", str(tmp_path)).replace(
        "distill: [{method: pkd, weight: 2.0}, {method: crosskd, weight: 1.0, tau: 2.0}]", stage)
    (tmp_path / "r.yaml").write_text(text)
    assert main(["recipe", "check", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(message in line and "r.yaml:" in line for line in err), err
