"""Export-friendly decode + top-k + NMS, so an ONNX graph can end in boxes/scores/labels.

The PyTorch ``PostProcessor`` is written for clarity and per-image Python loops; this module redoes
the same maths with only traceable tensor ops (``torchvision.ops.batched_nms`` exports to ONNX
``NonMaxSuppression``). It works on one image (batch 1), the way deployed detectors are called.
Export verification checks it against ``PostProcessor`` on real outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models.postprocess import traceable_batched_nms

__all__ = ["DetectionGraph", "decode_head"]


def decode_head(head: Tensor, anchors: Tensor, num_classes: int, num_anchors: int,
                image_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Raw head output of one image -> (boxes xyxy [A, 4] clipped, scores [A], labels [A]).

    Uses the models' own ``split_head_output``/``scores_and_labels``/``BoxCoder`` (all plain tensor
    ops), so the graph and ``PostProcessor`` share one definition of the decode.

    Args:
        head: ``Tensor[1, K*(C+5), H/16, W/16]`` raw head output.
        anchors: ``Tensor[A, 4]`` (cx, cy, w, h) in model-input pixels.
    """
    from ..models.box_coder import BoxCoder
    from ..models.head import split_head_output
    from ..models.postprocess import scores_and_labels

    cls, conf, deltas = split_head_output(head, num_classes, num_anchors)
    scores, labels = scores_and_labels(cls[0], conf[0])
    boxes = BoxCoder(image_size).decode_xyxy(deltas[0].float(), anchors)
    return boxes, scores, labels


class DetectionGraph(nn.Module):
    """``model`` followed by decode, top-k, per-class NMS and the per-class cap (batch 1).

    Outputs ``boxes`` ``[K, 4]`` xyxy in model-input pixels, ``scores`` ``[K]``, ``labels`` ``[K]``
    (int64), sorted by score.
    """

    def __init__(self, model: nn.Module, anchors: Tensor, *, image_size: tuple[int, int], num_classes: int = 3,
                 num_anchors: int = 9, score_thresh: float = 0.0, nms_thresh: float = 0.4,
                 topk_candidates: int = 64, detections_per_class: int = 50):
        super().__init__()
        self.model = model
        self.register_buffer("anchors", anchors.float().clone(), persistent=False)
        self.image_size = tuple(image_size)
        self.num_classes, self.num_anchors = num_classes, num_anchors
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.topk_candidates, self.detections_per_class = topk_candidates, detections_per_class

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        head = self.model(images)
        boxes, scores, labels = decode_head(head, self.anchors, self.num_classes, self.num_anchors,
                                            self.image_size)
        k = min(self.topk_candidates, int(scores.shape[0]))
        scores, idx = scores.topk(k)
        boxes, labels = boxes[idx], labels[idx]
        boxes, scores, labels = traceable_batched_nms(boxes, scores, labels, self.nms_thresh, self.score_thresh)
        # rank of each detection within its class (keep is score-sorted): cap per class
        onehot = (labels[:, None] == torch.arange(self.num_classes, device=labels.device)[None]).to(torch.int64)
        rank = (torch.cumsum(onehot, dim=0) * onehot).sum(dim=1)
        keep = rank <= self.detections_per_class
        return boxes[keep], scores[keep], labels[keep]
