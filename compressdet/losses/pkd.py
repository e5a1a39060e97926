"""PKD: feature imitation with the Pearson correlation coefficient (Cao et al., NeurIPS 2022).

"PKD: General Distillation Framework for Object Detectors via Pearson Correlation Coefficient".
Plain MSE imitation is dominated by the few channels and locations with the largest magnitudes,
and a teacher of another family (or width) has features on another scale. PKD first normalises
each channel of both feature maps to zero mean and unit variance (statistics over batch and
space), then imitates with MSE / 2 over *all* locations: the loss is ``1 - r`` (Pearson's r)
per channel, up to a constant, so only the relation between locations is transferred, not the
magnitude. One call per feature level; FPN detectors average their levels.

When the student's channels differ from the teacher's (ShuffleDet 0.25x: 192 vs 768), a 1x1 conv
adapts them first (the paper's students share the teacher's FPN width and need none); it is a
training-only module, dropped at export like FGFI's adaptation layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["channel_standardize", "PKDLoss"]


def channel_standardize(feat: Tensor, eps: float = 1e-6) -> Tensor:
    """``[N, C, H, W]`` -> each channel at zero mean, unit variance over ``(N, H, W)``."""
    c = feat.shape[1]
    flat = feat.transpose(0, 1).reshape(c, -1)
    mean = flat.mean(1, keepdim=True)
    std = flat.std(1, keepdim=True, unbiased=False)
    return ((flat - mean) / (std + eps)).reshape(c, feat.shape[0], *feat.shape[2:]).transpose(0, 1)


class PKDLoss(nn.Module):
    """``mse(std(adapt(student)), std(teacher)) / 2`` (mean over every element).

    Args:
        c_student, c_teacher: feature channels; a 1x1 adaptation conv exists when they differ.

    Call: ``loss(student_feat [N, Cs, H, W], teacher_feat [N, Ct, H, W]) -> scalar``; the mask of
    near-object locations is not used (PKD imitates everywhere).
    """

    def __init__(self, c_student: int, c_teacher: int) -> None:
        super().__init__()
        self.adapt = nn.Conv2d(c_student, c_teacher, 1) if c_student != c_teacher else nn.Identity()

    def forward(self, student_feat: Tensor, teacher_feat: Tensor, mask: Tensor | None = None) -> Tensor:
        s = self.adapt(student_feat)
        s = s.to(torch.promote_types(s.dtype, torch.float32))
        t = teacher_feat.detach().to(s.dtype)
        if s.shape != t.shape:
            raise ValueError(f"adapted student feature {tuple(s.shape)} != teacher feature {tuple(t.shape)}")
        return ((channel_standardize(s) - channel_standardize(t)) ** 2).mean() / 2
