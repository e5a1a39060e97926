"""INT8 for the torchvision FPN families (FCOS, RetinaNet): capture wrapper, head names, shared calls.

These detectors call one head (conv towers + prediction convs) once per FPN level. PT2E's quantizer
groups the nodes of a module by its name (``get_source_partitions``), so the five calls of one conv
become one partition with five outputs, which ``X86InductorQuantizer`` refuses ("conv partition has
more than one output node"). :func:`split_shared_calls` gives each call its own partition (torch.export
already numbers repeated calls in ``nn_module_stack``: ``...cls_logits@2``). Each call then gets its
own input/output observers, i.e. one activation scale per FPN level (the levels' ranges differ), while
the weight is still one parameter: every call's weight observer reads the same tensor, so all levels
quantize it identically, and QAT's gradients of all levels accumulate in that one parameter.

None of ShuffleDet's float rewrites (:mod:`._fold`) apply: the float model is captured as it is.
The box decode stays float and outside the graph (the model's ``postprocessor``).
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FPN_FAMILIES", "CAPTURED_AS_IS", "is_fpn", "FpnFeatureWrapper", "YoloFeatureWrapper", "feature_wrapper",
           "prediction_convs", "split_shared_calls"]

FPN_FAMILIES = ("fcos", "retinanet")
#: families captured as they are (no float rewrites), whose graph returns ``((raw outputs...), [levels])``
#: and whose loss, priors and distillation masks stay the float detector's: the FPN families and yolo
#: (Ultralytics' Detect head: one conv branch per level, no shared calls)
CAPTURED_AS_IS = (*FPN_FAMILIES, "yolo")

#: the head's last convs (their outputs are the raw outputs), per family, as module names in the capture
_PREDICTION_CONVS = {
    "fcos": ("det.head.classification_head.cls_logits", "det.head.regression_head.bbox_reg",
             "det.head.regression_head.bbox_ctrness"),
    "retinanet": ("det.head.classification_head.cls_logits", "det.head.regression_head.bbox_reg"),
}


def is_fpn(model: Any) -> bool:
    """True for a detector captured as it is (:data:`CAPTURED_AS_IS`: FCOS, RetinaNet, yolo)."""
    return getattr(model, "family", None) in CAPTURED_AS_IS


def prediction_convs(family: str, model: Any = None) -> tuple[str, ...]:
    """Module names (in the captured :func:`feature_wrapper`) of the head's prediction convs; yolo's
    (the last conv of each level's box and class branch) depend on the Detect layer's index: ``model``."""
    if family == "yolo":
        i = len(model.net.model) - 1
        return tuple(f"net.model.{i}.{branch}.{j}.{len(seq) - 1}" for branch in ("cv2", "cv3")
                     for j, seq in enumerate(getattr(model.head, branch)))
    return _PREDICTION_CONVS[family]


class FpnFeatureWrapper(nn.Module):
    """``forward(x) -> ((raw outputs...), [P3, ..., P7])`` of a copy of a ``TorchvisionDetector``.

    Holds the torchvision detector as ``det`` (module names ``det.backbone...``, ``det.head...``
    as in the float model), so a QAT graph exposes the FPN levels distillation reads next to the
    raw outputs (``forward_with_features``); deployment keeps only the outputs (``HeadOnly``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.det = copy.deepcopy(model.det)
        self.export_outputs = tuple(model.export_outputs)

    def forward(self, x: Tensor) -> tuple[tuple[Tensor, ...], list[Tensor]]:
        f = self.det.backbone(x)
        feats = [f] if isinstance(f, Tensor) else list(f.values())
        head = self.det.head(feats)
        return tuple(head[k] for k in self.export_outputs), feats


class YoloFeatureWrapper(nn.Module):
    """``forward(x) -> ((box_dist, cls_logits), [P3, P4, P5])`` of a copy of a ``YoloDetector`` (module names
    ``net.model.<i>...`` as in the float model; the input adapter to RGB / 255 is in the graph)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        det = copy.deepcopy(model)
        self.__dict__["_det"] = det  # its routing and input adapter, not a submodule: the weights are in .net
        self.net = det.net  # module names net.model.<i>...: what the quantizer's filters name (prediction_convs)
        self.export_outputs = tuple(model.export_outputs)

    def forward(self, x: Tensor) -> tuple[tuple[Tensor, ...], list[Tensor]]:
        return self.__dict__["_det"].forward_with_features(x)


def feature_wrapper(model: nn.Module) -> nn.Module:
    """The capture wrapper of a family in :data:`CAPTURED_AS_IS`."""
    return YoloFeatureWrapper(model) if getattr(model, "family", None) == "yolo" else FpnFeatureWrapper(model)


def _module_class(cls: Any) -> Any:
    """``nn_module_stack`` holds the class or its dotted name; the class (or the name when unknown)."""
    if not isinstance(cls, str):
        return cls
    mod, _, name = cls.rpartition(".")
    try:
        return getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError):
        return cls


def split_shared_calls(gm: torch.fx.GraphModule) -> int:
    """Give every repeated call of a module its own source partition; returns the nodes re-labelled.

    ``torch.export`` marks the 2nd, 3rd, ... call of a module with ``@1``, ``@2`` in the
    ``nn_module_stack`` key; without a ``source_fn_stack`` (non-strict export), PT2E partitions by
    the module's name only, merging the calls. Setting ``source_fn_stack`` to ``(name@k, class)``
    makes ``get_source_partitions`` see one partition per call (the first call keeps the plain
    name). Module-name filters (``set_module_name_qconfig``) read ``nn_module_stack``'s names,
    which stay as they are. A graph without repeated calls (ShuffleDet) is left untouched.
    """
    n = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.meta.get("source_fn_stack") is not None:
            continue
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        key, (fqn, cls) = next(reversed(stack.items()))
        if "@" not in key:
            continue
        node.meta["source_fn_stack"] = [(f"{fqn}@{key.rsplit('@', 1)[1]}", _module_class(cls))]
        n += 1
    return n
