"""Grouped 1x1 convs (g=3): per-group input cuts, balance checks, divisibility after whole-model pruning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressdet.models import build_model
from compressdet.prune import ChannelPruner, PruningError, conv_macs, get_importance
from compressdet.prune.graph import GroupedConvPruner, is_grouped_conv


def test_grouped_input_cut_drops_each_groups_own_columns():
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 6, 1, groups=3, bias=False)
    x = torch.randn(1, 12, 4, 4)
    drop = [1, 6, 11]  # local index 1, 2, 3 of groups 0, 1, 2: different columns per group
    ref = conv(x.index_fill(1, torch.tensor(drop), 0.0))
    GroupedConvPruner().prune_in_channels(conv, drop)
    keep = [i for i in range(12) if i not in drop]
    assert conv.in_channels == 9 and conv.weight.shape == (6, 3, 1, 1)
    torch.testing.assert_close(conv(x[:, keep]), ref)


def test_unbalanced_grouped_cut_is_refused():
    conv = nn.Conv2d(12, 6, 1, groups=3, bias=False)
    with pytest.raises(PruningError, match="same number"):
        GroupedConvPruner().prune_in_channels(conv, [0, 1, 4])
    with pytest.raises(PruningError, match="same number"):
        GroupedConvPruner().prune_out_channels(conv, [0])


@pytest.mark.parametrize("importance", ["group_magnitude", "bn_scale", "taylor"])
def test_whole_model_keeps_group_divisibility(importance):
    torch.manual_seed(0)
    model = build_model("shuffledet_0.25x", image_size=(64, 192))
    x = torch.randn(1, 3, 64, 192)
    pruner = ChannelPruner(model, x, get_importance(importance), pruning_ratio=0.4, ignored_layers=[model.head.conv])
    pruner.step(loss_fn=lambda m: m(x).pow(2).mean())
    grouped = [m for m in model.modules() if is_grouped_conv(m)]
    assert grouped
    for m in grouped:
        assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0
        assert m.weight.shape[1] == m.in_channels // m.groups
    assert model.head.conv.out_channels == 72
    assert model(x).shape == (1, 72, 4, 12)
    assert conv_macs(model, x) < pruner.base_macs
