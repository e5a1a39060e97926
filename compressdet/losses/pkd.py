"""PKD: feature imitation with the Pearson correlation coefficient (Cao et al., NeurIPS 2022).

"PKD: General Distillation Framework for Object Detectors via Pearson Correlation Coefficient".
Plain MSE imitation is dominated by the few channels and locations with the largest magnitudes,
and a teacher of another family (or width) has features on another scale. PKD first normalises
each channel of both feature maps to zero mean and unit variance (statistics over batch and
space), then imitates with MSE / 2 over *all* locations: the loss is ``1 - r`` (Pearson's r)
per channel, up to a constant, so only the relation between locations is transferred, not the
magnitude.

Follows mmrazor's ``PKDLoss`` and its detection configs (issue #41): one loss per FPN level, each
with its own weight (the recipe's ``weight`` is per level), the levels' losses **summed**; the
default weights are the references' (2 per level for FCOS as CrossKD+PKD's config, 10 for
RetinaNet as mmrazor's). Departs from it where our models differ:
- every FPN level P3-P7 is distilled (mmrazor's configs list four of RetinaNet's five);
- the standard deviation is the biased one over ``(N, H, W)`` (mmrazor: unbiased), with the
  same 1e-6 added; under DDP the statistics are the global batch's (mmrazor: per process);
- when the student's channels differ from the teacher's (ShuffleDet 0.25x: 192 vs 768), a 1x1
  conv adapts them first (the paper's students share the teacher's FPN width and need none); it
  is a training-only module, dropped at export like FGFI's adaptation layer. Levels pair by
  stride, so no spatial resize is needed (mmrazor resizes the student's map).
Before issue #41 the FPN levels were averaged: an old recipe's weight ``w`` now means ``w`` per
level (5x the old strength on the FPN families; unchanged on single-level ShuffleDet).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["channel_standardize", "channel_moments", "PKDLoss"]


def _identity(x: Tensor) -> Tensor:
    return x


def channel_moments(feat: Tensor, reduce_sums: Callable[[Tensor], Tensor] = _identity) -> tuple[Tensor, Tensor]:
    """Each channel's mean and (biased) std over ``(N, H, W)`` of ``[N, C, H, W]``: ``([C], [C])``;
    ``reduce_sums`` as in :func:`channel_standardize`."""
    c = feat.shape[1]
    flat = feat.transpose(0, 1).reshape(c, -1)
    stats = reduce_sums(torch.stack([flat.sum(1), (flat * flat).sum(1),
                                     torch.full((c,), float(flat.shape[1]), dtype=flat.dtype, device=flat.device)]))
    mean = stats[0] / stats[2]
    return mean, (stats[1] / stats[2] - mean * mean).clamp(min=1e-12).sqrt()  # finite gradient at 0


def channel_standardize(feat: Tensor, eps: float = 1e-6, reduce_sums: Callable[[Tensor], Tensor] = _identity
                        ) -> Tensor:
    """``[N, C, H, W]`` -> each channel at zero mean, unit variance over ``(N, H, W)``.

    ``reduce_sums`` (differentiable, summing over processes) makes the statistics those of the
    global batch under DDP, as SyncBatchNorm does; the identity in one process.
    """
    c = feat.shape[1]
    flat = feat.transpose(0, 1).reshape(c, -1)
    stats = reduce_sums(torch.stack([flat.sum(1), (flat * flat).sum(1),
                                     torch.full((c,), float(flat.shape[1]), dtype=flat.dtype, device=flat.device)]))
    mean = stats[0] / stats[2]
    var = (stats[1] / stats[2] - mean * mean).clamp(min=0.0)
    z = (flat - mean[:, None]) / (var.sqrt()[:, None] + eps)
    return z.reshape(c, feat.shape[0], *feat.shape[2:]).transpose(0, 1)


class PKDLoss(nn.Module):
    """``mse(std(adapt(student)), std(teacher)) / 2`` (mean over every element of the global batch).

    Args:
        c_student, c_teacher: feature channels; a 1x1 adaptation conv exists when they differ.

    Call: ``loss(student_feat [N, Cs, H, W], teacher_feat [N, Ct, H, W]) -> scalar``; the mask of
    near-object locations is not used (PKD imitates everywhere). Under DDP the trainer sets
    ``reduce_sums`` (differentiable) and ``reduce_counts``: statistics and the mean are over the
    global batch, so W processes compute what one process with the whole batch would.
    """

    def __init__(self, c_student: int, c_teacher: int) -> None:
        super().__init__()
        self.adapt = nn.Conv2d(c_student, c_teacher, 1) if c_student != c_teacher else nn.Identity()
        self.reduce_sums: Callable[[Tensor], Tensor] | None = None
        self.reduce_counts: Callable[[Tensor], Tensor] | None = None

    def forward(self, student_feat: Tensor, teacher_feat: Tensor, mask: Tensor | None = None) -> Tensor:
        s = self.adapt(student_feat)
        s = s.to(torch.promote_types(s.dtype, torch.float32))
        t = teacher_feat.detach().to(s.dtype)
        if s.shape != t.shape:
            raise ValueError(f"adapted student feature {tuple(s.shape)} != teacher feature {tuple(t.shape)}")
        red = self.reduce_sums or _identity
        sq = ((channel_standardize(s, reduce_sums=red) - channel_standardize(t, reduce_sums=red)) ** 2).sum()
        n = torch.tensor([float(s.numel())], dtype=s.dtype, device=s.device)
        if self.reduce_counts is not None:
            n = self.reduce_counts(n)
        return sq / (2 * n[0])
