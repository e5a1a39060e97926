"""INT8 path: exact float rewrites, QAT (with imitation) and PTQ through PT2E, the QDQ ONNX graph.

Tiny models (64x192) and a few steps; torch on one thread (conftest).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("torchao")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from compressdet._cpu import INT8_SATURATION_NOTE, int8_dot_product  # noqa: E402
from compressdet.errors import ArtifactError, RecipeError, UserError  # noqa: E402
from compressdet.models import build_model  # noqa: E402
from compressdet.models.shuffledet import channel_shuffle  # noqa: E402
from compressdet.quant import (  # noqa: E402
    check_int8_graph,
    export_int8_onnx,
    prepare_qat,
    quant_ready,
    quantize_ptq,
    shuffle_permutation,
    train_qat,
)
from compressdet.quant._fold import AvgPoolAsConv, PerKindHead, QuantUnit  # noqa: E402
from compressdet.quant._pt2e import convert, make_quantizer  # noqa: E402
from compressdet.quant.ptq import randomize_batchnorm  # noqa: E402
from compressdet.quant.qat import resolve_freeze_steps  # noqa: E402
from compressdet.recipe import ImitationConfig, QuantConfig, ScheduleConfig  # noqa: E402

#: ORT vs PyTorch int8 numerics hold where ORT's u8s8 kernels accumulate exactly (VNNI / AMX / non-x86)
needs_int8_dot = pytest.mark.skipif(not int8_dot_product(), reason=INT8_SATURATION_NOTE)


SIZE = (64, 192)
# ORT's kernels round some activations one quantization step away from PyTorch's reference
# (dequantize -> fp32 op -> quantize) kernels, and such a step propagates through ~50 int8 layers.
# Measured on these random tiny models, even with every ORT graph optimisation off: mean |diff|
# about 1.7% (PTQ) and 5-6% (after 4 QAT steps, whose activations are small next to their
# quantization step) of mean |head|, max 2-7% of max |head|. Tolerance: mean |diff| <= 10% of
# mean |head| and max |diff| <= 10% of max |head| (a wrong scale, a lost zero point or a
# float/int8 mix-up gives 30% and more). The detection-level check (ORT mAP within 0.3 of the
# PyTorch int8 program's) is in benchmarks/quant.py.
MEAN_TOL, MAX_TOL = 0.10, 0.10


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return randomize_batchnorm(build_model("shuffledet_0.25x", image_size=SIZE), head_std=0.02).eval()


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed)) * 50


def _targets(n: int) -> list[dict]:
    boxes = torch.tensor([[10.0, 12.0, 60.0, 50.0], [100.0, 20.0, 130.0, 60.0]])
    return [{"boxes": boxes.clone(), "labels": torch.tensor([0, 1])} for _ in range(n)]


def _ort_run(model, x, name: str = "images") -> np.ndarray:
    """First output of ``model`` (a path or an in-memory ``ModelProto``) in ORT for input ``name`` = ``x``."""
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, {name: x})[0]


def _assert_ort_matches_torch(path, converted, x) -> None:
    got = _ort_run(path, x)
    with torch.no_grad():
        ref = converted(x)[0].numpy()
    d = np.abs(got - ref)
    assert d.mean() <= MEAN_TOL * np.abs(ref).mean(), (d.mean(), np.abs(ref).mean())
    assert d.max() <= MAX_TOL * np.abs(ref).max(), (d.max(), np.abs(ref).max())


# ---------------------------------------------------------------------------------------------
# exact float rewrites


def test_shuffle_permutation_matches_channel_shuffle():
    x = torch.randn(2, 12, 3, 3)
    perm = shuffle_permutation(12, 3)
    assert torch.equal(channel_shuffle(x, 3), x[:, perm])
    with pytest.raises(ValueError, match="not divisible"):
        shuffle_permutation(10, 3)


def test_shuffle_mixes_groups_so_grouped_conv_cannot_absorb_it():
    # why conv2 becomes dense: each output group of the next grouped conv reads shuffled positions
    # that come from every input group, so no group-consistent permutation exists.
    perm = shuffle_permutation(12, 3)
    for k in range(3):
        src_groups = {int(p) // 4 for p in perm[k * 4:(k + 1) * 4]}
        assert src_groups == {0, 1, 2}


@pytest.mark.parametrize("fold,pad,align", [(True, 4, 16), (False, None, None), (True, None, None), (True, 4, 8)])
def test_quant_ready_is_exact(student, fold, pad, align):
    x = _images(2)
    ready = quant_ready(student, fold_shuffle=fold, pad_stem=pad, pad_bottleneck=align).eval()
    with torch.no_grad():
        a, b = student(x), ready(x)
    assert torch.allclose(a, b, atol=1e-4 * a.abs().max().item() + 1e-6)
    units = [m for m in ready.modules() if isinstance(m, QuantUnit)]
    assert all(("conv2.weight" in u.param_masks()) == fold for u in units)
    widths = [u.dwconv.in_channels for u in units]
    orig = [m.dwconv.in_channels for m in student.modules() if hasattr(m, "shuffle")]
    if align:
        assert all(w % align == 0 and 0 <= w - o < align for w, o in zip(widths, orig, strict=True))
        assert widths != orig  # the 0.25x student has 15/30/60-wide bottlenecks
    else:
        assert widths == orig
    # train mode (batch statistics) is exact too: padded BN channels output exactly zero
    a = copy.deepcopy(student).train().backbone(x)
    b = ready.train().backbone(x)
    assert torch.allclose(a, b, atol=1e-4 * a.abs().max().item() + 1e-6)


def test_pad_bottleneck_needs_folded_shuffle(student):
    with pytest.raises(ValueError, match="fold_shuffle"):
        quant_ready(student, fold_shuffle=False, pad_bottleneck=16)


def test_per_kind_head_is_exact(student):
    ready = quant_ready(student, per_kind_head=True).eval()
    assert isinstance(ready.head.conv, PerKindHead)
    assert [p.out_channels for p in ready.head.conv.parts.values()] == [27, 9, 36]
    x = _images(2)
    with torch.no_grad():
        a, b = student(x), ready(x)
    assert torch.allclose(a, b, atol=1e-5 * a.abs().max().item())


@pytest.mark.parametrize("hw", [(8, 12), (7, 9), (1, 2), (48, 156)])
def test_avgpool_as_conv_is_exact(hw):
    x = torch.randn(2, 6, *hw) * 3
    pool = torch.nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
    conv = AvgPoolAsConv(6)
    a, b = pool(x), conv(x)
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    assert not any(p.requires_grad for p in conv.parameters())  # fixed weights: nothing for QAT to train


def test_quant_ready_replaces_shortcut_pools(student):
    ready = quant_ready(student)
    assert sum(isinstance(m, AvgPoolAsConv) for m in ready.modules()) == 3
    assert not any(isinstance(m, torch.nn.AvgPool2d) for m in ready.modules())
    kept = quant_ready(student, pool_as_conv=False)
    assert not any(isinstance(m, AvgPoolAsConv) for m in kept.modules())


# ---------------------------------------------------------------------------------------------
# QAT with imitation


@pytest.fixture(scope="module")
def qat_run(student, tmp_path_factory):
    from compressdet.losses import SqueezeDetLoss

    torch.manual_seed(0)
    teacher = randomize_batchnorm(build_model("shuffledet_0.25x", image_size=SIZE), seed=1, head_std=0.02).eval()
    x = _images(2)
    cfg = QuantConfig()
    prepared = prepare_qat(student, x, cfg)
    masked = [(n, p.detach().clone()) for n, p in prepared.named_parameters() if n in prepared._compressdet_masks]
    sched = ScheduleConfig(steps=4, batch_size=2, lr=1e-3, log_every=1)
    batches = iter([(_images(2, seed=s), _targets(2)) for s in range(sched.steps)])
    anchors = student.anchors()
    res = train_qat(prepared, batches, det_loss=SqueezeDetLoss(anchors, image_size=SIZE), schedule=sched,
                    freeze_observers_step=3, freeze_bn_step=2, teacher=teacher,
                    imitation=ImitationConfig(weight=1.0), anchors=anchors,
                    out_dir=tmp_path_factory.mktemp("qat"))
    return {"res": res, "masked": masked, "x": x, "cfg": cfg}


def test_qat_trains_with_imitation(qat_run):
    hist = qat_run["res"].history
    assert len(hist) == 4
    assert all(np.isfinite(h["total"]) for h in hist)
    assert all("imitation" in h and h["imitation"] > 0 for h in hist)


def test_qat_keeps_folded_zeros_and_freezes(qat_run):
    prepared = qat_run["res"].prepared
    params = dict(prepared.named_parameters())
    assert qat_run["masked"], "no folded conv found"
    for name, mask in prepared._compressdet_masks.items():
        assert (params[name].detach()[mask == 0] == 0).all(), name
    # some weight moved: training happened
    assert any(not torch.equal(params[n].detach(), before) for n, before in qat_run["masked"])
    fqs = [m for m in prepared.modules() if hasattr(m, "observer_enabled")]
    assert fqs and all(int(m.observer_enabled[0]) == 0 for m in fqs)


def _qat_on_loader(student, out_dir, steps, *, resume_from=None, stop_after=None, cfg=None):
    """QAT over an InfiniteSampler loader (positions restore exactly); ``stop_after``: crash then."""
    from test_engine import TinyBoxes

    from compressdet.data import build_loader
    from compressdet.losses import SqueezeDetLoss

    prepared = prepare_qat(student, _images(2), cfg or QuantConfig())
    loader = build_loader(TinyBoxes(n=6, hw=SIZE), batch_size=2, train=True, seed=0)
    sched = ScheduleConfig(steps=steps, batch_size=2, lr=1e-3, log_every=1, checkpoint_every=2)

    def crash(tr):
        if stop_after is not None and tr.iter + 1 == stop_after:
            raise KeyboardInterrupt  # after the step-2 checkpoint, before step 4's
    anchors = student.anchors()
    return train_qat(prepared, loader, det_loss=SqueezeDetLoss(anchors, image_size=SIZE), schedule=sched,
                     freeze_observers_step=3, freeze_bn_step=2, out_dir=out_dir, resume_from=resume_from,
                     on_step=crash)


def test_qat_resumes_exactly(student, tmp_path):
    """Crash after step 3 (last checkpoint: step 2, before either freeze), resume to step 5: the
    freezes are re-applied on the way and weights, scales and observer flags equal an
    uninterrupted run's."""
    from compressdet.engine import load_checkpoint

    full = _qat_on_loader(student, tmp_path / "full", 5)
    with pytest.raises(KeyboardInterrupt):
        _qat_on_loader(student, tmp_path / "cut", 5, stop_after=3)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 2
    resumed = _qat_on_loader(student, tmp_path / "cut", 5, resume_from=tmp_path / "cut" / "last.pt")
    assert [h["step"] for h in resumed.history] == [3, 4, 5]
    a, b = full.prepared.state_dict(), resumed.prepared.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    fqs = [m for m in resumed.prepared.modules() if hasattr(m, "observer_enabled")]
    assert fqs and all(int(m.observer_enabled[0]) == 0 for m in fqs)
    x = _images(1, seed=7)
    with torch.no_grad():
        assert torch.equal(convert(full.prepared)(x)[0], convert(resumed.prepared)(x)[0])


@needs_int8_dot
def test_qat_onnx_qdq_graph(qat_run, tmp_path):
    converted = convert(qat_run["res"].prepared)
    x = qat_run["x"][:1]
    path = export_int8_onnx(converted, x, tmp_path / "qat_int8.onnx")
    info = check_int8_graph(path)  # checker, no bias DQ, per-channel weights
    # the head: int8 weights (fake-quantized in QAT), float output, run as an integer matmul
    assert info["int8_convs"] >= 40 and info["float_convs"] == 0 and info["int8_matmuls"] == 1
    assert not _head_output_scales(path)
    _assert_ort_matches_torch(path, converted, x)


@needs_int8_dot
def test_qat_with_per_kind_int8_head(student, tmp_path):
    """The split head trains under QAT (every head part moves) and exports with three head scales."""
    res = _qat_on_loader(student, tmp_path / "q", 4, cfg=QuantConfig(keep_head_float=False))
    params = dict(res.prepared.named_parameters())
    parts = [n for n in params if ".parts." in n and n.endswith("weight")]
    assert len(parts) == 3
    converted = convert(res.prepared)
    x = _images(1, seed=3)
    path = export_int8_onnx(converted, x, tmp_path / "q.onnx")
    assert check_int8_graph(path)["float_convs"] == 0
    scales = _head_output_scales(path)
    assert len(scales) == 3
    # ORT and PyTorch int8 agree up to rounding, measured in each kind's own output step: a value
    # that rounds one step differently early on moves a few outputs by a step or two
    got = _ort_run(path, x)
    with torch.no_grad():
        ref = converted(x)[0].numpy()
    for (lo, hi), step in zip([(0, 27), (27, 36), (36, 72)], scales, strict=True):
        d = np.abs(got - ref)[:, lo:hi] / step
        assert d.max() <= 3.01 and d.mean() <= 0.5, (lo, hi, d.max(), d.mean())


# ---------------------------------------------------------------------------------------------
# PTQ


@pytest.fixture(scope="module")
def ptq_program(student):
    return quantize_ptq(student, iter([_images(2, seed=5), _images(2, seed=6)]), QuantConfig(calibration_images=4),
                        observer="minmax")


@needs_int8_dot
def test_ptq_onnx_matches_torch(ptq_program, student, tmp_path):
    x = _images(1, seed=9)
    path = export_int8_onnx(ptq_program, x, tmp_path / "ptq.onnx")
    _assert_ort_matches_torch(path, ptq_program, x)
    with torch.no_grad():  # and it is still the float model, approximately
        ref = student(x)
        q = ptq_program(x)[0]
    assert (q - ref).abs().max() < 0.25 * ref.abs().max()
    m = onnx.load(str(path))
    # the channel shuffle was folded away; the only transposes view the stem input as column pairs
    # and the head's input / output as pixels (all but two cancel in ORT: the next test)
    transposes = [n.name for n in m.graph.node if n.op_type == "Transpose"]
    assert len(transposes) == 6 and all("column_pairs" in t or "int8_matmul" in t for t in transposes)


def test_ort_rewrites_are_bit_identical(ptq_program, tmp_path):
    """The exporter's ORT rewrites (column-pair stem, shrunk border maps, pad after quantize) change
    the graph, not one output value, and make the file smaller; the head as an integer matmul
    changes the output only by the float conv's own rounding."""
    from compressdet.quant._onnx_rewrites import ORT_REWRITES

    x = _images(1, seed=3)
    fast = export_int8_onnx(ptq_program, x, tmp_path / "fast.onnx")
    plain = export_int8_onnx(ptq_program, x, tmp_path / "plain.onnx", ort_rewrites=False)
    exact = export_int8_onnx(ptq_program, x, tmp_path / "exact.onnx",
                             ort_rewrites=[k for k in ORT_REWRITES if k != "float_out_conv_as_matmul"])
    ref = _ort_run(plain, x)
    assert np.array_equal(_ort_run(exact, x), ref)
    got = _ort_run(fast, x)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    ops = [n.op_type for n in onnx.load(str(fast)).graph.node]
    # three border maps; the stem's two views; the head's index, pixel rows, patches and output views
    assert ops.count("Expand") == 3 and ops.count("Reshape") == 6 and ops.count("MatMulInteger") == 1
    # ORT cancels the stem's explicit layout transposes against its own: what is left are the input's
    # NCHW -> NHWC and the head output's way back
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(fast), so, providers=["CPUExecutionProvider"])
    opt = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert opt.count("Transpose") <= 2 and opt.count("NhwcMaxPool") == 1, opt
    # the border maps (24x16x48 + 60x8x24 + 120x4x12 bytes, ~35 KB here) are stored once, not per channel
    assert fast.stat().st_size < plain.stat().st_size - 30_000
    assert not any(n.metadata_props for n in onnx.load(str(fast)).graph.node)  # no stack traces / local paths


def test_ort_fuses_every_backbone_conv(ptq_program, tmp_path):
    """All backbone convs run as QLinearConv in ORT (none falls back to float with layout copies)."""
    x = _images(1)
    path = export_int8_onnx(ptq_program, x, tmp_path / "p.onnx")
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    # 49 backbone convs + 3 shortcut pools as depthwise convs (AvgPoolAsConv), their border maps in
    # int8; the head conv (int8 weights, float output) as an integer matmul, scaled by one float Mul
    assert ops.count("QLinearConv") == 52 and ops.count("Conv") + ops.count("FusedConv") == 0
    assert ops.count("MatMulInteger") == 1 and ops.count("Mul") == 1
    assert ops.count("QLinearMul") == 3 and not any("AveragePool" in o for o in ops)
    # the padded stem input is padded after quantization (uint8), not as float; so is the head's
    exported = onnx.load(str(path)).graph
    producer = {o: n.op_type for n in exported.node for o in n.output}
    pads = [n for n in exported.node if n.op_type == "Pad"]
    assert len(pads) == 2 and producer[pads[0].input[0]] == "QuantizeLinear" and "int8_matmul" in pads[1].name


def test_quantize_before_pad_is_exact(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from compressdet.quant._onnx_rewrites import quantize_before_pad as _quantize_before_pad

    inits = [numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 1, 1, 2], np.int64), "pads"),
             numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(37, np.uint8), "z")]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]), helper.make_node("QuantizeLinear", ["p", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    x = np.random.default_rng(0).standard_normal((1, 3, 5, 6)).astype(np.float32) * 3
    ref = _ort_run(m, x, "x")
    assert _quantize_before_pad(m) == 1
    onnx.checker.check_model(m, full_check=True)
    assert [n.op_type for n in m.graph.node] == ["QuantizeLinear", "Pad", "DequantizeLinear"]
    out = _ort_run(m, x, "x")
    assert out.shape == (1, 4, 6, 8) and np.array_equal(out, ref)



def _float_out_conv_graph(k: int, stride: int, pads: list[int], bias: bool, quantized_out: bool = False,
                          per_tensor: bool = False):
    """``Q(u8) -> DQ -> Conv(DQ(s8 w, per channel or per tensor)) [+ bias]`` with a float output (batch
    symbolic), or, with ``quantized_out``, a ``Q -> DQ`` after the conv (ORT fuses that into QLinearConv)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    arrays = {"xs": np.array(0.03, np.float32), "xz": np.array(93, np.uint8),
              "w": rng.integers(-127, 128, (20, 12, k, k)).astype(np.int8),
              "ws": rng.uniform(0.002, 0.01, 20).astype(np.float32), "wz": np.zeros(20, np.int8),
              "b": rng.standard_normal(20).astype(np.float32), "ys": np.array(0.2, np.float32),
              "yz": np.array(128, np.uint8)}
    if per_tensor:
        arrays.update(ws=np.array(0.006, np.float32), wz=np.array(0, np.int8))
    mk = helper.make_node
    conv_in = ["xd", "wd"] + (["b"] if bias else [])
    nodes = [mk("QuantizeLinear", ["x", "xs", "xz"], ["xq"]), mk("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             mk("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             mk("Conv", conv_in, ["c" if quantized_out else "y"], kernel_shape=[k, k], strides=[stride, stride],
                pads=pads, name="head")]
    if quantized_out:
        nodes += [mk("QuantizeLinear", ["c", "ys", "yz"], ["cq"]), mk("DequantizeLinear", ["cq", "ys", "yz"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12, 9, 14])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, n) for n, v in arrays.items()])
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))


@needs_int8_dot
@pytest.mark.parametrize("k,stride,pads,bias,per_tensor", [
    (3, 1, [1, 1, 1, 1], True, False), (3, 2, [1, 1, 1, 1], False, False), (1, 1, [0, 0, 0, 0], True, False),
    (3, 1, [0, 1, 2, 1], False, False), (3, 1, [1, 1, 1, 1], True, True)])
def test_float_out_conv_as_matmul(k, stride, pads, bias, per_tensor):
    """An int8 conv with a float output (the default head) as im2col + MatMulInteger: same output
    up to the float conv's rounding, any batch, any padding and stride, per-channel or per-tensor weights."""
    from compressdet.quant._onnx_rewrites import float_out_conv_as_matmul

    m = _float_out_conv_graph(k, stride, pads, bias, per_tensor=per_tensor)
    x = np.random.default_rng(2).standard_normal((2, 12, 9, 14)).astype(np.float32)
    ref = _ort_run(m, x, "x")
    assert float_out_conv_as_matmul(m) == 1
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    assert "Conv" not in ops and ops.count("MatMulInteger") == 1 and ops.count("Pad") == int(any(pads))
    got = _ort_run(m, x, "x")
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    # a conv whose output is quantized is ORT's QLinearConv already: left alone
    q = _float_out_conv_graph(k, stride, pads, bias, quantized_out=True, per_tensor=per_tensor)
    assert float_out_conv_as_matmul(q) == 0 and "Conv" in [n.op_type for n in q.graph.node]


def _stem_graph(h: int, w: int, pool_scale: float = 0.05):
    """``Q -> Pad(3 -> 4 channels) -> DQ -> Conv 3x3 (+bias) -> Relu -> Q -> DQ -> MaxPool 3x3/2 -> Q -> DQ``
    with random int8 weights: the stem as the exporter writes it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    arrays = {"pads": np.array([0, 0, 0, 0, 0, 1, 0, 0], np.int64), "xs": np.array(0.04, np.float32),
              "xz": np.array(120, np.uint8), "w": rng.integers(-127, 128, (24, 4, 3, 3)).astype(np.int8),
              "ws": rng.uniform(0.002, 0.01, 24).astype(np.float32), "wz": np.zeros(24, np.int8),
              "b": rng.standard_normal(24).astype(np.float32), "ys": np.array(0.05, np.float32),
              "yz": np.array(0, np.uint8), "ps": np.array(pool_scale, np.float32)}
    arrays["w"][:, 3] = 0  # the padded channel's weights are zero (PaddedStemConv)
    mk = helper.make_node
    nodes = [mk("QuantizeLinear", ["x", "xs", "xz"], ["xq0"]), mk("Pad", ["xq0", "pads", "xz"], ["xq"]),
             mk("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]), mk("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             mk("Conv", ["xd", "wd", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="stem"),
             mk("Relu", ["c"], ["r"]), mk("QuantizeLinear", ["r", "ys", "yz"], ["rq"]),
             mk("DequantizeLinear", ["rq", "ys", "yz"], ["rd"]),
             mk("MaxPool", ["rd"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             mk("QuantizeLinear", ["m", "ps", "yz"], ["mq"]), mk("DequantizeLinear", ["mq", "ps", "yz"], ["y"])]
    g = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, h, w])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24, (h - 1) // 2 + 1, (w - 1) // 2 + 1])],
                          [numpy_helper.from_array(v, k) for k, v in arrays.items()],
                          value_info=[helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 4, h, w])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("h,w", [(16, 24), (9, 14), (7, 2)])
def test_stem_on_column_pairs_is_bit_identical(h, w):
    from compressdet.quant._onnx_rewrites import pack_stem_columns, quantize_before_pad

    m = _stem_graph(h, w)
    x = np.random.default_rng(1).standard_normal((1, 3, h, w)).astype(np.float32) * 3
    ref = _ort_run(m, x, "x")
    assert quantize_before_pad(m) == 0  # the pad already follows the quantize
    assert pack_stem_columns(m) == 1
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Pad") == 1 and ops.count("MaxPool") == 1 and ops.count("Reshape") == 2
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    kernel = next(a.ints for a in conv.attribute if a.name == "kernel_shape")
    assert list(kernel) == [3, 2]
    out = _ort_run(m, x, "x")
    assert out.shape == ref.shape and np.array_equal(out, ref)


def test_stem_on_column_pairs_only_where_exact():
    from compressdet.quant._onnx_rewrites import pack_stem_columns

    assert pack_stem_columns(_stem_graph(8, 15)) == 0  # odd width: columns do not pair up
    assert pack_stem_columns(_stem_graph(8, 16, pool_scale=0.07)) == 0  # the pool requantizes


def _wide_range_head(student):
    """The student with box deltas ~100x smaller than the class logits (as in trained heads)."""
    m = copy.deepcopy(student)
    with torch.no_grad():
        m.head.conv.weight[:27] *= 10
        m.head.conv.weight[36:] *= 0.1
    return m


def _head_output_scales(path) -> list[float]:
    """Output scales of the quantized head convs (3x3 over the 192-channel feature, an output Q)."""
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    scales = []
    for conv in (n for n in m.graph.node if n.op_type == "Conv"):
        wdq = producer.get(conv.input[1])
        if wdq is None or wdq.op_type != "DequantizeLinear" or inits[wdq.input[0]].shape[1:] != (192, 3, 3):
            continue
        q = [n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == conv.output[0]]
        scales += [float(inits[q[0].input[1]])] if q else []
    return scales


@needs_int8_dot
def test_fp32_head_weights(ptq_program, student, tmp_path):
    """``head_weights: float``: the head conv stays an fp32 conv (no weight quantization at all), so the
    int8 and fp32 heads differ by the int8 weights' rounding only."""
    cfg = QuantConfig(head_weights="float", calibration_images=2)
    calib = [_images(2, seed=5), _images(2, seed=6)]
    prog = quantize_ptq(student, iter(calib), cfg, observer="minmax")
    x = _images(1, seed=9)
    path = export_int8_onnx(prog, x, tmp_path / "fp32_head.onnx")
    info = check_int8_graph(path)
    assert info["float_convs"] == 1 and info["int8_matmuls"] == 0
    _assert_ort_matches_torch(path, prog, x)
    with torch.no_grad():
        a, b = prog(x)[0], ptq_program(x)[0]
    assert 0 < (a - b).abs().max() < 0.05 * b.abs().max()


@needs_int8_dot
@pytest.mark.parametrize("mode", ["per_kind", "shared"])
def test_int8_head_scales(student, tmp_path, mode):
    """``keep_head_float: false``: per kind, class logits, confidence and box deltas each get their own
    output scale (deltas ~100x finer here), concatenated in float; ``shared`` has one scale."""
    from onnx import numpy_helper

    model = _wide_range_head(student)
    x = _images(1, seed=9)
    cfg = QuantConfig(keep_head_float=False, head_int8=mode, calibration_images=2)
    prog = quantize_ptq(model, iter([_images(2, seed=5)]), cfg, observer="minmax")
    path = export_int8_onnx(prog, x, tmp_path / f"{mode}.onnx")
    _assert_ort_matches_torch(path, prog, x)
    scales = _head_output_scales(path)
    if mode == "per_kind":
        assert len(scales) == 3 and max(scales) > 20 * min(scales), scales
        # the 9- and 27-wide parts run 16 and 32 wide (zero filters), sliced in float: bit-identical
        widths = sorted(numpy_helper.to_array(i).shape[0] for i in onnx.load(str(path)).graph.initializer
                        if i.data_type == onnx.TensorProto.INT8 and tuple(i.dims[1:]) == (192, 3, 3))
        assert widths == [16, 32, 36], widths
        plain = export_int8_onnx(prog, x, tmp_path / "plain.onnx", ort_rewrites=False)
        assert np.array_equal(_ort_run(path, x), _ort_run(plain, x))
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        assert ops[-1] == "Concat"  # float concat of the dequantized parts
        # the box deltas keep far more precision than under one shared scale
        with torch.no_grad():
            ref = model(x)
            got = prog(x)[0]
        err = (got - ref)[:, 36:].abs().max() / ref[:, 36:].abs().max()
        assert err < 0.1, err
    else:
        assert len(scales) == 1


# ---------------------------------------------------------------------------------------------
# graph checks catch what TensorRT rejects


def _first_conv_with_bias(m):
    return next(n for n in m.graph.node if n.op_type == "Conv" and len(n.input) > 2 and n.input[2])


def test_check_rejects_bias_dequantize(ptq_program, tmp_path):
    from onnx import helper, numpy_helper

    path = export_int8_onnx(ptq_program, _images(1), tmp_path / "p.onnx")
    m = onnx.load(str(path))
    conv = _first_conv_with_bias(m)
    m.graph.initializer.extend([numpy_helper.from_array(np.zeros(72, np.int32), "bq"),
                                numpy_helper.from_array(np.ones(72, np.float32), "bs")])
    m.graph.node.insert(0, helper.make_node("DequantizeLinear", ["bq", "bs"], ["bdq"], axis=0))
    conv.input[2] = "bdq"
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(ArtifactError, match="bias"):
        check_int8_graph(bad)


def test_check_rejects_a_mostly_float_graph(ptq_program, tmp_path):
    """A quantizer that matched almost nothing (torch 2.11 on the GPU machine: 1 of 53 convs int8)
    leaves a valid but mostly float graph: refused, with the versions named."""
    path = export_int8_onnx(ptq_program, _images(1), tmp_path / "p.onnx")
    m = onnx.load(str(path))
    producers = {o: n for n in m.graph.node for o in n.output}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    info = check_int8_graph(path)
    assert info["float_convs"] == 0 and info["int8_convs"] == len(convs) > 2
    # the weights of all but one conv as plain float initializers (their DQ bypassed)
    from onnx import numpy_helper

    inits = {i.name: i for i in m.graph.initializer}
    for k, conv in enumerate(convs[1:]):
        dq = producers[conv.input[1]]
        w = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
        m.graph.initializer.append(numpy_helper.from_array(w, f"wf{k}"))
        conv.input[1] = f"wf{k}"
    bad = tmp_path / "mostly_float.onnx"
    onnx.save(m, str(bad))
    total = len(convs) + info["int8_matmuls"]
    with pytest.raises(ArtifactError, match=rf"{len(convs) - 1} of {total} convs stayed float.*torch 2"):
        check_int8_graph(bad)


def test_a_quantizer_that_matches_nothing_fails_before_calibration(student, monkeypatch):
    """torchao 0.18 on torch 2.11 annotated no conv: PTQ and QAT stop at prepare, naming the versions,
    instead of calibrating (or training for hours) a float model."""
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    import compressdet.quant.ptq as ptq_mod
    import compressdet.quant.qat as qat_mod
    from compressdet.quant.qat import prepare_qat

    monkeypatch.setattr(ptq_mod, "make_quantizer", lambda *a, **k: X86InductorQuantizer())  # no config: no match
    monkeypatch.setattr(qat_mod, "make_quantizer", lambda *a, **k: X86InductorQuantizer())
    calibrated = []
    with pytest.raises(UserError, match=r"matched only 0 of 53 convs \(torch 2.*torchao"):
        quantize_ptq(student, (calibrated.append(1) or _images(1) for _ in range(3)), QuantConfig(calibration_images=2))
    assert len(calibrated) == 1  # only the capture example was drawn
    with pytest.raises(UserError, match="matched only 0 of 53 convs"):
        prepare_qat(student, _images(2), QuantConfig())


def test_check_rejects_per_tensor_weights(student, tmp_path):
    prog = quantize_ptq(student, iter([_images(1)]), QuantConfig(per_channel=False, calibration_images=1),
                        observer="minmax")
    path = export_int8_onnx(prog, _images(1), tmp_path / "pt.onnx", check=False)
    with pytest.raises(ArtifactError, match="per output channel"):
        check_int8_graph(path)
    assert check_int8_graph(path, require_per_channel=False)["int8_convs"] > 0


def test_tensorrt_flavour_is_symmetric_int8(student, ptq_program, tmp_path):
    """TensorRT takes only int8 Q/DQ with zero point 0: ``activations: s8_symmetric`` gives such a
    graph (and ORT still runs it like PyTorch); the default u8 graph is refused with the fix named."""
    from onnx import numpy_helper

    x = _images(1, seed=9)
    prog = quantize_ptq(student, iter([_images(2, seed=5)]), QuantConfig(activations="s8_symmetric",
                                                                         calibration_images=2), observer="minmax")
    path = export_int8_onnx(prog, x, tmp_path / "trt.onnx")
    check_int8_graph(path, tensorrt=True)
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    zps = [inits[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == np.int8 and (z == 0).all() for z in zps)
    assert "Pad" in [n.op_type for n in m.graph.node]  # float Pad -> Q -> DQ kept (no uint8 pad rewrite)
    _assert_ort_matches_torch(path, prog, x)

    u8 = export_int8_onnx(ptq_program, x, tmp_path / "u8.onnx")
    with pytest.raises(ArtifactError, match="TensorRT needs int8 with zero point 0.*s8_symmetric"):
        check_int8_graph(u8, tensorrt=True)


def test_tensorrt_export_uses_int8_graph_only_when_tensorrt_can(student, ptq_program, tmp_path, monkeypatch):
    """A u8 INT8 graph would abort TensorRT's parser: the exporter builds the engine from the fp32
    graph and says why; a symmetric int8 graph becomes an INT8 engine. (``build_engine`` is
    replaced: no TensorRT here.)"""
    from types import SimpleNamespace

    import compressdet.export._tensorrt as trt_mod
    from compressdet.export.exporter import Exporter

    calls = []
    monkeypatch.setattr(trt_mod, "build_engine", lambda src, path, int8, dynamic_batch: calls.append((src, int8))
                        or {"path": str(path), "precision": "int8" if int8 else "fp32"})
    x = _images(1)
    sym = quantize_ptq(student, iter([_images(2, seed=5)]), QuantConfig(activations="s8_symmetric",
                                                                        calibration_images=2), observer="minmax")
    graphs = {"u8": export_int8_onnx(ptq_program, x, tmp_path / "u8.onnx"),
              "s8": export_int8_onnx(sym, x, tmp_path / "s8.onnx")}
    logs = []
    for kind, g in graphs.items():
        stub = SimpleNamespace(results={"onnx": {"path": "fp32.onnx"}, "onnx-int8": {"path": str(g)}},
                               log=logs.append, source=SimpleNamespace(stem=lambda f: "m"), dynamic_batch=False)
        info = Exporter.export_tensorrt(stub, tmp_path / "m.engine")
        if kind == "u8":
            assert calls[-1] == ("fp32.onnx", False) and "s8_symmetric" in info["int8_skipped"]
            assert "no TensorRT INT8 engine" in logs[-1]
        else:
            assert calls[-1] == (str(g), True) and "int8_skipped" not in info
            assert info["path"].endswith(".int8.engine")


@pytest.mark.parametrize("symmetric", [True, False])
def test_ort_static_ptq_flavours(student, tmp_path, symmetric):
    """The exporter's PTQ of a float graph (used when a stage has no INT8 graph of its own) makes
    symmetric int8 activations when a TensorRT engine is wanted."""
    from compressdet.export._int8 import quantize_onnx_int8

    fp32 = tmp_path / "fp32.onnx"
    torch.onnx.export(student, (_images(1),), str(fp32), dynamo=False, opset_version=17, input_names=["images"])
    out = quantize_onnx_int8(fp32, tmp_path / "q.onnx", [_images(1, seed=s).numpy() for s in (1, 2)],
                             symmetric=symmetric)
    if symmetric:
        check_int8_graph(out, tensorrt=True)
    else:  # u8 activations and int32 bias DequantizeLinear: ORT's fast path, not TensorRT's
        with pytest.raises(ArtifactError, match="TensorRT needs"):
            check_int8_graph(out, tensorrt=True)


# ---------------------------------------------------------------------------------------------
# bad settings


def test_bad_settings_are_clear_errors(student):
    with pytest.raises(UserError, match="freeze_observers_step=11 is after the last step"):
        resolve_freeze_steps(10, 11, None)
    assert resolve_freeze_steps(9, None, None) == (6, 4)
    with pytest.raises(UserError, match="observer 'entropy'"):
        make_quantizer(QuantConfig(), is_qat=False, observer="entropy")
    with pytest.raises(UserError, match="no images"):
        quantize_ptq(student, iter([]), QuantConfig())
    with pytest.raises(UserError, match=".backbone and .head"):
        prepare_qat(torch.nn.Conv2d(3, 3, 1), _images(1), QuantConfig())


def test_recipe_rejects_bad_quant_stages():
    from compressdet.recipe import parse_recipe

    base = "name: r\ndata: {format: synth}\nstages:\n  - {name: s, kind: train, model: shuffledet_0.25x}\n"
    with pytest.raises(RecipeError, match="needs 'from"):
        parse_recipe(base + "  - {name: q, kind: qat}\n", check_paths=False)
    with pytest.raises(RecipeError, match="quant.backend"):
        parse_recipe(base + "  - {name: q, kind: qat, from: s, quant: {backend: arm}}\n", check_paths=False)
    with pytest.raises(RecipeError, match="method"):
        parse_recipe(base + "  - {name: p, kind: ptq, from: s, method: entropy}\n", check_paths=False)
    with pytest.raises(RecipeError, match="activations"):
        parse_recipe(base + "  - {name: p, kind: ptq, from: s, quant: {activations: s8}}\n", check_paths=False)
    with pytest.raises(RecipeError, match="head_int8"):
        parse_recipe(base + "  - {name: p, kind: ptq, from: s, quant: {head_int8: per_anchor}}\n", check_paths=False)
    with pytest.raises(RecipeError, match="head_weights"):
        parse_recipe(base + "  - {name: p, kind: ptq, from: s, quant: {head_weights: int4}}\n", check_paths=False)
    r = parse_recipe(base + "  - {name: q, kind: qat, from: s, freeze_bn_step: 5}\n", check_paths=False)
    q = r.stages[1].quant
    assert q.keep_head_float and q.head_weights == "int8" and q.head_int8 == "per_kind"
