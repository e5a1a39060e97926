"""DDP on CPU (gloo): 2 processes with cross-process BN == 1 process with the same global batch.

Two configurations, one spawn:

* ``f64-imitation``: imitation on, float64, lr 0.01. Exact equivalence of the maths (normalisers,
  adaptation-layer gradients, BN statistics and their backward, clipping after the all-reduce):
  the runs agree to ~1e-14, so 1e-5 has ample margin. In float32 imitation's large, clipped
  gradients amplify any summation-order difference: one process fed the same batch in another
  order already ends ~6e-6 from itself after 5 steps, so a float32 imitation run cannot be held
  to 1e-5 by any implementation and is not asserted.
* ``f32-baseline``: the production dtype without imitation (well-conditioned), lr 1e-3.
* ``f64-pkd`` / ``f64-crosskd``: the other registered distillers (PKD's channel statistics and
  CrossKD's normalisers are global-batch sums under DDP), float64 like the imitation case.
* ``f64-fcos-fgfi-pkd`` / ``f64-retinanet-crosskd``: the torchvision families (their torchvision
  losses, BN backbones, GroupNorm heads, per-level distillation).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from compressdet.engine import CrossProcessBatchNorm2d, convert_sync_batchnorm, load_checkpoint
from compressdet.recipe import DistillConfig

torch.set_num_threads(1)
TOL = 1e-5
CASES = {"f64-imitation": {"imitation": True, "dtype": torch.float64, "lr": 0.01},
         "f32-baseline": {"imitation": False, "dtype": torch.float32, "lr": 1e-3},
         # the distiller registry's other methods: global-batch statistics and normalisers
         "f64-pkd": {"imitation": [DistillConfig(method="pkd", weight=2.0)], "dtype": torch.float64, "lr": 0.01},
         "f64-crosskd": {"imitation": [DistillConfig(method="crosskd", weight=1.0)], "dtype": torch.float64,
                         "lr": 0.01},
         # the torchvision families (detector contract): their own losses, per-level distillation
         "f64-fcos-fgfi-pkd": {"imitation": [DistillConfig(method="fgfi"), DistillConfig(method="pkd")],
                               "dtype": torch.float64, "lr": 0.01, "arch": "fcos_mnv3_small",
                               "teacher_arch": "fcos_mnv3_small"},
         "f64-retinanet-crosskd": {"imitation": [DistillConfig(method="crosskd")], "dtype": torch.float64,
                                   "lr": 0.01, "arch": "retinanet_mnv3_small", "teacher_arch": "retinanet_mnv3_small"}}


def _trainer(out, **kw):
    from test_engine import make_trainer

    return make_trainer(out, steps=5, dropout=0.0, batch=4, evaluate=False, checkpoint_every=5, **kw)


def _worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        for name, cfg in CASES.items():
            tr = _trainer(os.path.join(out, name), rank=rank, world_size=world, **cfg)
            assert any(isinstance(m, CrossProcessBatchNorm2d) for m in tr.model.modules())
            assert all(p.dtype == cfg["dtype"] for p in tr.ddp.parameters())
            tr.fit()
        # cross-process BN alone: the global-batch statistics equal one BatchNorm over both halves
        torch.manual_seed(1)
        x = torch.randn(4, 3, 5, 5)
        bn = CrossProcessBatchNorm2d(3).train()
        xi = x[rank * 2:(rank + 1) * 2].clone().requires_grad_(True)
        y = bn(xi)
        (y * torch.arange(75.0).view(1, 3, 5, 5)).sum().backward()
        torch.save({"y": y.detach(), "grad": xi.grad, "rv": bn.running_var, "gw": bn.weight.grad, "gb": bn.bias.grad},
                   os.path.join(out, f"bn{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _rel_diff(a: dict, b: dict, running: bool) -> tuple[float, str]:
    """max |a - b| / max(1, |b|) over float entries (relative for large BN running variances)."""
    return max(((((a[k].double() - v.double()).abs() / v.double().abs().clamp(min=1.0)).max().item(), k)
                for k, v in b.items() if v.is_floating_point() and (("running" in k) == running)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    ddp_out = tmp / "ddp"
    ddp_out.mkdir()
    mp.spawn(_worker, args=(2, f"file://{tmp / 'pg'}", str(ddp_out)), nprocs=2, join=True)
    single = {}
    for name, cfg in CASES.items():
        tr = _trainer(tmp / "single" / name, **cfg)
        single[name] = {k: v.clone() for k, v in tr.model.state_dict().items()}  # initial weights
        tr.fit()
    return ddp_out, tmp / "single", single


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one(runs, case):
    ddp_out, single_out, init = runs
    a, b = load_checkpoint(ddp_out / case / "last.pt"), load_checkpoint(single_out / case / "last.pt")
    assert a["step"] == b["step"] == 5 and a["world_size"] == 2
    worst, key = _rel_diff(a["model"], b["model"], running=False)
    worst_rs, key_rs = _rel_diff(a["model"], b["model"], running=True)
    print(f"{case}: max rel |w_ddp - w_single| after 5 steps {worst:.2e} ({key}); running stats {worst_rs:.2e} ({key_rs})")
    assert worst < TOL, (worst, key)
    assert worst_rs < TOL, (worst_rs, key_rs)
    moved, _ = _rel_diff(b["model"], init[case], running=False)
    assert moved > 100 * TOL  # training did move the weights: the agreement is not trivial
    if CASES[case]["imitation"]:
        assert a["imitation"] is not None and b["imitation"] is not None
        if not b["imitation"]:  # no trainable distiller parameters (crosskd between equal widths)
            return
        worst_ad, key_ad = _rel_diff(a["imitation"], b["imitation"], running=False)
        assert worst_ad < TOL, (worst_ad, key_ad)


def test_cross_process_bn_matches_bn(runs):
    """The BN check written by both ranks: outputs, input grads, summed weight grads, running var."""
    ddp_out = runs[0]
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    ref = torch.nn.BatchNorm2d(3).train()
    y = ref(x)
    (y * torch.arange(75.0).view(1, 3, 5, 5)).sum().backward()
    got = [torch.load(ddp_out / f"bn{r}.pt", weights_only=True) for r in range(2)]
    for r in range(2):
        assert torch.allclose(got[r]["y"], y[r * 2:(r + 1) * 2].detach(), atol=1e-5)
        assert torch.allclose(got[r]["grad"], x.grad[r * 2:(r + 1) * 2], atol=1e-4)
        assert torch.allclose(got[r]["rv"], ref.running_var, rtol=1e-6, atol=1e-7)
    assert torch.allclose(got[0]["gw"] + got[1]["gw"], ref.weight.grad, rtol=1e-5, atol=1e-4)
    assert torch.allclose(got[0]["gb"] + got[1]["gb"], ref.bias.grad, rtol=1e-5, atol=1e-4)


def test_convert_keeps_dtype_and_parameters():
    bn = torch.nn.BatchNorm2d(4).double()
    conv = convert_sync_batchnorm(torch.nn.Sequential(bn), "cpu")[0]
    assert isinstance(conv, CrossProcessBatchNorm2d)
    assert conv.weight is bn.weight and conv.running_var.dtype == torch.float64


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
