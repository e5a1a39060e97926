"""INT8 QDQ ONNX: static PTQ of the fp32 graph with ONNX Runtime, or a QAT/PTQ stage's own graph.

``quantize_static`` in QDQ format with per-channel signed weights and unsigned activations is what
TensorRT and ORT's CPU/GPU INT8 kernels both consume, so one INT8 file serves every backend.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .._io import atomic_path
from ..errors import UserError
from .runtime import ort_run, ort_session, outputs_max_abs_diff, raw_outputs

__all__ = ["ImageCalibrationReader", "quantize_onnx_int8", "copy_onnx_int8", "count_qdq", "verify_int8",
           "copy_onnx_int8_with_metadata"]


def _reader_base():
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class ImageCalibrationReader(_reader_base()):  # type: ignore[misc]
    """Feeds calibration images (``float32 [1, 3, H, W]`` each) to ``quantize_static``.

    Args:
        images: iterable of ``[3, H, W]`` or ``[1, 3, H, W]`` arrays/tensors, model-ready.
        input_name: the graph input (``images``).
        batch: stack this many per feed (the fp32 graph must then have a dynamic batch).
    """

    def __init__(self, images: Iterable[Any], input_name: str = "images", batch: int = 1):
        self._images = [np.asarray(i, dtype=np.float32).reshape(-1, *np.asarray(i).shape[-3:]) for i in images]
        if not self._images:
            raise UserError("INT8 calibration needs at least one image")
        self.input_name, self.batch = input_name, batch
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self._images)

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self._images), self.batch):
            yield {self.input_name: np.concatenate(self._images[i:i + self.batch], axis=0)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._feeds()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def count_qdq(path: str | os.PathLike) -> dict[str, int]:
    """Number of QuantizeLinear / DequantizeLinear nodes (a QDQ graph has both)."""
    import onnx

    m = onnx.load(str(path))
    ops = [n.op_type for n in m.graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear")}


def verify_int8(int8_path: str | os.PathLike, fp32_path: str | os.PathLike, images: list[np.ndarray],
                decode: Callable[[Any], dict[str, Any]] | None = None,
                agreement: Callable[[dict, dict], float] | None = None) -> dict[str, Any]:
    """Run the INT8 and fp32 graphs on ``images``; report max |diff| (over all outputs) and detection
    agreement (``decode`` gets the raw outputs: one array, or a tuple for a multi-output graph).

    Raises:
        UserError: the INT8 graph has no QDQ nodes or produces non-finite outputs.
    """
    q = count_qdq(int8_path)
    if not (q["QuantizeLinear"] and q["DequantizeLinear"]):
        raise UserError(f"{int8_path}: not a QDQ graph (no QuantizeLinear/DequantizeLinear nodes)")
    s8, s32 = ort_session(int8_path), ort_session(fp32_path)
    diffs, agree = [], []
    for img in images:
        x = np.asarray(img, dtype=np.float32).reshape(1, *np.asarray(img).shape[-3:])
        # every raw output (one head tensor, or an FPN family's tuple), not just the first
        o8, o32 = raw_outputs(ort_run(s8, x)), raw_outputs(ort_run(s32, x))
        if not all(np.isfinite(o).all() for o in (o8 if isinstance(o8, tuple) else (o8,))):
            raise UserError(f"{int8_path}: INT8 graph produced non-finite outputs")
        diffs.append(outputs_max_abs_diff(o8, o32))
        if decode is not None and agreement is not None:
            agree.append(agreement(decode(o32), decode(o8)))
    out: dict[str, Any] = {"max_abs_diff_vs_fp32": float(max(diffs)), "qdq_nodes": q, "images": len(images)}
    if agree:
        out["detection_agreement"] = float(np.mean(agree))
    return out


def quantize_onnx_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, images: Iterable[Any], *,
                       per_channel: bool = True, method: str = "minmax", symmetric: bool = False) -> Path:
    """Static PTQ of an fp32 ONNX graph into a QDQ graph (s8 weights per channel, u8 activations).

    Args:
        images: calibration inputs, model-ready (BGR minus mean).
        method: ``minmax``, ``entropy`` or ``percentile`` (ORT's calibration methods).
        symmetric: int8 activations with zero point 0 (what TensorRT accepts) instead of u8 affine.

    Returns:
        ``out_path`` (written atomically).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise UserError(f"unknown calibration method '{method}' (valid: {', '.join(methods)})")
    reader = ImageCalibrationReader(images)
    with tempfile.TemporaryDirectory(prefix="compressdet-ptq-") as td:
        pre = Path(td) / "pre.onnx"
        try:  # shape inference + graph cleanup so ORT can place Q/DQ around every conv
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation, not required
            shutil.copyfile(fp32_path, pre)
        with atomic_path(out_path, suffix=".onnx.tmp") as tmp:
            quantize_static(str(pre), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            weight_type=QuantType.QInt8,
                            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                            calibrate_method=methods[method],
                            # TensorRT also needs float biases (no int32 bias DequantizeLinear)
                            extra_options={"CalibTensorRangeSymmetric": symmetric, "ActivationSymmetric": symmetric,
                                           "QuantizeBias": not symmetric})
            _copy_metadata(fp32_path, tmp, {"precision": "int8", "quantization": f"ptq-{method} (onnxruntime)"
                                            + (", symmetric int8 activations" if symmetric else "")})
    return Path(out_path)


def copy_onnx_int8(src: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Copy a QAT/PTQ stage's already-exported INT8 graph (atomically)."""
    with atomic_path(out_path, suffix=".onnx.tmp") as tmp:
        shutil.copyfile(src, tmp)
    return Path(out_path)


def copy_onnx_int8_with_metadata(src: str | os.PathLike, out_path: str | os.PathLike,
                                 metadata: dict[str, Any]) -> Path:
    """Copy an INT8 graph unchanged, adding ``metadata_props`` (non-strings as JSON), atomically."""
    import onnx

    from ._onnx import _metadata_props

    m = onnx.load(str(src))
    props = {p.key: p.value for p in m.metadata_props}
    props.update(metadata)
    _metadata_props(m, props)
    with atomic_path(out_path, suffix=".onnx.tmp") as tmp:
        onnx.save(m, str(tmp))
    return Path(out_path)


def _copy_metadata(src: str | os.PathLike, dst: Path, extra: dict[str, str]) -> None:
    import onnx

    from ._onnx import _metadata_props

    s, d = onnx.load(str(src)), onnx.load(str(dst))
    props = {p.key: p.value for p in s.metadata_props}
    props.update({p.key: p.value for p in d.metadata_props})
    props.update(extra)
    _metadata_props(d, props)
    onnx.save(d, str(dst))
