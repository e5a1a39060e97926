"""OpenVINO's INT8 placement for PT2E (``quant.quantizer: openvino``): NNCF decides where the quantizers go.

Why NNCF's setup rather than a hand-made one: OpenVINO's CPU plugin fuses int8 subgraphs in the shapes its
hardware config describes, and NNCF's ``MinMaxQuantization`` holds that config (its ignored and hardware
patterns for ``TargetDevice.CPU``). nncf 3.4 moved its torchao ``OpenVINOQuantizer`` into ExecuTorch (whose
wheel pins its own torch); the placement itself, ``MinMaxQuantization.find_quantization_setup`` on the
captured FX graph, is still NNCF's, and :func:`openvino_quantizer` only turns that setup into torchao
annotations, so ``prepare_pt2e`` / ``prepare_qat_pt2e`` / ``convert_pt2e`` run as for the x86 quantizer.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from ..errors import MissingDependencyError

__all__ = ["openvino_quantizer", "nncf_missing"]


def nncf_missing(what: str) -> str | None:
    """Why ``what`` cannot run here (one line naming the extra to install), or None when nncf and openvino
    import."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
        from nncf.experimental.torch.fx.nncf_graph_builder import GraphConverter  # noqa: F401
    except ImportError:
        return f"{what} needs NNCF and OpenVINO: pip install compressdet[openvino]"
    return None


def openvino_quantizer(*, is_qat: bool, observer: str = "histogram", reduce_range: bool = False,
                       field: str = "quant.quantizer") -> Any:
    """A torchao ``Quantizer`` placing int8 quantizers where NNCF places them for OpenVINO's CPU plugin.

    Weights: int8 symmetric per output channel, narrow range [-127, 127] (NNCF's 8-bit weight default).
    Activations: per tensor; a quantizer NNCF forces signed is int8 symmetric, any other u8 with a zero point
    the observer fits (0 after a ReLU, which is NNCF's unsigned symmetric). PTQ observes with ``observer``
    (``histogram`` or ``minmax``), QAT fake-quantizes with moving-average min/max observers.

    Raises:
        MissingDependencyError: nncf is not installed (the message names ``field`` and the extra).
    """
    why = nncf_missing(f"{field}: openvino")
    if why:
        raise MissingDependencyError(why)
    return _quantizer_class()(is_qat=is_qat, observer=observer, reduce_range=reduce_range)


_CLASS = None


def _quantizer_class() -> type:
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import nncf
    from nncf.common.quantization.structs import QuantizationPreset, QuantizationScheme
    from nncf.experimental.torch.fx.nncf_graph_builder import GraphConverter
    from nncf.experimental.torch.fx.node_utils import get_graph_node_by_name
    from nncf.quantization.algorithms.min_max.algorithm import MinMaxQuantization
    from nncf.torch.model_graph_manager import get_weight_tensor_port_ids
    from torchao.quantization.pt2e import (
        FakeQuantize,
        FusedMovingAvgObsFakeQuantize,
        HistogramObserver,
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        PerChannelMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation,
        QuantizationSpec,
        Quantizer,
        SharedQuantizationSpec,
    )

    annotation_key = "quantization_annotation"

    class OpenVinoPlacement(Quantizer):
        def __init__(self, *, is_qat: bool, observer: str, reduce_range: bool) -> None:
            super().__init__()
            self.is_qat, self.observer, self.reduce_range = is_qat, observer, reduce_range

        def _spec(self, qp: Any) -> QuantizationSpec:
            eps = 2 ** -12
            if qp.is_weight_quantization_point():
                if self.is_qat:
                    ctr = FusedMovingAvgObsFakeQuantize.with_args(
                        observer=MovingAveragePerChannelMinMaxObserver, eps=eps, quant_min=-127, quant_max=127,
                        dtype=torch.int8, qscheme=torch.per_channel_symmetric)
                else:
                    ctr = PerChannelMinMaxObserver.with_args(eps=eps)
                return QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127,
                                        qscheme=torch.per_channel_symmetric, ch_axis=0, is_dynamic=False,
                                        observer_or_fake_quant_ctr=ctr)
            signed = bool(qp.qconfig.signedness_to_force) and qp.qconfig.mode is QuantizationScheme.SYMMETRIC
            dtype, lo, hi = (torch.int8, -128, 127) if signed else (torch.uint8, 0, 255)
            if self.reduce_range:  # 7 bits: no u8*s8 pair sum saturates int16 on CPUs without VNNI
                lo, hi = (-64, 63) if signed else (0, 127)
            qscheme = torch.per_tensor_symmetric if signed else torch.per_tensor_affine
            if self.is_qat:
                ctr = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, eps=eps, quant_min=lo,
                                             quant_max=hi, dtype=dtype, qscheme=qscheme)
            else:
                ctr = (MinMaxObserver if self.observer == "minmax" else HistogramObserver).with_args(
                    eps=eps, quant_min=lo, quant_max=hi, dtype=dtype, qscheme=qscheme)
            return QuantizationSpec(dtype=dtype, quant_min=lo, quant_max=hi, qscheme=qscheme, is_dynamic=False,
                                    observer_or_fake_quant_ctr=ctr)

        @staticmethod
        def _edge_or_node(graph: torch.fx.Graph, nncf_graph: Any, qp: Any) -> Any:
            target = get_graph_node_by_name(graph, qp.insertion_point.target_node_name)
            if qp.is_weight_quantization_point():
                ports = get_weight_tensor_port_ids(nncf_graph.get_node_by_name(target.name), nncf_graph)
                return target.all_input_nodes[ports[0]], target
            port = qp.insertion_point.input_port_id
            return target if port is None else (target.all_input_nodes[port], target)

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            nncf_graph = GraphConverter.create_nncf_graph(model)
            algo = MinMaxQuantization(preset=QuantizationPreset.MIXED, target_device=nncf.TargetDevice.CPU)
            algo._set_backend_entity(model)
            setup = algo.find_quantization_setup(model, nncf_graph)
            annotations: dict[torch.fx.Node, QuantizationAnnotation] = defaultdict(QuantizationAnnotation)
            where = {qid: self._edge_or_node(model.graph, nncf_graph, qp)
                     for qid, qp in setup.quantization_points.items()}
            specs: dict[int, Any] = {qid: self._spec(qp) for qid, qp in setup.quantization_points.items()}
            for ids in setup.unified_scale_groups.values():  # one scale for every input of a concat / add
                ids = sorted(ids, key=lambda q: nncf_graph.get_node_by_name(
                    setup.quantization_points[q].insertion_point.target_node_name).node_id)
                for qid in ids[1:]:
                    specs[qid] = SharedQuantizationSpec(where[ids[0]])
            for qid, eon in where.items():
                if isinstance(eon, torch.fx.Node):
                    annotations[eon].output_qspec = specs[qid]
                else:
                    annotations[eon[1]].input_qspec_map[eon[0]] = specs[qid]
            self._conv_inputs_first(model, annotations)
            for node, ann in annotations.items():
                ann._annotated = True
                node.meta[annotation_key] = ann
            return model

        @staticmethod
        def _conv_inputs_first(model: torch.fx.GraphModule, annotations: dict) -> None:
            """Each annotated conv's map as (input, weight, bias): PT2E's QAT conv+BN rewrite reads it by
            position. Where NNCF quantizes a conv's input upstream (on its producer's output, or on the
            inputs of a max-pool or concat, which keep the scale), the conv's input edge shares that
            quantizer (one observer, one scale)."""
            convs = (torch.ops.aten.conv2d.default, torch.ops.aten.conv1d.default)
            for node in model.graph.nodes:
                ann = annotations.get(node) if node.op == "call_function" and node.target in convs else None
                if ann is None or not ann.input_qspec_map:
                    continue
                src, qmap = node.args[0], dict(ann.input_qspec_map)
                if src not in qmap:
                    shared = _upstream_quantizer(src, annotations)
                    if shared is not None:
                        qmap[src] = SharedQuantizationSpec(shared)
                ann.input_qspec_map = {a: qmap[a] for a in node.args[:3] if isinstance(a, torch.fx.Node) and a in qmap}

        def validate(self, model: torch.fx.GraphModule) -> None:
            return None

    keep_scale = {torch.ops.aten.max_pool2d.default, torch.ops.aten.cat.default}

    def _upstream_quantizer(node: Any, annotations: dict) -> Any:
        """The quantized output or edge ``node`` takes its values from unchanged: itself, or up through
        max-pools and concats (NNCF gives a concat's inputs one scale); None when there is none."""
        for _ in range(8):
            ann = annotations.get(node)
            if ann is not None and ann.output_qspec is not None:
                return node
            if ann is not None and ann.input_qspec_map:
                return next(iter(ann.input_qspec_map)), node
            if not isinstance(node, torch.fx.Node) or node.target not in keep_scale:
                return None
            node = node.args[0][0] if node.target == torch.ops.aten.cat.default else node.args[0]
        return None

    _CLASS = OpenVinoPlacement
    return _CLASS
