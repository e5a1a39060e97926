"""Structured pruning of the FPN families (FCOS / RetinaNet on the detector contract, issue #20).

torch-pruning's ``MetaPruner`` removes channels of the backbone body (ResNet / MobileNetV3, their
BatchNorms, squeeze-excitation convs, and the FPN's lateral 1x1 convs that read them). What keeps
the *shared* head valid is left alone: the FPN's output convs (``fpn.layer_blocks``), the P6/P7
block and the whole head (its towers are applied to every level, and FCOS's GroupNorm needs the
FPN width to stay a multiple of its 16 groups), so every level still has the width the head was
built for. A MACs target is met by bisection on the uniform ratio (the backbone's MACs, body + FPN,
as ``target.macs`` means for ShuffleDet).

Model files of pruned models reload with :func:`compressdet.models.load_model` (layer shapes are
replayed from the file).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import UserError

__all__ = ["prune_fpn_detector", "fpn_ignored_layers"]

IMPORTANCES = ("group_magnitude", "taylor")


def fpn_ignored_layers(model: nn.Module) -> list[nn.Module]:
    """The modules the head's validity depends on: FPN output convs, P6/P7, the head."""
    fpn = model.det.backbone.fpn
    out = [model.det.head, fpn.layer_blocks]
    if getattr(fpn, "extra_blocks", None) is not None:
        out.append(fpn.extra_blocks)
    return out


def _backbone_macs(model: nn.Module, x: Tensor) -> float:
    import torch_pruning as tp

    macs, _ = tp.utils.count_ops_and_params(model.det.backbone, x)
    return float(macs)


def _pruner(model: nn.Module, x: Tensor, ratio: float, importance: str, round_to: int,
            ignored: list[nn.Module]) -> Any:
    import torch_pruning as tp

    imp = tp.importance.TaylorImportance() if importance == "taylor" else tp.importance.MagnitudeImportance(p=2)
    return tp.pruner.MetaPruner(model, x, importance=imp, pruning_ratio=ratio, ignored_layers=ignored,
                                round_to=round_to, output_transform=lambda out: sum(o.float().sum() for o in out))


def prune_fpn_detector(model: nn.Module, example_size: tuple[int, int], *, pruning_ratio: float | None = None,
                       target_macs: float | None = None, importance: str = "group_magnitude", round_to: int = 8,
                       ignored_layers: list[nn.Module] = (), loss_fn: Callable[[nn.Module], Tensor] | None = None
                       ) -> dict[str, Any]:
    """Prune ``model`` (a ``TorchvisionDetector``) in place; returns a JSON-able record.

    Args:
        example_size: ``(H, W)`` of the tracing input (a small one with the same stride pattern).
        pruning_ratio: uniform channel ratio removed from every prunable group, or
        target_macs: the backbone's (body + FPN) MACs after / before, found by bisection on the ratio.
        importance: ``group_magnitude`` (L2) or ``taylor`` (needs ``loss_fn(model) -> scalar``).
        round_to: channels kept per group are a multiple of this.
        ignored_layers: more modules never pruned (besides :func:`fpn_ignored_layers`).

    Returns:
        ``{"step", "ratio", "base_macs", "macs_after", "ops": [{"module", "idxs"}], "history"}``
        (backbone MACs at ``example_size``; ``history`` is torch-pruning's ``pruning_history()``).
    """
    if importance not in IMPORTANCES:
        raise UserError(f"importance: '{importance}' is not supported for FPN families (use one of "
                        f"{', '.join(IMPORTANCES)})")
    if importance == "taylor" and loss_fn is None:
        raise UserError("importance: taylor needs a loss on a training batch")
    p = next(model.parameters())
    x = torch.zeros(1, 3, *example_size, device=p.device, dtype=p.dtype)
    ignored = fpn_ignored_layers(model) + list(ignored_layers)
    base = _backbone_macs(model, x)

    if pruning_ratio is None:
        if target_macs is None:
            raise UserError("target: give macs or pruning_ratio")
        lo, hi = 0.0, 0.95
        for _ in range(7):  # bisection on a copy: MACs fall monotonically with the ratio
            mid = (lo + hi) / 2
            trial = copy.deepcopy(model)
            ig = fpn_ignored_layers(trial) + [dict(trial.named_modules())[n] for n, m in model.named_modules()
                                               if any(m is g for g in ignored_layers)]
            _pruner(trial, x, mid, "group_magnitude", round_to, ig).step()
            if _backbone_macs(trial, x) / base > target_macs:
                lo = mid
            else:
                hi = mid
        pruning_ratio = hi
    was = model.training
    model.eval()
    pruner = _pruner(model, x, float(pruning_ratio), importance, round_to, ignored)
    if importance == "taylor":
        model.train(was)
        model.zero_grad()
        loss_fn(model).backward()
    names = {id(m): n for n, m in model.named_modules()}
    ops = []
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            ops.append({"module": names.get(id(dep.target.module), str(dep.target)), "idxs": [int(i) for i in idxs]})
        group.prune()
    model.zero_grad(set_to_none=True)
    model.train(was)
    after = _backbone_macs(model, x)
    return {"step": 1, "ratio": float(pruning_ratio), "base_macs": base, "macs_after": after, "ops": ops,
            "history": pruner.pruning_history()}
