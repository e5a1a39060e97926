"""Channel shuffle: pruning through the shuffle permutation keeps the function (and stock DepGraph does not)."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from _prune_models import TinyShuffleNet, randomize_bn, silence

from compressdet.models.shuffledet import ChannelShuffle, channel_shuffle
from compressdet.prune import PruningError, ShuffleDependencyGraph, feasible_cuts, group_constraints

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _mid_group(DG, unit):
    return DG.get_pruning_group(unit.dwconv, DG.out_pruning_fn(unit.dwconv), list(range(unit.dwconv.out_channels)))


def test_shuffle_tuples_follow_the_permutation():
    model = TinyShuffleNet().eval()
    DG = ShuffleDependencyGraph().build_dependency(model, X)
    cons = group_constraints(DG, _mid_group(DG, model.stage1[1]))
    # bottleneck 15, g=3: after the shuffle channel k*3+j comes from group j, position k
    assert sorted(map(tuple, cons.tuples)) == [(3 * k, 3 * k + 1, 3 * k + 2) for k in range(5)]
    y = torch.arange(15.0).view(1, 15, 1, 1)
    z = channel_shuffle(y, 3).flatten().tolist()
    for t in cons.tuples:  # a tuple is one position k in each of the 3 pre-shuffle groups
        src = sorted(int(z[i]) for i in t)
        assert len({s % 5 for s in src}) == 1 and sorted(s // 5 for s in src) == [0, 1, 2]


@pytest.mark.parametrize("unit_path", ["stage1.0", "stage1.1", "stage2.0", "stage2.2"])
def test_pruning_silenced_mid_channels_keeps_output(unit_path):
    torch.manual_seed(0)
    model = TinyShuffleNet().eval()
    randomize_bn(model)
    unit = model.get_submodule(unit_path)
    DG = ShuffleDependencyGraph().build_dependency(model, X)
    group = _mid_group(DG, unit)
    cons = group_constraints(DG, group)
    cuts = feasible_cuts(cons, torch.rand(cons.channels), max_remove=cons.channels - 3)
    n = max(cuts)
    assert n > 0
    idxs = cuts[n][1]
    assert cons.is_valid(idxs)
    sub = DG.get_pruning_group(unit.dwconv, DG.out_pruning_fn(unit.dwconv), idxs)
    silence(DG, sub)
    ref = model(X)
    sub.prune()
    assert unit.dwconv.out_channels == cons.channels - n
    assert unit.conv1.out_channels % 3 == 0 and unit.conv2.in_channels % 3 == 0
    torch.testing.assert_close(model(X), ref, atol=1e-5, rtol=1e-4)


def test_split_shuffle_tuple_is_refused():
    model = TinyShuffleNet().eval()
    DG = ShuffleDependencyGraph().build_dependency(model, X)
    unit = model.stage1[1]
    with pytest.raises(PruningError):
        DG.get_pruning_group(unit.dwconv, DG.out_pruning_fn(unit.dwconv), [0]).prune()


def test_stock_depgraph_treats_the_shuffle_as_identity():
    """Why graph.py exists: torch-pruning maps channel i before the shuffle to channel i after it."""
    model = TinyShuffleNet().eval()
    DG = tp.DependencyGraph().build_dependency(model, X)
    unit = model.stage1[1]
    group = DG.get_pruning_group(unit.conv1, tp.prune_conv_out_channels, [0, 5, 10])
    dw = [it.idxs for it in group if it.dep.target.module is unit.dwconv]
    assert dw == [[0, 5, 10]]  # the shuffle actually moves them to [0, 1, 2]
    DG2 = ShuffleDependencyGraph().build_dependency(model, X)
    group2 = DG2.get_pruning_group(unit.conv1, DG2.out_pruning_fn(unit.conv1), [0, 5, 10])
    assert [sorted(it.idxs) for it in group2 if it.dep.target.module is unit.dwconv] == [[0, 1, 2]]
    assert any(isinstance(it.dep.target.module, ChannelShuffle) for it in group2)


def test_bottleneck_without_balanced_cut_is_left_alone():
    """Bottleneck 12 (4 per group): every shuffle tuple straddles conv2's groups unevenly, so no valid cut."""
    from compressdet.models.shuffledet import ShuffleUnit

    unit = ShuffleUnit(36, 36, 12, mode="residual").eval()
    x = torch.randn(1, 36, 8, 8)
    DG = ShuffleDependencyGraph().build_dependency(unit, x)
    cons = group_constraints(DG, _mid_group(DG, unit))
    assert sorted(feasible_cuts(cons, torch.rand(12), max_remove=12)) == [0, 12]
