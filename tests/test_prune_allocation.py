"""Latency-aware allocation: MACs target still met, groups stay divisible, zeroed channels prune exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from _prune_models import TinyShuffleNet, randomize_bn, silence
from torch import nn

from compressdet.prune import ChannelPruner, PruningError, ShuffleDependencyGraph, conv_macs, get_importance
from compressdet.prune.cost import latency_proxy

X = torch.randn(1, 3, 32, 64)


def _pruner(model: nn.Module, **kw) -> ChannelPruner:
    return ChannelPruner(model, X, get_importance("group_magnitude"), ignored_layers=[model.out], **kw)


def _check_divisible(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0, m
        if hasattr(m, "shuffle"):
            assert m.conv1.out_channels % m.shuffle.groups == 0, m


def test_latency_allocation_reaches_macs_target_and_keeps_groups_divisible():
    torch.manual_seed(0)
    model = TinyShuffleNet().eval()
    base = conv_macs(model, X)
    pruner = _pruner(model, target_macs=0.6, allocation="latency")
    rec = pruner.step()
    assert rec["allocation"] == "latency" and rec["weights"]
    assert abs(conv_macs(model, X) / base - 0.6) <= 0.05
    _check_divisible(model)
    assert model(X).shape == TinyShuffleNet()(X).shape


@pytest.mark.parametrize("allocation", ["uniform", "latency"])
@pytest.mark.parametrize("target", [0.5, 0.6, 0.75])
def test_macs_target_is_a_budget_not_a_guess(allocation, target):
    """``target_macs`` = "at most": the result lands at or under the target, not just near it."""
    torch.manual_seed(0)
    model = TinyShuffleNet().eval()
    base = conv_macs(model, X)
    _pruner(model, target_macs=target, allocation=allocation).step()
    ratio = conv_macs(model, X) / base
    assert target * 0.95 <= ratio <= target + 1e-9, ratio


def test_latency_allocation_favours_groups_that_save_more_cost_per_mac():
    torch.manual_seed(0)
    model = TinyShuffleNet().eval()
    pruner = _pruner(model, target_macs=0.6, allocation="latency", weight_range=(0.5, 2.0))
    plans = pruner.plan_groups(pruner.build_graph())
    pruner.latency_weights(plans)
    effs = {p.root: p.efficiency for p in plans}
    weights = {p.root: p.weight for p in plans}
    assert all(0.5 <= w <= 2.0 for w in weights.values())
    best, worst = max(effs, key=effs.get), min(effs, key=effs.get)
    assert effs[best] > effs[worst] and weights[best] >= weights[worst]


def test_latency_allocation_with_macs_as_cost_equals_uniform():
    """When the cost model is the MACs count every group saves cost at the same rate: uniform result."""
    torch.manual_seed(0)
    a, b = TinyShuffleNet().eval(), TinyShuffleNet().eval()
    b.load_state_dict(a.state_dict())
    ops_u = _pruner(a, target_macs=0.6).step()["ops"]
    pl = _pruner(b, target_macs=0.6, allocation="latency", cost_fn=lambda m: conv_macs(m, X))
    rec = pl.step()
    assert all(abs(w - 1.0) < 1e-6 for w in rec["weights"].values())
    assert rec["ops"] == ops_u


def test_latency_plan_on_silenced_channels_keeps_output():
    torch.manual_seed(0)
    model = TinyShuffleNet().eval()
    randomize_bn(model)
    ops = _pruner(copy.deepcopy(model), target_macs=0.6, allocation="latency").step()["ops"]
    assert ops
    DG = ShuffleDependencyGraph().build_dependency(model, X)
    modules = dict(model.named_modules())
    groups = []
    for op in ops:
        root = modules[op["module"]]
        groups.append(DG.get_pruning_group(root, DG.out_pruning_fn(root), op["idxs"]))
    for g in groups:
        silence(DG, g)
    ref = model(X)
    for g in groups:
        g.prune()
    _check_divisible(model)
    torch.testing.assert_close(model(X), ref, atol=1e-5, rtol=1e-4)


def test_latency_proxy_counts_memory_traffic():
    model = TinyShuffleNet().eval()
    assert latency_proxy(model, X, mem_weight=0.0) == pytest.approx(conv_macs(model, X))
    assert latency_proxy(model, X) > conv_macs(model, X)


def test_bad_allocation_is_refused():
    with pytest.raises(PruningError, match="allocation"):
        _pruner(TinyShuffleNet(), target_macs=0.6, allocation="fastest")


def test_recipe_allocation_field():
    from compressdet.recipe import PruneStage

    assert PruneStage(name="p", **{"from": "s"}).allocation == "latency"
    assert PruneStage(name="p", **{"from": "s"}, allocation="uniform").allocation == "uniform"
    with pytest.raises(ValueError):
        PruneStage(name="p", **{"from": "s"}, allocation="fastest")


def test_recipe_weight_range_default_matches_library_and_bad_range_is_refused():
    from compressdet.prune.algorithm import DEFAULT_WEIGHT_RANGE
    from compressdet.recipe import PruneStage

    assert PruneStage(name="p", **{"from": "s"}).latency_weight_range == DEFAULT_WEIGHT_RANGE
    with pytest.raises(ValueError, match="latency_weight_range"):
        PruneStage(name="p", **{"from": "s"}, latency_weight_range=(2.0, 4.0))



@pytest.mark.parametrize("align", [4, 6])
def test_depthwise_align_keeps_pruned_depthwise_widths_aligned(align):
    """Every depthwise conv the search cut keeps a multiple of ``align`` channels; the budget still holds."""
    torch.manual_seed(0)
    model = TinyShuffleNet().eval()
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 3}
    base = conv_macs(model, X)
    _pruner(model, target_macs=0.6, allocation="latency", depthwise_align=align).step()
    after = {n: m.out_channels for n, m in model.named_modules() if n in before}
    cut = [n for n in before if after[n] != before[n]]
    assert cut, "the search should still cut some depthwise groups"
    assert all(after[n] % align == 0 for n in cut), after
    assert conv_macs(model, X) / base <= 0.6 + 1e-9
    _check_divisible(model)


def test_unaligned_search_leaves_unaligned_depthwise_widths():
    """The control for the test above: without alignment the same search lands on other widths."""
    torch.manual_seed(0)
    model = TinyShuffleNet().eval()
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 3}
    _pruner(model, target_macs=0.6, allocation="latency", depthwise_align=1).step()
    after = {n: m.out_channels for n, m in model.named_modules() if n in before}
    assert any(after[n] % 4 for n in before if after[n] != before[n]), after


def test_bad_depthwise_align_is_refused():
    from compressdet.recipe import PruneStage

    with pytest.raises(PruningError, match="depthwise_align"):
        _pruner(TinyShuffleNet(), target_macs=0.6, depthwise_align=0)
    assert PruneStage(name="p", **{"from": "s"}).depthwise_align == 4
    with pytest.raises(ValueError, match="depthwise_align"):
        PruneStage(name="p", **{"from": "s"}, depthwise_align=0)


@pytest.mark.parametrize("channels,blocked", [(30, False), (33, False), (36, True), (60, True)])
def test_ort_runs_depthwise_convs_blocked_only_at_multiples_of_4(tmp_path, channels, blocked):
    """Why ``depthwise_align`` defaults to 4: ONNX Runtime's CPU provider rewrites a depthwise conv into its
    NCHWc (blocked) kernel only when the channel count is a multiple of 4 (ORT 1.32; if this fails after an
    ORT upgrade, re-measure the default with ``benchmarks/prune.py --preset latency``)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"ORT's NCHWc kernels are x86 ones; this is {platform.machine()}")
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    m = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False), nn.ReLU()).eval()
    src, opt = tmp_path / "dw.onnx", tmp_path / "dw.opt.onnx"
    torch.onnx.export(m, (torch.zeros(1, channels, 16, 16),), str(src), opset_version=17, dynamo=False)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(opt)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    domains = {(n.op_type, n.domain) for n in onnx.load(str(opt)).graph.node}
    assert (("Conv", "com.microsoft.nchwc") in domains) == blocked, domains
