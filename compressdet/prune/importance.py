"""Channel importance criteria: a group in, one score per root channel out (Torch-Pruning's contract).

Torch-pruning's own criteria key on its stock pruning functions and score a grouped conv's input
channels by repeating one group's column norms, which is wrong for the g=3 convs of ShuffleNet; these
criteria read every layer of a :class:`~compressdet.prune.graph.ShuffleDependencyGraph` group with the
conv-group layout in mind. Scores are averaged over the group's layers and divided by their mean,
so groups of different sizes compare on one scale.
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from .graph import PruningError, is_depthwise_conv

__all__ = ["ChannelImportance", "GroupMagnitudeImportance", "BNScaleImportance", "TaylorImportance",
           "IMPORTANCES", "get_importance"]


def _conv_in_channel_sums(w: Tensor, groups: int) -> Tensor:
    """Per input channel, the sum over the weights that read it: ``w`` ``[Cout, Cin/g, k, k]`` -> ``[Cin]``."""
    cout, cin_g = w.shape[:2]
    return w.reshape(groups, cout // groups, cin_g, -1).sum(dim=(1, 3)).reshape(-1)


class ChannelImportance(tp.importance.Importance):
    """Base: subclasses say how a conv / BN layer scores the channels it touches (``None``: skip)."""

    needs_grad = False

    def conv_out(self, layer: nn.Conv2d) -> Tensor | None:  # [Cout]
        return None

    def conv_in(self, layer: nn.Conv2d) -> Tensor | None:  # [Cin]
        return None

    def bn(self, layer: nn.modules.batchnorm._BatchNorm) -> Tensor | None:  # [C]
        return None

    @torch.no_grad()
    def __call__(self, group: Any) -> Tensor:
        """Returns ``Tensor[root channels]`` (float32, >= 0)."""
        DG = group._DG
        n = len(group[0].root_idxs)
        total = torch.zeros(n)
        seen = torch.zeros(n)
        for item in group:
            dep, idxs, roots = item.dep, item.idxs, item.root_idxs
            layer = dep.target.module
            if isinstance(layer, nn.Conv2d):
                if is_depthwise_conv(layer) or DG.is_out_channel_pruning_fn(dep.handler):
                    s = self.conv_out(layer)
                else:
                    s = self.conv_in(layer)
            elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
                s = self.bn(layer)
            else:
                continue
            if s is None:
                continue
            keep = [k for k, r in enumerate(roots) if r is not None]
            r = torch.as_tensor([roots[k] for k in keep], dtype=torch.long)
            v = s.detach().float().cpu()[torch.as_tensor([idxs[k] for k in keep], dtype=torch.long)]
            total.scatter_add_(0, r, v)
            seen.scatter_add_(0, r, torch.ones_like(v))
        if not bool((seen > 0).any()):
            raise PruningError(f"{type(self).__name__}: the group rooted at {group[0].dep.target.name} has no layer "
                               "this criterion can score")
        score = total / seen.clamp(min=1)
        return score / score.mean().clamp(min=1e-12)


class GroupMagnitudeImportance(ChannelImportance):
    """Group L2 magnitude: the squared weights of every conv/BN parameter a channel owns."""

    def conv_out(self, layer: nn.Conv2d) -> Tensor:
        return layer.weight.pow(2).flatten(1).sum(1)

    def conv_in(self, layer: nn.Conv2d) -> Tensor:
        return _conv_in_channel_sums(layer.weight.pow(2), layer.groups)

    def bn(self, layer: nn.modules.batchnorm._BatchNorm) -> Tensor | None:
        return layer.weight.pow(2) if layer.affine else None


class BNScaleImportance(ChannelImportance):
    """Network slimming: |gamma| of the group's batch norms (convs are ignored)."""

    def bn(self, layer: nn.modules.batchnorm._BatchNorm) -> Tensor | None:
        return layer.weight.abs() if layer.affine else None


class TaylorImportance(ChannelImportance):
    """First-order Taylor: |sum of w * dL/dw| over a channel's weights (needs ``.grad`` filled)."""

    needs_grad = True

    @staticmethod
    def _wg(p: nn.Parameter) -> Tensor:
        if p.grad is None:
            raise PruningError("taylor importance needs gradients: run a loss backward before scoring "
                               "(the prune algorithm does this when given loss_fn)")
        return p * p.grad

    def conv_out(self, layer: nn.Conv2d) -> Tensor:
        return self._wg(layer.weight).flatten(1).sum(1).abs()

    def conv_in(self, layer: nn.Conv2d) -> Tensor:
        return _conv_in_channel_sums(self._wg(layer.weight), layer.groups).abs()

    def bn(self, layer: nn.modules.batchnorm._BatchNorm) -> Tensor | None:
        if not layer.affine:
            return None
        return (self._wg(layer.weight) + self._wg(layer.bias)).abs()


IMPORTANCES: dict[str, type[ChannelImportance]] = {
    "group_magnitude": GroupMagnitudeImportance,
    "bn_scale": BNScaleImportance,
    "taylor": TaylorImportance,
}


def get_importance(name: str) -> ChannelImportance:
    """The criterion named in a recipe (``importance:``)."""
    if name not in IMPORTANCES:
        raise PruningError(f"unknown importance '{name}' (known: {', '.join(IMPORTANCES)})")
    return IMPORTANCES[name]()
