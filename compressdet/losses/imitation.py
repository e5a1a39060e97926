"""Fine-grained feature imitation (Wang et al., CVPR 2019; METHOD.md section 3).

The student mimics the frozen teacher's last backbone feature only near objects: at grid cells
where some anchor overlaps a ground truth by more than ``psi`` times that ground truth's best
anchor IoU. A 3x3 adaptation conv maps the student's channels to the teacher's; it exists only in
training and is dropped at export.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, box_iou

__all__ = ["imitation_mask", "AdaptationLayer", "ImitationLoss", "normalizer_factor"]


def imitation_mask(gt_boxes_list: list[Tensor], anchors: Tensor, grid: tuple[int, int], num_anchors: int = 9,
                   psi: float = 0.5) -> Tensor:
    """Where the student imitates: the paper's near-object mask.

    Args:
        gt_boxes_list: per image, ``Tensor[G_i, 4]`` xyxy in model-input pixels (may be empty).
        anchors: ``Tensor[Hg*Wg*num_anchors, 4]`` (cx, cy, w, h), flat index ``(h*Wg + w)*K + b``.
        grid: (Hg, Wg) of the feature map.
        num_anchors: K anchors per cell.
        psi: threshold factor on each GT's maximum anchor IoU.

    Returns:
        ``BoolTensor[N, Hg, Wg]`` on ``anchors.device``: True where any anchor of the cell has
        IoU > psi * max IoU for any GT of that image.
    """
    hg, wg = grid
    if anchors.shape[0] != hg * wg * num_anchors:
        raise ValueError(f"{anchors.shape[0]} anchors do not fit a {hg}x{wg} grid with {num_anchors} per cell")
    anchors_xyxy = box_convert(anchors.float(), "cxcywh", "xyxy")
    masks = []
    for boxes in gt_boxes_list:
        boxes = boxes.to(anchors.device, torch.float32).reshape(-1, 4)
        if boxes.shape[0] == 0:
            masks.append(torch.zeros(hg, wg, dtype=torch.bool, device=anchors.device))
            continue
        iou = box_iou(boxes, anchors_xyxy)  # [G, A]
        keep = iou > psi * iou.max(dim=1, keepdim=True).values
        masks.append(keep.any(0).view(hg, wg, num_anchors).any(-1))
    if not masks:
        return torch.zeros(0, hg, wg, dtype=torch.bool, device=anchors.device)
    return torch.stack(masks)


class AdaptationLayer(nn.Sequential):
    """3x3 conv (with bias) + ReLU from the student's channels to the teacher's."""

    def __init__(self, c_student: int, c_teacher: int) -> None:
        super().__init__(nn.Conv2d(c_student, c_teacher, 3, padding=1, bias=True), nn.ReLU(inplace=True))


def normalizer_factor(normalizer: Literal["paper", "seed"], student_width: float | None = None) -> float:
    """The k in ``loss / (k * N_p)``.

    ``paper``: 2 (the paper's 1/(2 N_p)). ``seed``: what the public ShuffleDet code used for the
    student being trained: 4 for the 0.25x student (width <= 0.25), 2 otherwise (the code's
    0.5x setting matches the paper's formula).
    """
    if normalizer == "paper":
        return 2.0
    if normalizer == "seed":
        return 4.0 if (student_width is not None and student_width <= 0.25 + 1e-9) else 2.0
    raise ValueError(f"unknown imitation normalizer {normalizer!r} (use 'paper' or 'seed')")


class ImitationLoss(nn.Module):
    """``sum_{masked cells, channels} (teacher - adapt(student))^2 / (k * N_p)``.

    Owns the adaptation layer so the trainer can optimise (and weight-decay) it with the model.

    Args:
        c_student: student feature channels.
        c_teacher: teacher feature channels (768 for the 1x teacher).
        normalizer: ``paper`` (k=2) or ``seed`` (see :func:`normalizer_factor`).
        student_width: the student's width multiplier (for ``seed``).
        reduce_counts: optional callable summing ``N_p`` over processes (DDP), so ``W`` processes
            compute one process's loss.

    Call: ``loss(student_feat [N, Cs, H, W], teacher_feat [N, Ct, H, W], mask Bool[N, H, W])``
    -> scalar.
    """

    def __init__(self, c_student: int, c_teacher: int, *, normalizer: Literal["paper", "seed"] = "paper",
                 student_width: float | None = None,
                 reduce_counts: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.adapt = AdaptationLayer(c_student, c_teacher)
        self.k = normalizer_factor(normalizer, student_width)
        self.normalizer = normalizer
        self.reduce_counts = reduce_counts

    def forward(self, student_feat: Tensor, teacher_feat: Tensor, mask: Tensor) -> Tensor:
        adapted = self.adapt(student_feat)
        adapted = adapted.to(torch.promote_types(adapted.dtype, torch.float32))  # fp16/bf16 -> fp32, fp64 kept
        teacher_feat = teacher_feat.detach().to(adapted.dtype)
        if adapted.shape != teacher_feat.shape:
            raise ValueError(f"adapted student feature {tuple(adapted.shape)} != teacher feature "
                             f"{tuple(teacher_feat.shape)} (same input size needed)")
        if mask.shape != (adapted.shape[0], *adapted.shape[2:]):
            raise ValueError(f"mask {tuple(mask.shape)} does not match the feature grid {tuple(adapted.shape)}")
        m = mask.to(adapted.device, adapted.dtype).unsqueeze(1)
        n_p = m.sum().reshape(1)
        if self.reduce_counts is not None:
            n_p = self.reduce_counts(n_p)
        return (((teacher_feat - adapted) ** 2) * m).sum() / (self.k * n_p[0].clamp(min=1.0))
