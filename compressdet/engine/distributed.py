"""Scale-out helpers: cross-process batch norm, global counts, unwrapping DDP.

``nn.SyncBatchNorm`` only runs on CUDA; on CPU (gloo) :class:`CrossProcessBatchNorm2d` does the
same thing the seed's cross-GPU BN did: all-reduce the per-channel sum, sum of squares and count,
normalise with the global statistics. The all-reduce is an autograd function (the backward of a
global sum all-reduces the gradients), so gradients flow through the global mean and variance.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["CrossProcessBatchNorm2d", "convert_sync_batchnorm", "is_dist", "all_reduce_sum", "unwrap",
           "all_gather_object"]


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over processes (no gradient: used for counts and normalisers)."""
    if not is_dist():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def all_gather_object(obj: object) -> list:
    if not is_dist():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class CrossProcessBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the whole global batch (any backend, CPU too).

    Identical to ``nn.BatchNorm2d`` with one process or in eval mode. Running variance is the
    unbiased global variance, as in ``nn.SyncBatchNorm``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_dist()):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        count = torch.full((1,), float(x.numel() // c), device=x.device, dtype=torch.float32)
        first = _AllReduceSum.apply(torch.cat([xf.sum((0, 2, 3)), count]))
        n = first[c]
        mean = first[:c] / n
        centred = xf - mean[None, :, None, None]
        # two passes (mean, then centred squares) keep float32 exact where E[x^2]-E[x]^2 would not
        var = _AllReduceSum.apply((centred * centred).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (n / (n - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


class _AllReduceSum(torch.autograd.Function):
    """Differentiable all-reduce: the gradient of a global sum w.r.t. a local term is the global
    sum of the upstream gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g


def convert_sync_batchnorm(model: nn.Module, device: str | torch.device) -> nn.Module:
    """Make every BatchNorm compute global-batch statistics: SyncBatchNorm on CUDA, ours elsewhere."""
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CrossProcessBatchNorm2d):
        out = CrossProcessBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
        if module.affine:
            out.weight.requires_grad_(module.weight.requires_grad)
            out.bias.requires_grad_(module.bias.requires_grad)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
