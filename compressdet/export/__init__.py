"""Export: ONNX (fp32, INT8 QDQ) and TensorRT, driven by one format table (:mod:`.formats`).

The names below load on first use (PEP 562): a process that only *runs* exported graphs (a bench or
deploy timing child opening ONNX Runtime or OpenVINO through :mod:`.runtime` / :mod:`._openvino`)
then starts without importing torch and its exporters, seconds per child.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .exporter import Exporter, ExportSource, export_model, resolve_source
    from .formats import BACKENDS, FORMATS, ExportFormat, export_formats, get_format, validate_options

__all__ = ["export_model", "Exporter", "ExportSource", "resolve_source", "FORMATS", "BACKENDS", "ExportFormat",
           "export_formats", "get_format", "validate_options"]

_WHERE = {**dict.fromkeys(("export_model", "Exporter", "ExportSource", "resolve_source"), ".exporter"),
          **dict.fromkeys(("FORMATS", "BACKENDS", "ExportFormat", "export_formats", "get_format", "validate_options"),
                          ".formats")}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
