"""Tiny stand-ins for ShuffleNet v1's topology quirks, shared by the tests/test_prune_*.py files."""

from __future__ import annotations

import torch
from torch import nn

from compressdet.models.shuffledet import ShuffleUnit
from compressdet.prune.graph import is_depthwise_conv


class TinyShuffleNet(nn.Module):
    """Bottlenecks 18 / 15 / 18 / 18 / 30 cover pure and straddling shuffle tuples.

    stem -> down unit (avgpool ++ branch, dense conv1) -> residual unit -> down unit -> residual unit -> plain unit -> conv."""

    def __init__(self, stem: int = 12, widths: tuple[int, int] = (36, 72)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU())
        self.stage1 = nn.Sequential(ShuffleUnit(stem, widths[0], 18, mode="down", dense_conv1=True),
                                    ShuffleUnit(widths[0], widths[0], 15, mode="residual"))
        self.stage2 = nn.Sequential(ShuffleUnit(widths[0], widths[1], 18, mode="down"),
                                    ShuffleUnit(widths[1], widths[1], 18, mode="residual"),
                                    ShuffleUnit(widths[1], 48, 30, mode="plain"))
        self.out = nn.Conv2d(48, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.stage2(self.stage1(self.stem(x))))


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics so that zeroed channels are the only thing that makes outputs match."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5


@torch.no_grad()
def silence(DG, group) -> None:
    """Zero what every channel of ``group`` produces (conv rows, BN gamma/beta): pruning it is then exact."""
    for item in group:
        layer, idxs = item.dep.target.module, item.idxs
        if isinstance(layer, nn.BatchNorm2d):
            layer.weight[idxs] = 0
            layer.bias[idxs] = 0
        elif isinstance(layer, nn.Conv2d) and (is_depthwise_conv(layer) or DG.is_out_channel_pruning_fn(item.dep.handler)):
            layer.weight[idxs] = 0
            if layer.bias is not None:
                layer.bias[idxs] = 0
