"""Bench backends on the CPU: one way to open a model file for each backend name.

Used by the bench runner (accuracy, output checks) and by the timing child processes of
:mod:`compressdet.bench.latency` alike, so a backend is timed exactly as it is evaluated.
``open_backend(name, path, threads=)`` returns an :class:`OpenBackend`: ``fn(images np [N,3,H,W])
-> head np``, the input shape it accepts and the precision it really computes in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UserError

__all__ = ["OpenBackend", "open_backend", "CPU_BACKENDS", "float_counterpart", "shape_mismatch"]

#: backends that run on the CPU and are timed in isolated processes
CPU_BACKENDS = ("torch", "ort", "ort-int8", "openvino", "openvino-f32", "openvino-int8")


def shape_mismatch(shape: list, batch: int, size: tuple[int, int]) -> str | None:
    """None when a graph input of ``shape`` (None or a string for a dynamic axis) accepts ``[batch, 3, *size]``,
    else why not."""
    b, _, h, w = shape
    if isinstance(b, int) and b != batch:
        return f"graph has a static batch {b} (export with --dynamic-batch)"
    if (isinstance(h, int) and h != size[0]) or (isinstance(w, int) and w != size[1]):
        return f"graph input is {h}x{w}"
    return None


def float_counterpart(backend: str) -> str:
    """The float backend an int8 backend is compared with (``ort-int8`` -> ``ort``)."""
    return {"ort-int8": "ort", "openvino-int8": "openvino"}.get(backend, backend)


@dataclass
class OpenBackend:
    """A model opened on one backend.

    Attributes:
        fn: ``images float32 [N, 3, H, W] ->`` the raw outputs (numpy): ShuffleDet's head ``[N, 72, H/16,
            W/16]``, or a tuple in ``export_outputs`` order for an FPN family (every backend alike).
        input_shape: ``[N, 3, H, W]`` with None (or a string) for a dynamic axis; None: any shape.
        precision: what it computes in: ``fp32``, ``bf16``, ``fp16`` or ``int8``.
        info: extra (e.g. OpenVINO's ``inference_precision`` for the float parts of an int8 graph).
    """

    fn: Callable[[np.ndarray], np.ndarray]
    input_shape: list | None
    precision: str
    info: dict[str, Any] = field(default_factory=dict)


def _warn_int8_saturation() -> None:
    """Once per process: ORT INT8 on an x86 CPU without VNNI/AMX may not match PyTorch (saturating int16 sums)."""
    import warnings

    from .._cpu import INT8_SATURATION_NOTE, int8_dot_product

    if not int8_dot_product():
        warnings.warn(INT8_SATURATION_NOTE, RuntimeWarning, stacklevel=3)


def open_backend(backend: str, path: str | Path, *, threads: int | None = None) -> OpenBackend:
    """Open ``path`` on ``backend``.

    Args:
        backend: ``torch`` (a model file ``.pt``, or a quantized stage's ``.pt2`` int8 program: batch 1),
            ``ort``/``ort-int8`` (ONNX), ``openvino``/``openvino-f32``/``openvino-int8`` (IR ``.xml``).
        threads: intra-op threads (torch, ORT, OpenVINO's ``INFERENCE_NUM_THREADS``).

    Raises:
        UserError: unknown backend or a file it cannot open (MissingDependencyError for openvino).
    """
    path = Path(path)
    if backend == "torch":
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        if path.suffix == ".pt2":
            from .runner import _quantized_runner

            fn, shape = _quantized_runner(path)
            return OpenBackend(fn, shape, "int8")
        from ..models import load_model

        model, _ = load_model(path)
        model.eval()

        def run(x: np.ndarray) -> Any:  # the head, or every raw output of a multi-output family
            with torch.inference_mode():
                out = model(torch.from_numpy(x))
            return tuple(o.numpy() for o in out) if isinstance(out, (tuple, list)) else out.numpy()

        return OpenBackend(run, None, "fp32")
    if backend in ("ort", "ort-int8"):
        from ..export.runtime import onnx_input_shape, ort_run, ort_session

        try:
            sess = ort_session(path, threads=threads)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise UserError(f"{path}: ONNX Runtime cannot load it ({str(e).strip().splitlines()[0][:160]})") from None
        if backend == "ort-int8":
            _warn_int8_saturation()

        def run_ort(x: np.ndarray) -> Any:
            out = ort_run(sess, x)
            return out[0] if len(out) == 1 else tuple(out)

        return OpenBackend(run_ort, onnx_input_shape(sess), "int8" if backend == "ort-int8" else "fp32")
    if backend in ("openvino", "openvino-f32", "openvino-int8"):
        from ..export._openvino import PRECISIONS, OpenVINORunner

        r = OpenVINORunner(path, threads=threads, precision=PRECISIONS[backend], int8=backend == "openvino-int8")
        return OpenBackend(r, r.input_shape, r.precision, {"inference_precision": r.inference_precision,
                                                           "threads": r.threads})
    raise UserError(f"backend '{backend}' does not run on the CPU here (CPU backends: {', '.join(CPU_BACKENDS)})")
