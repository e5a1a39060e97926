"""A small registry of detection distillers, combined into one training-only module.

Each method reads the student's and the (frozen) teacher's taps, the last backbone feature and
the raw head output, plus FGFI's near-object mask, and returns named, *weighted* sub-losses (so
each is logged on its own):

- ``fgfi``: fine-grained feature imitation (Wang et al., CVPR 2019; the seed's method, METHOD.md
  section 3): masked MSE through a 3x3 adaptation layer -> ``imitation``;
- ``pkd``: Pearson-correlation feature imitation (Cao et al., NeurIPS 2022) -> ``pkd``;
- ``crosskd``: the student's feature through the teacher's head, its predictions distilled to
  the teacher's (Wang et al., CVPR 2024) -> ``crosskd_cls``, ``crosskd_box``.

Methods combine (CrossKD's own results add PKD-style feature KD): a list, one weight each.
Register another with :func:`register_distiller`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .crosskd import CrossKDLoss, FPNCrossKDLoss
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
    if levels is not None:  # PKD averages its FPN levels
        per = nn.ModuleList(PKDLoss(cs, ct) for cs, ct in levels)
        return _Method(per, lambda m, t: {"pkd": _mean([lv(s, f) for lv, s, f in zip(m, t.s_feat, t.t_feat, strict=True)])},
                       ("pkd",))
    return _Method(PKDLoss(student.feature_channels, teacher.feature_channels),
                   lambda m, t: {"pkd": m(t.s_feat, t.t_feat)}, ("pkd",))


@register_distiller("crosskd")
def _crosskd(cfg: Any, student: nn.Module, teacher: nn.Module, anchors: Tensor, num_anchors: int) -> _Method:
    levels = paired_taps(student, teacher)
    if levels is not None:  # FPN families: every student level through the teacher's shared head
        fam_s, fam_t = getattr(student, "family", None), getattr(teacher, "family", None)
        if fam_s != fam_t or fam_t not in ("fcos", "retinanet"):
            raise ValueError(f"distill: crosskd needs a teacher of the student's family ({fam_s} vs {fam_t})")
        return _Method(FPNCrossKDLoss(levels, teacher, tau=cfg.tau, box_weight=cfg.box_weight),
                       lambda m, t: m(t.s_feat, t.t_head), CROSSKD_NAMES)
    head = getattr(getattr(teacher, "head", None), "conv", None)
    if not isinstance(head, nn.Conv2d) or anchors is None:
        raise ValueError("distill: crosskd needs a ConvDet head (ShuffleDet) or an FPN family teacher "
                         f"(teacher: {getattr(teacher, 'family', type(teacher).__name__)})")
    loss = CrossKDLoss(student.feature_channels, teacher.feature_channels, head, anchors,
                       num_classes=int(getattr(teacher, "num_classes", 3)), num_anchors=num_anchors,
                       tau=cfg.tau, box_weight=cfg.box_weight)
    return _Method(loss, lambda m, t: m(t.s_feat, t.t_head), CROSSKD_NAMES)


class Distiller(nn.Module):
    """The configured methods in one module (so DDP syncs their training-only parameters with the
    student's); ``forward(taps, step) -> {sub-loss: weighted loss}``. A method inside its warm-up
    contributes zero (its parameters stay in the graph, as DDP needs)."""

    def __init__(self, methods: dict[str, _Method], cfgs: dict[str, Any]) -> None:
        super().__init__()
        self.methods = nn.ModuleDict(methods)
        self.cfgs = cfgs

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
            out.update({k: v * cfg.weight for k, v in method(taps).items()})
        return out

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
    return Distiller({name: _REGISTRY[name](c, student, teacher, anchors, num_anchors) for name, c in seen.items()},
                     seen)
