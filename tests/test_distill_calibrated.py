"""Issue #41: reference-faithful PKD (levels summed, per-level weight) and CrossKD (paper variant),
``weight: auto`` (a gradient ratio instead of a loss weight) and ``schedule.clip``."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from compressdet.engine import Trainer
from compressdet.engine.calibrate import grad_ratio_table, measure_grad_ratios
from compressdet.engine.trainer import clip_gradients
from compressdet.losses.distill import Taps, build_distiller
from compressdet.losses.pkd import PKDLoss
from compressdet.models import build_model
from compressdet.recipe import ClipConfig, DistillConfig, ScheduleConfig

torch.set_num_threads(1)
HW = (64, 192)
PAIRS = {"fcos": ("fcos_mnv3_small", "fcos_r18"), "retinanet": ("retinanet_mnv3_small", "retinanet_r18")}
BOXES = [torch.tensor([[10.0, 10.0, 70.0, 50.0], [100.0, 8.0, 140.0, 60.0]]), torch.zeros(0, 4)]


def _pair(family):
    """(student, teacher), the teacher frozen as the trainer freezes it."""
    torch.manual_seed(0)
    teacher = build_model(PAIRS[family][1], image_size=HW).eval().requires_grad_(False)
    return build_model(PAIRS[family][0], image_size=HW), teacher


class _Batches:
    """Endless random batches with two boxes per image (seeded: the same stream on every pass)."""

    def __init__(self, seed=0):
        self.seed = seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield torch.randn(2, 3, *HW, generator=g) * 50, [
                {"boxes": torch.tensor([[10.0, 10.0, 70.0, 50.0], [100.0, 8.0, 140.0, 60.0]]),
                 "labels": torch.tensor([0, 2])}] * 2


def _paper_taps(student, teacher, x, layer):
    s_out, s_feat, s_tower = student.forward_with_tower(x, layer)
    with torch.no_grad():
        t_out, t_feat, t_tower = teacher.forward_with_tower(x, layer)
    return Taps(s_feat, s_out, t_feat, t_out, None, s_tower=s_tower, t_tower=t_tower, gt_boxes=BOXES)


# ------------------------------------------------------------------------------------------ PKD
@pytest.mark.parametrize("family, default", [("fcos", 2.0), ("retinanet", 10.0)])
def test_pkd_sums_levels_with_the_reference_per_level_weight(family, default):
    student, teacher = _pair(family)
    x = torch.randn(2, 3, *HW) * 50
    d = build_distiller([DistillConfig(method="pkd")], student, teacher, None)
    assert d.weights == {"pkd": default}  # mmrazor / CrossKD+PKD's configs
    s_out, s_feat = student.forward_with_features(x)
    with torch.no_grad():
        t_out, t_feat = teacher.forward_with_features(x)
    got = d(Taps(s_feat, s_out, t_feat, t_out, None), 0)["pkd"]
    levels = [lv(s, t) for lv, s, t in zip(d.methods["pkd"].loss, s_feat, t_feat)]
    assert len(levels) == 5 and got.item() == pytest.approx(default * sum(v.item() for v in levels), rel=1e-5)
    explicit = build_distiller([DistillConfig(method="pkd", weight=0.5)], student, teacher, None)
    assert explicit.weights == {"pkd": 0.5}  # an old recipe's weight: now per level
    shuffle = build_model("shuffledet_0.25x", image_size=HW)
    assert build_distiller([DistillConfig(method="pkd")], shuffle, build_model("shuffledet_0.5x", image_size=HW),
                           None).weights == {"pkd": 1.0}


@pytest.mark.parametrize("family, alone, with_crosskd", [("fcos", 2.0, 2.0), ("retinanet", 10.0, 2.0)])
def test_pkd_default_weight_follows_the_reference_config_of_the_combination(family, alone, with_crosskd):
    """mmrazor's PKD RetinaNet config: 10 per level; the CrossKD authors' CrossKD+PKD configs: 2 per level on
    both FCOS and RetinaNet (so RetinaNet's PKD is 5x lighter next to CrossKD); FCOS alone has no reference."""
    from compressdet.losses.distill import PKD_DEFAULT_WEIGHT, default_weight

    student, teacher = _pair(family)
    assert build_distiller([DistillConfig(method="pkd")], student, teacher, None).weights["pkd"] == alone
    both = build_distiller([DistillConfig(method="pkd"), DistillConfig(method="crosskd")], student, teacher, None)
    assert both.weights == {"pkd": with_crosskd, "crosskd": 1.0}
    assert default_weight("pkd", student, ["crosskd", "pkd"]) == PKD_DEFAULT_WEIGHT[(family, True)]
    assert default_weight("pkd", student) == PKD_DEFAULT_WEIGHT[(family, False)]


def test_pkd_zero_when_student_equals_teacher():
    t = torch.randn(2, 8, 5, 6)
    assert PKDLoss(8, 8)(t.clone(), t).item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------------ recipe
def test_old_recipe_fields_still_load_and_new_ones_round_trip():
    old = ScheduleConfig(clip_grad_norm=0.5)
    assert old.clip_setting == ClipConfig(mode="per_tensor", max_norm=0.5)
    assert ScheduleConfig().clip_setting == ClipConfig(mode="per_tensor", max_norm=1.0)  # the seed's
    assert ScheduleConfig(clip_grad_norm=None).clip_setting.mode == "none"
    assert ScheduleConfig(clip={"mode": "global", "max_norm": 35}).clip_setting == ClipConfig(mode="global",
                                                                                             max_norm=35)
    with pytest.raises(ValueError, match="not both"):
        ScheduleConfig(clip={"mode": "global"}, clip_grad_norm=0.5)
    # a resolved recipe writes the default clip_grad_norm beside clip: it loads again, clip in force
    assert ScheduleConfig(clip={"mode": "global"}, clip_grad_norm=1.0).clip_setting.mode == "global"
    for cfg in [DistillConfig(method="pkd", weight=2.0), DistillConfig(method="crosskd", weight=1.0, tau=2.0),
                DistillConfig(method="crosskd", weight="auto", auto_ratio=3.0, from_layer=1, centerness=True),
                DistillConfig(method="crosskd", variant="adapter"), DistillConfig(method="fgfi")]:
        assert DistillConfig(**cfg.to_yaml_dict()) == cfg and cfg.enabled
    assert not DistillConfig(method="pkd", weight=0).enabled
    with pytest.raises(ValueError, match="only apply with 'weight: auto'"):
        DistillConfig(method="pkd", weight=1.0, auto_ratio=2.0)
    with pytest.raises(ValueError, match="takes no from_layer"):
        DistillConfig(method="pkd", from_layer=2)
    with pytest.raises(ValueError, match="paper variant only"):
        DistillConfig(method="crosskd", variant="adapter", from_layer=2)


# ------------------------------------------------------------------------------------------ clip
def test_clip_modes():
    def grads():
        a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))
        a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.3, 0.4, 0.0, 0.0])
        return [a, b]

    ps = grads()
    clip_gradients(ps, "per_tensor", 1.0)  # each tensor on its own: 5 -> 1, 0.5 stays
    assert ps[0].grad.norm().item() == pytest.approx(1.0, rel=1e-5) and ps[1].grad.norm().item() == pytest.approx(0.5)
    ps = grads()
    clip_gradients(ps, "global", 1.0)  # together: the small one shrinks by the same factor
    total = torch.cat([p.grad for p in ps]).norm().item()
    assert total == pytest.approx(1.0, rel=1e-5) and ps[1].grad.norm().item() == pytest.approx(0.5 / 5.0249, rel=1e-3)
    ps = grads()
    clip_gradients(ps, "none", 1.0)
    assert ps[0].grad.norm().item() == pytest.approx(5.0)


def test_trainer_applies_the_global_clip(tmp_path, monkeypatch):
    import compressdet.engine.trainer as tr_mod

    seen = []
    monkeypatch.setattr(tr_mod, "clip_gradients", lambda params, mode, max_norm: seen.append((mode, max_norm)))
    student, _ = _pair("fcos")
    sched = ScheduleConfig(steps=1, batch_size=2, lr=0.001, checkpoint_every=1, log_every=1,
                           clip={"mode": "global", "max_norm": 35.0})
    Trainer(student, schedule=sched, loss_fn=student.build_loss(), train_loader=_Batches(),
            out_dir=tmp_path / "c").fit()
    assert seen == [("global", 35.0)]


# ------------------------------------------------------------------------------------------ CrossKD
@pytest.mark.parametrize("family, layer", [("fcos", 2), ("retinanet", 3)])
def test_crosskd_paper_default_layer_finite_and_grads_reach_the_students_tower_only(family, layer):
    student, teacher = _pair(family)
    d = build_distiller([DistillConfig(method="crosskd")], student, teacher, None)
    assert d.tower_layer == layer  # the reference's entry point
    x = torch.randn(2, 3, *HW) * 50
    out = d(_paper_taps(student, teacher, x, layer), 0)
    assert set(out) == {"crosskd_cls", "crosskd_box"} and all(torch.isfinite(v) and v > 0 for v in out.values())
    sum(out.values()).backward()
    s_tower = student.det.head.classification_head.conv
    t_tower = teacher.det.head.classification_head.conv
    first_conv = next(m for m in s_tower.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0  # the student's tower
    assert all(p.grad is None for p in teacher.parameters())  # frozen teacher path
    assert student.det.head.classification_head.cls_logits.weight.grad is None  # its output conv: GT only
    assert all(p.grad is None for p in t_tower.parameters())
    assert not any(k.startswith("methods.crosskd.loss._teacher") for k in d.state_dict())


@pytest.mark.parametrize("family", list(PAIRS))
def test_crosskd_paper_zero_when_student_is_the_teacher(family):
    _, teacher = _pair(family)
    student = copy.deepcopy(teacher).requires_grad_(True)  # eval too: the same BatchNorm statistics
    cfg = DistillConfig(method="crosskd", centerness=True) if family == "fcos" else DistillConfig(method="crosskd")
    d = build_distiller([cfg], student, teacher, None)
    x = torch.randn(2, 3, *HW) * 50
    out = d(_paper_taps(student, teacher, x, d.tower_layer), 0)
    assert out["crosskd_box"].item() < 1e-4 and out["crosskd_cls"].item() < 1e-4
    if family == "fcos":  # centre-ness KD: BCE to the teacher's own sigmoid is its entropy, the minimum
        assert "crosskd_ctr" in out and torch.isfinite(out["crosskd_ctr"])


def test_crosskd_variants_and_refusals():
    student, teacher = _pair("fcos")
    d = build_distiller([DistillConfig(method="crosskd", variant="adapter")], student, teacher, None)
    assert d.tower_layer is None and len(d.methods["crosskd"].loss.adapt) == 5
    with pytest.raises(ValueError, match="past the head towers"):
        build_distiller([DistillConfig(method="crosskd", from_layer=3)], student, teacher, None)  # student: 2 layers
    s, t = build_model("shuffledet_0.25x", image_size=HW), build_model("shuffledet_0.5x", image_size=HW)
    with pytest.raises(ValueError, match="use variant 'adapter'"):
        build_distiller([DistillConfig(method="crosskd", variant="paper")], s, t, t.anchors())
    assert build_distiller([DistillConfig(method="crosskd")], s, t, t.anchors()).tower_layer is None
    r_s, r_t = _pair("retinanet")
    with pytest.raises(ValueError, match="centerness is for FCOS"):
        build_distiller([DistillConfig(method="crosskd", centerness=True)], r_s, r_t, None)


def test_kd_normalizer_is_the_references():
    student, _ = _pair("retinanet")
    n, valid = student.kd_normalizer(BOXES)
    assert n.item() > 0 and valid.shape == (2, sum(student.priors_per_level())) and valid[1].all()
    fcos, _ = _pair("fcos")
    n_f, none = fcos.kd_normalizer(BOXES)
    _, count = fcos.loss(fcos(torch.zeros(2, 3, *HW)), [{"boxes": b, "labels": torch.zeros(len(b), dtype=torch.int64)}
                                                        for b in BOXES], with_count=True)
    assert none is None and 0 < n_f.item() <= count.item()  # centre-ness targets are in (0, 1] per positive


# ------------------------------------------------------------------------------------------ weight: auto
def test_weight_auto_lands_the_target_ratio(tmp_path):
    student, teacher = _pair("fcos")
    cfgs = [DistillConfig(method="pkd", weight="auto", auto_ratio=2.0),
            DistillConfig(method="crosskd", weight="auto", auto_ratio=0.5)]
    sched = ScheduleConfig(steps=1, batch_size=2, lr=0.001, checkpoint_every=1, log_every=1)
    tr = Trainer(student, schedule=sched, loss_fn=student.build_loss(), train_loader=_Batches(), teacher=teacher,
                 imitation=cfgs, out_dir=tmp_path / "c")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    from compressdet.engine.calibrate import calibrate_weights

    cal = calibrate_weights(tr)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())  # BN statistics restored
    assert set(cal) == {"pkd", "crosskd"} and tr.imitation_loss.weights["pkd"] == pytest.approx(cal["pkd"]["weight"])
    # measured again on other batches, at the chosen weights: within 20% of the targets
    at_one = measure_grad_ratios(tr, iter([b for b, _ in zip(_Batches(seed=7), range(4))]))
    for m, target in (("pkd", 2.0), ("crosskd", 0.5)):
        assert at_one[m] * tr.imitation_loss.weights[m] == pytest.approx(target, rel=0.2)
    table = grad_ratio_table(tr, {"pkd": [1.0, 10.0]}, 2)
    assert table["pkd"][10.0] == pytest.approx(10 * table["pkd"][1.0])
    # measured on the backbone + neck (torchvision's det.backbone: body + FPN), recorded with the weight
    assert cal["pkd"]["params"] == cal["crosskd"]["params"]
    assert cal["pkd"]["params"]["set"] == "backbone+neck" and cal["pkd"]["params"]["modules"] == ["det.backbone"]
    assert cal["pkd"]["params"]["numel"] == sum(p.numel() for p in student.det.backbone.parameters())


# ------------------------------------------------------------------------------------------ journey
RECIPE = """
name: tiny_auto
seed: 0
device: cpu
data:
  format: synth
  image_size: [64, 192]
  synth: {num_images: 12, size: [384, 128], seed: 0, cache_dir: CACHE}
  max_val_images: 2
stages:
  - name: teacher
    kind: train
    model: fcos_r18
    schedule: {steps: 1, batch_size: 2, lr: 0.005, eval_every: 1, checkpoint_every: 1, log_every: 1, threads: 1}
  - name: student
    kind: train
    model: fcos_mnv3_small
    teacher: teacher
    distill: [{method: crosskd, weight: auto, auto_batches: 2}]
    schedule: {steps: 2, batch_size: 2, lr: 0.005, eval_every: 2, checkpoint_every: 2, log_every: 1, threads: 1,
               clip: {mode: global, max_norm: 10}}
  - name: pruned
    kind: prune
    from: student
    teacher: teacher
    distill: {method: crosskd, weight: auto, auto_batches: 1, auto_ratio: 3.0}
    target: {macs: 0.8}
    schedule: {steps: 1, batch_size: 2, lr: 0.002, eval_every: 1, checkpoint_every: 1, log_every: 1, threads: 1}
"""


def test_journey_crosskd_weight_auto_records_weight_and_ratio(tmp_path):
    from compressdet.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("CACHE", str(tmp_path / "cache")))
    run = tmp_path / "run"
    assert main(["run", str(recipe), "--run-dir", str(run)]) == 0
    stage = json.loads((run / "manifest.json").read_text())["stages"]["student"]
    cal = stage["metrics"]["distill_calibration"]["crosskd"]
    assert cal["grad_ratio"] == pytest.approx(1.0) and cal["auto_ratio"] == 1.0 and cal["batches"] == 2
    assert cal["weight"] == pytest.approx(1.0 / cal["grad_ratio_at_1"]) and np.isfinite(cal["weight"])
    assert stage["metrics"]["distill_weights"]["crosskd"] == pytest.approx(cal["weight"])
    assert {"crosskd_cls", "crosskd_box"} <= set(stage["metrics"]["final_losses"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(next((run / "tb" / "student").glob("events*"))))
    ev.Reload()
    assert {"distill/crosskd/weight", "distill/crosskd/grad_ratio"} <= set(ev.Tags()["scalars"])
    assert ev.Scalars("distill/crosskd/weight")[0].value == pytest.approx(cal["weight"], rel=1e-5)
    # a prune stage measures again after pruning (its student changed), per round
    rounds = json.loads((run / "manifest.json").read_text())["stages"]["pruned"]["metrics"]["rounds"]
    assert rounds[0]["distill_calibration"]["crosskd"]["grad_ratio"] == pytest.approx(3.0)


def test_weight_auto_is_measured_once_and_kept_on_resume(tmp_path, monkeypatch):
    import compressdet.engine.calibrate as cal_mod

    def make(steps):
        torch.manual_seed(0)
        s = build_model("shuffledet_0.25x", image_size=HW)
        t = build_model("shuffledet_0.5x", image_size=HW).eval()
        sched = ScheduleConfig(steps=steps, batch_size=2, lr=0.001, checkpoint_every=1, log_every=1)
        return Trainer(s, schedule=sched, loss_fn=s.build_loss(), train_loader=_Batches(), teacher=t,
                       imitation=[DistillConfig(method="pkd", weight="auto", auto_batches=2)], out_dir=tmp_path / "c",
                       anchors=s.priors())

    class _Resumable:  # the stream restarts where asked (enough for this test: the data do not matter)
        def set_position(self, n):
            pass

    monkeypatch.setattr(_Batches, "sampler", _Resumable(), raising=False)

    first = make(1).fit()
    w = first["distill_weights"]["pkd"]
    assert first["distill_calibration"]["pkd"]["weight"] == pytest.approx(w) and w != 1.0
    monkeypatch.setattr(cal_mod, "calibrate_weights", lambda tr: pytest.fail("measured again on resume"))
    tr = make(2)
    again = tr.fit(resume_from=tmp_path / "c" / "last.pt")
    assert again["distill_weights"]["pkd"] == pytest.approx(w) and again["distill_calibration"]["pkd"]["weight"] == w


def _student_set(student, teacher, cfg, **kw):
    """What ``weight: auto`` measures on: (parameter names, ratio at weight 1)."""
    from compressdet.engine.calibrate import calibrate_weights

    torch.manual_seed(0)  # the distillers' adapters
    tr = Trainer(student, schedule=ScheduleConfig(steps=1, batch_size=2, lr=0.001), loss_fn=student.build_loss(),
                 train_loader=_Batches(), teacher=teacher, imitation=[cfg], out_dir=kw.pop("out"), **kw)
    cal = calibrate_weights(tr)[cfg.method]
    return cal["params"], cal["grad_ratio_at_1"]


def test_weight_auto_measures_the_backbone_and_neck_of_every_family(tmp_path):
    """Issue #41's strength: the backbone + neck gradient (what the feature taps depend on), recorded with the
    weight, for ShuffleDet (its backbone), FCOS (torchvision's body + FPN) and YOLO (the layers before Detect)."""
    torch.manual_seed(0)
    s, t = build_model("shuffledet_0.25x", image_size=HW), build_model("shuffledet_0.5x", image_size=HW).eval()
    params, _ = _student_set(s, t, DistillConfig(method="pkd", weight="auto", auto_batches=1), out=tmp_path / "s",
                             anchors=s.priors())
    assert params["modules"] == ["backbone"] and params["set"] == "backbone+neck"
    assert params["numel"] == sum(p.numel() for p in s.backbone.parameters())
    pytest.importorskip("ultralytics")
    torch.manual_seed(0)
    y, yt = build_model("yolov8n", image_size=HW), build_model("yolov8n", image_size=HW).eval()
    params, ratio = _student_set(y, yt, DistillConfig(method="pkd", weight="auto", auto_batches=1), out=tmp_path / "y")
    with_params = [f"net.model.{i}" for i, m in enumerate(y.net.model[:-1]) if any(True for _ in m.parameters())]
    assert params["modules"] == with_params and len(with_params) > 10  # backbone + neck, not Detect
    assert params["numel"] == sum(p.numel() for p in y.net.model[:-1].parameters()) and ratio > 0


def test_weight_auto_set_does_not_depend_on_a_backbone_attribute(tmp_path):
    """A student without ``backbone`` (a QAT graph, a user's wrapper) measured all the parameters a loss
    reached: with CrossKD's paper variant that is the student's head tower too (not backbone + neck), so the
    ratio differed from the same student's with the attribute. Now the taps decide: the same set, the same ratio."""
    student, teacher = _pair("fcos")
    cfg = DistillConfig(method="crosskd", variant="paper", weight="auto", auto_batches=1)
    params, ratio = _student_set(copy.deepcopy(student), teacher, cfg, out=tmp_path / "a")

    class Bare(type(student)):
        backbone = None  # hides the property; the model still runs through det.backbone

    bare = copy.deepcopy(student)
    bare.__class__ = Bare
    params_bare, ratio_bare = _student_set(bare, teacher, cfg, out=tmp_path / "b")
    assert params_bare["numel"] == params["numel"] and params["modules"] == ["det.backbone"]
    assert params_bare["modules"] == ["det.backbone"]
    assert ratio_bare == pytest.approx(ratio, rel=1e-6)


def test_weight_auto_trains_exactly_as_the_weight_it_chose_and_restores_modes(tmp_path):
    """The docs' claim: measuring leaves the run as it was (BN statistics, RNG, loader, and each module's
    train/eval mode: a student loaded from a file comes in eval mode), so the run equals one given the weight."""
    from compressdet.engine.calibrate import calibrate_weights

    def make(weight, out):
        torch.manual_seed(0)
        s, t = build_model("shuffledet_0.25x", image_size=HW), build_model("shuffledet_0.5x", image_size=HW).eval()
        s.backbone.eval()  # a mixed state, as a partly frozen or loaded student
        sched = ScheduleConfig(steps=2, batch_size=2, lr=0.01, checkpoint_every=2, log_every=1)
        extra = {"auto_batches": 2} if weight == "auto" else {}
        return s, Trainer(s, schedule=sched, loss_fn=s.build_loss(), train_loader=_Batches(), teacher=t,
                          imitation=[DistillConfig(method="pkd", weight=weight, **extra)], out_dir=tmp_path / out,
                          anchors=s.priors())

    s, tr = make("auto", "m")
    modes = {n: m.training for n, m in s.named_modules()}
    calibrate_weights(tr)
    assert {n: m.training for n, m in s.named_modules()} == modes and not s.backbone.training and s.training
    s_auto, tr_auto = make("auto", "a")
    w = tr_auto.fit()["distill_weights"]["pkd"]
    s_w, tr_w = make(w, "w")
    assert tr_w.fit()["distill_weights"]["pkd"] == w
    assert all(torch.equal(v, s_w.state_dict()[k]) for k, v in s_auto.state_dict().items())


def _ddp_calibrate(out, rank=0, world_size=1):
    from test_engine import make_trainer

    from compressdet.engine.calibrate import calibrate_weights

    tr = make_trainer(out, steps=1, dropout=0.0, batch=4, evaluate=False, dtype=torch.float64, rank=rank,
                      world_size=world_size, arch="fcos_mnv3_small", teacher_arch="fcos_mnv3_small",
                      imitation=[DistillConfig(method="crosskd", weight="auto", auto_batches=2),
                                 DistillConfig(method="pkd", weight="auto", auto_batches=2)])
    return {m: c["weight"] for m, c in calibrate_weights(tr).items()}


def _ddp_calibrate_worker(rank, world, init, out):
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.save(_ddp_calibrate(os.path.join(out, "c"), rank, world), os.path.join(out, f"w{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns 2 processes
def test_weight_auto_under_ddp_is_the_one_process_weight(tmp_path):
    """2 processes (gloo) choose, bit for bit on every rank, the weight one process with the same global
    batch chooses: the norms are of the global batch's gradient (a sum of per-process norms was ~1% off
    here and grows with the number of processes)."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_calibrate_worker, args=(2, f"file://{tmp_path / 'pg'}", str(tmp_path)), nprocs=2, join=True)
    w = [torch.load(tmp_path / f"w{r}.pt", weights_only=True) for r in range(2)]
    single = _ddp_calibrate(tmp_path / "single")
    assert w[0] == w[1] and set(single) == {"crosskd", "pkd"}
    for m in single:
        assert w[0][m] == pytest.approx(single[m], rel=1e-6)  # norms in float32


@pytest.mark.slow  # exports and prepares a QAT graph
def test_weight_auto_leaves_a_qat_graph_as_it_was(tmp_path):
    """A QAT student (fake-quant graph): every buffer restored, the observers' eps included (restoring
    without the state dict's module versions reset it from the quantizer's 2**-12 to float32's eps)."""
    from compressdet.engine.calibrate import calibrate_weights
    from compressdet.quant.qat import prepare_qat, qat_training
    from compressdet.recipe import QuantConfig

    student, teacher = _pair("fcos")
    prepared = prepare_qat(student.eval(), torch.randn(2, 3, *HW) * 50, QuantConfig())
    qat, settings = qat_training(prepared, ScheduleConfig(steps=1, batch_size=2, lr=0.001), 1, 1)
    tr = Trainer(qat, loss_fn=settings.pop("loss_fn"), train_loader=_Batches(), teacher=teacher,
                 imitation=[DistillConfig(method="pkd", weight="auto", auto_batches=1)], out_dir=tmp_path / "q",
                 **settings)
    before = {k: v.clone() for k, v in qat.state_dict().items()}
    assert any(k.endswith(".eps") for k in before)
    assert calibrate_weights(tr)["pkd"]["weight"] > 0
    after = qat.state_dict()
    assert [k for k, v in before.items() if not torch.equal(v, after[k])] == []


def test_weight_auto_reduces_tensors_on_the_trainers_device(tmp_path, monkeypatch):
    """Under torchrun on GPUs the process group is NCCL, which reduces CUDA tensors only: the ratio sums
    were a CPU tensor (weight: auto crashed on multi-GPU DDP). Checks the device on CUDA where there is one."""
    import compressdet.engine.calibrate as cal_mod

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    s, t = build_model("shuffledet_0.25x", image_size=HW), build_model("shuffledet_0.5x", image_size=HW).eval()
    tr = Trainer(s, schedule=ScheduleConfig(steps=1, batch_size=2, lr=0.001), loss_fn=s.build_loss(),
                 train_loader=_Batches(), teacher=t, imitation=[DistillConfig(method="pkd", weight="auto")],
                 out_dir=tmp_path / "c", anchors=s.priors(), device=device)
    single = measure_grad_ratios(tr, 1)["pkd"]
    seen = []
    monkeypatch.setattr(cal_mod, "all_reduce_sum", lambda x: seen.append(x.device) or x)  # one "process" of 2
    monkeypatch.setattr(tr, "world_size", 2)
    assert measure_grad_ratios(tr, 1)["pkd"] == pytest.approx(single, rel=1e-9)
    assert len(seen) == 3 and all(d.type == tr.device.type for d in seen)  # two gradient vectors, the sums


def test_crosskd_box_term_is_the_references_per_family():
    from compressdet.losses.crosskd import REFERENCE_BOX_LOSS, log_iou_loss

    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [10.0, 10.0, 14.0, 14.0]])
    loss = log_iou_loss(a, b)
    assert loss[0].item() == pytest.approx(0.0, abs=1e-6)
    assert loss[1].item() == pytest.approx(-math.log(0.5), rel=1e-6)  # IoU 50 / 100
    assert loss[2].item() == pytest.approx(-math.log(1e-6), rel=1e-6)  # disjoint: the eps floor, finite
    assert REFERENCE_BOX_LOSS["fcos"] is log_iou_loss  # CrossKD's FCOS config: IoULoss (-log IoU)
    g = REFERENCE_BOX_LOSS["retinanet"](a, b)  # its RetinaNet config: GIoULoss
    assert g[0].item() == pytest.approx(0.0, abs=1e-6) and g[1].item() == pytest.approx(0.5, rel=1e-6)
