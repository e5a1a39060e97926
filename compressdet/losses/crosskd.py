"""CrossKD: distil the teacher's predictions through the teacher's own head (Wang et al., CVPR 2024).

"CrossKD: Cross-Head Knowledge Distillation for Object Detection". Prediction mimicking (KD on
outputs) forces the student's head to match targets that may conflict with its ground-truth
loss; CrossKD instead feeds the student's intermediate head features into the *teacher's*
remaining head layers and distils those "cross-head" predictions to the teacher's predictions.

Two variants (recipe ``variant``):

``paper`` (FCOS / RetinaNet, the default where both models expose their head tower): follows the
authors' ``CrossKDFCOS`` / ``CrossKDRetinaNet`` (github.com/jbwang1997/CrossKD):
- the student's head-tower features at layer ``k`` (``from_layer``: 2 for FCOS, 3 for RetinaNet,
  as the reference; the output of tower layer k before its activation, per branch cls / reg)
  get the teacher's per-channel mean and std at the same point (``align_scale``, parameter-free),
  the activation, and the teacher's tower layers ``k..`` and output convs (teacher frozen; the
  gradient flows through it into the student's tower layers ``< k``, backbone and FPN);
- classification: the quality focal loss (``beta`` 1) of the cross-head logits against the
  teacher's sigmoid scores, summed over all priors and divided by the reference's normaliser:
  RetinaNet the number of positive anchors (anchors in the matcher's ignore band count 0), FCOS
  the sum of the positives' centre-ness targets (:meth:`kd_normalizer` on the model);
- box: the reference's box loss between the boxes decoded from the cross-head and from the teacher's
  regression (FCOS its IoU loss, -log IoU; RetinaNet GIoU; :data:`REFERENCE_BOX_LOSS`), each prior
  weighted by the teacher's best class score, same normaliser;
- the reference's loss weights: FCOS classification 0.4, box 0.75; RetinaNet 1 and 1.
Departures: the normaliser is at least 1 (the reference: 1e-6 for FCOS); the std in
``align_scale`` is the biased one over the global batch under DDP (reference: unbiased, per process);
when the student's head is narrower than the teacher's (fcos_mnv3_small 64 vs fcos_r18 128), a 1x1
conv per branch adapts it before the alignment (the paper's pairs share widths); ``centerness: true``
adds a centre-ness BCE term for FCOS (not in the reference); ``tau`` divides both logits (1: the
reference). The student's own head also gets the KD gradient through its tower (as the paper).

``adapter`` (issue #30's variant; ShuffleDet's only one, its ConvDet head has no tower): on ShuffleDet the
only intermediate head feature is the head's input (the backbone feature), so the cross-head path is:
student feature -> a 1x1 adaptation conv to the teacher's channels (training-only) -> the teacher's
frozen head conv -> cross predictions. What is distilled, per anchor:
- classification: KL divergence of the cross-head class distribution (softmax over classes, as
  ShuffleDet classifies) from the teacher's, and binary cross-entropy of the cross-head
  confidence against the teacher's sigmoid confidence, with temperature ``tau``;
- regression: GIoU loss between the cross-head and the teacher's *decoded* boxes, weighted per
  anchor by the teacher's score (confidence x best class probability).
For FPN families the adapter variant sends every FPN level through a 1x1 conv and the teacher's whole
head (:class:`FPNCrossKDLoss`), with the classification term averaged over priors; for yolo, every level
(P3-P5) through a 1x1 conv and the teacher's Detect branches of that level (:class:`YoloCrossKDLoss`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from ..models.box_coder import BoxCoder
from ..models.head import split_head_output
from .pkd import channel_moments

__all__ = ["CrossKDLoss", "FPNCrossKDLoss", "FPNCrossKDPaperLoss", "YoloCrossKDLoss", "align_scale", "log_iou_loss",
           "REFERENCE_FROM_LAYER", "REFERENCE_BOX_LOSS"]


def _decode(t: nn.Module, codes: Tensor, anchors: Tensor) -> Tensor:
    """``[N, K, 4]`` raw regression -> xyxy boxes with the teacher's torchvision box coder."""
    n = codes.shape[0]
    if t.family == "fcos":
        return t.det.box_coder.decode(codes, anchors.expand(n, -1, -1))
    return t.det.box_coder.decode_single(codes.reshape(-1, 4), anchors.repeat(n, 1)).view(n, -1, 4)


class CrossKDLoss(nn.Module):
    """Cross-head KD for a ConvDet head; returns ``{"crosskd_cls", "crosskd_box"}``.

    Args:
        c_student, c_teacher: feature channels (1x1 adaptation conv when they differ).
        teacher_head: the teacher's head conv (``nn.Conv2d``); frozen, held by reference (it is
            not a parameter of this module, so it is neither optimised nor saved with it).
        anchors: ``Tensor[A_total, 4]`` (cx, cy, w, h) of the grid, for decoding boxes.
        num_classes, num_anchors: the head layout.
        tau: softmax / sigmoid temperature of the classification KD.
        box_weight: weight of the box term relative to the classification term.
    """

    def __init__(self, c_student: int, c_teacher: int, teacher_head: nn.Conv2d, anchors: Tensor, *,
                 num_classes: int = 3, num_anchors: int = 9, tau: float = 1.0, box_weight: float = 1.0) -> None:
        super().__init__()
        self.adapt = nn.Conv2d(c_student, c_teacher, 1) if c_student != c_teacher else nn.Identity()
        object.__setattr__(self, "_teacher_head", teacher_head)  # by reference: not a submodule
        self.register_buffer("anchors", anchors.float(), persistent=False)
        self.num_classes, self.num_anchors, self.tau, self.box_weight = num_classes, num_anchors, tau, box_weight
        self.coder = BoxCoder()
        self.reduce_counts: Callable[[Tensor], Tensor] | None = None  # set under DDP: global normalisers

    def forward(self, student_feat: Tensor, teacher_head_out: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        head = self._teacher_head
        s = self.adapt(student_feat)
        w = head.weight.detach().to(s.dtype)
        b = head.bias.detach().to(s.dtype) if head.bias is not None else None
        cross = F.conv2d(s, w, b, stride=head.stride, padding=head.padding)
        cross = cross.to(torch.promote_types(cross.dtype, torch.float32))
        t = teacher_head_out.detach().to(cross.dtype)
        if cross.shape != t.shape:
            raise ValueError(f"cross-head output {tuple(cross.shape)} != teacher head output {tuple(t.shape)}")
        c_cls, c_conf, c_delta = split_head_output(cross, self.num_classes, self.num_anchors)
        t_cls, t_conf, t_delta = split_head_output(t, self.num_classes, self.num_anchors)
        tau = self.tau
        t_prob = F.softmax(t_cls / tau, -1)
        kl = (t_prob * (F.log_softmax(t_cls / tau, -1) - F.log_softmax(c_cls / tau, -1))).sum(-1)
        conf = F.binary_cross_entropy_with_logits(c_conf / tau, torch.sigmoid(t_conf / tau), reduction="none")
        score = torch.sigmoid(t_conf) * F.softmax(t_cls, -1).amax(-1)  # the teacher's per-anchor score
        norm = torch.stack([torch.tensor(float(kl.numel()), dtype=kl.dtype, device=kl.device), score.sum()])
        if self.reduce_counts is not None:
            norm = self.reduce_counts(norm)  # anchors and teacher score mass of the global batch
        cls_loss = (kl + conf).sum() / norm[0] * tau * tau
        anchors = self.anchors.to(cross.device, cross.dtype)
        cb = self.coder.decode_xyxy(c_delta, anchors, clip=False)
        tb = self.coder.decode_xyxy(t_delta, anchors, clip=False)
        giou = generalized_box_iou_loss(cb.reshape(-1, 4), tb.reshape(-1, 4), reduction="none").view_as(score)
        box_loss = (giou * score).sum() / norm[1].clamp(min=1e-6)
        return {"crosskd_cls": cls_loss, "crosskd_box": box_loss * self.box_weight}


class FPNCrossKDLoss(nn.Module):
    """Cross-head KD for the FPN families (FCOS / RetinaNet on the detector contract).

    Each student level goes through a 1x1 adaptation conv (when the widths differ) and then the
    teacher's whole frozen head (its towers are shared by all levels), giving cross-head raw
    outputs in the teacher's layout; they are distilled to the teacher's outputs as for ShuffleDet:
    - classification: binary cross-entropy of the cross-head sigmoid class probabilities (and, for
      FCOS, centre-ness) against the teacher's, with temperature ``tau``, averaged over priors;
    - regression: GIoU between the boxes the teacher's box coder decodes from the cross-head and from
      the teacher's regression, weighted per prior by the teacher's score (max class probability;
      FCOS: times centre-ness, square-rooted as FCOS scores).

    Args:
        levels: ``[(student channels, teacher channels)]`` per level (paired by stride).
        teacher: the frozen teacher detector, held by reference (not a submodule: not optimised or saved).
    """

    def __init__(self, levels: list[tuple[int, int]], teacher: nn.Module, *, tau: float = 1.0,
                 box_weight: float = 1.0) -> None:
        super().__init__()
        self.adapt = nn.ModuleList(nn.Conv2d(cs, ct, 1) if cs != ct else nn.Identity() for cs, ct in levels)
        object.__setattr__(self, "_teacher", teacher)
        self.tau, self.box_weight = tau, box_weight
        self.reduce_counts: Callable[[Tensor], Tensor] | None = None  # set under DDP: global normalisers

    def _decode(self, codes: Tensor, anchors: Tensor) -> Tensor:
        return _decode(self._teacher, codes, anchors)

    def forward(self, student_feats: list[Tensor], teacher_outputs: tuple[Tensor, ...]) -> dict[str, Tensor]:
        t = self._teacher
        cross = t._pack(t.det.head([a(f) for a, f in zip(self.adapt, student_feats, strict=True)]))
        cross = tuple(c.to(torch.promote_types(c.dtype, torch.float32)) for c in cross)
        ref = tuple(o.detach().to(cross[0].dtype) for o in teacher_outputs)
        tau = self.tau
        c_cls, c_box, t_cls, t_box = cross[0], cross[1], ref[0], ref[1]
        cls = F.binary_cross_entropy_with_logits(c_cls / tau, torch.sigmoid(t_cls / tau), reduction="none").sum(-1)
        score = torch.sigmoid(t_cls).amax(-1)
        if t.family == "fcos":
            cls = cls + F.binary_cross_entropy_with_logits(cross[2][..., 0] / tau, torch.sigmoid(ref[2][..., 0] / tau),
                                                           reduction="none")
            score = torch.sqrt(score * torch.sigmoid(ref[2][..., 0]))
        norm = torch.stack([torch.tensor(float(cls.numel()), dtype=cls.dtype, device=cls.device), score.sum()])
        if self.reduce_counts is not None:
            norm = self.reduce_counts(norm)
        cls_loss = cls.sum() / norm[0] * tau * tau
        anchors = t.priors(c_box.device).to(c_box.dtype)
        cb, tb = self._decode(c_box, anchors), self._decode(t_box, anchors)
        giou = generalized_box_iou_loss(cb.reshape(-1, 4), tb.reshape(-1, 4), reduction="none").view_as(score)
        box_loss = (giou * score).sum() / norm[1].clamp(min=1e-6)
        return {"crosskd_cls": cls_loss, "crosskd_box": box_loss * self.box_weight}


#: the reference's entry layer and (classification, box) loss weights per family
REFERENCE_FROM_LAYER = {"fcos": 2, "retinanet": 3}
REFERENCE_LOSS_WEIGHTS = {"fcos": (0.4, 0.75), "retinanet": (1.0, 1.0)}


def log_iou_loss(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """``-log IoU`` of paired xyxy boxes ``[K, 4]`` (mmdet's ``IoULoss``, linear=False, as the CrossKD FCOS
    config): torchvision has the generalized / distance / complete IoU losses, not this one."""
    lt = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    rb = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(-1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(-1)
    iou = inter / (area1 + area2 - inter).clamp(min=eps)
    return -iou.clamp(min=eps).log()


def _giou_loss(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    return generalized_box_iou_loss(boxes1, boxes2, reduction="none")


#: the box term of the authors' configs, per family: FCOS ``IoULoss`` (-log IoU), RetinaNet ``GIoULoss``
REFERENCE_BOX_LOSS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"fcos": log_iou_loss, "retinanet": _giou_loss}


def _identity(x: Tensor) -> Tensor:
    return x


def align_scale(student: Tensor, teacher: Tensor, reduce_sums: Callable[[Tensor], Tensor] = _identity) -> Tensor:
    """``student`` ``[N, C, H, W]`` with each channel's mean and std over ``(N, H, W)`` set to the
    teacher's (CrossKD's parameter-free scale alignment)."""
    s_mean, s_std = channel_moments(student, reduce_sums)
    t_mean, t_std = channel_moments(teacher.detach(), reduce_sums)
    shape = (1, -1, 1, 1)
    return (student - s_mean.view(shape)) / (s_std.view(shape) + 1e-6) * t_std.view(shape) + t_mean.view(shape)


class FPNCrossKDPaperLoss(nn.Module):
    """CrossKD as its authors' code (see the module docstring): ``forward(student tower, teacher tower,
    teacher outputs, gt boxes) -> {"crosskd_cls", "crosskd_box"[, "crosskd_ctr"]}``.

    Args:
        student, teacher: detectors with ``head_tower_channels(layer, branch)``, ``head_from_tower`` and
            ``kd_normalizer`` (the FPN families); the teacher is held by reference (not optimised or saved).
        from_layer: the head-tower layer the student's features leave at.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, from_layer: int, align: bool = True,
                 centerness: bool = False, tau: float = 1.0, box_weight: float = 1.0) -> None:
        super().__init__()
        self.adapt = nn.ModuleDict()
        for b in ("cls", "reg"):  # per branch: a pruned student's towers may differ
            cs, ct = student.head_tower_channels(from_layer, b), teacher.head_tower_channels(from_layer, b)
            self.adapt[b] = nn.Conv2d(cs, ct, 1) if cs != ct else nn.Identity()
        object.__setattr__(self, "_teacher", teacher)
        self.tower_layer, self.align, self.centerness, self.tau = from_layer, align, centerness, tau
        self.cls_weight, box_w = REFERENCE_LOSS_WEIGHTS[teacher.family]
        self.box_weight = box_w * box_weight
        self.reduce_sums: Callable[[Tensor], Tensor] | None = None  # set under DDP: global statistics
        self.reduce_counts: Callable[[Tensor], Tensor] | None = None  # set under DDP: global normalisers

    def forward(self, s_tower: list[tuple[Tensor, Tensor]], t_tower: list[tuple[Tensor, Tensor]],
                teacher_outputs: tuple[Tensor, ...], gt_boxes: list[Tensor]) -> dict[str, Tensor]:
        t = self._teacher
        red = self.reduce_sums or _identity
        fed = []
        for s_pair, t_pair in zip(s_tower, t_tower, strict=True):
            pair = []
            for branch, s, tt in zip(("cls", "reg"), s_pair, t_pair):
                s = self.adapt[branch](s)
                s = s.to(torch.promote_types(s.dtype, torch.float32))
                pair.append(align_scale(s, tt.to(s.dtype), red) if self.align else s)
            fed.append((pair[0], pair[1]))
        cross = t.head_from_tower(fed, self.tower_layer)
        cross = tuple(c.to(torch.promote_types(c.dtype, torch.float32)) for c in cross)
        ref = tuple(o.detach().to(cross[0].dtype) for o in teacher_outputs)
        norm, valid = t.kd_normalizer(gt_boxes)
        norm = norm.to(cross[0].device, cross[0].dtype).reshape(1)
        if self.reduce_counts is not None:
            norm = self.reduce_counts(norm)
        norm = norm[0].clamp(min=1.0)
        keep = valid.to(cross[0].device, cross[0].dtype) if valid is not None else None
        c_cls, t_cls = cross[0] / self.tau, ref[0] / self.tau
        p_t = torch.sigmoid(t_cls)
        qfl = F.binary_cross_entropy_with_logits(c_cls, p_t, reduction="none") * (torch.sigmoid(c_cls) - p_t).abs()
        qfl = qfl.sum(-1)
        score = torch.sigmoid(ref[0].amax(-1))
        if keep is not None:
            qfl, score = qfl * keep, score * keep
        anchors = t.priors(cross[1].device).to(cross[1].dtype)
        cb, tb = _decode(t, cross[1], anchors), _decode(t, ref[1], anchors)
        box = REFERENCE_BOX_LOSS[t.family](cb.reshape(-1, 4), tb.reshape(-1, 4)).view_as(score)
        out = {"crosskd_cls": qfl.sum() / norm * self.cls_weight,
               "crosskd_box": (box * score).sum() / norm * self.box_weight}
        if self.centerness:
            ctr = F.binary_cross_entropy_with_logits(cross[2][..., 0], torch.sigmoid(ref[2][..., 0]), reduction="none")
            out["crosskd_ctr"] = ctr.sum() / norm
        return out


class YoloCrossKDLoss(nn.Module):
    """Cross-head KD (adapter variant) for Ultralytics YOLO (the yolo family, issue #45).

    Each student level (P3-P5) goes through a 1x1 adaptation conv (when the widths differ) and then the
    teacher's frozen Detect branches of that level (its box ``cv2`` and class ``cv3`` convs: one branch per
    level, not shared), giving cross-head raw outputs in the teacher's layout (box distribution
    ``[N, 4 x reg_max, K]``, class logits ``[N, C, K]``), distilled to the teacher's outputs as
    :class:`FPNCrossKDLoss` does:
    - classification: binary cross-entropy of the cross-head sigmoid class probabilities against the
      teacher's, with temperature ``tau``, summed over classes and averaged over priors;
    - regression: GIoU between the boxes the teacher's DFL decodes from the cross-head and from the
      teacher's box distribution, weighted per prior by the teacher's best class probability.

    There is no head tower to enter part-way (the paper variant): the branches start at the level itself.

    Args:
        levels: ``[(student channels, teacher channels)]`` per level (paired by stride).
        teacher: the frozen teacher ``YoloDetector``, held by reference (not a submodule: not optimised or saved).
    """

    def __init__(self, levels: list[tuple[int, int]], teacher: nn.Module, *, tau: float = 1.0,
                 box_weight: float = 1.0) -> None:
        super().__init__()
        self.adapt = nn.ModuleList(nn.Conv2d(cs, ct, 1) if cs != ct else nn.Identity() for cs, ct in levels)
        object.__setattr__(self, "_teacher", teacher)
        self.tau, self.box_weight = tau, box_weight
        self.reduce_counts: Callable[[Tensor], Tensor] | None = None  # set under DDP: global normalisers

    def _boxes(self, box_dist: Tensor, cls: Tensor) -> Tensor:
        """Teacher-decoded boxes ``[N * K, 4]`` xyxy (input px) of a box distribution."""
        from torchvision.ops import box_convert

        dec = self._teacher.decode((box_dist, cls))[:, :4]  # [N, 4, K] cx, cy, w, h
        return box_convert(dec.transpose(1, 2).reshape(-1, 4), "cxcywh", "xyxy")

    def forward(self, student_feats: list[Tensor], teacher_outputs: tuple[Tensor, ...]) -> dict[str, Tensor]:
        t = self._teacher
        cross = t._head([a(f) for a, f in zip(self.adapt, student_feats, strict=True)])
        c_box, c_cls = (c.to(torch.promote_types(c.dtype, torch.float32)) for c in cross)
        t_box, t_cls = (o.detach().to(c_box.dtype) for o in teacher_outputs)
        tau = self.tau
        cls = F.binary_cross_entropy_with_logits(c_cls / tau, torch.sigmoid(t_cls / tau), reduction="none").sum(1)
        score = torch.sigmoid(t_cls).amax(1)  # [N, K]
        norm = torch.stack([torch.tensor(float(cls.numel()), dtype=cls.dtype, device=cls.device), score.sum()])
        if self.reduce_counts is not None:
            norm = self.reduce_counts(norm)
        cls_loss = cls.sum() / norm[0] * tau * tau
        giou = generalized_box_iou_loss(self._boxes(c_box, c_cls), self._boxes(t_box, t_cls),
                                        reduction="none").view_as(score)
        box_loss = (giou * score).sum() / norm[1].clamp(min=1e-6)
        return {"crosskd_cls": cls_loss, "crosskd_box": box_loss * self.box_weight}
