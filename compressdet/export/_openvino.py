"""OpenVINO: IR conversion from the ONNX graphs and a CPU runner that says what it computed in.

Formats ``openvino`` (IR of the fp32 ONNX) and ``openvino-int8`` (IR of the QAT/PTQ stage's QDQ
ONNX: OpenVINO turns its Q/DQ pairs into int8 kernels, so the int8 decisions made in training are
the ones deployed). Optional: ``pip install compressdet[openvino]``.

Precision: on a CPU with AVX512-BF16/AMX OpenVINO computes float layers in **bf16** unless told
``INFERENCE_PRECISION_HINT=f32``; :class:`OpenVINORunner` reads the hint back from the compiled
model (``precision``), so a report never calls a bf16 run fp32. Threads: ``INFERENCE_NUM_THREADS``,
the same count ORT gets.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError, UserError
from .runtime import onnx_metadata

__all__ = ["openvino_unavailable", "check_openvino", "convert_to_ir", "save_ir", "OpenVINORunner", "ir_bin_path",
           "ir_metadata", "PRECISIONS", "RT_INFO_KEY"]

#: bench backend -> what the runner asks for (None: OpenVINO's default, bf16 where the CPU has it)
PRECISIONS: dict[str, str | None] = {"openvino": None, "openvino-f32": "f32", "openvino-int8": None}

#: rt_info section of an IR that holds the ONNX graph's compressdet metadata
RT_INFO_KEY = "compressdet"

_TYPE_NAMES = {"f32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16", "f16": "fp16",
               "float16": "fp16"}


def openvino_unavailable(purpose: str = "OpenVINO") -> str | None:
    """None when OpenVINO can run, else the reason (names the package and the extra)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return f"{purpose} needs the openvino package (pip install 'compressdet[openvino]')"
    return None


def check_openvino(purpose: str = "OpenVINO") -> None:
    """Raise :class:`MissingDependencyError` (exit 2) when OpenVINO is absent."""
    why = openvino_unavailable(purpose)
    if why:
        raise MissingDependencyError(why)


def ir_bin_path(xml: str | os.PathLike) -> Path:
    """The weights file that belongs to an IR ``.xml``."""
    return Path(xml).with_suffix(".bin")


def _stable_names(model: Any) -> None:
    """Replace OpenVINO's auto-generated node names (``Reshape_2572``: a process-wide counter, also on
    the constants folded when saving) by the node's type and position, so converting the same ONNX
    twice gives byte-identical IR files. Inputs and outputs keep their names (``images``, ``head``)."""
    for i, op in enumerate(model.get_ordered_ops()):
        kind = op.get_type_name()
        if kind not in ("Parameter", "Result") and re.fullmatch(r"[A-Za-z]+_\d+", op.get_friendly_name()):
            op.set_friendly_name(f"{kind}_{i}")


def ir_metadata(xml_path: str | os.PathLike) -> dict[str, str]:
    """The compressdet metadata an IR carries in its rt_info (the ONNX ``metadata_props`` it was converted
    from: ``classes``, ``input_size``, ``arch``, ...); ``{}`` for an IR without it.

    An IR converted before the ``compressdet`` section existed still has OpenVINO's own copy of the ONNX
    metadata under ``framework``, read as the fallback.
    """
    check_openvino("reading an OpenVINO IR")
    import openvino as ov

    xml_path = Path(xml_path)
    try:
        model = ov.Core().read_model(str(xml_path))
    except Exception as e:  # noqa: BLE001 - OpenVINO raises plain RuntimeErrors
        raise UserError(f"{xml_path}: OpenVINO cannot read it ({str(e).strip().splitlines()[0][:200]})") from None
    for section in (RT_INFO_KEY, "framework"):
        if model.has_rt_info([section]):
            info = model.get_rt_info([section]).value
            out = {str(k): str(v.astype(str) if hasattr(v, "astype") else v) for k, v in dict(info).items()}
            if out:
                return out
    return {}


def convert_to_ir(onnx_path: str | os.PathLike, xml_path: str | os.PathLike) -> dict[str, Any]:
    """Convert an ONNX graph to OpenVINO IR (``.xml`` + ``.bin``), weights kept in fp32/int8 as given.

    Both files are written into a temporary folder beside the target and renamed into place (the
    ``.bin`` first), so a killed conversion leaves no half IR. Converting the same ONNX file twice
    gives byte-identical files.

    Returns:
        ``{"path": xml, "bin": bin, "input_shape": [...]}``.
    """
    check_openvino("OpenVINO export")
    import openvino as ov

    onnx_path, xml_path = Path(onnx_path), Path(xml_path)
    if not onnx_path.is_file():
        raise UserError(f"{onnx_path}: ONNX file to convert to OpenVINO IR does not exist")
    # the graph's metadata (classes, input size, arch, postprocess, ...) under our own key, so an IR
    # copied without its ONNX still says what its outputs mean (ir_metadata reads it back)
    model = save_ir(ov.convert_model(str(onnx_path)), xml_path, onnx_metadata(onnx_path),
                    input_model=onnx_path.name)  # no local folder in the file
    shape = [d.get_length() if d.is_static else None for d in model.inputs[0].get_partial_shape()]
    return {"path": str(xml_path), "bin": str(ir_bin_path(xml_path)), "input_shape": shape}


def save_ir(model: Any, xml_path: str | os.PathLike, metadata: dict[str, str], *,
            input_model: str | None = None) -> Any:
    """Save an OpenVINO model as IR ``xml_path`` (+ ``.bin``) with stable node names and ``metadata``
    under :data:`RT_INFO_KEY` (``input_model``: the ``conversion_parameters`` entry to record), both
    files written in a temporary folder beside it and renamed into place, the ``.bin`` first; returns
    the model as saved. Shared by the export and NNCF's INT8 IR, so both are reproducible the same way.
    """
    import openvino as ov

    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{xml_path.name}.", dir=xml_path.parent))
    try:
        # saved once (constants get folded, with counter-made names), read back, renamed, saved for good
        ov.save_model(model, str(tmp / "first.xml"), compress_to_fp16=False)
        model = ov.Core().read_model(str(tmp / "first.xml"))
        _stable_names(model)
        if input_model is not None:
            model.set_rt_info(input_model, ["conversion_parameters", "input_model"])
        for key, value in sorted(metadata.items()):
            model.set_rt_info(value, [RT_INFO_KEY, key])
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        os.replace(tmp / "model.bin", ir_bin_path(xml_path))
        os.replace(tmp / "model.xml", xml_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model


class OpenVINORunner:
    """An IR (or ONNX) compiled for the CPU; ``__call__(images np [N,3,H,W]) -> raw outputs`` (the head
    array, or a tuple of arrays for a multi-output graph).

    Args:
        path: IR ``.xml`` (or an ``.onnx``).
        threads: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default).
        precision: ``"f32"`` forces exact fp32 (``INFERENCE_PRECISION_HINT=f32``); None keeps the default
            (bf16 on CPUs that have it).
        int8: the graph is a QDQ one (``precision`` then reads ``int8``, the float parts as ``inference_precision``).

    Attributes:
        precision: what the compiled model computes in: ``fp32``, ``bf16`` or ``int8``.
        inference_precision: the compiled model's ``INFERENCE_PRECISION_HINT`` (``fp32``/``bf16``/``fp16``).
        input_shape: ``[N, 3, H, W]`` (None for a dynamic axis).
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, precision: str | None = None,
                 int8: bool = False):
        check_openvino("the OpenVINO backend")
        import openvino as ov

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: OpenVINO model file does not exist")
        self.core = ov.Core()
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        try:
            model = self.core.read_model(str(path))
            self.compiled = self.core.compile_model(model, "CPU", config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises plain RuntimeErrors
            raise UserError(f"{path}: OpenVINO cannot load it ({str(e).strip().splitlines()[0][:200]})") from None
        hint = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        m = re.search(r"'([a-z0-9]+)'", hint)
        self.inference_precision = _TYPE_NAMES.get(m.group(1) if m else hint, hint)
        self.precision = "int8" if int8 else self.inference_precision
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self.request = self.compiled.create_infer_request()
        self.input_shape = [d.get_length() if d.is_static else None
                            for d in self.compiled.inputs[0].get_partial_shape()]

    def describe(self) -> dict[str, Any]:
        return {"precision": self.precision, "inference_precision": self.inference_precision, "threads": self.threads}

    def __call__(self, images: np.ndarray) -> Any:
        """The raw outputs: one array (a single-output graph), else a tuple in the graph's output order
        (the FPN families' ``export_outputs``), as ORT and the torch model give them."""
        out = self.request.infer({0: np.ascontiguousarray(images, dtype=np.float32)})
        vals = [np.asarray(out[o]) for o in self.compiled.outputs]
        return vals[0] if len(vals) == 1 else tuple(vals)
