"""PT2E plumbing shared by QAT and PTQ: quantizer settings, capture, convert, freeze schedules.

Why PT2E with ``X86InductorQuantizer``: it is the maintained PyTorch quantization path (torchao),
it does per-channel symmetric int8 weights + per-tensor u8 activations and folds BN at convert,
and the converted program re-exports through ``torch.onnx.export(dynamo=True)`` to a QDQ ONNX
graph that ONNX Runtime and TensorRT consume (see docs/quantization.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ._conv_bn_passes import present_conv_kinds_only
from ._fold import FeatureWrapper, quant_ready
from ._fpn import CAPTURED_AS_IS, feature_wrapper, is_fpn, prediction_convs, split_shared_calls

__all__ = ["make_quantizer", "capture", "capture_options", "convert", "freeze_observers", "freeze_bn", "weight_masks",
           "check_prepared", "resolve_reduce_range"]


def _check_cfg(cfg: Any) -> None:
    if getattr(cfg, "backend", "x86") != "x86":
        raise UserError(f"quant.backend '{cfg.backend}' is not supported (only 'x86': torchao's X86InductorQuantizer)")


def resolve_reduce_range(cfg: Any) -> bool:
    """``quant.reduce_range`` as applied: ``auto`` is true for u8 activations on an x86 CPU without an int8
    dot product (VNNI / AMX, :func:`compressdet._cpu.int8_dot_product`). There ONNX Runtime's and OpenVINO's
    u8*s8 kernels add product pairs in saturating int16 (255 * 127 * 2 > 32767), which moved a tiny
    ShuffleDet's INT8 outputs by 40% of their range; 7-bit activations (127 * 127 * 2) cannot saturate."""
    from .. import _cpu

    value = getattr(cfg, "reduce_range", "auto")
    if value == "auto":
        return getattr(cfg, "activations", "u8") == "u8" and not _cpu.int8_dot_product()
    return bool(value)


def make_quantizer(cfg: Any, *, is_qat: bool, observer: str = "histogram", family: str = "shuffledet",
                   model: Any = None):
    """An ``X86InductorQuantizer`` for a ``QuantConfig`` (``cfg.quantizer: openvino``: NNCF's OpenVINO
    placement, :func:`._openvino.openvino_quantizer`).

    Weights: int8 symmetric, narrow range [-127, 127] (TensorRT needs zero-point 0; u8*s8 pair saturation
    on pre-VNNI CPUs takes 7-bit activations as well, ``reduce_range``), per output channel unless
    ``cfg.per_channel`` is False. Activations: per tensor, u8 affine or, with
    ``cfg.activations == "s8_symmetric"``, int8 with zero point 0 (TensorRT). ``cfg.keep_head_float`` keeps
    the head's output (box deltas and logits) float: with ``cfg.head_weights == "int8"`` the head conv
    gets int8 input and per-channel int8 weights but no output quantization (int32 accumulation,
    float out: no scale shared by anything), with ``"float"`` it stays an fp32 conv; otherwise
    ``cfg.head_int8 == "per_kind"`` keeps the concat of a :class:`~._fold.PerKindHead` float (one
    output scale per kind; capture with ``capture_options(cfg)``); ``cfg.float_stem``
    leaves the 3-input-channel stem conv in fp32 (see docs/quantization.md for why it is faster).

    ``cfg.reduce_range`` (:func:`resolve_reduce_range`) narrows activations to 7 bits ([0, 127] u8,
    [-64, 63] s8).

    ``family`` ``fcos`` / ``retinanet`` (graphs from :func:`capture` of a torchvision FPN detector):
    "the head's output" is its prediction convs' (``_fpn.prediction_convs``); the conv towers are
    quantized like the backbone. With ``keep_head_float`` and ``head_weights: int8`` a prediction conv
    gets int8 input and weights and a float output; ``head_weights: float`` keeps it fp32; without
    ``keep_head_float`` each prediction conv (one output kind each) gets its own output scale per
    level (``head_int8: shared`` has no meaning there). ``float_stem`` is ShuffleDet-only. ``family``
    ``yolo`` likewise, its prediction convs the last conv of each level's Detect branches (``model``: the
    float detector, whose Detect layer index names them).
    """
    from torchao.quantization.pt2e import (
        HistogramObserver,
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        PerChannelMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        get_default_x86_inductor_quantization_config,
    )

    _check_cfg(cfg)
    if not is_qat and observer not in ("minmax", "histogram"):
        raise UserError(f"PTQ observer '{observer}' is not supported (use 'minmax' or 'histogram')")
    reduce = resolve_reduce_range(cfg)
    if getattr(cfg, "quantizer", "x86") == "openvino":
        if family != "shuffledet":
            raise UserError(f"quant.quantizer: openvino supports the shuffledet family (this model is {family}); "
                            "use quantizer x86")
        from ._openvino import openvino_quantizer

        return openvino_quantizer(is_qat=is_qat, observer=observer, reduce_range=reduce)
    base = get_default_x86_inductor_quantization_config(is_qat=is_qat)
    w = base.weight
    if cfg.per_channel:
        wobs = MovingAveragePerChannelMinMaxObserver if is_qat else PerChannelMinMaxObserver
        qscheme = torch.per_channel_symmetric
    else:
        wobs = MovingAverageMinMaxObserver if is_qat else MinMaxObserver
        qscheme = torch.per_tensor_symmetric
    if is_qat:
        from torchao.quantization.pt2e import FusedMovingAvgObsFakeQuantize

        w_ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=wobs, eps=2 ** -12, quant_min=-127, quant_max=127,
                                                        dtype=torch.int8, qscheme=qscheme)
    else:
        w_ctr = wobs.with_args(eps=2 ** -12, quant_min=-127, quant_max=127, qscheme=qscheme)
    weight = dataclasses.replace(w, quant_min=-127, quant_max=127, qscheme=qscheme,
                                 ch_axis=0 if cfg.per_channel else None, observer_or_fake_quant_ctr=w_ctr)
    act = base.input_activation
    if not is_qat:
        aobs = MinMaxObserver if observer == "minmax" else HistogramObserver
        act = dataclasses.replace(act, observer_or_fake_quant_ctr=aobs.with_args(eps=2 ** -12))
    if getattr(cfg, "activations", "u8") == "s8_symmetric":  # TensorRT: int8, zero point 0
        act = dataclasses.replace(act, dtype=torch.int8, quant_min=-128, quant_max=127,
                                  qscheme=torch.per_tensor_symmetric)
    if reduce:  # 7 bits (the observers and fake quants take the spec's range)
        act = dataclasses.replace(act, quant_min=act.quant_min // 2, quant_max=act.quant_max // 2)
    qcfg = dataclasses.replace(base, input_activation=act, output_activation=act, weight=weight)
    q = _ort_quantizer_class()().set_global(qcfg)
    if family in CAPTURED_AS_IS:
        return _fpn_head_config(q, cfg, family, model)
    if cfg.keep_head_float:
        q.set_module_name_qconfig("head", None)
        if getattr(cfg, "head_weights", "float") == "int8":
            q.float_output_modules = ("head",)  # its convs: int8 input and weights, float output
    elif capture_options(cfg)["per_kind_head"]:
        q.set_module_name_qconfig("head.conv.merge", None)  # PerKindHead's concat: each part keeps its scale
    if getattr(cfg, "float_stem", False):
        q.set_module_name_qconfig("backbone.stem", None)
        q.set_module_name_qconfig("backbone.pool", None)
    return q


def _fpn_head_config(q: Any, cfg: Any, family: str, model: Any = None) -> Any:
    """The head settings of :func:`make_quantizer` for an FPN family (see there)."""
    if getattr(cfg, "float_stem", False):
        raise UserError(f"quant.float_stem is ShuffleDet-only (a {family} backbone has no 3x3 stem + max-pool "
                        "to keep float); remove it")
    if not cfg.keep_head_float and getattr(cfg, "head_int8", "per_kind") == "shared":
        raise UserError(f"quant.head_int8: shared is ShuffleDet-only: a {family} head has one prediction conv per "
                        "output kind, each with its own output scale (use per_kind, the default)")
    if cfg.keep_head_float:
        names = prediction_convs(family, model)
        for name in names:
            q.set_module_name_qconfig(name, None)
        if getattr(cfg, "head_weights", "float") == "int8":
            q.float_output_modules = names  # int8 input and weights, float output
            q.float_output_quantize_input = True  # the tower's output: quantized by its own observer
    return q


_ORT_QUANTIZER = None


def _ort_quantizer_class():
    """``X86InductorQuantizer`` with an ONNX Runtime friendly recipe (class built lazily: torchao import).

    The stock x86 recipe targets Inductor, which fuses conv+BN+add+ReLU and wants int8 in, fp32
    out: the residual conv's output stays float, and ORT then runs those convs in fp32 with
    Transposes around them. Here the conv+add fusions are disabled, every residual ``add`` gets
    quantized inputs and a quantized (ReLU) output, and any quantized pattern whose output feeds a
    op that does not quantize it as its input (the head) gets an output observer, so ORT fuses
    every conv into QLinearConv and adds into QLinearAdd. Convs of ``float_output_modules`` (an
    instance attribute) get int8 weights and a float output; their input is their producer's
    quantized output (the head: see ``_onnx_rewrites.float_out_conv_as_matmul``); with
    ``float_output_quantize_input`` (FPN heads, whose towers end in a float ReLU after GroupNorm)
    their input gets an activation observer too. Repeated calls of one module (an FPN head, once
    per level) are split into one partition per call first (``_fpn.split_shared_calls``).
    """
    global _ORT_QUANTIZER
    if _ORT_QUANTIZER is not None:
        return _ORT_QUANTIZER
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        QUANT_ANNOTATION_KEY,
        X86InductorQuantizer,
        _create_module_name_filter,
        _X86InductorQuantizationAnnotation,
    )

    aten = torch.ops.aten

    class OrtX86Quantizer(X86InductorQuantizer):
        def _annotate_qat_conv2d_bn_binary_unary(self, *a, **k):
            return None

        def _annotate_qat_conv2d_bn_binary(self, *a, **k):
            return None

        def _annotate_conv2d_binary_unary(self, *a, **k):
            return None

        def _annotate_conv2d_binary(self, *a, **k):
            return None

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            cfg = self.global_config
            split_shared_calls(model)  # no-op without repeated module calls (ShuffleDet)
            skip = [_create_module_name_filter(n) for n, c in self.module_name_qconfig.items() if c is None]
            if cfg is not None:
                act = cfg.input_activation
                for node in model.graph.nodes:
                    if (node.op == "call_function" and node.target == aten.avg_pool2d.default
                            and not any(f([node]) for f in skip) and QUANT_ANNOTATION_KEY not in node.meta):
                        # int8 in and out even when its producer is float (float stem -> max-pool)
                        node.meta[QUANT_ANNOTATION_KEY] = _X86InductorQuantizationAnnotation(
                            input_qspec_map={node.args[0]: act}, _annotated=True,
                            _is_output_of_quantized_pattern=True)
                        continue
                    if (node.op == "call_function" and node.target == aten.mul.Tensor
                            and not any(f([node]) for f in skip) and QUANT_ANNOTATION_KEY not in node.meta
                            and any(isinstance(a, torch.fx.Node) and a.op == "get_attr" for a in node.args[:2])):
                        # AvgPoolAsConv's border map: int8 in/out so ORT fuses it into QLinearMul
                        node.meta[QUANT_ANNOTATION_KEY] = _X86InductorQuantizationAnnotation(
                            input_qspec_map={a: act for a in node.args[:2] if isinstance(a, torch.fx.Node)},
                            output_qspec=act, _annotated=True, _is_output_of_quantized_pattern=True)
                        continue
                    if node.op != "call_function" or node.target not in (aten.add.Tensor, aten.add_.Tensor):
                        continue
                    if any(f([node]) for f in skip) or QUANT_ANNOTATION_KEY in node.meta:
                        continue
                    ins = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
                    users = list(node.users)
                    relu = users[0] if (len(users) == 1 and users[0].target in (aten.relu.default,
                                                                                aten.relu_.default)) else None
                    node.meta[QUANT_ANNOTATION_KEY] = _X86InductorQuantizationAnnotation(
                        input_qspec_map={a: act for a in ins}, output_qspec=None if relu else act,
                        _annotated=True, _is_output_of_quantized_pattern=relu is None)
                    if relu is not None:
                        relu.meta[QUANT_ANNOTATION_KEY] = _X86InductorQuantizationAnnotation(
                            output_qspec=act, _annotated=True, _is_output_of_quantized_pattern=True)
            super().annotate(model)
            if cfg is not None:
                _unfuse_hardswish(model, cfg.input_activation)
                for name in getattr(self, "float_output_modules", ()):
                    # weights only: the input is the feature's own quantized output (an observer
                    # here would see the training-mode dropout's 2x values and requantize coarser)
                    inside = _create_module_name_filter(name)
                    for node in model.graph.nodes:
                        if node.op == "call_function" and node.target == aten.conv2d.default and inside([node]):
                            qmap = {node.args[1]: cfg.weight}
                            if getattr(self, "float_output_quantize_input", False):
                                qmap = {node.args[0]: cfg.input_activation, **qmap}
                            node.meta[QUANT_ANNOTATION_KEY] = _X86InductorQuantizationAnnotation(
                                input_qspec_map=qmap, _annotated=True)
                for node in model.graph.nodes:
                    ann = node.meta.get(QUANT_ANNOTATION_KEY)
                    if (ann is None or not getattr(ann, "_is_output_of_quantized_pattern", False)
                            or ann.output_qspec is not None):
                        continue
                    if any(node not in (getattr(u.meta.get(QUANT_ANNOTATION_KEY), "input_qspec_map", None) or {})
                           for u in node.users):
                        ann.output_qspec = cfg.input_activation
            return model

    def _unfuse_hardswish(model: torch.fx.GraphModule, act: Any) -> None:
        """conv(+BN)+Hardswish (MobileNetV3): quantize the conv's own output, then the Hardswish.

        The x86 recipe fuses the Hardswish into the conv pattern (int8 out after the Hardswish);
        ONNX Runtime has no int8 conv + HardSwish kernel, so it left each such conv an fp32 conv
        (18 of 80 in fcos_mnv3_small). Quantized at the conv's output, the conv becomes a
        QLinearConv and the Hardswish a float op between a DQ and a Q. No effect on graphs
        without Hardswish (ShuffleDet)."""
        for node in model.graph.nodes:
            if node.op != "call_function" or node.target not in (aten.hardswish.default, aten.hardswish_.default):
                continue
            ann, src = node.meta.get(QUANT_ANNOTATION_KEY), node.args[0]
            if (ann is None or not getattr(ann, "_is_output_of_quantized_pattern", False) or ann.input_qspec_map
                    or not isinstance(src, torch.fx.Node)):
                continue  # not the tail of a fused conv pattern
            src_ann = src.meta.get(QUANT_ANNOTATION_KEY)
            if src_ann is None:
                src_ann = src.meta[QUANT_ANNOTATION_KEY] = _X86InductorQuantizationAnnotation(_annotated=True)
            src_ann.output_qspec, src_ann._is_output_of_quantized_pattern = act, True
            ann.input_qspec_map = {src: act}

    _ORT_QUANTIZER = OrtX86Quantizer
    return OrtX86Quantizer


def check_prepared(prepared: torch.fx.GraphModule) -> int:
    """Fail fast when the quantizer matched almost no conv; returns how many convs have a weight observer.

    A recipe keeps at most the head and the stem float, so fewer observed than unobserved convs means
    the patterns did not match this torch build (torchao 0.18 on torch 2.11 observed 0 of 53): better
    said before calibration or hours of QAT than by a float "INT8" graph at the end."""
    convs = [n for n in prepared.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.conv2d.default]
    observed = sum(isinstance(n.args[1], torch.fx.Node) and n.args[1].op == "call_module"
                   and "activation_post_process" in str(n.args[1].target) for n in convs)
    if convs and observed < len(convs) - observed:
        raise UserError(f"the INT8 quantizer matched only {observed} of {len(convs)} convs ({versions_tested()}): "
                        "install the pinned versions")
    return observed


def versions_tested() -> str:
    """The installed torch / torchao beside the pair the quantizer patterns are tested with."""
    import torchao

    return (f"torch {torch.__version__}, torchao {torchao.__version__}; compressdet is tested with torch 2.14.1 "
            "and torchao 0.18")


def capture_options(cfg: Any) -> dict[str, Any]:
    """The :func:`capture` arguments a ``QuantConfig`` implies (the head split). The openvino placement
    captures the plain graph, shuffles folded: the other rewrites shape it for ONNX Runtime's kernels."""
    if getattr(cfg, "quantizer", "x86") == "openvino":
        return {"pad_stem": None, "pool_as_conv": False, "pad_bottleneck": None}
    return {"per_kind_head": not cfg.keep_head_float and getattr(cfg, "head_int8", "shared") == "per_kind"}


def capture(model: nn.Module, example: torch.Tensor, *, fold_shuffle: bool = True, train: bool = True,
            pad_stem: int | None = 4, pool_as_conv: bool = True, pad_bottleneck: int | None = 16,
            per_kind_head: bool = False) -> torch.fx.GraphModule:
    """Quantization-ready copy of ``model`` captured with ``torch.export`` in training mode.

    The captured module returns ``(head_out, feature)`` so imitation can read the student's
    feature from the same (fake-quantised) graph (``pool_as_conv``: see ``_fold.AvgPoolAsConv``).
    QAT needs ``train=True`` (PT2E's QAT conv+BN
    patterns match training-mode batch norm); PTQ captures in eval mode so BN folds at prepare.

    A torchvision FPN detector (FCOS, RetinaNet) is captured as it is (:class:`_fpn.FpnFeatureWrapper`,
    returning ``((raw outputs...), [levels])``): the ShuffleNet rewrites (``fold_shuffle``, ``pad_stem``,
    ``pool_as_conv``, ``pad_bottleneck``, ``per_kind_head``) do not apply to it and are ignored.
    """
    if is_fpn(model):
        return _export_dynamic(feature_wrapper(model).train(train), example, {})
    if not hasattr(model, "backbone") or not hasattr(model, "head"):
        raise UserError(f"quantization needs a ShuffleDet-like model with .backbone and .head, got "
                        f"{type(model).__name__}")
    wrapped = FeatureWrapper(quant_ready(model, fold_shuffle=fold_shuffle, pad_stem=pad_stem, pool_as_conv=pool_as_conv,
                                         pad_bottleneck=pad_bottleneck, per_kind_head=per_kind_head))
    if pool_as_conv:  # one eager pass fixes AvgPoolAsConv's border maps (constants in the export)
        with torch.no_grad():
            wrapped.eval()(example[:1])
    wrapped.train(train)
    return _export_dynamic(wrapped, example, weight_masks(wrapped))


def _export_dynamic(wrapped: nn.Module, example: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.fx.GraphModule:
    """``torch.export`` of ``wrapped`` with a dynamic batch, as a GraphModule carrying ``masks``."""
    # batch stays dynamic: training batches, evaluation batches and the batch-1 export differ
    dyn = {"x": {0: torch.export.Dim.DYNAMIC}}
    if example.shape[0] == 1:  # a size-1 dim would be specialised
        example = example.expand(2, *example.shape[1:]).contiguous()
    gm = torch.export.export(wrapped, (example,), dynamic_shapes=dyn, strict=False).module()
    gm._compressdet_masks = masks  # names of the captured params differ; re-bound in rebind_masks
    return gm


def weight_masks(module: nn.Module) -> dict[str, torch.Tensor]:
    """``{param name: 0/1 mask}`` of every rewritten layer (folded, padded) whose zeros must stay."""
    out = {}
    for name, m in module.named_modules():
        if hasattr(m, "param_masks"):
            for param, mask in m.param_masks().items():
                out[f"{name}.{param}" if name else param] = mask
    return out


def apply_masks(gm: torch.fx.GraphModule) -> int:
    """Register gradient masks on the captured graph's folded conv weights; returns how many.

    ``torch.export`` keeps parameter names (dots become attribute paths), so the masks found on
    the eager copy bind by name. Without them QAT would fill the zeros of the folded convs.
    """
    masks = getattr(gm, "_compressdet_masks", {})
    params = dict(gm.named_parameters())
    n = 0
    for name, mask in masks.items():
        p = params.get(name)
        if p is None:
            continue
        with torch.no_grad():
            p.mul_(mask)
        p.register_hook(lambda g, m=mask: g * m)
        n += 1
    if masks and n != len(masks):
        raise RuntimeError(f"bound {n} of {len(masks)} folded-conv masks; parameter names changed in capture")
    return n


def convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Eval mode + ``convert_pt2e`` (folds BN, int8 weights as constants with dequantize nodes)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    move_exported_model_to_eval(prepared)
    with present_conv_kinds_only():  # torchao's BN fold for the conv kinds the graph has (same graph, 3x faster)
        return convert_pt2e(prepared)


def freeze_observers(prepared: torch.fx.GraphModule) -> None:
    """Stop updating activation/weight ranges (fake quant stays on): late QAT trains against fixed scales."""
    from torchao.quantization.pt2e import disable_observer

    prepared.apply(disable_observer)


def freeze_bn(prepared: torch.fx.GraphModule) -> None:
    """Use running BN statistics from now on (the folded weights stop moving with batch stats)."""
    from torchao.quantization.pt2e.export_utils import _replace_batchnorm

    _replace_batchnorm(prepared, train_to_eval=True)
