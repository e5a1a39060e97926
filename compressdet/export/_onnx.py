"""fp32 ONNX export with metadata and ORT verification.

Exporter choice: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript) for opset >= 18,
which traces ShuffleDet's channel shuffle and ``batched_nms`` cleanly. It implements opset 18 and up
only; its automatic down-conversion to 17 produced an invalid graph (``ReduceMax`` with an opset-18
attribute) in our tests, so an explicit ``--opset`` below 18 uses the TorchScript exporter instead.

The file is written to a temporary path, checked with ``onnx.checker``, run in ONNX Runtime against
PyTorch, and only renamed into place when the outputs agree: a failed export leaves no file.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from .._io import atomic_path
from ..conventions import MEAN_BGR
from ..errors import UserError
from .graph import DetectionGraph
from .runtime import max_abs_diff, ort_run, ort_session

__all__ = ["export_onnx", "prepare_model", "synthetic_image", "ExportVerificationError", "HEAD_OUTPUTS",
           "DET_OUTPUTS", "MIN_DYNAMO_OPSET"]

HEAD_OUTPUTS = ("head",)
DET_OUTPUTS = ("boxes", "scores", "labels")
MIN_DYNAMO_OPSET = 18


class ExportVerificationError(UserError):
    """ONNX Runtime disagrees with PyTorch beyond the tolerance (no file is written)."""


def prepare_model(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with gradients off (dropout off; training-only parts never run).

    Conv+BN folding is left to the ONNX optimizer / ORT graph optimizations, which do it exactly
    and keep the PyTorch model untouched.
    """
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def synthetic_image(image_size: tuple[int, int], seed: int = 0) -> Tensor:
    """A deterministic image-like input ``[1, 3, H, W]`` (BGR minus mean): gradients plus boxes.

    Used when no real image is at hand; smoother than noise so activations look like real ones.
    """
    g = torch.Generator().manual_seed(seed)
    H, W = image_size
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    img = torch.stack([60 + 120 * xx, 80 + 100 * yy, 100 + 80 * (1 - xx)]).clone()
    for _ in range(6):
        y0, x0 = int(torch.randint(0, max(H - 8, 1), (1,), generator=g)), int(torch.randint(0, max(W - 8, 1), (1,), generator=g))
        h, w = int(torch.randint(4, max(H // 3, 5), (1,), generator=g)), int(torch.randint(4, max(W // 4, 5), (1,), generator=g))
        img[:, y0:y0 + h, x0:x0 + w] = torch.rand(3, 1, 1, generator=g) * 255
    img = img + torch.randn(img.shape, generator=g) * 8
    mean = torch.tensor(MEAN_BGR).view(3, 1, 1)
    return (img.clamp(0, 255) - mean)[None].float()


def _metadata_props(model_proto: Any, metadata: dict[str, Any]) -> None:
    del model_proto.metadata_props[:]
    for k, v in metadata.items():
        entry = model_proto.metadata_props.add()
        entry.key = str(k)
        entry.value = v if isinstance(v, str) else json.dumps(v)


def _torch_outputs(module: nn.Module, x: Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(x)
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy() for o in out]


def matched_detection_diffs(a: Any, b: Any, tolerance: float) -> dict[str, float]:
    """Max |diff| of ``(boxes, scores, labels)`` between two score-sorted detection lists, each
    detection paired with its counterpart (same label, score within ``tolerance``, nearest box):
    scores equal to float rounding may come out of the two runtimes' top-k / NMS in either order.
    A different count, or a detection without a counterpart, is inf."""
    ab, as_, al = (np.asarray(t.detach().cpu() if hasattr(t, "detach") else t) for t in a[:3])
    bb, bs, bl = (np.asarray(t.detach().cpu() if hasattr(t, "detach") else t) for t in b[:3])
    inf = {"boxes": float("inf"), "scores": float("inf"), "labels": float("inf")}
    if len(as_) != len(bs):
        return inf
    used = np.zeros(len(bs), dtype=bool)
    worst_box = worst_score = 0.0
    for i in range(len(as_)):
        cand = np.flatnonzero(~used & (np.abs(bs - as_[i]) <= tolerance) & (bl == al[i]))
        if not len(cand):
            return inf
        box_d = np.abs(bb[cand].astype(np.float64) - ab[i]).max(axis=1)
        j = cand[int(box_d.argmin())]
        used[j] = True
        worst_box = max(worst_box, float(box_d.min()))
        worst_score = max(worst_score, float(abs(float(bs[j]) - float(as_[i]))))
    return {"boxes": worst_box, "scores": worst_score, "labels": 0.0}


def export_onnx(model: nn.Module, path: str | os.PathLike, *, image_size: tuple[int, int], opset: int = 18,
                dynamic_batch: bool = False, with_postprocess: bool = False, anchors: Tensor | None = None,
                postprocess: dict[str, Any] | None = None, num_classes: int = 3, num_anchors: int = 9,
                metadata: dict[str, Any] | None = None, tolerance: float = 1e-3, sample: Tensor | None = None,
                check_detections: Callable[[list[np.ndarray], Tensor], dict[str, Any]] | None = None,
                log: Callable[[str], None] = print, fp32_rewrites: bool | dict[str, Any] | None = True,
                output_names: tuple[str, ...] | None = None,
                graph_fn: Callable[[nn.Module], nn.Module] | None = None) -> dict[str, Any]:
    """Export ``model`` to ONNX at ``path`` and verify it in ONNX Runtime.

    Args:
        model: detector returning its raw outputs (ShuffleDet: the head ``[N, 72, H/16, W/16]``; FPN
            families: a tuple of tensors named by the model's ``export_outputs``).
        output_names: graph output names (default: ``model.export_outputs``, else ``head``).
        image_size: (H, W) input size baked into the graph.
        dynamic_batch: make the batch axis dynamic (not with ``with_postprocess``: that graph is batch 1).
        with_postprocess: end the graph in ``boxes [K, 4]``, ``scores [K]``, ``labels [K]``; needs ``anchors``
            (ShuffleDet's decode) or ``graph_fn``.
        graph_fn: ``raw-output module -> module ending in boxes/scores/labels`` (the family's own
            in-graph decode, e.g. ``TorchvisionDetector.detection_graph``).
        metadata: written to ``metadata_props`` (non-strings as JSON).
        tolerance: max |ORT - PyTorch| on every output.
        sample: ``[1, 3, H, W]`` verification input (default: :func:`synthetic_image`).
        check_detections: optional ``(ort_outputs, sample) -> info`` extra check (e.g. against
            ``PostProcessor``); it raises to fail the export.
        fp32_rewrites: exact float rewrites for ORT's fast kernels (:mod:`.fast_fp32`; True: the
            defaults, a dict: overrides, False: the model as it is). The graph is checked against
            the original model.

    Returns:
        ``{"path", "exporter", "opset", "max_abs_diff", "outputs", ...}``.

    Raises:
        ExportVerificationError: ORT and PyTorch disagree beyond ``tolerance`` (no file left).
    """
    if with_postprocess and dynamic_batch:
        raise UserError("--with-postprocess builds a batch-1 graph; drop --dynamic-batch")
    if with_postprocess and anchors is None and graph_fn is None:
        raise UserError("--with-postprocess needs the model's anchors")
    from .fast_fp32 import fast_fp32

    H, W = image_size
    original = prepare_model(model)
    base, applied = fast_fp32(original, fp32_rewrites)
    module: nn.Module = base
    def with_decode(net: nn.Module) -> nn.Module:
        if graph_fn is not None:
            return graph_fn(net).eval()
        return DetectionGraph(net, anchors, image_size=(H, W), num_classes=num_classes, num_anchors=num_anchors,
                              **(postprocess or {})).eval()

    if with_postprocess:
        module = with_decode(base)
    outputs = DET_OUTPUTS if with_postprocess else tuple(output_names or getattr(model, "export_outputs", HEAD_OUTPUTS))
    x = sample if sample is not None else synthetic_image((H, W))
    x = x[:1].float()
    if tuple(x.shape[-2:]) != (H, W):
        raise UserError(f"verification image is {x.shape[-2]}x{x.shape[-1]}, the model input is {H}x{W}")
    trace_x = x.repeat(2, 1, 1, 1) if dynamic_batch else x  # batch 1 would be specialised by torch.export
    exporter = "dynamo" if opset >= MIN_DYNAMO_OPSET else "torchscript"
    import onnx

    with atomic_path(path, suffix=".onnx.tmp") as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                dyn = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
                prog = torch.onnx.export(module, (trace_x,), dynamo=True, opset_version=opset,
                                         input_names=["images"], output_names=list(outputs),
                                         dynamic_shapes=dyn, verbose=False)
                proto = prog.model_proto
            else:
                dyn_axes = {"images": {0: "batch"}, **{o: {0: "batch"} for o in outputs}} if dynamic_batch else None
                torch.onnx.export(module, (trace_x,), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=["images"], output_names=list(outputs), dynamic_axes=dyn_axes)
                proto = onnx.load(str(tmp))
        for node in proto.graph.node:  # the exporter's debug info: stack traces with local paths (not reproducible)
            del node.metadata_props[:]
        meta = dict(metadata or {})
        meta.update(exporter=exporter, outputs=list(outputs), input="images float32 [N,3,H,W] BGR minus mean",
                    dynamic_batch=dynamic_batch, fp32_rewrites=applied)
        _metadata_props(proto, meta)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        sess = ort_session(tmp)
        ort_out = ort_run(sess, x.numpy())
        ref = _torch_outputs(module if base is original else (with_decode(original) if with_postprocess else original),
                             x)
        diffs = (matched_detection_diffs(ort_out, ref, tolerance) if with_postprocess else
                 {name: max_abs_diff(o, r) for name, o, r in zip(outputs, ort_out, ref)})
        worst = max(diffs.values())
        log(f"  ORT vs PyTorch ({exporter} exporter, opset {opset}): max |diff| "
            + ", ".join(f"{k}={v:.3g}" for k, v in diffs.items()) + f" (tolerance {tolerance:g})")
        if not worst <= tolerance:
            raise ExportVerificationError(
                f"{path}: ONNX Runtime output differs from PyTorch by {worst:.3g} > tolerance {tolerance:g} "
                f"({', '.join(f'{k}={v:.3g}' for k, v in diffs.items())}); no file written")
        extra = check_detections(ort_out, x) if check_detections else {}
    return {"path": str(path), "exporter": exporter, "opset": opset, "max_abs_diff": worst, "diffs": diffs,
            "outputs": list(outputs), "dynamic_batch": dynamic_batch, "fp32_rewrites": applied, **extra}
