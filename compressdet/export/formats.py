"""The export format table: the one place that says what each format is and what it accepts.

Validation (``validate_options``), the CLI help text and the bench backends are all derived from
:data:`FORMATS`, so adding a format is one row here plus one ``export_<fmt>`` function.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

__all__ = ["ExportFormat", "FORMATS", "export_formats", "get_format", "validate_options",
           "BACKENDS", "backend_format", "formats_help"]


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Attributes:
        name: CLI/recipe name (``onnx``, ``onnx-int8``, ``openvino``, ``openvino-int8``, ``tensorrt``).
        suffix: file suffix of the artifact.
        artifact: manifest artifact key the export stage records it under.
        backend: bench backend that runs it (None: no bench backend, e.g. the Ultralytics checkpoint).
        cpu / gpu: where it runs.
        options: export options it accepts (anything else is rejected with the valid list).
        requires: formats that must be built first (their output is this one's input).
        extra: pip extra needed, if any.
        description: one line for the CLI help.
    """

    name: str
    suffix: str
    artifact: str
    backend: str | None
    cpu: bool
    gpu: bool
    options: tuple[str, ...]
    requires: tuple[str, ...] = ()
    extra: str | None = None
    description: str = ""


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("onnx", ".onnx", "onnx", "ort", True, True,
                 ("opset", "dynamic_batch", "with_postprocess", "tolerance"),
                 description="fp32 ONNX graph, checked in ONNX Runtime against PyTorch"),
    ExportFormat("onnx-int8", ".int8.onnx", "onnx_int8", "ort-int8", True, True,
                 ("opset", "dynamic_batch", "calibration_images"), requires=("onnx",),
                 description="INT8 QDQ ONNX graph (the QAT/PTQ stage's, or static PTQ of the fp32 graph)"),
    ExportFormat("openvino", ".xml", "openvino", "openvino", True, False,
                 ("opset", "dynamic_batch", "tolerance"), requires=("onnx",), extra="openvino",
                 description="OpenVINO IR (.xml + .bin) of the fp32 ONNX graph, checked against PyTorch"),
    ExportFormat("openvino-int8", ".int8.xml", "openvino_int8", "openvino-int8", True, False,
                 ("opset", "dynamic_batch", "calibration_images"), requires=("onnx-int8",), extra="openvino",
                 description="OpenVINO IR of the INT8 QDQ graph (the QAT/PTQ stage's int8 decisions, as deployed)"),
    ExportFormat("tensorrt", ".engine", "tensorrt", "tensorrt", False, True,
                 ("opset", "dynamic_batch", "int8", "workspace_gb"), requires=("onnx",), extra="tensorrt",
                 description="TensorRT engine built from the ONNX graph (fp16, or INT8 from the QDQ graph)"),
    ExportFormat("ultralytics", ".ultralytics.pt", "ultralytics", None, True, True, (), extra="ultralytics",
                 description="yolo models: Ultralytics checkpoint for YOLO(path) (same weights, checked)"),
)}

#: bench backends: ``torch`` runs the PyTorch model, the others run a format's artifact;
#: ``openvino-f32`` runs the ``openvino`` IR with ``INFERENCE_PRECISION_HINT=f32`` (exact fp32, where
#: ``openvino`` computes in OpenVINO's default precision: bf16 on CPUs with AVX512-BF16/AMX)
BACKENDS: dict[str, str | None] = {"torch": None, **{f.backend: f.name for f in FORMATS.values() if f.backend},
                                   "openvino-f32": "openvino"}


def export_formats() -> list[ExportFormat]:
    """All formats, in table order."""
    return list(FORMATS.values())


def get_format(name: str) -> ExportFormat:
    """Look a format up by name; a typo gets the closest name suggested.

    Raises:
        UserError: unknown name.
    """
    if name in FORMATS:
        return FORMATS[name]
    close = difflib.get_close_matches(name, list(FORMATS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"unknown export format '{name}'{hint}; formats: {', '.join(FORMATS)}")


def backend_format(backend: str) -> ExportFormat | None:
    """The format a bench backend runs (None for ``torch``).

    Raises:
        UserError: unknown backend, with the close match and the valid list.
    """
    if backend not in BACKENDS:
        close = difflib.get_close_matches(backend, list(BACKENDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown backend '{backend}'{hint}; backends: {', '.join(BACKENDS)}")
    name = BACKENDS[backend]
    return FORMATS[name] if name else None


def validate_options(fmt: str | ExportFormat, options: dict[str, Any]) -> None:
    """Reject options a format does not take (``None``/``False`` values count as not given).

    Raises:
        UserError: naming the option, the format and the options it accepts.
    """
    f = fmt if isinstance(fmt, ExportFormat) else get_format(fmt)
    for key, value in options.items():
        if value in (None, False):
            continue
        if key not in f.options:
            raise UserError(f"option '{key.replace('_', '-')}' is not valid for format '{f.name}' "
                            f"(valid: {', '.join(o.replace('_', '-') for o in f.options)})")


def formats_help() -> str:
    """Text table for ``compressdet export --help``."""
    rows = [f"  {f.name:<13} {f.suffix:<15} {'cpu' if f.cpu else '-':<4}{'gpu' if f.gpu else '-':<4} "
            f"{f.description}" for f in FORMATS.values()]
    return "formats:\n" + "\n".join(rows)
