"""Scale-out helpers: cross-process batch norm, global counts, unwrapping DDP.

``nn.SyncBatchNorm`` only runs on CUDA; on CPU (gloo) :class:`CrossProcessBatchNorm2d` does the
same thing the seed's cross-GPU BN did: all-reduce the per-channel sum, sum of squares and count,
normalise with the global statistics. Its backward all-reduces the per-channel sums of ``dy`` and
``dy * (x - mean)``, so input gradients flow through the global mean and variance.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["CrossProcessBatchNorm2d", "convert_sync_batchnorm", "is_dist", "all_reduce_sum", "all_reduce_sum_grad", "unwrap",
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


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward sums the gradients too (every process's output depends
    on every process's input), for statistics a loss computes over the global batch."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # noqa: D102
        g = g.clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g


def all_reduce_sum_grad(x: Tensor) -> Tensor:
    """Differentiable :func:`all_reduce_sum` (identity in one process)."""
    return _AllReduceSum.apply(x) if is_dist() else x


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

    The forward and backward follow the arithmetic of PyTorch's CPU batch norm kernel (per-channel
    sums accumulated in float64, output ``x * alpha + beta``, the closed-form input gradient), so W
    processes round like one process with the global batch. Training through many such layers
    amplifies rounding differences by orders of magnitude in nearly-cancelling weight gradients
    (BN scales and shifts feeding another BN): autograd through a float32 re-derivation made
    2 processes drift ~1e-2 (relative) from 1 process in those gradients.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_dist()):
            return super().forward(x)
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        weight = self.weight if self.affine else None
        bias = self.bias if self.affine else None
        y, mean, var, count = _GlobalBatchNorm.apply(x.to(cdt), weight, bias, self.eps)
        n = float(count)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / max(n - 1.0, 1.0))  # float64, Bessel over the global count
                self.running_mean.copy_((mean * m + self.running_mean.double() * (1 - m)).to(self.running_mean.dtype))
                self.running_var.copy_((unbiased * m + self.running_var.double() * (1 - m)).to(self.running_var.dtype))
        return y.to(x.dtype)


def _bcast(v: Tensor) -> Tensor:
    return v[None, :, None, None]


class _GlobalBatchNorm(torch.autograd.Function):
    """Batch norm over the global batch; returns ``(y, mean f64, biased var f64, global count)``.

    The gradients of ``weight``/``bias`` are this process's share (DDP sums them over processes);
    the input gradient uses the global sums of ``dy`` and ``dy * (x - mean)``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):  # noqa: D102
        c = x.shape[1]
        dims = (0, 2, 3)
        first = torch.cat([x.sum(dims, dtype=torch.float64),
                           torch.full((1,), float(x.numel() // c), dtype=torch.float64, device=x.device)])
        dist.all_reduce(first, op=dist.ReduceOp.SUM)
        n = float(first[c])
        mean64 = first[:c] / n
        mean = mean64.to(x.dtype)
        centred = x - _bcast(mean)
        var_sum = (centred * centred).sum(dims, dtype=torch.float64)
        dist.all_reduce(var_sum, op=dist.ReduceOp.SUM)
        var64 = var_sum / n
        invstd = torch.rsqrt(var64 + eps).to(x.dtype)
        alpha = invstd if weight is None else invstd * weight.to(x.dtype)
        beta = -mean * alpha if bias is None else bias.to(x.dtype) - mean * alpha
        y = x * _bcast(alpha) + _bcast(beta)
        ctx.save_for_backward(x, mean, invstd, weight)
        ctx.n = n
        ctx.bias_dtype = bias.dtype if bias is not None else x.dtype
        count = first[c:]
        ctx.mark_non_differentiable(mean64, var64, count)
        return y, mean64, var64, count

    @staticmethod
    def backward(ctx, dy: Tensor, *_):  # noqa: D102
        x, mean, invstd, weight = ctx.saved_tensors
        bias_dtype = ctx.bias_dtype
        c = x.shape[1]
        dims = (0, 2, 3)
        dy = dy.to(x.dtype)
        centred = x - _bcast(mean)
        local = torch.cat([dy.sum(dims, dtype=torch.float64), (centred * dy).sum(dims, dtype=torch.float64)])
        glob = local.clone()
        dist.all_reduce(glob, op=dist.ReduceOp.SUM)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_mean = (glob[:c] / ctx.n).to(x.dtype)
            k = (glob[c:] / ctx.n).to(x.dtype) * invstd * invstd
            scale = invstd if weight is None else invstd * weight.to(x.dtype)
            grad_x = (dy - _bcast(grad_mean) - centred * _bcast(k)) * _bcast(scale)
        if weight is not None and ctx.needs_input_grad[1]:
            grad_w = (local[c:].to(x.dtype) * invstd).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = local[:c].to(bias_dtype)
        return grad_x, grad_w, grad_b, None


def convert_sync_batchnorm(model: nn.Module, device: str | torch.device) -> nn.Module:
    """Make every BatchNorm compute global-batch statistics: SyncBatchNorm on CUDA, ours elsewhere."""
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CrossProcessBatchNorm2d):
        out = CrossProcessBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats, device="meta")
        # reuse the module's own parameters and buffers: keeps their dtype (a float64 model stayed
        # float32 here once, so 2 processes rounded BN in float32), device and requires_grad
        for name, p in module.named_parameters(recurse=False):
            setattr(out, name, p)
        for name, b in module.named_buffers(recurse=False):
            setattr(out, name, b)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
