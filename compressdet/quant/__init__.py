"""INT8 quantization: QAT with the teacher guiding, a PTQ baseline, and a fast QDQ ONNX graph.

Flow: ``prepare_qat`` (PT2E fake quant on a quantization-ready copy) -> ``train_qat`` ->
``convert`` -> ``export_int8_onnx``; or ``quantize_ptq`` (calibration only) -> ``export_int8_onnx``.
See docs/quantization.md for the design and the speed measurements.
"""

from ._fold import FeatureWrapper, PaddedStemConv, QuantUnit, quant_ready, shuffle_permutation
from ._pt2e import convert, freeze_bn, freeze_observers, make_quantizer
from .onnx_int8 import check_int8_graph, export_int8_onnx, ort_session
from .ptq import calibrate, quantize_ptq
from .qat import QatResult, prepare_qat, resolve_freeze_steps, train_qat

__all__ = ["quant_ready", "QuantUnit", "PaddedStemConv", "FeatureWrapper", "shuffle_permutation", "make_quantizer",
           "convert", "freeze_bn", "freeze_observers", "prepare_qat", "train_qat", "QatResult",
           "resolve_freeze_steps", "quantize_ptq", "calibrate", "export_int8_onnx", "check_int8_graph",
           "ort_session"]
