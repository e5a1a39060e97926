"""QAT under DDP on CPU (gloo): the fake-quant graph trains in 2 processes and stays one model.

DDP averages gradients and broadcasts buffers from rank 0 before every forward, so after the
freezes (BN at step 1, observers at step 2) both ranks must hold bit-identical weights, BN
statistics and quantization scales, and training must have moved them.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("torchao")

SIZE = (64, 192)


def _worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        from test_engine import TinyBoxes

        from compressdet.data import build_loader
        from compressdet.engine import Trainer
        from compressdet.losses import SqueezeDetLoss
        from compressdet.models import build_model
        from compressdet.quant.ptq import randomize_batchnorm
        from compressdet.quant.qat import FakeQuantStudent, QatFreezeHook, prepare_qat, qat_param_groups
        from compressdet.recipe import ImitationConfig, QuantConfig, ScheduleConfig

        torch.manual_seed(0)
        student = randomize_batchnorm(build_model("shuffledet_0.25x", image_size=SIZE), head_std=0.02).eval()
        teacher = build_model("shuffledet_0.25x", image_size=SIZE).eval()
        example = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(0)) * 50
        fq = FakeQuantStudent(prepare_qat(student, example, QuantConfig()))
        init = {k: v.clone() for k, v in fq.state_dict().items()}
        sched = ScheduleConfig(steps=4, batch_size=4, lr=1e-3, log_every=1, checkpoint_every=4)
        loader = build_loader(TinyBoxes(n=8, hw=SIZE), batch_size=2, train=True, seed=0, rank=rank, world_size=world)
        anchors = student.anchors()
        tr = Trainer(fq, schedule=sched, loss_fn=SqueezeDetLoss(anchors, image_size=SIZE), train_loader=loader,
                     teacher=teacher, imitation=ImitationConfig(weight=1.0), out_dir=os.path.join(out, f"r{rank}"),
                     rank=rank, world_size=world, seed=0, anchors=anchors,
                     param_groups=qat_param_groups(sched.weight_decay), hooks=(QatFreezeHook(fq, 2, 1),))
        tr.fit()
        torch.save({"init": init, "final": fq.state_dict()}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_qat_two_processes_stay_identical(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'pg'}", str(out)), nprocs=2, join=True)
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    assert r0["final"].keys() == r1["final"].keys()
    for k, v in r0["final"].items():
        assert torch.equal(v, r1["final"][k]), k
    scales = [k for k in r0["final"] if k.endswith(".scale")]
    assert scales, "no fake-quant scales in the state dict"
    moved = [k for k, v in r0["final"].items() if v.is_floating_point() and v.shape == r0["init"][k].shape
             and not torch.equal(v, r0["init"][k])]
    assert any(k.endswith("weight") for k in moved), "training did not move any weight"
