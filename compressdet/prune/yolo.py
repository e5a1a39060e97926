"""Structured pruning of Ultralytics YOLO (the yolo family, issue #45) with torch-pruning's ``MetaPruner``.

torch-pruning traces the network and keeps what is coupled consistent: the concatenations of the neck and
of SPPF (its four copies of ``cv1``'s output), C2f / C3k2 outputs and what reads them, residual adds, the
P3-P5 inputs of the Detect head. Left whole, as the field prunes these models:

* each C2f / C3k2 block's ``cv1`` outputs: the block splits them with ``chunk(2)`` (and Ultralytics'
  exported ``forward_split`` by its stored width ``c``), which needs both halves equally wide; torch-pruning
  does not keep them so (Torch-Pruning's own YOLOv8 example rewrites the block instead, which Ultralytics
  could no longer load). Their bottlenecks' inner channels and the block outputs are pruned;
* the C2PSA attention block of YOLO11 (its heads reshape by a stored ``key_dim`` / ``head_dim``);
* the Detect head's last conv of every ``cv2`` (box distribution: 4 x ``reg_max`` = 64 outputs, what the
  DFL reads) and ``cv3`` (class logits) branch, and the DFL itself: the detector's outputs, its 16 bins and
  ``reg_max`` do not change. The inner convs of the per-level branches are pruned (each level has its own).

The MACs target is the whole model's (backbone, neck and head: the head is pruned too), found by bisection
on the uniform ratio as for the FPN families. ``allocation="latency"`` scales that ratio per group by the
latency proxy each group saves per MAC (:func:`~compressdet.prune.fpn.latency_weights`, counted over the
whole model here); the prune stage's default for yolo stays ``uniform`` until the allocation is measured on
deployed latency for these models. A pruned model keeps Ultralytics' module classes, so its
model file reloads (the layer shapes are replayed) and it exports to ONNX like an unpruned one.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import UserError
from .fpn import ALLOCATIONS, IMPORTANCES, MAX_GROUP_RATIO, _pruner, latency_weights, prune_once

__all__ = ["prune_yolo_detector", "yolo_ignored_layers", "yolo_example_size"]


def yolo_ignored_layers(model: nn.Module) -> list[nn.Module]:
    """The modules whose output channels stay (see the module docstring): C2f/C3k2 ``cv1``, C2PSA blocks, the
    Detect head's output convs and its DFL."""
    from ultralytics.nn.modules import C2PSA, C2f

    head = model.head
    out: list[nn.Module] = [head.dfl, *(seq[-1] for seq in head.cv2), *(seq[-1] for seq in head.cv3)]
    for m in model.net.modules():
        if isinstance(m, C2f):
            out.append(m.cv1)
        elif isinstance(m, C2PSA):
            out.append(m)
    return out


def yolo_example_size(example_size: tuple[int, int]) -> tuple[int, int]:
    """The tracing input rounded down to multiples of 32 (P5's stride: the neck's upsample + concat need it)."""
    return tuple(max(32, int(v) // 32 * 32) for v in example_size)


def _macs(model: nn.Module, x: Tensor) -> float:
    import torch_pruning as tp

    macs, _ = tp.utils.count_ops_and_params(model, x)
    return float(macs)


def prune_yolo_detector(model: nn.Module, example_size: tuple[int, int], *, pruning_ratio: float | None = None,
                        target_macs: float | None = None, importance: str = "group_magnitude", round_to: int = 16,
                        ignored_layers: list[nn.Module] = (), loss_fn: Callable[[nn.Module], Tensor] | None = None,
                        allocation: str = "uniform", weight_range: tuple[float, float] = (0.5, 2.0),
                        head_ratio: float = 0.0) -> dict[str, Any]:
    """Prune ``model`` (a ``YoloDetector``) in place; the arguments and record are
    :func:`~compressdet.prune.fpn.prune_fpn_detector`'s, with ``base_macs`` / ``macs_after`` the whole model's.

    Raises:
        UserError: an unknown allocation, ``prune_head`` (the head's inner convs are pruned with the rest),
            an unknown importance, a taylor importance without a loss, no target.
    """
    if allocation not in ALLOCATIONS:
        raise UserError(f"allocation: '{allocation}' is not one of {', '.join(ALLOCATIONS)}")
    if head_ratio:
        raise UserError("prune_head: a yolo model's Detect branches (their inner convs) are pruned with the rest "
                        "at the same ratio; leave prune_head at 0")
    if importance not in IMPORTANCES:
        raise UserError(f"importance: '{importance}' is not supported for yolo models (use one of "
                        f"{', '.join(IMPORTANCES)})")
    if importance == "taylor" and loss_fn is None:
        raise UserError("importance: taylor needs a loss on a training batch")
    p = next(model.parameters())
    x = torch.zeros(1, 3, *yolo_example_size(example_size), device=p.device, dtype=p.dtype)
    base = _macs(model, x)
    extra = [n for n, m in model.named_modules() if any(m is g for g in ignored_layers)]

    def ignored(m: nn.Module) -> list[nn.Module]:
        mods = dict(m.named_modules())
        return yolo_ignored_layers(m) + [mods[n] for n in extra]

    found = {}
    if allocation == "latency":
        was = model.training
        model.eval()  # the trial cuts trace the model: no BatchNorm statistics from the tracing input
        found = latency_weights(model, x, ignored(model), round_to=round_to, weight_range=weight_range,
                                macs_fn=_macs)
        model.train(was)
    weights = {r: v["weight"] for r, v in found.items()}
    if pruning_ratio is None:
        if target_macs is None:
            raise UserError("target: give macs or pruning_ratio")
        # the searched ratio is the base the latency weights multiply: every group reaches its clamp by hi
        lo, hi = 0.0, MAX_GROUP_RATIO / min([*weights.values(), 1.0])
        for _ in range(7 + math.ceil(math.log2(hi / MAX_GROUP_RATIO))):  # bisection on a copy: MACs fall
            mid = (lo + hi) / 2                                            # monotonically (~0.007 resolution)
            trial = copy.deepcopy(model).eval()
            _pruner(trial, x, mid, "group_magnitude", round_to, ignored(trial), weights).step()
            if _macs(trial, x) / base > target_macs:
                lo = mid
            else:
                hi = mid
        pruning_ratio = hi
    pruner, ops = prune_once(model, lambda: _pruner(model, x, float(pruning_ratio), importance, round_to,
                                                    ignored(model), weights), importance, loss_fn)
    rec = {"step": 1, "ratio": float(pruning_ratio), "base_macs": base, "macs_after": _macs(model, x), "ops": ops,
           "history": pruner.pruning_history(), "allocation": allocation, "head_ratio": 0.0,
           "macs_scope": "model"}
    if weights:
        rec["weights"] = {r: round(w, 4) for r, w in weights.items()}
        rec["efficiency"] = {r: v["efficiency"] for r, v in found.items()}
    return rec
