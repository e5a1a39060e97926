"""Trainer: schedule, clip, param groups, NaN guard, exact resume after SIGKILL (tiny CPU runs)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from compressdet.engine import (
    NonFiniteLossError,
    Trainer,
    clip_grad_norm_per_tensor,
    cosine_lr_lambda,
    load_checkpoint,
    seed_param_groups,
)
from compressdet.recipe import ImitationConfig, ScheduleConfig

torch.set_num_threads(1)
HW = (64, 192)


class TinyBoxes(Dataset):
    """Deterministic noise images with two boxes each; items keyed by (index, epoch) like KittiDataset."""

    def __init__(self, n: int = 8, hw: tuple[int, int] = HW, dtype: torch.dtype = torch.float32) -> None:
        self.n, self.hw, self.dtype = n, hw, dtype

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        i, _ = key if isinstance(key, tuple) else (key, 0)
        g = torch.Generator().manual_seed(i)
        img = (torch.randn(3, *self.hw, generator=g) * 50).to(self.dtype)
        x0 = torch.randint(0, self.hw[1] - 60, (2,), generator=g).float()
        y0 = torch.randint(0, self.hw[0] - 40, (2,), generator=g).float()
        boxes = torch.stack([x0, y0, x0 + 50, y0 + 30], 1)
        return img, {"boxes": boxes, "labels": torch.tensor([0, 2]), "image_id": f"{i:06d}", "orig_size": self.hw}


def make_trainer(out_dir, *, steps=4, rank=0, world_size=1, dropout=0.5, imitation=True, batch=2, on_step=None,
                 loss_wrap=None, checkpoint_every=2, evaluate=True, lr=0.01, dtype=torch.float32,
                 arch="shuffledet_0.25x", teacher_arch="shuffledet_1x"):
    from compressdet.data import build_loader
    from compressdet.losses import SqueezeDetLoss
    from compressdet.models import build_model
    from compressdet.models.anchors import generate_anchors

    torch.manual_seed(0)
    shuffledet = arch.startswith("shuffledet")
    student = build_model(arch, image_size=HW, **({"dropout": dropout} if shuffledet else {})).to(dtype)
    teacher = build_model(teacher_arch, image_size=HW).to(dtype).eval() if imitation else None
    loader = build_loader(TinyBoxes(dtype=dtype), batch_size=batch // world_size, train=True, seed=0, rank=rank,
                          world_size=world_size)
    # the contract: a model owns its loss (FCOS / RetinaNet: torchvision's); ShuffleDet's as the seed wrote it
    loss = SqueezeDetLoss(generate_anchors(HW), image_size=HW) if shuffledet else student.build_loss()
    if loss_wrap is not None:
        loss = loss_wrap(loss)
    sched = ScheduleConfig(steps=steps, batch_size=batch, lr=lr, eval_every=2, checkpoint_every=checkpoint_every,
                           log_every=1)
    return Trainer(student, schedule=sched, loss_fn=loss, train_loader=loader,
                   evaluate_fn=(lambda m, s: {"map40": float(-abs(s - 2))}) if evaluate else None,
                   teacher=teacher, imitation=(imitation if isinstance(imitation, list) else
                                               ImitationConfig(weight=1.0) if imitation else None), out_dir=out_dir,
                   tb_dir=None, rank=rank, world_size=world_size, seed=0, on_step=on_step)


def test_cosine_lambda():
    f = cosine_lr_lambda(100, 0.02, 0.0)
    assert f(0) == pytest.approx(1.0) and f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0, abs=1e-12)
    g = cosine_lr_lambda(100, 0.02, 0.002, warmup_steps=10)
    assert g(0) == pytest.approx(0.1) and g(9) == pytest.approx(1.0) and g(100) == pytest.approx(0.1)


def test_clip_is_per_tensor():
    a, b = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(3))
    a.grad, b.grad = torch.full((4,), 3.0), torch.tensor([0.1, 0.2, 0.2])  # norms 6 and 0.3
    clip_grad_norm_per_tensor([a, b], 1.0)
    assert a.grad.norm().item() == pytest.approx(1.0, rel=1e-4)
    assert torch.allclose(b.grad, torch.tensor([0.1, 0.2, 0.2]))  # below the limit: untouched


def test_seed_param_groups_decay_only_head_and_adaptation():
    from compressdet.losses import ImitationLoss
    from compressdet.models import build_model

    model = build_model("shuffledet_0.25x", image_size=HW)
    adapt = ImitationLoss(model.feature_channels, 768)
    decay, no_decay = seed_param_groups(model, adapt, 5e-4)
    ids = {id(p) for p in decay["params"]}
    assert ids == {id(p) for p in list(model.head.parameters()) + list(adapt.parameters())}
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    (everything,) = seed_param_groups(model, adapt, 5e-4, on="all")
    assert len(everything["params"]) == len(decay["params"]) + len(no_decay["params"])


def test_fit_writes_checkpoints_and_summary(tmp_path):
    summary = make_trainer(tmp_path, steps=4).fit()
    assert set(summary["final_losses"]) == {"class", "confidence", "box", "imitation", "total"}
    assert summary["best_step"] == 2 and summary["best_map40"] == 0.0  # the fake metric peaks at step 2
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["step"] == 4 and last["imitation"] is not None and last["sampler"]["consumed"] == 8
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["step"] == 2


class _NanAt:
    def __init__(self, loss, step):
        self.loss, self.step, self.calls = loss, step, 0
        self.anchors = loss.anchors

    def __call__(self, out, targets):
        self.calls += 1
        d = self.loss(out, targets)
        if self.calls == self.step:
            d["box"] = d["box"] * float("nan")
            d["total"] = d["class"] + d["confidence"] + d["box"]
        return d


def test_nan_loss_stops_with_step_and_keeps_last_good(tmp_path):
    tr = make_trainer(tmp_path, steps=6, loss_wrap=lambda l: _NanAt(l, 3), imitation=False)
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*box=nan.*last good checkpoint"):
        tr.fit()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path / "last.pt")["model"].values()
               if v.is_floating_point())


_SCRIPT = r"""
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
from test_engine import make_trainer
from compressdet.recipe import DistillConfig
kill_at = int(os.environ.get("KILL_AT", "0"))
methods = os.environ.get("DISTILL", "")
imitation = [DistillConfig(method=m) for m in methods.split(",")] if methods else True
def on_step(t):
    if kill_at and t.iter + 1 == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
out = sys.argv[1]
resume = len(sys.argv) > 2
tr = make_trainer(out, steps=6, dropout=0.5, on_step=on_step, checkpoint_every=2, imitation=imitation)
tr.fit(resume_from=os.path.join(out, "last.pt") if resume else None)
"""


@pytest.mark.parametrize("distill", ["", "pkd,crosskd"], ids=["fgfi", "pkd+crosskd"])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, distill):
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT.format(tests=str(Path(__file__).resolve().parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DISTILL": distill}
    py = sys.executable

    def go(out, *extra, kill=0):
        return subprocess.run([py, str(script), str(out), *extra], env={**env, "KILL_AT": str(kill)},
                              capture_output=True, text=True, timeout=120)

    full = go(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = go(tmp_path / "killed", kill=5)  # dies during step 5's hooks; last.pt holds step 4
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["step"] == 4
    resumed = go(tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["imitation"].items():
        assert torch.equal(v, b["imitation"][k]), k
    assert math.isclose(a["scheduler"]["last_epoch"], b["scheduler"]["last_epoch"])
