"""Decode + NMS: raw head tensor -> ``{boxes, scores, labels}`` per image (METHOD.md section 2).

score = max_c(softmax(cls)_c * sigmoid(conf)); keep the ``topk_candidates`` best anchors; drop
scores below ``score_thresh``; per-class NMS (``torchvision.ops.batched_nms``) at ``nms_thresh``;
at most ``detections_per_class`` per class; boxes scaled from the model input to each original
image size. The defaults are the seed's (64, 0.4, 50, no threshold).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from .anchors import generate_anchors
from .box_coder import BoxCoder
from .head import split_head_output

__all__ = ["PostProcessor", "scores_and_labels", "traceable_batched_nms"]


def scores_and_labels(cls_logits: Tensor, conf_logits: Tensor) -> tuple[Tensor, Tensor]:
    """``score = max_c(softmax(cls)_c * sigmoid(conf))`` and its argmax class.

    Args:
        cls_logits: ``[..., A, C]``; conf_logits: ``[..., A]``.

    Returns:
        ``(scores [..., A], labels [..., A] int64)``.
    """
    probs = torch.softmax(cls_logits.float(), dim=-1) * torch.sigmoid(conf_logits.float())[..., None]
    scores, labels = probs.max(dim=-1)
    return scores, labels


def traceable_batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresh: float,
                          score_thresh: float, *, strict: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class NMS, then the score threshold, in ops that trace to ONNX (one image).

    ``batched_nms``'s class-offset trick, inlined: its empty-input branch is data-dependent and
    cannot be traced. Thresholding after NMS keeps the same boxes as before it: a box below the
    threshold never outranks, so never suppresses, one above it. ``strict`` keeps ``score >
    thresh`` (torchvision's detectors) instead of ``>=`` (ShuffleDet's ``PostProcessor``).
    Returns the kept ``(boxes, scores, labels)``, sorted by score.
    """
    from torchvision.ops import nms

    offsets = labels.to(boxes.dtype) * (boxes.max() + 1.0)
    keep = nms(boxes + offsets[:, None], scores, iou_thresh)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = scores > score_thresh if strict else scores >= score_thresh
    return boxes[keep], scores[keep], labels[keep]


def _keep_per_class(labels: Tensor, limit: int) -> Tensor:
    """Mask keeping the first ``limit`` entries of each label (entries already sorted by score)."""
    if labels.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=labels.device)
    onehot = torch.nn.functional.one_hot(labels, int(labels.max()) + 1)
    rank = (onehot.cumsum(0) * onehot).sum(1)  # 1-based rank inside its class
    return rank <= limit


class PostProcessor:
    """Turn raw head tensors into detections.

    Args:
        image_size: ``(H, W)`` model input (the anchors' frame).
        num_classes, num_anchors: the head layout.
        score_thresh: drop detections scoring below this (seed: 0, none).
        nms_thresh: IoU of the per-class NMS (seed: 0.4).
        topk_candidates: anchors kept by score before NMS (seed: 64).
        detections_per_class: at most this many per class after NMS (seed: 50).
        anchors: ``[A, 4]`` (cx, cy, w, h); ``None`` generates them for ``image_size``.
    """

    def __init__(self, image_size: Sequence[int], *, num_classes: int = 3, num_anchors: int = 9,
                 score_thresh: float = 0.0, nms_thresh: float = 0.4, topk_candidates: int = 64,
                 detections_per_class: int = 50, anchors: Tensor | None = None) -> None:
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.topk_candidates = int(topk_candidates)
        self.detections_per_class = int(detections_per_class)
        self.anchors = generate_anchors(self.image_size) if anchors is None else anchors
        self.box_coder = BoxCoder(self.image_size)

    @classmethod
    def from_config(cls, image_size: Sequence[int], cfg: object, **kwargs: object) -> PostProcessor:
        """Build from a recipe ``PostprocessConfig`` (or anything with its four attributes)."""
        names = ("score_thresh", "nms_thresh", "topk_candidates", "detections_per_class")
        return cls(image_size, **{n: getattr(cfg, n) for n in names}, **kwargs)

    def _anchors_on(self, device: torch.device) -> Tensor:
        if self.anchors.device != device:
            self.anchors = self.anchors.to(device)
        return self.anchors

    @torch.no_grad()
    def __call__(self, head_out: Tensor, orig_sizes: Sequence[Sequence[int]] | None = None) -> list[dict[str, Tensor]]:
        """Detections per image.

        Args:
            head_out: ``[N, A*(C+5), Hg, Wg]`` raw head tensor.
            orig_sizes: ``N`` pairs ``(H, W)``; boxes are scaled to them when given, else left in
                model-input pixels.

        Returns:
            ``N`` dicts ``{"boxes": [K, 4] xyxy float32, "scores": [K], "labels": [K] int64}``
            sorted by score.
        """
        cls_logits, conf_logits, deltas = split_head_output(head_out, self.num_classes, self.num_anchors)
        anchors = self._anchors_on(head_out.device)
        if anchors.shape[0] != deltas.shape[1]:
            raise ValueError(f"head output has {deltas.shape[1]} anchors but the post-processor was built for "
                             f"{self.image_size[0]}x{self.image_size[1]} ({anchors.shape[0]} anchors)")
        if orig_sizes is not None and len(orig_sizes) != head_out.shape[0]:
            raise ValueError(f"orig_sizes has {len(orig_sizes)} entries for a batch of {head_out.shape[0]}")
        scores, labels = scores_and_labels(cls_logits, conf_logits)
        results = []
        for i in range(head_out.shape[0]):
            k = min(self.topk_candidates, scores.shape[1])
            top_scores, idx = scores[i].topk(k)
            keep = top_scores >= self.score_thresh
            top_scores, idx = top_scores[keep], idx[keep]
            boxes = self.box_coder.decode_xyxy(deltas[i, idx].float(), anchors[idx])
            lab = labels[i, idx]
            kept = batched_nms(boxes, top_scores, lab, self.nms_thresh)  # sorted by score
            boxes, top_scores, lab = boxes[kept], top_scores[kept], lab[kept]
            per_class = _keep_per_class(lab, self.detections_per_class)
            boxes, top_scores, lab = boxes[per_class], top_scores[per_class], lab[per_class]
            if orig_sizes is not None:
                oh, ow = (float(v) for v in orig_sizes[i])
                scale = boxes.new_tensor([ow / self.image_size[1], oh / self.image_size[0]] * 2)
                boxes = boxes * scale
            results.append({"boxes": boxes, "scores": top_scores, "labels": lab})
        return results
