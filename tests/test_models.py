"""ShuffleDet family: registry, shapes, MACs/params parity with the seed, export, model files."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compressdet.models import (
    ModelError,
    ShuffleDet,
    build_model,
    list_models,
    load_model,
    load_pretrained_backbone,
    model_summary,
    save_model,
)
from compressdet.models.shuffledet import ChannelShuffle, channel_shuffle, shuffledet_widths
from compressdet.models.summary import count_macs

torch.set_num_threads(1)
SMALL = (64, 192)

# METHOD.md section 6: backbone MACs at 384x1248 and params incl. BN running stats and the head
SEED = {
    "shuffledet_1x": (5.238e9, 1.629e6, 768),
    "shuffledet_0.5x": (1.588e9, 0.549e6, 384),
    "shuffledet_0.25x": (0.667e9, 0.2095e6, 192),
}


def _build(name: str, **kw) -> ShuffleDet:
    torch.manual_seed(0)
    return build_model(name, image_size=kw.pop("image_size", SMALL), **kw)


def test_registry_lists_the_family():
    names = list_models()
    assert {"shuffledet", "shuffledet_1x", "shuffledet_0.5x", "shuffledet_0.25x"} <= set(names)
    assert list_models("shuffledet_0*") == ["shuffledet_0.25x", "shuffledet_0.5x"]


def test_unknown_name_and_bad_arguments_are_user_errors():
    with pytest.raises(ModelError, match="did you mean 'shuffledet_0.5x'"):
        build_model("shuffledet_05x")
    with pytest.raises(ModelError, match="multiples of 16"):
        build_model("shuffledet_0.25x", image_size=(100, 200))
    with pytest.raises(ModelError, match="use arch 'shuffledet'"):
        build_model("shuffledet_0.5x", width=0.75)
    with pytest.raises(ModelError, match="width"):
        build_model("shuffledet", width=0.05)


@pytest.mark.parametrize("name", list_models("shuffledet*"))  # the FPN families: test_models_torchvision.py
def test_forward_backward_shapes(name):
    model = _build(name)
    x = torch.randn(2, 3, *SMALL)
    out, feat = model.forward_with_features(x)
    assert out.shape == (2, 72, SMALL[0] // 16, SMALL[1] // 16)
    assert feat.shape == (2, model.feature_channels, SMALL[0] // 16, SMALL[1] // 16)
    assert model.backbone(x).shape == feat.shape
    (out.square().mean() + feat.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert torch.equal(model(x), model.forward_with_features(x)[0])


@pytest.mark.parametrize("name", list_models("shuffledet*"))  # the FPN families: test_models_torchvision.py
def test_channels_last_matches(name):
    model = _build(name).eval()
    with torch.no_grad():
        nn.init.normal_(model.head.conv.weight, std=0.05)
    x = torch.randn(1, 3, *SMALL)
    ref = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_arch_layouts_match_method_table():
    assert shuffledet_widths(1.0, True) == (16, (240, 480, 960), (960, 768))
    assert shuffledet_widths(0.5) == (24, (120, 240, 480), (480, 384))
    assert shuffledet_widths(0.25) == (24, (60, 120, 240), (240, 192))
    teacher = build_model("shuffledet_1x", image_size=SMALL)
    b0 = teacher.backbone.group1[0]
    assert teacher.backbone.stem[0].out_channels == 16 and teacher.backbone.stem[0].stride == (1, 1)
    assert b0.conv1.groups == 1 and b0.conv2.groups == 1 and b0.conv2.out_channels == 240 - 16
    student = build_model("shuffledet_0.5x", image_size=SMALL)
    s0 = student.backbone.group1[0]
    assert s0.conv1.groups == 1 and s0.conv2.groups == 3 and s0.conv2.out_channels == 120 - 24
    assert [len(getattr(student.backbone, g)) for g in ("group1", "group2", "group3", "added3")] == [4, 6, 4, 2]
    a1 = student.backbone.added3[1]
    assert a1.mode == "plain" and a1.conv1.out_channels == 384 // 4 and a1.conv2.out_channels == 384
    head = student.head.conv
    assert head.kernel_size == (3, 3) and head.out_channels == 72 and head.bias is not None
    assert torch.all(head.bias == 0) and 0.5e-4 < head.weight.std().item() < 1.5e-4
    # a generic width rounds to channel counts the 3 groups and the quarter bottleneck divide
    stem, stages, added = shuffledet_widths(0.3)
    assert all(c % 12 == 0 for c in (*stages, *added))
    assert build_model("shuffledet", width=0.3, image_size=SMALL)(torch.zeros(1, 3, *SMALL)).shape[1] == 72


def test_channel_shuffle_is_the_method_permutation():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    x = torch.randn(2, 12, 3, 5)
    ref = x.view(2, 3, 4, 3, 5).transpose(1, 2).flatten(1, 2)
    assert torch.equal(ChannelShuffle(3)(x), ref)
    y = torch.randn(1, 9, 2, 2)  # any count divisible by 3
    assert torch.equal(channel_shuffle(y, 3), y.view(1, 3, 3, 2, 2).transpose(1, 2).reshape(1, 9, 2, 2))


@pytest.mark.parametrize("name", sorted(SEED))
def test_macs_and_params_match_the_seed(name):
    macs, params, feat = SEED[name]
    model = build_model(name)  # 384 x 1248; counted on the meta device
    s = model_summary(model, (384, 1248))
    assert abs(s["macs"]["backbone"] / macs - 1) < 0.02
    assert abs(s["params_with_bn_stats"]["total"] / params - 1) < 0.02
    assert s["output_shape"] == [72, 24, 78] and s["feature_channels"] == feat
    assert s["macs"]["total"] == s["macs"]["backbone"] + s["macs"]["head"]
    assert sum(r["macs"] for r in s["stages"]) == s["macs"]["total"]
    assert sum(r["params_with_bn_stats"] for r in s["stages"]) == s["params_with_bn_stats"]["total"]
    # head: 3x3 conv, C_feat -> 72 on the 24x78 grid
    assert s["macs"]["head"] == 24 * 78 * 72 * feat * 9


def _analytic_conv_macs(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(m, inp, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return total


@pytest.mark.parametrize("name", list_models("shuffledet*"))  # the FPN families: test_models_torchvision.py
def test_flop_counter_on_meta_equals_an_analytic_count(name):
    model = _build(name).eval()
    total, per = count_macs(model, SMALL)
    assert total == _analytic_conv_macs(model, torch.zeros(1, 3, *SMALL))
    assert per["backbone"] + per["head"] == total


@pytest.mark.parametrize("size", [(384, 1248), (192, 624), (64, 192)])
def test_grid_and_anchor_count_follow_the_input_size(size):
    model = build_model("shuffledet_0.25x", image_size=size)
    assert model.grid_size == (size[0] // 16, size[1] // 16)
    assert model.anchors().shape == (size[0] // 16 * size[1] // 16 * 9, 4)
    if size != (384, 1248):  # the full size forward is covered by model_summary on meta
        out = model.eval()(torch.zeros(1, 3, *size))
        assert out.shape[-2:] == model.grid_size


@pytest.mark.parametrize("name", list_models("shuffledet*"))  # the FPN families: test_models_torchvision.py
def test_torch_export_has_no_graph_breaks(name):
    model = _build(name).eval()
    x = torch.randn(1, 3, *SMALL)
    ep = torch.export.export(model, (x,), strict=True)  # strict: dynamo traces, any graph break fails
    torch.testing.assert_close(ep.module()(x), model(x))


@pytest.mark.parametrize("name", ["shuffledet_0.25x", "shuffledet_1x"])
def test_onnx_export_matches_pytorch(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _build(name).eval()
    with torch.no_grad():
        nn.init.normal_(model.head.conv.weight, std=0.05)
    x = torch.randn(1, 3, *SMALL)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), path, dynamo=True, verbose=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", list_models("shuffledet*"))  # the FPN families: test_models_torchvision.py
def test_save_load_round_trip(name, tmp_path):
    model = _build(name).eval()
    with torch.no_grad():  # non-trivial BN stats and head so outputs are informative
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        nn.init.normal_(model.head.conv.weight, std=0.05)
    path = save_model(model, tmp_path / "m.pt", meta={"step": 3, "note": "x"})
    loaded, meta = load_model(path)
    assert meta == {"step": 3, "note": "x"}
    assert loaded.arch == model.arch and loaded.image_size == model.image_size
    x = torch.randn(1, 3, *SMALL)
    assert torch.equal(loaded(x), model(x))


def _shrink_conv(conv: nn.Conv2d, *, out_keep: int | None = None, in_keep: int | None = None,
                 depthwise: bool = False) -> nn.Conv2d:
    """A smaller copy of ``conv`` keeping the first channels (of each group), as a pruner would."""
    g = conv.groups
    out_c = out_keep or conv.out_channels
    in_c = in_keep or conv.in_channels
    if depthwise:
        new = nn.Conv2d(out_c, out_c, conv.kernel_size, conv.stride, conv.padding, groups=out_c, bias=False)
        new.weight.data = conv.weight.data[:out_c].clone()
        return new
    new = nn.Conv2d(in_c, out_c, conv.kernel_size, conv.stride, conv.padding, groups=g, bias=conv.bias is not None)
    w = conv.weight.data.view(g, conv.out_channels // g, conv.in_channels // g, *conv.kernel_size)
    new.weight.data = w[:, : out_c // g, : in_c // g].reshape(out_c, in_c // g, *conv.kernel_size).clone()
    if conv.bias is not None:
        new.bias.data = conv.bias.data[:out_c].clone()
    return new


def _shrink_bn(bn: nn.BatchNorm2d, n: int) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(n)
    new.load_state_dict({k: (v[:n] if v.dim() else v) for k, v in bn.state_dict().items()})
    return new


def test_save_load_of_a_channel_shrunk_model(tmp_path):
    model = _build("shuffledet_0.25x").eval()
    bb = model.backbone
    # a residual unit's bottleneck 30 -> 15 (conv1 out, depthwise, conv2 in)
    u = bb.group2[2]
    u.conv1 = _shrink_conv(u.conv1, out_keep=15)
    u.bn1 = _shrink_bn(u.bn1, 15)
    u.dwconv = _shrink_conv(u.dwconv, out_keep=15, depthwise=True)
    u.bn2 = _shrink_bn(u.bn2, 15)
    u.conv2 = _shrink_conv(u.conv2, in_keep=15)
    # the final feature 192 -> 96 (added3/block1 conv2 out and the head's input)
    last = bb.added3[1]
    last.conv2 = _shrink_conv(last.conv2, out_keep=96)
    last.bn3 = _shrink_bn(last.bn3, 96)
    model.head.conv = _shrink_conv(model.head.conv, in_keep=96)
    model.eval()  # the replaced modules start in training mode
    assert model.feature_channels == 96
    with torch.no_grad():
        nn.init.normal_(model.head.conv.weight, std=0.05)
    x = torch.randn(1, 3, *SMALL)
    ref = model(x)
    path = save_model(model, tmp_path / "pruned.pt")
    loaded, _ = load_model(path)
    assert loaded.feature_channels == 96
    assert loaded.backbone.group2[2].dwconv.groups == 15
    assert loaded.backbone.group2[2].conv2.groups == 3
    assert torch.equal(loaded(x), ref)
    assert model_summary(loaded, SMALL)["macs"]["total"] < model_summary(_build("shuffledet_0.25x"), SMALL)["macs"][
        "total"]
    # without the recorded layer table the shapes are recovered from the weights alone
    obj = torch.load(path, weights_only=True)
    del obj["layers"]
    torch.save(obj, tmp_path / "bare.pt")
    again, _ = load_model(tmp_path / "bare.pt")
    assert torch.equal(again(x), ref)


def test_load_model_rejects_foreign_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "none.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="not a compressdet model file"):
        load_model(tmp_path / "other.pt")


def test_pretrained_backbone_by_name_and_by_order(tmp_path):
    src = _build("shuffledet_0.25x")
    with torch.no_grad():
        for p in src.backbone.parameters():
            p.uniform_(-1, 1)
    sd = src.backbone.state_dict()
    # 1) same names under a DataParallel prefix, plus a classifier the detector does not have
    named = {f"module.{k}": v for k, v in sd.items()} | {"module.fc.weight": torch.zeros(1000, 240)}
    torch.save({"state_dict": named}, tmp_path / "named.pth")
    dst = build_model("shuffledet_0.25x", image_size=SMALL, pretrained=str(tmp_path / "named.pth"))
    for k, v in sd.items():
        assert torch.equal(dst.backbone.state_dict()[k], v), k
    # 2) another implementation's names: matched in order by shape; report lists what is left
    keys = [k for k in sd if not k.endswith("num_batches_tracked")]
    other = {f"features.layer{i:03d}.{k.rsplit('.', 1)[1]}": sd[k] for i, k in enumerate(keys)}
    other["classifier.weight"] = torch.zeros(1000, 240)
    torch.save(other, tmp_path / "other.pth")
    fresh = _build("shuffledet_0.25x")
    report = load_pretrained_backbone(fresh, tmp_path / "other.pth", verbose=False)
    assert report["missing"] == [] and report["unexpected"] == ["classifier.weight"]
    for k in keys:
        assert torch.equal(fresh.backbone.state_dict()[k], sd[k]), k
    with pytest.raises(ModelError, match="never downloads"):
        build_model("shuffledet_0.25x", pretrained=str(tmp_path / "missing.pth"))


def test_info_command(capsys):
    import argparse
    import json

    from compressdet.cli import info

    parser = argparse.ArgumentParser()
    info.register(parser.add_subparsers())
    args = parser.parse_args(["info", "shuffledet_0.25x", "--image-size", "192x624", "--json"])
    assert args.func(args) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["image_size"] == [192, 624] and s["output_shape"] == [72, 12, 39]
    assert math.isclose(s["macs"]["backbone"], 0.667e9 / 4, rel_tol=0.02)
    args = parser.parse_args(["info", "shuffledet_1x"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "backbone.group3" in out and "5.238 G" in out
