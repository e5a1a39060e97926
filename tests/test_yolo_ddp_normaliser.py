"""YOLO's detection loss under DDP: a global normaliser (``reduce_counts``), as the other families' losses.

Without it each process divided by its own assigned-score sum and the trainer did not scale the gradients
by ``W`` (its scale follows the loss's ``reduce_counts``), while the distillers' normalisers are global:
under DDP a YOLO student's distillation was ``W`` times weaker relative to its detection loss than in one
process (issue #41's review).
"""

from __future__ import annotations

import os

import pytest
import torch

from compressdet.models.yolo import ultralytics_available
from compressdet.recipe import DistillConfig

pytestmark = pytest.mark.skipif(not ultralytics_available(), reason="ultralytics is not installed")
torch.set_num_threads(1)
SIZE = (64, 192)
TOL = 1e-5
CASE = {"steps": 3, "dropout": 0.0, "batch": 4, "evaluate": False, "checkpoint_every": 3, "dtype": torch.float64,
        "arch": "yolov8n", "teacher_arch": "yolov8n", "imitation": [DistillConfig(method="pkd", weight=2.0)]}


def _targets(n):
    boxes = [torch.tensor([[10.0, 10.0, 70.0, 50.0], [100.0, 8.0, 140.0, 60.0]]), torch.tensor([[20.0, 5.0, 60.0, 40.0]]),
             torch.zeros(0, 4), torch.tensor([[120.0, 20.0, 180.0, 60.0]])]
    return [{"boxes": boxes[i % 4], "labels": torch.arange(len(boxes[i % 4])) % 3} for i in range(n)]


def test_global_normaliser_makes_the_halves_sum_to_the_whole_batch():
    """Two "processes" holding half a batch each, their normaliser summed: their losses (and gradients)
    add up to one process's over the whole batch; each dividing by its own sum, they do not."""
    from compressdet.models import build_model

    torch.manual_seed(0)
    model = build_model("yolov8n", image_size=SIZE, num_classes=3)
    x, targets = torch.randn(4, 3, *SIZE) * 40, _targets(4)
    out = tuple(o.detach().requires_grad_(True) for o in model(x))
    loss_fn = model.build_loss()
    assert loss_fn.reduce_counts is None  # the trainer sets it under DDP
    full = loss_fn(out, targets)
    (g_full,) = torch.autograd.grad(full["total"], out[1])
    halves = [(tuple(o[i:i + 2] for o in out), targets[i:i + 2]) for i in (0, 2)]
    counts = [model.loss(o, t, with_count=True)[1] for o, t in halves]
    assert all(c > 0 for c in counts)
    own = sum(loss_fn(o, t)["total"] for o, t in halves)
    assert not own.item() == pytest.approx(full["total"].item(), rel=0.05)  # per-process normalisers: off
    loss_fn.reduce_counts = lambda c: counts[0] + counts[1]  # what all_reduce_sum returns on each process
    parts = [loss_fn(o, t) for o, t in halves]
    for k in ("box", "cls", "dfl", "total"):
        assert (parts[0][k] + parts[1][k]).item() == pytest.approx(full[k].item(), rel=1e-5)
    (g_sum,) = torch.autograd.grad(parts[0]["total"] + parts[1]["total"], out[1])
    assert torch.allclose(g_sum, g_full, rtol=1e-5, atol=1e-9)


def _trainer(out, **kw):
    from test_engine import make_trainer

    return make_trainer(out, **CASE, **kw)


def _worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        tr = _trainer(os.path.join(out, "ddp"), rank=rank, world_size=world)
        assert tr.loss_fn.reduce_counts is not None and tr._grad_scale == world
        tr.fit()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns 2 processes
def test_yolo_pkd_two_processes_match_one(tmp_path):
    """The existing gloo pattern (tests/test_distributed.py): 2 processes == 1 process with the same global
    batch, a YOLO student with PKD (float64), weights and the distiller's adapters after training."""
    import torch.multiprocessing as mp

    from compressdet.engine import load_checkpoint

    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'pg'}", str(tmp_path)), nprocs=2, join=True)
    single = _trainer(tmp_path / "single")
    init = {k: v.clone() for k, v in single.model.state_dict().items()}
    single.fit()
    a, b = load_checkpoint(tmp_path / "ddp" / "last.pt"), load_checkpoint(tmp_path / "single" / "last.pt")
    assert a["world_size"] == 2 and a["step"] == b["step"] == CASE["steps"]

    def worst(x, y):
        return max(((x[k].double() - v.double()).abs() / v.double().abs().clamp(min=1.0)).max().item()
                   for k, v in y.items() if v.is_floating_point() and "running" not in k)

    assert worst(a["model"], b["model"]) < TOL
    assert worst(b["model"], init) > 100 * TOL  # training moved the weights: the agreement is not trivial
    if b["imitation"]:
        assert worst(a["imitation"], b["imitation"]) < TOL
