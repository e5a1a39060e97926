"""squeezeDet's detection loss (METHOD.md section 2), vectorised over the batch.

Each ground-truth box owns exactly one anchor (no IoU thresholds): the highest-IoU anchor not yet
taken in its image, else the nearest free anchor in (cx, cy, w, h). The assignment is sequential
per image, so it runs on small CPU tensors; everything after it is batched tensor maths.

Normalisation follows the squeezeDet code: ``N`` is the number of positives in the whole batch;
class and box losses are sums over the positives divided by ``N``; the confidence loss is a
per-image sum with weights ``75/N`` (positives) and ``100/(A-N)`` (negatives), averaged over the
images of the batch. Under DDP the trainer sets ``reduce_counts`` so ``N`` and the image count are
those of the global batch, which makes ``W`` processes compute exactly one process's loss.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, box_iou

__all__ = ["SqueezeDetLoss", "assign_anchors", "paired_iou"]

_EPS = 1e-16  # squeezeDet's EPSILON inside the logs


def assign_anchors(gt_boxes: Tensor, anchors: Tensor) -> Tensor:
    """One anchor per ground truth, squeezeDet's rule.

    Args:
        gt_boxes: ``Tensor[G, 4]`` xyxy, model-input pixels.
        anchors: ``Tensor[A, 4]`` (cx, cy, w, h).

    Returns:
        ``LongTensor[G]``: for GT ``g`` (in order), the free anchor of highest IoU; if no free
        anchor overlaps it, the free anchor nearest by L2 distance in (cx, cy, w, h).
    """
    g = gt_boxes.shape[0]
    out = torch.empty(g, dtype=torch.long)
    if g == 0:
        return out
    gt_boxes = gt_boxes.detach().float().cpu()
    anchors = anchors.detach().float().cpu()
    if anchors.shape[0] < g:
        raise ValueError(f"{g} ground-truth boxes but only {anchors.shape[0]} anchors")
    ious = box_iou(gt_boxes, box_convert(anchors, "cxcywh", "xyxy"))  # [G, A]
    top, first = ious.max(1)
    if bool((top > 0).all()) and first.unique().numel() == g:
        # each GT's best anchor overlaps it and no two GTs share one: the sequential rule picks exactly
        # these (a GT's best anchor is never taken before it), without a Python step per GT (#42)
        return first
    gt_c = box_convert(gt_boxes, "xyxy", "cxcywh")
    taken = torch.zeros(anchors.shape[0], dtype=torch.bool)
    for i in range(g):
        row = ious[i].masked_fill(taken, -1.0)
        best = int(row.argmax())
        if row[best] <= 0:
            dist = ((anchors - gt_c[i]) ** 2).sum(1).masked_fill(taken, float("inf"))
            best = int(dist.argmin())
        taken[best] = True
        out[i] = best
    return out


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of row ``i`` of ``a`` with row ``i`` of ``b``; both ``Tensor[P, 4]`` xyxy -> ``Tensor[P]``."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    return inter / (area_a + area_b - inter).clamp(min=1e-12)


class SqueezeDetLoss(nn.Module):
    """Class + confidence + box loss on the raw head tensor.

    Args:
        anchors: ``Tensor[A, 4]`` (cx, cy, w, h) in model-input pixels.
        num_classes: C.
        num_anchors: anchors per grid cell (9).
        image_size: (H, W) of the model input; decoded boxes are clipped to it for the IoU
            target, as squeezeDet does (None: no clipping).
        class_weight, conf_pos_weight, conf_neg_weight, box_weight: squeezeDet's 1, 75, 100, 5.
        reduce_counts: optional callable summing a small count tensor over processes (DDP).

    Call: ``loss(head_out [N, K*(C+5), Hg, Wg], targets)`` with targets a list of
    ``{"boxes": Tensor[G, 4] xyxy, "labels": int64[G]}``. Returns
    ``{"class", "confidence", "box", "total"}`` scalars.
    """

    def __init__(self, anchors: Tensor, num_classes: int = 3, num_anchors: int = 9, *,
                 image_size: tuple[int, int] | None = None, class_weight: float = 1.0,
                 conf_pos_weight: float = 75.0, conf_neg_weight: float = 100.0, box_weight: float = 5.0,
                 reduce_counts: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        from ..models.box_coder import BoxCoder

        self.register_buffer("anchors", anchors.detach().float().clone(), persistent=False)
        self._anchors_cpu = anchors.detach().float().cpu().clone()
        self.num_classes, self.num_anchors = num_classes, num_anchors
        self.image_size = tuple(image_size) if image_size is not None else None
        self.class_weight, self.conf_pos_weight = class_weight, conf_pos_weight
        self.conf_neg_weight, self.box_weight = conf_neg_weight, box_weight
        self.reduce_counts = reduce_counts
        self.box_coder = BoxCoder(self.image_size)

    def assign(self, targets: list[dict]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Flattened positives of the batch: (image index, anchor index, label, GT box xyxy)."""
        bidx, aidx, labels, boxes = [], [], [], []
        for i, t in enumerate(targets):
            b = t["boxes"].detach().float().cpu().reshape(-1, 4)
            a = assign_anchors(b, self._anchors_cpu)
            bidx.append(torch.full_like(a, i))
            aidx.append(a)
            labels.append(t["labels"].detach().cpu().long().reshape(-1))
            boxes.append(b)
        return torch.cat(bidx), torch.cat(aidx), torch.cat(labels), torch.cat(boxes)

    def forward(self, head_out: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        from ..models.head import split_head_output

        head_out = head_out.to(torch.promote_types(head_out.dtype, torch.float32))  # half -> float32, float64 stays
        cls_logits, conf_logits, deltas = split_head_output(head_out, self.num_classes, self.num_anchors)
        n_img, n_anchor = conf_logits.shape
        if n_anchor != self.anchors.shape[0]:
            raise ValueError(f"head output has {n_anchor} anchors, the loss was built for {self.anchors.shape[0]} "
                             "(model and data.image_size disagree)")
        if len(targets) != n_img:
            raise ValueError(f"{len(targets)} targets for a batch of {n_img} images")
        dev = head_out.device
        bidx, aidx, labels, gt = (x.to(dev) for x in self.assign(targets))
        counts = torch.tensor([float(bidx.numel()), float(n_img)], device=dev)
        if self.reduce_counts is not None:
            counts = self.reduce_counts(counts)
        n_pos = counts[0].clamp(min=1.0)
        n_images = counts[1]
        # class: BCE on the softmax output, positives only
        probs = cls_logits[bidx, aidx].softmax(-1)
        onehot = nn.functional.one_hot(labels, self.num_classes).to(probs.dtype)
        bce = -(onehot * torch.log(probs + _EPS) + (1 - onehot) * torch.log(1 - probs + _EPS))
        loss_class = self.class_weight * bce.sum() / n_pos
        # box: squared error of the deltas on positives
        anchors = self.anchors.to(dev)
        pos_anchors = anchors[aidx]
        gt_c = box_convert(gt, "xyxy", "cxcywh")
        pred_d = deltas[bidx, aidx]
        target_d = self.box_coder.encode(gt_c, pos_anchors)
        loss_box = self.box_weight * ((pred_d - target_d) ** 2).sum() / n_pos
        # confidence: target = IoU(decoded, GT) on positives (box detached), 0 elsewhere
        with torch.no_grad():
            dec = self.box_coder.decode_xyxy(pred_d.detach(), pos_anchors)  # clipped like squeezeDet
            iou = paired_iou(dec, gt)
            target = torch.zeros_like(conf_logits)
            target[bidx, aidx] = iou
            pos = torch.zeros_like(conf_logits, dtype=torch.bool)
            pos[bidx, aidx] = True
            weight = torch.where(pos, self.conf_pos_weight / n_pos,
                                 self.conf_neg_weight / (n_anchor - counts[0]).clamp(min=1.0))
        sq = (conf_logits.sigmoid() - target) ** 2
        loss_conf = (sq * weight).sum() / n_images.clamp(min=1.0)
        total = loss_class + loss_conf + loss_box
        return {"class": loss_class, "confidence": loss_conf, "box": loss_box, "total": total}
