"""Export: ONNX (fp32, INT8 QDQ) and TensorRT, driven by one format table (:mod:`.formats`)."""

from .exporter import Exporter, ExportSource, export_model, resolve_source
from .formats import BACKENDS, FORMATS, ExportFormat, export_formats, get_format, validate_options

__all__ = ["export_model", "Exporter", "ExportSource", "resolve_source", "FORMATS", "BACKENDS", "ExportFormat",
           "export_formats", "get_format", "validate_options"]
