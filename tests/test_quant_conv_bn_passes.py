"""torchao's conv + BN fuse / fold passes narrowed to the conv kinds a graph has: the same program, fewer exports.

A tiny conv-BN-ReLU net through torchao's QAT path (``prepare_qat_pt2e`` -> observers -> ``convert_pt2e``), once
with its passes whole and once narrowed; one thread (conftest). The detectors' own QAT and PTQ stages run
narrowed in every quant test.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
from torch import nn

pytest.importorskip("torchao")

from torchao.quantization.pt2e import move_exported_model_to_eval, qat_utils  # noqa: E402
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e  # noqa: E402
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (  # noqa: E402
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

from compressdet.quant._conv_bn_passes import conv_kinds, narrowed, present_conv_kinds_only  # noqa: E402


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # BN statistics away from the identity, so a fold that is wrong shows
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    return net


def _quantize(narrow: bool, counts: list[str]):
    """QAT-prepare, observe, convert; ``counts`` gets one entry per pattern torchao builds (a torch.export each)."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    gm = torch.export.export(_net().train(), (x,)).module()
    build = qat_utils._get_aten_graph_module_for_pattern

    def counted(*a, **k):
        counts.append("pattern")
        return build(*a, **k)

    ctx = present_conv_kinds_only if narrow else contextlib.nullcontext
    qat_utils._get_aten_graph_module_for_pattern = counted
    try:
        with ctx():
            quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))
            prepared = prepare_qat_pt2e(gm, quantizer)
        prepared(x)
        move_exported_model_to_eval(prepared)
        with ctx():
            program = convert_pt2e(prepared)
    finally:
        qat_utils._get_aten_graph_module_for_pattern = build
    return program, x


def _tensors(gm: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    out = dict(gm.state_dict())
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            v = functools.reduce(getattr, n.target.split("."), gm)
            if isinstance(v, torch.Tensor):
                out[n.target] = v
    return out


def test_narrowed_passes_give_torchaos_program_with_a_quarter_of_the_patterns():
    full_count, narrow_count = [], []
    full, x = _quantize(False, full_count)
    narrow, _ = _quantize(True, narrow_count)
    assert narrow.code == full.code
    a, b = _tensors(full), _tensors(narrow)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(full(x), narrow(x))
    # conv2d only: one of the four kinds' patterns built, in prepare and in convert
    assert conv_kinds(narrow) == {"conv2d"} and 0 < len(narrow_count) <= len(full_count) // 4 + 1
    # and torchao's own helpers are back after the block
    assert qat_utils._fold_conv_bn_qat_helper.__module__ == qat_utils.__name__
    assert qat_utils._fuse_conv_bn_qat_helper.__module__ == qat_utils.__name__


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(2, 2, 3), nn.ConvTranspose2d(2, 2, 2)

    def forward(self, x1, x2):
        return self.c1(x1), self.c2(x2)


def test_conv_kinds_names_each_kind_and_gives_up_on_unknown_convs():
    gm = torch.export.export(_Mixed(), (torch.zeros(1, 2, 8), torch.zeros(1, 2, 4, 4))).module()
    assert conv_kinds(gm) == {"conv1d", "conv_transpose2d"}
    g = torch.fx.symbolic_trace(nn.Sequential(nn.ReLU()))
    assert conv_kinds(g) == set()
    gen = torch.fx.Graph()
    inp = gen.placeholder("x")
    w = gen.placeholder("w")
    gen.output(gen.call_function(torch.ops.aten.convolution.default,
                                 (inp, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)))
    assert conv_kinds(torch.fx.GraphModule(nn.Module(), gen)) is None  # unknown: torchao's passes stay whole


def test_helpers_are_restored_when_the_block_raises():
    before = (qat_utils._fold_conv_bn_qat_helper, qat_utils._fuse_conv_bn_qat_helper)
    with pytest.raises(RuntimeError, match="boom"), present_conv_kinds_only():
        assert qat_utils._fold_conv_bn_qat_helper is not before[0]
        raise RuntimeError("boom")
    assert (qat_utils._fold_conv_bn_qat_helper, qat_utils._fuse_conv_bn_qat_helper) == before


def test_each_kind_the_graph_holds_runs_torchaos_helper_and_only_those():
    calls = []

    def original(m, conv_fn, example_inputs, is_cuda):
        calls.append(conv_fn)
        return m

    helper = narrowed(original)
    kinds = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv_transpose1d,
             torch.nn.functional.conv_transpose2d)
    mixed = torch.export.export(_Mixed(), (torch.zeros(1, 2, 8), torch.zeros(1, 2, 4, 4))).module()
    for fn in kinds:
        assert helper(mixed, fn, (), is_cuda=False) is mixed
    assert calls == [torch.nn.functional.conv1d, torch.nn.functional.conv_transpose2d]
    calls.clear()
    no_conv = torch.export.export(nn.Sequential(nn.BatchNorm2d(2)), (torch.zeros(2, 2, 4, 4),)).module()
    for fn in kinds:  # no conv at all: torchao's helpers all run (their dead-code pass is prepare's only one)
        helper(no_conv, fn, (), is_cuda=False)
    assert calls == list(kinds)


def test_nested_blocks_put_torchaos_helpers_back_once_the_last_one_ends():
    before = qat_utils._fuse_conv_bn_qat_helper
    with present_conv_kinds_only():
        inner = qat_utils._fuse_conv_bn_qat_helper
        with present_conv_kinds_only():
            assert qat_utils._fuse_conv_bn_qat_helper is inner
        assert qat_utils._fuse_conv_bn_qat_helper is inner and inner.__wrapped__ is before
    assert qat_utils._fuse_conv_bn_qat_helper is before
