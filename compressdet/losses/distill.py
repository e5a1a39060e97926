"""A small registry of detection distillers, combined into one training-only module.

Each method reads the student's and the (frozen) teacher's taps, the last backbone feature and
the raw head output, plus FGFI's near-object mask, and returns named, *weighted* sub-losses (so
each is logged on its own):

- ``fgfi``: fine-grained feature imitation (Wang et al., CVPR 2019; the seed's method, METHOD.md
  section 3): masked MSE through a 3x3 adaptation layer -> ``imitation``;
- ``pkd``: Pearson-correlation feature imitation (Cao et al., NeurIPS 2022) -> ``pkd``;
- ``crosskd``: the student's head-tower features (paper variant) or FPN levels (adapter variant)
  through the teacher's head, its predictions distilled to the teacher's (Wang et al., CVPR 2024)
  -> ``crosskd_cls``, ``crosskd_box`` (``crosskd_ctr`` with ``centerness``).

Methods combine (CrossKD's own results add PKD-style feature KD): a list, one weight each.
Register another with :func:`register_distiller`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .crosskd import REFERENCE_FROM_LAYER, CrossKDLoss, FPNCrossKDLoss, FPNCrossKDPaperLoss, YoloCrossKDLoss
from .imitation import ImitationLoss
from .pkd import PKDLoss

__all__ = ["Taps", "Distiller", "register_distiller", "list_distillers", "build_distiller", "paired_taps"]


@dataclass
class Taps:
    """What a distiller may read: student / teacher feature and raw head output, FGFI's mask.

    Single-level detectors (ShuffleDet) give Tensors; multi-level ones (the detector contract's FPN
    families) give lists, one entry per level in ``feature_taps()`` order (mask: one per level), and
    the methods keep one adaptation layer per level.
    """

    s_feat: Tensor | list[Tensor]
    s_head: Any
    t_feat: Tensor | list[Tensor]
    t_head: Any
    mask: Tensor | list[Tensor] | None
    #: CrossKD paper: ``[(cls, reg)]`` per level at the distiller's ``tower_layer``, and the images' GT boxes
    s_tower: list[tuple[Tensor, Tensor]] | None = None
    t_tower: list[tuple[Tensor, Tensor]] | None = None
    gt_boxes: list[Tensor] | None = None


class _Method(nn.Module):
    """A method's loss module with the call convention ``forward(taps) -> {name: unweighted loss}``;
    ``names`` are the sub-losses it returns (what a warm-up step logs as zeros)."""

    def __init__(self, loss: nn.Module, call: Callable[[nn.Module, Taps], dict[str, Tensor]],
                 names: tuple[str, ...]) -> None:
        super().__init__()
        self.loss = loss
        self._call = call
        self.names = names

    def forward(self, taps: Taps) -> dict[str, Tensor]:
        out = self._call(self.loss, taps)
        if set(out) != set(self.names):
            raise RuntimeError(f"distiller returned sub-losses {sorted(out)}, declared {sorted(self.names)}")
        return out


_REGISTRY: dict[str, Callable[..., _Method]] = {}


def register_distiller(name: str) -> Callable[[Callable[..., _Method]], Callable[..., _Method]]:
    def deco(fn: Callable[..., _Method]) -> Callable[..., _Method]:
        if name in _REGISTRY:
            raise ValueError(f"distiller '{name}' is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_distillers() -> list[str]:
    return sorted(_REGISTRY)


def paired_taps(student: nn.Module, teacher: nn.Module) -> list[tuple[int, int]] | None:
    """``[(student channels, teacher channels)]`` per level for multi-level (FPN) detectors, whose
    ``feature_taps()`` pair by stride; None for single-level models (ShuffleDet: ``feature_channels``).

    Raises:
        ValueError: the student's and the teacher's levels have different strides.
    """
    s_taps = student.feature_taps() if hasattr(student, "feature_taps") else None
    t_taps = teacher.feature_taps() if hasattr(teacher, "feature_taps") else None
    if not s_taps or not t_taps or (len(s_taps) == 1 and len(t_taps) == 1):
        return None
    s_strides, t_strides = [t.stride for t in s_taps], [t.stride for t in t_taps]
    if s_strides != t_strides:
        raise ValueError(f"distill: the student's feature levels (strides {s_strides}) do not pair with the "
                         f"teacher's (strides {t_strides}); use a teacher of the same family")
    return [(s.channels, t.channels) for s, t in zip(s_taps, t_taps)]


CROSSKD_NAMES = ("crosskd_cls", "crosskd_box")


def _mean(values: list[Tensor]) -> Tensor:
    return sum(values) / len(values)


@register_distiller("fgfi")
def _fgfi(cfg: Any, student: nn.Module, teacher: nn.Module, anchors: Tensor, num_anchors: int) -> _Method:
    width = (getattr(student, "arch", None) or {}).get("width")
    levels = paired_taps(student, teacher)
    if levels is not None:  # one adaptation layer and masked loss per level; the levels' losses averaged
        per = nn.ModuleList(ImitationLoss(cs, ct, normalizer=cfg.normalizer, student_width=width) for cs, ct in levels)
        return _Method(per, lambda m, t: {"imitation": _mean([lv(s, f, k) for lv, s, f, k in
                                                              zip(m, t.s_feat, t.t_feat, t.mask, strict=True)])},
                       ("imitation",))
    loss = ImitationLoss(student.feature_channels, teacher.feature_channels, normalizer=cfg.normalizer,
                         student_width=width)
    return _Method(loss, lambda m, t: {"imitation": m(t.s_feat, t.t_feat, t.mask)}, ("imitation",))


@register_distiller("pkd")
def _pkd(cfg: Any, student: nn.Module, teacher: nn.Module, anchors: Tensor, num_anchors: int) -> _Method:
    levels = paired_taps(student, teacher)
    if levels is not None:  # PKD sums its FPN levels, the weight is per level (mmrazor's configs)
        per = nn.ModuleList(PKDLoss(cs, ct) for cs, ct in levels)
        return _Method(per, lambda m, t: {"pkd": sum(lv(s, f) for lv, s, f in zip(m, t.s_feat, t.t_feat, strict=True))},
                       ("pkd",))
    return _Method(PKDLoss(student.feature_channels, teacher.feature_channels),
                   lambda m, t: {"pkd": m(t.s_feat, t.t_feat)}, ("pkd",))


@register_distiller("crosskd")
def _crosskd(cfg: Any, student: nn.Module, teacher: nn.Module, anchors: Tensor, num_anchors: int) -> _Method:
    levels = paired_taps(student, teacher)
    variant = getattr(cfg, "variant", None)
    if levels is not None:  # FPN families, yolo
        fam_s, fam_t = getattr(student, "family", None), getattr(teacher, "family", None)
        if fam_s == fam_t == "yolo":  # adapter: every student level through the teacher's Detect branches
            if variant == "paper":
                raise ValueError("distill: crosskd variant 'paper' needs a head tower (FCOS, RetinaNet); a yolo "
                                 "Detect head has none to enter part-way: use variant 'adapter'")
            return _Method(YoloCrossKDLoss(levels, teacher, tau=cfg.tau, box_weight=cfg.box_weight),
                           lambda m, t: m(t.s_feat, t.t_head), CROSSKD_NAMES)
        if fam_s != fam_t or fam_t not in ("fcos", "retinanet"):
            raise ValueError(f"distill: crosskd needs a teacher of the student's family ({fam_s} vs {fam_t})")
        towers = all(hasattr(m, "forward_with_tower") and hasattr(m, "head_from_tower") for m in (student, teacher))
        if variant == "paper" or (variant is None and towers):
            return _crosskd_paper(cfg, student, teacher, towers)
        # adapter: every student level through the teacher's shared head
        return _Method(FPNCrossKDLoss(levels, teacher, tau=cfg.tau, box_weight=cfg.box_weight),
                       lambda m, t: m(t.s_feat, t.t_head), CROSSKD_NAMES)
    if variant == "paper":
        raise ValueError("distill: crosskd variant 'paper' needs a head tower (FCOS, RetinaNet); ShuffleDet's "
                         "single-conv head has none: use variant 'adapter'")
    head = getattr(getattr(teacher, "head", None), "conv", None)
    if not isinstance(head, nn.Conv2d) or anchors is None:
        raise ValueError("distill: crosskd needs a ConvDet head (ShuffleDet) or an FPN family teacher "
                         f"(teacher: {getattr(teacher, 'family', type(teacher).__name__)})")
    loss = CrossKDLoss(student.feature_channels, teacher.feature_channels, head, anchors,
                       num_classes=int(getattr(teacher, "num_classes", 3)), num_anchors=num_anchors,
                       tau=cfg.tau, box_weight=cfg.box_weight)
    return _Method(loss, lambda m, t: m(t.s_feat, t.t_head), CROSSKD_NAMES)


#: pkd's per-level weight when the recipe gives none, per (student family, PKD with CrossKD or alone): the
#: reference configs' (the weight applies to each FPN level's loss, the levels' losses summed, in both):
#: - with CrossKD, FCOS 2 and RetinaNet 2: the CrossKD authors' (github.com/jbwang1997/CrossKD)
#:   configs/crosskd+pkd/crosskd+pkd_r50_fcos_r101-2x-ms_caffe_fpn_gn-head_2x_ms_coco.py and
#:   configs/crosskd+pkd/crosskd+pkd_r50_retinanet_r101_fpn_2x_coco.py (``PKDLoss``, ``loss_weight=2``);
#: - alone, RetinaNet 10: mmrazor's configs/distill/mmdet/pkd/pkd_fpn_retina_x101_retina_r50_2x_coco.py (and
#:   pkd_fpn_fcos_x101_retina_r50_1x_coco.py, an FCOS teacher, inherits it);
#: - alone, FCOS: no reference config has an FCOS student; it keeps the CrossKD+PKD FCOS value, 2.
#: Other families (single-level ShuffleDet, YOLO: no reference config) keep 1.
PKD_DEFAULT_WEIGHT = {("fcos", False): 2.0, ("fcos", True): 2.0, ("retinanet", False): 10.0, ("retinanet", True): 2.0}


def default_weight(method: str, student: nn.Module, methods: Iterable[str] = ()) -> float:
    """The weight of ``method`` when the recipe gives none (``weight`` not set); ``methods``: all the
    methods configured (PKD's reference weight depends on whether CrossKD is one of them)."""
    if method == "pkd":
        return PKD_DEFAULT_WEIGHT.get((getattr(student, "family", None), "crosskd" in set(methods)), 1.0)
    return 1.0


def _crosskd_paper(cfg: Any, student: nn.Module, teacher: nn.Module, towers: bool) -> _Method:
    """CrossKD's paper variant: the student's head-tower features into the teacher's head from ``from_layer``."""
    if not towers:
        raise ValueError("distill: crosskd variant 'paper' needs both models' head towers (forward_with_tower, "
                         f"head_from_tower); {type(student).__name__} has none: use variant 'adapter'")
    family = teacher.family
    k = cfg.from_layer if getattr(cfg, "from_layer", None) is not None else REFERENCE_FROM_LAYER[family]
    depth = min(student.head_tower_depth(), teacher.head_tower_depth())
    if k > depth:
        raise ValueError(f"distill: crosskd from_layer {k} is past the head towers (student "
                         f"{student.head_tower_depth()} layers, teacher {teacher.head_tower_depth()}); give from_layer "
                         f"<= {depth}")
    centerness = bool(getattr(cfg, "centerness", False))
    if centerness and family != "fcos":
        raise ValueError(f"distill: crosskd centerness is for FCOS ({family} has no centre-ness output)")
    loss = FPNCrossKDPaperLoss(student, teacher, from_layer=k, align=getattr(cfg, "align_scale", True),
                               centerness=centerness, tau=cfg.tau, box_weight=cfg.box_weight)
    names = CROSSKD_NAMES + (("crosskd_ctr",) if centerness else ())
    method = _Method(loss, lambda m, t: m(t.s_tower, t.t_tower, t.t_head, t.gt_boxes), names)
    method.tower_layer = k
    return method


class Distiller(nn.Module):
    """The configured methods in one module (so DDP syncs their training-only parameters with the
    student's); ``forward(taps, step) -> {sub-loss: weighted loss}``. A method inside its warm-up
    contributes zero (its parameters stay in the graph, as DDP needs).

    ``weights`` are the numbers in force (the recipe's, a method's default, or what ``weight: auto``
    measured: :func:`compressdet.engine.calibrate.calibrate_weights` sets them before training);
    ``auto`` names the methods whose weight is still to be measured.
    """

    def __init__(self, methods: dict[str, _Method], cfgs: dict[str, Any],
                 weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.methods = nn.ModuleDict(methods)
        self.cfgs = cfgs
        self.weights = {k: float(v) for k, v in (weights or {k: c.weight if isinstance(c.weight, (int, float)) else 1.0
                                                                for k, c in cfgs.items()}).items()}
        self.auto = [k for k, c in cfgs.items() if getattr(c, "weight", None) == "auto"]

    @property
    def tower_layer(self) -> int | None:
        """The head-tower layer a method reads (CrossKD's paper variant), or None."""
        return next((m.tower_layer for m in self.methods.values() if getattr(m, "tower_layer", None) is not None), None)

    @property
    def needs_mask(self) -> bool:
        return "fgfi" in self.methods

    @property
    def psi(self) -> float:
        return float(self.cfgs["fgfi"].psi) if "fgfi" in self.cfgs else 0.5

    def active(self, step: int) -> bool:
        return any(step >= c.warmup_steps for c in self.cfgs.values())

    def forward(self, taps: Taps | None, step: int) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for name, method in self.methods.items():
            cfg = self.cfgs[name]
            if taps is None or step < cfg.warmup_steps:
                zero = sum(p.sum() for p in method.parameters()) * 0.0
                out.update({k: zero for k in method.names})
                continue
            out.update({k: v * self.weights[name] for k, v in method(taps).items()})
        return out

    def unweighted(self, taps: Taps) -> dict[str, Tensor]:
        """Each method's sub-losses summed, at weight 1 (what ``weight: auto`` measures)."""
        return {name: sum(method(taps).values()) for name, method in self.methods.items()}

    def fgfi_state_compat(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A checkpoint written before the registry held the FGFI loss's own keys (``adapt.0.weight``)."""
        if "fgfi" in self.methods and state and all(k.startswith("adapt.") for k in state):
            return {f"methods.fgfi.loss.{k}": v for k, v in state.items()}
        return state


def build_distiller(cfgs: list[Any], student: nn.Module, teacher: nn.Module, anchors: Tensor,
                    num_anchors: int = 9) -> Distiller:
    """A :class:`Distiller` for ``cfgs`` (``DistillConfig`` items, each method at most once)."""
    seen: dict[str, Any] = {}
    for c in cfgs:
        if c.method not in _REGISTRY:
            raise ValueError(f"unknown distillation method '{c.method}' (known: {', '.join(list_distillers())})")
        if c.method in seen:
            raise ValueError(f"distillation method '{c.method}' is listed twice")
        seen[c.method] = c
    weights = {name: (default_weight(name, student, seen) if c.weight in (None, "auto") else float(c.weight))
               for name, c in seen.items()}
    return Distiller({name: _REGISTRY[name](c, student, teacher, anchors, num_anchors) for name, c in seen.items()},
                     seen, weights)
