"""AP of any head-producing callable (PyTorch module, quantized program, ORT session) on val.

One evaluator for every form of the model, so fp32 / PTQ / QAT / ORT-INT8 numbers in a report
differ only by the model, never by the decode or the protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["evaluate_head_fn", "ort_head_fn", "openvino_head_fn", "torch_head_fn"]


def torch_head_fn(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images -> head`` for a module returning the head or ``(head, feature)`` (FPN families: the
    head is the tuple of raw outputs)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = module(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    return fn


def ort_head_fn(session: Any) -> Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]]:
    """``images -> head`` through an ONNX Runtime session (batch fed one image at a time); a graph
    with several outputs (FPN families' raw outputs) gives them all, as a tuple."""
    name = session.get_inputs()[0].name
    if len(session.get_outputs()) > 1:
        def multi(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            outs = [session.run(None, {name: x[i:i + 1].numpy().astype(np.float32)}) for i in range(x.shape[0])]
            return tuple(torch.from_numpy(np.concatenate(parts, 0)) for parts in zip(*outs))

        return multi

    def fn(x: torch.Tensor) -> torch.Tensor:
        outs = [session.run(None, {name: x[i:i + 1].numpy().astype(np.float32)})[0] for i in range(x.shape[0])]
        return torch.from_numpy(np.concatenate(outs, 0))

    return fn


def openvino_head_fn(path: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images -> head`` through OpenVINO's CPU plugin on an ONNX file (the openvino placement's runtime:
    its INT8 kernels are what that graph is checked on); one image at a time, one output."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU")

    def fn(x: torch.Tensor) -> torch.Tensor:
        outs = [compiled(x[i:i + 1].numpy().astype(np.float32))[0] for i in range(x.shape[0])]
        return torch.from_numpy(np.concatenate(outs, 0))

    return fn


def evaluate_head_fn(head_fn: Callable[[torch.Tensor], torch.Tensor], data_cfg: Any, *, post_cfg: Any = None,
                     eval_cfg: Any = None, split: str = "val", num_classes: int | None = None,
                     num_anchors: int = 9, model: Any = None) -> dict:
    """Evaluation of ``head_fn`` on ``split`` by the data's metric (KITTI AP or COCO AP, ``eval.metric``).

    Args:
        head_fn: ``Tensor[N, 3, H, W] -> Tensor[N, A*(C+5), H/16, W/16]`` (ShuffleDet) or the tuple of
            raw outputs (FPN families).
        data_cfg: the recipe's ``DataConfig``.
        post_cfg, eval_cfg: ``PostprocessConfig`` / ``EvalConfig`` (defaults when None).
        model: the float detector the program was quantized from; a non-ShuffleDet family's outputs
            are decoded by its own ``postprocessor(post_cfg)`` (float, outside the int8 graph).

    Returns:
        the evaluator's result dict (KITTI: ``map40``, ``map11``, ``ap`` ...; COCO: ``ap``, ``ap50`` ...;
        both ``metric`` and ``primary``), from the loop every stage and the bench share
        (:class:`compressdet.eval.evaluator.DetectionEvaluator`).
    """
    from ..eval.evaluator import DetectionEvaluator
    from ..models import PostProcessor
    from ..recipe import EvalConfig, PostprocessConfig

    post_cfg = post_cfg or PostprocessConfig()
    eval_cfg = eval_cfg or EvalConfig()
    classes = list(data_cfg.classes)
    if getattr(model, "family", "shuffledet") != "shuffledet":
        post = model.postprocessor(post_cfg)
    else:
        post = PostProcessor(tuple(data_cfg.image_size), num_classes=num_classes or len(classes),
                             num_anchors=num_anchors, score_thresh=post_cfg.score_thresh,
                             nms_thresh=post_cfg.nms_thresh, topk_candidates=post_cfg.topk_candidates,
                             detections_per_class=post_cfg.detections_per_class)
    ev = DetectionEvaluator(data_cfg, post=post, split=split, eval_cfg=eval_cfg, protocol=eval_cfg.protocol,
                            batch_size=eval_cfg.batch_size, max_images=eval_cfg.max_images)
    return ev(head_fn)
