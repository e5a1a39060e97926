"""INT8 QDQ ONNX from a converted PT2E program, graph checks, and fast ONNX Runtime sessions.

The converted program is re-captured with ``torch.export`` and translated by
``torch.onnx.export(dynamo=True)``: QuantizeLinear/DequantizeLinear pairs on activations, int8
per-channel weight initializers behind DequantizeLinear, float conv biases (no DequantizeLinear
on a bias: TensorRT rejects int32 bias DQ, and ORT >= 1.20 quantizes float biases itself when it
fuses DQ -> Conv -> Q into QLinearConv). Speed comes mostly from the float-model rewrites done
before quantization (:mod:`compressdet.quant._fold`); docs/quantization.md has the measurements.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_path
from ..errors import ArtifactError
from ._onnx_rewrites import ORT_REWRITES, consumers

__all__ = ["export_int8_onnx", "check_int8_graph", "ort_session", "HeadOnly"]


class HeadOnly(nn.Module):
    """Deployment view of a captured ``(head_out, feature)`` program: the head output only."""

    def __init__(self, gm: nn.Module) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.gm(x)  # FPN families: ((raw outputs...), [levels]) -> the raw outputs' tuple
        return out[0] if isinstance(out, (tuple, list)) else out


def export_int8_onnx(converted: nn.Module, example: torch.Tensor, path: str | os.PathLike, *,
                     opset: int = 18, check: bool = True, ort_rewrites: bool | Iterable[str] = True,
                     output_names: Sequence[str] = ("head",)) -> Path:
    """Write the QDQ ONNX graph of a converted (int8) program; input ``images``, output ``head``
    (``output_names``: one name per raw output, e.g. an FPN family's ``export_outputs``).

    Args:
        converted: output of :func:`compressdet.quant.convert` (returns ``(head, feature)`` or ``head``).
        example: ``[1, 3, H, W]`` input fixing the static shape.
        path: destination ``.onnx`` (written atomically).
        opset: ONNX opset (>= 13 for per-axis QDQ; 18 is what the dynamo exporter emits natively).
        check: run :func:`check_int8_graph` on the result.
        ort_rewrites: apply the integer-domain rewrites of :mod:`._onnx_rewrites` (uint8 graphs
            only): pad after quantize, the stem conv on column pairs, int8 convs feeding float ops
            widened to a fast width, channel-repeated constants (border maps) stored once (all
            bit-identical in ORT), and an int8 conv with a float output (the default head) as an
            integer matmul (equal to float precision). Or the names of the passes to run
            (``_onnx_rewrites.ORT_REWRITES``, run in that table's order).

    Returns:
        ``path``.
    """
    import onnx

    mod = HeadOnly(converted)
    with torch.no_grad():
        ep = torch.export.export(mod, (example,), strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(ep, (example,), dynamo=True, opset_version=opset, input_names=["images"],
                                 output_names=list(output_names), verbose=False)
    model = prog.model_proto
    for node in model.graph.node:  # the exporter's debug info (stack traces, local paths): ~20% of the file
        del node.metadata_props[:]
    wanted = set(ORT_REWRITES if ort_rewrites is True else ort_rewrites or ())
    if wanted - set(ORT_REWRITES):
        raise ValueError(f"unknown ORT rewrites {sorted(wanted - set(ORT_REWRITES))} (known: {list(ORT_REWRITES)})")
    for name, rewrite in ORT_REWRITES.items():
        if name in wanted:
            rewrite(model)
    with atomic_path(path, suffix=".tmp.onnx") as tmp:
        onnx.save_model(model, str(tmp))
    if check:
        check_int8_graph(path)
    return Path(path)


def check_int8_graph(path: str | os.PathLike, *, require_per_channel: bool = True,
                     tensorrt: bool = False) -> dict[str, Any]:
    """Validate a QDQ graph for ORT and TensorRT; raises ``ArtifactError`` naming the first problem.

    Checks: ``onnx.checker``; no DequantizeLinear feeding a Conv bias; every quantized Conv weight
    has per-output-channel scales (``axis=0``, one scale per output channel) when
    ``require_per_channel``; weight zero points are 0 (symmetric). ``tensorrt``: also every
    Quantize/DequantizeLinear is int8 with zero point 0 (TensorRT's explicit quantization is
    symmetric int8 only) and every QuantizeLinear feeds only DequantizeLinear nodes. Always: most
    convs are int8 (fewer float convs than int8 ones; a recipe keeps at most the head and stem float).

    Returns:
        ``{"qdq_nodes", "int8_convs", "float_convs", "int8_matmuls"}`` counts (``int8_matmuls``: convs
        run as ``MatMulInteger`` with int8 weights, ``_onnx_rewrites.float_out_conv_as_matmul``).
    """
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:  # checker raises several types
        raise ArtifactError(f"{path}: onnx.checker failed: {str(e).splitlines()[0]}") from None
    producers = {o: n for n in m.graph.node for o in n.output}
    inits = {i.name: i for i in m.graph.initializer}
    consts = {n.output[0]: n for n in m.graph.node if n.op_type == "Constant"}

    def value(name: str):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    int8_convs = float_convs = int8_matmuls = 0
    for n in m.graph.node:
        if n.op_type == "MatMulInteger":
            w = value(n.input[1])
            if w is None or w.dtype != "int8" or (len(n.input) > 3 and n.input[3] and (value(n.input[3]) != 0).any()):
                raise ArtifactError(f"{path}: MatMulInteger '{n.name}' weight is not a symmetric int8 constant")
            int8_matmuls += 1
            continue
        if n.op_type != "Conv":
            continue
        if len(n.input) > 2 and n.input[2]:
            b = producers.get(n.input[2])
            if b is not None and b.op_type == "DequantizeLinear":
                raise ArtifactError(f"{path}: Conv '{n.name}' has a DequantizeLinear on its bias "
                                    "(TensorRT needs float biases)")
        wdq = producers.get(n.input[1])
        if wdq is None or wdq.op_type != "DequantizeLinear":
            float_convs += 1
            continue
        int8_convs += 1
        w, scale = value(wdq.input[0]), value(wdq.input[1])
        zp = value(wdq.input[2]) if len(wdq.input) > 2 and wdq.input[2] else None
        axis = next((a.i for a in wdq.attribute if a.name == "axis"), 1)
        if require_per_channel and (w is None or scale is None or scale.ndim != 1 or axis != 0
                                    or scale.shape[0] != w.shape[0]):
            raise ArtifactError(f"{path}: Conv '{n.name}' weight is not quantized per output channel "
                                f"(scale shape {None if scale is None else list(scale.shape)}, axis {axis})")
        if zp is not None and (zp != 0).any():
            raise ArtifactError(f"{path}: Conv '{n.name}' weight zero point is not 0 (TensorRT needs symmetric)")
    if tensorrt:
        users = consumers(m.graph)
        for n in m.graph.node:
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                continue
            zp = value(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            src = value(n.input[0]) if n.op_type == "DequantizeLinear" else None
            if zp is None and src is not None and src.dtype == "int8":
                continue  # an int8 constant (weights) without a zero point: 0 by definition
            if zp is None or zp.dtype != "int8" or (zp != 0).any():
                what = "no zero point" if zp is None else f"{zp.dtype} zero point {zp.ravel()[:1].tolist()}"
                raise ArtifactError(f"{path}: {n.op_type} '{n.name}' has {what}; TensorRT needs int8 with zero "
                                    "point 0 (quantize with quant.activations: s8_symmetric)")
            bad = [u for u in users.get(n.output[0], []) if u.op_type != "DequantizeLinear"]
            if bad and n.op_type == "QuantizeLinear":
                raise ArtifactError(f"{path}: QuantizeLinear '{n.name}' feeds {bad[0].op_type} "
                                    f"'{bad[0].name}'; TensorRT needs Q -> DQ pairs")
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in m.graph.node)
    if int8_convs == 0:
        raise ArtifactError(f"{path}: no quantized Conv found (is this an INT8 graph?)")
    if float_convs > int8_convs + int8_matmuls:
        # a recipe keeps at most the head and the stem float; a mostly float graph means the
        # quantizer's patterns matched almost nothing (seen with torch 2.11: 1 of 53 convs int8)
        from ._pt2e import versions_tested

        raise ArtifactError(f"{path}: {float_convs} of {float_convs + int8_convs + int8_matmuls} convs stayed "
                            f"float: the quantizer matched almost no pattern of this graph ({versions_tested()})")
    return {"qdq_nodes": qdq, "int8_convs": int8_convs, "float_convs": float_convs, "int8_matmuls": int8_matmuls}


def ort_session(path: str | os.PathLike, *, threads: int | None = None, opt_level: str = "all",
                profile: bool = False):
    """An ONNX Runtime CPU session with the settings the speed study picked (see docs/quantization.md).

    Args:
        threads: intra-op threads (``None``: ORT's default, all cores).
        opt_level: ``"basic" | "extended" | "all"`` (``all`` adds the NCHWc fp32 layout and NHWC int8
            transformers).
    """
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[opt_level]
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.enable_profiling = profile
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
