"""ONNX Runtime helpers shared by export verification and bench.

Kept apart from the exporters so bench can run an ONNX file without importing the export code.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..errors import MissingDependencyError

__all__ = ["ort_session", "ort_run", "max_abs_diff", "detection_agreement", "onnx_metadata",
           "onnx_input_shape", "raw_outputs", "outputs_max_abs_diff", "detection_decoder"]


def ort_session(path: str | os.PathLike, *, threads: int | None = None, providers: Sequence[str] | None = None):
    """An ``onnxruntime.InferenceSession`` on CPU (or the given providers), ``threads`` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - a hard dependency
        raise MissingDependencyError("ONNX Runtime is not installed (pip install onnxruntime)") from None
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=list(providers or ["CPUExecutionProvider"]))


def ort_run(session: Any, images: np.ndarray) -> list[np.ndarray]:
    """Run ``session`` on ``images`` (``float32 [N, 3, H, W]``) fed to its first input."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(images, dtype=np.float32)})


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b|; shapes must agree (a shape mismatch is reported as inf)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def raw_outputs(out: Any) -> Any:
    """A model's or a runtime's raw outputs as numpy: one array (a single output, ShuffleDet's head)
    or a tuple of arrays (the FPN families' ``export_outputs``), whatever produced them (torch, ORT's
    list, OpenVINO), so checks and decodes treat every family alike."""
    def one(o: Any) -> np.ndarray:
        return o.detach().cpu().numpy() if hasattr(o, "detach") else np.asarray(o)

    if isinstance(out, (tuple, list)):
        return one(out[0]) if len(out) == 1 else tuple(one(o) for o in out)
    return one(out)


def raw_outputs_torch(out: Any) -> Any:
    """:func:`raw_outputs` as CPU tensors (one, or a tuple): what a family's postprocessor decodes."""
    import torch

    out = raw_outputs(out)
    if isinstance(out, tuple):
        return tuple(torch.from_numpy(np.ascontiguousarray(o)) for o in out)
    return torch.from_numpy(np.ascontiguousarray(out))


def outputs_max_abs_diff(a: Any, b: Any) -> float:
    """Largest |a - b| over all raw outputs (paired in order); a different count or shape is inf."""
    a, b = raw_outputs(a), raw_outputs(b)
    if isinstance(a, tuple) or isinstance(b, tuple):
        if not (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)):
            return float("inf")
        return max(max_abs_diff(x, y) for x, y in zip(a, b))
    return max_abs_diff(a, b)


def detection_decoder(model: Any, postprocess: Any = None, *, image_size: Sequence[int] | None = None,
                      top: int = 20):
    """``fn(raw outputs of a batch) -> {"boxes", "labels"}`` of its first image (best ``top``), decoded by
    the model's own ``postprocessor`` (detector contract), so agreement checks need no family case.

    A module off the contract (no ``postprocessor``) is decoded as ShuffleDet's head, as before.
    """
    from ..models.contract import is_detector

    if is_detector(model):
        pp = model.postprocessor(postprocess or None)
    else:
        from ..models.postprocess import PostProcessor

        pp = PostProcessor(tuple(image_size or model.image_size), num_classes=int(getattr(model, "num_classes", 3)),
                           **(postprocess or {}))

    def decode(out: Any) -> dict[str, Any]:
        d = pp(raw_outputs_torch(out))[0]
        return {"boxes": d["boxes"][:top], "labels": d["labels"][:top]}

    return decode


def detection_agreement(ref: dict[str, Any], other: dict[str, Any], iou: float = 0.5) -> float:
    """Fraction of ``ref`` detections matched by an ``other`` detection of the same label at IoU >= ``iou``.

    Args:
        ref / other: ``{"boxes": [K, 4] xyxy, "labels": [K]}`` (tensors or arrays).

    Returns:
        1.0 when ``ref`` is empty and ``other`` is too, else the matched fraction in [0, 1].
    """
    import torch
    from torchvision.ops import box_iou

    rb, rl = torch.as_tensor(np.asarray(ref["boxes"])).float(), torch.as_tensor(np.asarray(ref["labels"]))
    ob, ol = torch.as_tensor(np.asarray(other["boxes"])).float(), torch.as_tensor(np.asarray(other["labels"]))
    if len(rb) == 0:
        return 1.0 if len(ob) == 0 else 0.0
    if len(ob) == 0:
        return 0.0
    m = (box_iou(rb, ob) >= iou) & (rl[:, None] == ol[None, :])
    return float(m.any(dim=1).float().mean())


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (read without loading weights into ORT)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def onnx_input_shape(session: Any) -> list[int | str | None]:
    """Shape of the session's first input (a string/None for a dynamic axis)."""
    return list(session.get_inputs()[0].shape)

