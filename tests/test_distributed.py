"""DDP on CPU (gloo): 2 processes with cross-process BN == 1 process with the same global batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from compressdet.engine import CrossProcessBatchNorm2d, convert_sync_batchnorm, load_checkpoint

torch.set_num_threads(1)
IMIT = False
LR = 1e-3  # small steps: float32 summation-order noise stays far below the 1e-5 tolerance


def _worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        from test_engine import make_trainer

        tr = make_trainer(out, steps=5, rank=rank, world_size=world, dropout=0.0, imitation=IMIT, batch=4,
                          evaluate=False, checkpoint_every=5, lr=LR)
        assert any(isinstance(m, CrossProcessBatchNorm2d) for m in tr.model.modules())
        tr.fit()
        # cross-process BN alone: the global-batch statistics equal one BatchNorm over both halves
        torch.manual_seed(1)
        x = torch.randn(4, 3, 5, 5)
        bn = CrossProcessBatchNorm2d(3).train()
        xi = x[rank * 2:(rank + 1) * 2].clone().requires_grad_(True)
        y = bn(xi)
        (y * torch.arange(75.0).view(1, 3, 5, 5)).sum().backward()
        torch.save({"y": y.detach(), "grad": xi.grad, "rv": bn.running_var}, os.path.join(out, f"bn{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    from test_engine import make_trainer

    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    ddp_out.mkdir()
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'pg'}", str(ddp_out)), nprocs=2, join=True)
    make_trainer(single_out, steps=5, dropout=0.0, imitation=IMIT, batch=4, evaluate=False,
                 checkpoint_every=5, lr=LR).fit()
    a, b = load_checkpoint(ddp_out / "last.pt"), load_checkpoint(single_out / "last.pt")
    assert a["step"] == b["step"] == 5 and a["world_size"] == 2
    # within 1e-5, relative for large buffers (BN running_var of un-normalised activations is ~1e3)
    worst, worst_key = max(((((a["model"][k].double() - v.double()).abs() / v.double().abs().clamp(min=1.0)).max().item(), k)
                            for k, v in b["model"].items() if v.is_floating_point() and "running" not in k))
    print("max |w_ddp - w_single| / max(1, |w_single|) after 5 steps:", worst, worst_key)
    assert worst < 1e-5, (worst, worst_key)
    # BN running stats: same statistics, summed in another order (float32 noise on tiny variances)
    for k, v in b["model"].items():
        if "running" in k:
            assert torch.allclose(a["model"][k], v, rtol=1e-3, atol=1e-3), k
    moved = max((v.double() - load_checkpoint(single_out / "last.pt")["model"][k].double()).abs().max().item()
                for k, v in b["model"].items() if v.is_floating_point())
    assert moved == 0.0
    for k, v in (b["imitation"] or {}).items():
        assert torch.allclose(a["imitation"][k], v, atol=1e-5), k

    # the BN check written by both ranks
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    ref = torch.nn.BatchNorm2d(3).train()
    y = ref(x)
    (y * torch.arange(75.0).view(1, 3, 5, 5)).sum().backward()
    for r in range(2):
        got = torch.load(ddp_out / f"bn{r}.pt", weights_only=True)
        assert torch.allclose(got["y"], y[r * 2:(r + 1) * 2].detach(), atol=1e-5)
        assert torch.allclose(got["grad"], x.grad[r * 2:(r + 1) * 2], atol=1e-4)
        assert torch.allclose(got["rv"], ref.running_var, atol=1e-6)


def test_cross_process_bn_is_plain_bn_in_one_process():
    bn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    conv = convert_sync_batchnorm(bn, "cpu")
    assert isinstance(conv[1], CrossProcessBatchNorm2d)
    x = torch.randn(2, 3, 4, 4)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    ref.load_state_dict(conv.state_dict())
    assert torch.allclose(conv(x), ref(x), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="SyncBatchNorm conversion is for CUDA")
def test_cuda_uses_syncbn():
    m = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(2)), "cuda")
    assert isinstance(m[0], torch.nn.SyncBatchNorm)
