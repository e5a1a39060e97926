"""A shuffle-aware torch-pruning dependency graph for ShuffleNet v1 (grouped 1x1 convs + channel shuffle).

Stock DepGraph (torch-pruning 1.6.1) gets two things wrong on ShuffleNet v1:

* the channel shuffle (``view N,g,C/g -> transpose -> flatten``) is traced as a reshape plus an
  element-wise op, i.e. as the identity, so pruning channel ``i`` before the shuffle prunes channel
  ``i`` after it, which is a different channel;
* a grouped conv's input channels are pruned with ``keep[:len(keep) // groups]``, which is only right
  when every group drops the same *local* indices.

:class:`ShuffleDependencyGraph` fixes both without masks: a ``ChannelShuffle`` module is a customized
node whose dependency edges carry the shuffle permutation (index mapping, recomputed from the live
channel count) and :class:`GroupedConvPruner` cuts each group of a grouped conv separately and
refuses an unbalanced cut. Which index sets are *valid* (whole shuffle tuples, equal counts per conv
group) is described by :func:`group_constraints`; choosing them is :mod:`compressdet.prune.algorithm`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers
from torch_pruning.pruner import function

from ..errors import UserError

__all__ = ["PruningError", "ShufflePruner", "GroupedConvPruner", "ShuffleDependencyGraph",
           "GroupConstraints", "group_constraints", "is_grouped_conv", "is_depthwise_conv", "shuffle_types"]


class PruningError(UserError):
    """A pruning request that would break the network (unbalanced groups, split shuffle tuple...)."""


def shuffle_types() -> tuple[type, ...]:
    """Module classes treated as a channel shuffle (have ``.groups`` and permute channels)."""
    from ..models.shuffledet import ChannelShuffle

    return (ChannelShuffle,)


def is_depthwise_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def is_grouped_conv(m: nn.Module) -> bool:
    """A conv with 1 < groups that is not depthwise (the g=3 1x1 convs of ShuffleNet)."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and not is_depthwise_conv(m)


def _keep(n: int, idxs: Iterable[int]) -> list[int]:
    drop = set(int(i) for i in idxs)
    return [i for i in range(n) if i not in drop]


def _select(p: torch.Tensor, keep: list[int] | torch.Tensor, dim: int) -> nn.Parameter:
    keep_t = torch.as_tensor(keep, dtype=torch.long, device=p.device)
    out = nn.Parameter(torch.index_select(p.data, dim, keep_t).contiguous(), requires_grad=p.requires_grad)
    if p.grad is not None:
        out.grad = torch.index_select(p.grad, dim, keep_t).contiguous()
    return out


def _per_group(idxs: Sequence[int], channels: int, groups: int, what: str, layer: nn.Module) -> list[list[int]]:
    """Split channel indices by conv group (local indices); raise unless every group loses as many."""
    size = channels // groups
    local: list[list[int]] = [[] for _ in range(groups)]
    for i in sorted(set(int(i) for i in idxs)):
        local[i // size].append(i % size)
    counts = [len(x) for x in local]
    if len(set(counts)) != 1:
        raise PruningError(f"pruning {what} channels of {layer}: each of its {groups} groups must lose the same "
                           f"number of channels, got {counts}")
    if counts[0] >= size:
        raise PruningError(f"pruning {what} channels of {layer} would empty its groups ({counts[0]} of {size})")
    return local


class GroupedConvPruner(function.ConvPruner):
    """Prunes a grouped (non-depthwise) conv group by group, so group membership is preserved."""

    def prune_out_channels(self, layer: nn.Conv2d, idxs: Sequence[int]) -> nn.Conv2d:
        _per_group(idxs, layer.out_channels, layer.groups, "output", layer)
        keep = _keep(layer.out_channels, idxs)
        layer.weight = _select(layer.weight, keep, 0)
        if layer.bias is not None:
            layer.bias = _select(layer.bias, keep, 0)
        layer.out_channels = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Conv2d, idxs: Sequence[int]) -> nn.Conv2d:
        g = layer.groups
        local = _per_group(idxs, layer.in_channels, g, "input", layer)
        size_in, size_out = layer.in_channels // g, layer.out_channels // g
        w = layer.weight
        # weight [Cout, Cin/g, k, k]: rows of group j only see that group's inputs, so each group keeps
        # its own columns; gather them as flat (row, col) pairs
        rows = torch.arange(layer.out_channels).view(g, size_out, 1)
        cols = torch.stack([torch.as_tensor(_keep(size_in, loc), dtype=torch.long) for loc in local])  # [g, k]
        cols = cols.view(g, 1, -1).expand(g, size_out, cols.shape[1])
        rows = rows.expand_as(cols)
        new = nn.Parameter(w.data[rows.reshape(-1), cols.reshape(-1)].view(layer.out_channels, -1, *w.shape[2:]).contiguous(),
                           requires_grad=w.requires_grad)
        if w.grad is not None:
            new.grad = w.grad[rows.reshape(-1), cols.reshape(-1)].view_as(new).contiguous()
        layer.weight = new
        layer.in_channels -= len(set(idxs))
        return layer


class ShufflePruner(function.BasePruningFunc):
    """Customized pruner for a channel-shuffle module (no weights; it only tracks the channel count).

    Indices it receives are in the shuffle's *output* order (the index mapping on its edges converts);
    in = out makes the shuffle pass the pruning through (intra-layer dependency).
    """

    def __init__(self) -> None:
        super().__init__(pruning_dim=1)
        self.channels: dict[nn.Module, int] = {}

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        g = layer.groups
        idxs = sorted(set(int(i) for i in idxs))
        tuples: dict[int, int] = {}
        for i in idxs:
            tuples[i // g] = tuples.get(i // g, 0) + 1
        if any(n != g for n in tuples.values()):
            raise PruningError(f"pruning a channel shuffle (groups={g}) needs whole tuples of {g} shuffled channels "
                               f"(k*{g}..k*{g}+{g - 1}), got {idxs}")
        self.channels[layer] = self.channels[layer] - len(idxs)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return self.channels.get(layer)

    get_in_channels = get_out_channels


class _ShuffleIndexMapping:
    """Maps indices across a shuffle: forward (input -> output order) or back, for the live channel count."""

    def __init__(self, pruner: ShufflePruner, layer: nn.Module, reverse: bool) -> None:
        self.pruner, self.layer, self.reverse = pruner, layer, reverse

    def __call__(self, idxs: list[Any]) -> list[Any]:
        g = self.layer.groups
        per = self.pruner.channels[self.layer] // g
        out = []
        for i in idxs:
            j = i.idx
            new = (j % g) * per + j // g if self.reverse else (j % per) * g + j // per
            out.append(_helpers._HybridIndex(idx=new, root_idx=i.root_idx))
        return out


class ShuffleDependencyGraph(tp.DependencyGraph):
    """DepGraph that understands channel shuffles and grouped convs (see module docstring).

    Use it like ``tp.DependencyGraph``: ``build_dependency(model, example_inputs, output_transform=...)``,
    then ``get_all_groups`` / ``get_pruning_group`` / ``group.prune()``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.grouped_conv_pruner = GroupedConvPruner()
        self.shuffle_pruner = ShufflePruner()
        self._refresh_fn_cache()

    def _refresh_fn_cache(self) -> None:
        self._in_channel_pruning_fn.add(self.grouped_conv_pruner.prune_in_channels)
        self._out_channel_pruning_fn.add(self.grouped_conv_pruner.prune_out_channels)

    def register_customized_layer(self, layer_type_or_instance: Any, layer_pruner: function.BasePruningFunc) -> None:
        super().register_customized_layer(layer_type_or_instance, layer_pruner)
        self._refresh_fn_cache()

    def get_pruner_of_module(self, module: nn.Module) -> Any:
        if is_grouped_conv(module):
            return self.grouped_conv_pruner
        return super().get_pruner_of_module(module)

    def build_dependency(self, model: nn.Module, example_inputs: Any, forward_fn: Callable | None = None,
                         output_transform: Callable | None = None, unwrapped_parameters: Any = None,
                         customized_pruners: dict | None = None, ignored_layers: list | None = None,
                         ignored_params: list | None = None, verbose: bool = False) -> "ShuffleDependencyGraph":
        types = shuffle_types()
        customized = dict(customized_pruners or {})
        for t in types:
            customized.setdefault(t, self.shuffle_pruner)

        def record(mod: nn.Module, args: tuple) -> None:
            self.shuffle_pruner.channels[mod] = int(args[0].shape[1])

        hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, types)]
        try:
            with torch.enable_grad():
                super().build_dependency(model, example_inputs, forward_fn=forward_fn, output_transform=output_transform,
                                         unwrapped_parameters=unwrapped_parameters, customized_pruners=customized,
                                         ignored_layers=ignored_layers, ignored_params=ignored_params, verbose=verbose)
        finally:
            for h in hooks:
                h.remove()
        self._install_shuffle_mappings(types)
        return self

    def _install_shuffle_mappings(self, types: tuple[type, ...]) -> None:
        # index convention: indices living at a node are in that node's output order (as for concat)
        for module, node in self.module2node.items():
            if not isinstance(module, types):
                continue
            for in_node in node.inputs:
                for dep in in_node.dependencies:
                    if dep.target is node:
                        dep.index_mapping[1] = _ShuffleIndexMapping(self.shuffle_pruner, module, reverse=False)
                for dep in node.dependencies:
                    if dep.target is in_node:
                        dep.index_mapping[1] = _ShuffleIndexMapping(self.shuffle_pruner, module, reverse=True)

    def module_name(self, module: nn.Module) -> str:
        return self._module2name[module]

    def out_pruning_fn(self, module: nn.Module) -> Callable:
        """The output-channel pruning function DepGraph uses for ``module`` (the group root)."""
        if is_depthwise_conv(module):
            return function.prune_depthwise_conv_out_channels
        return self.get_pruner_of_module(module).prune_out_channels


# ------------------------------------------------------------------------------------------------
# what a valid cut of a group looks like


@dataclass
class GroupConstraints:
    """Valid ways to cut one DepGraph group, in the root layer's channel indices.

    Attributes:
        channels: root channel count.
        tuples: atomic sets of root channels that go together (a shuffle tuple; else singletons).
        partitions: per grouped conv (in or out side) the conv-group class of every root channel
            (-1: the channel does not reach that conv); a valid cut removes the same number of
            channels from each of the conv's ``classes[p]`` groups.
        classes: group count of each partition's conv.
        names: what each partition is (for messages).
    """

    channels: int
    tuples: list[list[int]]
    partitions: list[list[int]] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def signature(self, t: Sequence[int]) -> tuple[tuple[int, ...], ...]:
        """Per partition, how many channels of tuple ``t`` fall in each conv group."""
        sig = []
        for part, n in zip(self.partitions, self.classes):
            counts = [0] * n
            for r in t:
                if part[r] >= 0:
                    counts[part[r]] += 1
            sig.append(tuple(counts))
        return tuple(sig)

    def is_valid(self, removed: Iterable[int]) -> bool:
        """Whether removing these root channels keeps tuples whole and every grouped conv balanced."""
        removed = set(removed)
        for t in self.tuples:
            if sum(r in removed for r in t) not in (0, len(t)):
                return False
        for part, n in zip(self.partitions, self.classes):
            counts = [0] * n
            for r, c in enumerate(part):
                if c >= 0 and r in removed:
                    counts[c] += 1
            if len(set(counts)) != 1:
                return False
        return True


def group_constraints(DG: ShuffleDependencyGraph, group: Any) -> GroupConstraints:
    """Read the constraints of ``group`` (a full-index group from ``get_all_groups``)."""
    root_ch = len(group[0].root_idxs)
    parent = list(range(root_ch))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    partitions: list[list[int]] = []
    classes: list[int] = []
    names: list[str] = []
    types = shuffle_types()
    for item in group:
        dep, idxs, roots = item.dep, item.idxs, item.root_idxs
        layer = dep.target.module
        if isinstance(layer, types):
            by_tuple: dict[int, list[int]] = {}
            for i, r in zip(idxs, roots):
                if r is not None:
                    by_tuple.setdefault(i // layer.groups, []).append(r)
            for rs in by_tuple.values():
                for r in rs[1:]:
                    parent[find(r)] = find(rs[0])
        elif is_grouped_conv(layer):
            out = DG.is_out_channel_pruning_fn(dep.handler)
            size = (layer.out_channels if out else layer.in_channels) // layer.groups
            part = [-1] * root_ch
            for i, r in zip(idxs, roots):
                if r is not None:
                    part[r] = i // size
            partitions.append(part)
            classes.append(layer.groups)
            names.append(f"{DG.module_name(layer)}.{'out' if out else 'in'}")
    tuples: dict[int, list[int]] = {}
    for r in range(root_ch):
        tuples.setdefault(find(r), []).append(r)
    return GroupConstraints(root_ch, sorted(tuples.values()), partitions, classes, names)
