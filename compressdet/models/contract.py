"""The detector contract (issue #20): what a detector family owns, so stages never assume one.

A detector is an ``nn.Module`` whose ``forward(images)`` returns its *raw outputs*: one tensor
(ShuffleDet's ConvDet head ``[N, A*(C+5), H/16, W/16]``) or a tuple of tensors (torchvision
FCOS: ``(cls_logits [N, K, C], bbox_regression [N, K, 4], bbox_ctrness [N, K, 1])``; RetinaNet:
the first two), ``K`` the priors of all levels. Everything specific to the family sits behind
these members (stages, the engine, the distillers, the evaluator and the exporter call only them):

- ``family`` (``"shuffledet"``, ``"fcos"``, ``"retinanet"``), ``num_classes``, ``image_size``
  ``(H, W)``, ``arch`` (JSON dict that rebuilds it; ``arch["name"]`` is its registry name);
- ``priors(device=None)``: anchors (ShuffleDet: ``[A, 4]`` cx, cy, w, h; RetinaNet: ``[K, 4]``
  xyxy, torchvision's) or points (FCOS: ``[K, 4]`` xyxy boxes of one stride around each point);
- ``build_loss() -> nn.Module`` with ``loss(outputs, targets) -> {sub-loss: Tensor, "total"}``
  (compressdet targets: ``boxes`` xyxy model-input px, ``labels`` 0-based); ``loss(outputs,
  targets)`` is a shortcut;
- ``postprocessor(cfg=None) -> fn(outputs, orig_sizes=None) -> [{"boxes", "scores", "labels"}]``
  (``cfg``: a recipe ``PostprocessConfig``, a dict of its fields, or None for the defaults; boxes
  in each ``orig_sizes[i]`` when given, else model-input px); ``postprocess(outputs, orig_sizes)``;
- ``forward_with_features(x) -> (outputs, features)``: features are what distillation imitates,
  one Tensor (a single level: ShuffleDet) or a list (one per level, FPN families), in the order
  of ``feature_taps()`` -> ``[TapInfo(name, channels, stride)]`` (read from the layers: correct
  after pruning);
- ``distill_mask(gt_boxes, level_shapes=None, psi=0.5) -> [Bool[N, h, w]]`` per level: FGFI's
  anchor-IoU mask where there are anchors, the GT-box / centre-region mask for anchor-free heads;
- ``export_outputs``: the names of the raw output tensors an ONNX graph ends in (decode stays
  float and outside the graph unless ``--with-postprocess``: ShuffleDet's ``DetectionGraph``, the FPN
  families' ``detection_graph(cfg, net)``);
  ``export_metadata() -> dict`` (JSON-able, goes into the graph's ``metadata_props``).

Optional, for CrossKD's paper variant (issue #41; the FPN families have them, ShuffleDet does not):
``forward_with_tower(x, layer) -> (outputs, features, [(cls, reg)] per level)`` (the head towers'
features at ``layer``, before its activation), ``head_from_tower(tower, layer) -> outputs`` (the
rest of the head from there), ``head_tower_depth()``, ``head_tower_channels(layer, branch)`` and
``kd_normalizer(gt_boxes) -> (normaliser, valid priors or None)``.

:func:`is_detector` checks the members; :func:`outputs_float` and :func:`as_levels` are the small
helpers callers need to treat both output kinds alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["GlobalCountLoss", "TapInfo", "Detector", "is_detector", "outputs_float", "outputs_to", "as_levels",
           "CONTRACT_MEMBERS", "postprocess_kwargs"]

Outputs = Tensor | tuple[Tensor, ...]


@dataclass(frozen=True)
class TapInfo:
    """One feature level distillation reads: its name, channels and stride (input px per cell)."""

    name: str
    channels: int
    stride: int


@runtime_checkable
class Detector(Protocol):
    """The members every compressdet detector has (see the module docstring)."""

    family: str
    num_classes: int
    image_size: tuple[int, int]
    arch: dict[str, Any]
    export_outputs: tuple[str, ...]

    def __call__(self, x: Tensor) -> Outputs: ...

    def forward_with_features(self, x: Tensor) -> tuple[Outputs, Tensor | list[Tensor]]: ...

    def priors(self, device: torch.device | str | None = None) -> Tensor: ...

    def feature_taps(self) -> list[TapInfo]: ...

    def build_loss(self) -> torch.nn.Module: ...

    def loss(self, outputs: Outputs, targets: list[dict[str, Any]]) -> dict[str, Tensor]: ...

    def postprocessor(self, cfg: Any = None) -> Any: ...

    def postprocess(self, outputs: Outputs, orig_sizes: Sequence[Sequence[int]] | None = None
                    ) -> list[dict[str, Tensor]]: ...

    def distill_mask(self, gt_boxes: list[Tensor], level_shapes: Sequence[Sequence[int]] | None = None,
                     psi: float = 0.5) -> list[Tensor]: ...

    def export_metadata(self) -> dict[str, Any]: ...


CONTRACT_MEMBERS = ("family", "priors", "feature_taps", "build_loss", "loss", "postprocessor", "postprocess",
                    "forward_with_features", "distill_mask", "export_outputs", "export_metadata")


def is_detector(model: Any) -> bool:
    """True when ``model`` (unwrapped) has every contract member."""
    return all(hasattr(model, m) for m in CONTRACT_MEMBERS)


def outputs_float(outputs: Any) -> Outputs:
    """Raw outputs promoted to at least float32 (a tensor, or each tensor of a tuple/list)."""
    if isinstance(outputs, (tuple, list)):
        return tuple(outputs_float(o) for o in outputs)
    t = torch.as_tensor(outputs)
    return t.to(torch.promote_types(t.dtype, torch.float32))


def outputs_to(outputs: Any, device: torch.device | str) -> Outputs:
    if isinstance(outputs, (tuple, list)):
        return tuple(torch.as_tensor(o).to(device) for o in outputs)
    return torch.as_tensor(outputs).to(device)


def as_levels(features: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """One feature level (a Tensor) or several (a list) as a list."""
    return [features] if isinstance(features, Tensor) else list(features)


def postprocess_kwargs(cfg: Any) -> dict[str, Any]:
    """A recipe ``PostprocessConfig`` / dict / None -> its four fields as keyword arguments."""
    names = ("score_thresh", "nms_thresh", "topk_candidates", "detections_per_class")
    if cfg is None:
        return {}
    if isinstance(cfg, dict):
        return {k: v for k, v in cfg.items() if k in names}
    return {n: getattr(cfg, n) for n in names if hasattr(cfg, n)}


class GlobalCountLoss(torch.nn.Module):
    """``loss(outputs, targets)`` of a detector whose ``loss(..., with_count=True)`` also returns its
    normaliser (held by reference, not a submodule). Under DDP the trainer sets ``reduce_counts`` (a sum
    over processes): the normaliser becomes the global batch's, so ``W`` processes each return their part
    of one loss over the whole batch (the trainer scales gradients by ``W``), and distillers, whose
    normalisers are global too, keep their strength whatever ``W``."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.__dict__["model"] = model
        self.reduce_counts: Any = None

    def forward(self, outputs: Sequence[Tensor], targets: list[dict[str, Any]]) -> dict[str, Tensor]:
        if self.reduce_counts is None:
            return self.model.loss(outputs, targets)
        losses, count = self.model.loss(outputs, targets, with_count=True)
        total = self.reduce_counts(count.detach().clone())
        scale = (count.clamp(min=1) / total.clamp(min=1)).to(losses["total"].dtype)
        return {k: v * scale for k, v in losses.items()}
