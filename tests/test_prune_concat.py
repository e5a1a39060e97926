"""Concat with a pooled shortcut + residual adds: the shared stream is cut consistently in every stage."""

from __future__ import annotations

import torch
from _prune_models import TinyShuffleNet, randomize_bn, silence

from compressdet.prune import ShuffleDependencyGraph, feasible_cuts, group_constraints

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _stream_group(DG, model):
    # the stage-2 stream (72 ch: stage-1 stream via avgpool ++ the down unit's branch) is one group
    for g in DG.get_all_groups(ignored_layers=[model.out]):
        mods = {it.dep.target.module for it in g}
        if model.stem[0] in mods:
            return g
    raise AssertionError("no group holds the stem")


def test_stream_group_spans_concat_and_residual():
    model = TinyShuffleNet().eval()
    DG = ShuffleDependencyGraph().build_dependency(model, X)
    g = _stream_group(DG, model)
    mods = {it.dep.target.module for it in g}
    assert {model.stage1[0].conv2, model.stage1[1].conv2, model.stage2[0].conv2, model.stage2[2].conv1} <= mods
    cons = group_constraints(DG, g)
    assert any(n.endswith("stage1.1.conv1.in") for n in cons.names)


def test_pruning_silenced_stream_channels_keeps_output():
    torch.manual_seed(0)
    model = TinyShuffleNet().eval()
    randomize_bn(model)
    DG = ShuffleDependencyGraph().build_dependency(model, X)
    g = _stream_group(DG, model)
    cons = group_constraints(DG, g)
    cuts = feasible_cuts(cons, torch.rand(cons.channels), max_remove=cons.channels // 2)
    n = max(cuts)
    assert n > 0 and cons.is_valid(cuts[n][1])
    root = g[0].dep.target.module
    sub = DG.get_pruning_group(root, DG.out_pruning_fn(root), cuts[n][1])
    silence(DG, sub)
    ref = model(X)
    widths = (model.stage1[1].bn3.num_features, model.stage2[2].conv1.in_channels)
    sub.prune()
    assert model.stage2[2].conv1.in_channels < widths[1]
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1:
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0
    torch.testing.assert_close(model(X), ref, atol=1e-5, rtol=1e-4)


def test_stock_concat_mapping_still_applies():
    """The stem's channels sit at offset 0 of both streams; a down-unit branch at an offset after the pool."""
    model = TinyShuffleNet().eval()
    DG = ShuffleDependencyGraph().build_dependency(model, X)
    g = DG.get_pruning_group(model.stage1[0].conv2, DG.out_pruning_fn(model.stage1[0].conv2), [0])
    in_idx = [it.idxs for it in g if it.dep.target.module is model.stage1[1].conv1]
    assert in_idx == [[12]]  # 12-channel stem first, then the branch
