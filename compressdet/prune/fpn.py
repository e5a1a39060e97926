"""Structured pruning of the FPN families (FCOS / RetinaNet on the detector contract, issue #20).

torch-pruning's ``MetaPruner`` removes channels of the backbone body (ResNet / MobileNetV3, their
BatchNorms, squeeze-excitation convs, and the FPN's lateral 1x1 convs that read them). What keeps
the *shared* head valid is left alone: the FPN's output convs (``fpn.layer_blocks``), the P6/P7
block and the whole head (its towers are applied to every level, and FCOS's GroupNorm needs the
FPN width to stay a multiple of its 32 groups), so every level still has the width the head was
built for. A MACs target is met by bisection on the uniform ratio (the backbone's MACs, body + FPN,
as ``target.macs`` means for ShuffleDet).

``head_ratio`` (a prune stage's ``prune_head``) also removes that fraction of the inner channels of
the head towers (rounded like every group: kept channels a multiple of ``round_to``): a tower is
shared by every level, so one cut is valid for all; the prediction convs (their outputs are the
detector's) and the towers' input width stay. The head's cut is given, not searched: the MACs target
stays the backbone's, and at ORT's 16-channel granularity a 64-wide tower has three cuts (48, 32,
16), too coarse for a search to land a whole-model target. RetinaNet's head is most of its MACs
(0.71 of ``retinanet_mnv2_050`` at 192x624), so this is where its speed is. FCOS's GroupNorm towers
are refused (GroupNorm with 32 groups: torch-pruning does not keep its groups whole).

``allocation="latency"`` does what ShuffleDet's ``ChannelPruner`` does, on torch-pruning's groups: one
trial cut per group measures the latency proxy (:func:`~compressdet.prune.cost.latency_proxy`) it
saves per backbone MAC it saves, and each group's ratio is the uniform one times that efficiency over
the median group's, clipped to ``weight_range`` (torch-pruning's ``pruning_ratio_dict``, keyed by the
group's root conv). The bisection still runs on the uniform ratio, so the MACs target holds either way.

Model files of pruned models reload with :func:`compressdet.models.load_model` (layer shapes are
replayed from the file).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import UserError

__all__ = ["prune_fpn_detector", "fpn_ignored_layers", "head_tower_convs", "latency_weights"]

IMPORTANCES = ("group_magnitude", "taylor")
ALLOCATIONS = ("uniform", "latency")
MAX_GROUP_RATIO = 0.9  # a weighted ratio never removes more of one group than this


def fpn_ignored_layers(model: nn.Module, head: bool = False) -> list[nn.Module]:
    """The modules the head's validity depends on: FPN output convs, P6/P7, and the whole head, or with
    ``head`` only its prediction convs (class logits, box deltas, centerness: their outputs are the
    detector's outputs), so that the towers' inner channels can go (:func:`head_tower_convs`)."""
    fpn = model.det.backbone.fpn
    out = [fpn.layer_blocks]
    if getattr(fpn, "extra_blocks", None) is not None:
        out.append(fpn.extra_blocks)
    if not head:
        return [model.det.head, *out]
    return out + [m for n, m in model.det.head.named_modules()
                  if isinstance(m, nn.Conv2d) and ".conv." not in f".{n}."]


def head_tower_convs(model: nn.Module) -> dict[str, nn.Module]:
    """The head towers' convs by name (what ``head_ratio`` cuts)."""
    return {n: m for n, m in model.named_modules()
            if n.startswith("det.head.") and isinstance(m, nn.Conv2d) and ".conv." in f".{n}."}


def _backbone_macs(model: nn.Module, x: Tensor) -> float:
    import torch_pruning as tp

    macs, _ = tp.utils.count_ops_and_params(model.det.backbone, x)
    return float(macs)


def _output_sum(out: Any) -> Tensor:
    return sum(o.float().sum() for o in out)


def prune_once(model: nn.Module, make_pruner: Callable[[], Any], importance: str,
               loss_fn: Callable[[nn.Module], Tensor] | None) -> tuple[Any, list[dict[str, Any]]]:
    """Build the pruner with the model in eval mode (torch-pruning traces it), score (taylor: one backward in
    the model's own mode), prune every group; the model's mode restored. -> (pruner, the ops it applied)."""
    was = model.training
    model.eval()
    pruner = make_pruner()
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
    return pruner, ops


def _pruner(model: nn.Module, x: Tensor, ratio: float, importance: str, round_to: int,
            ignored: list[nn.Module], weights: dict[str, float] | None = None,
            fixed: dict[str, float] | None = None) -> Any:
    """torch-pruning's ``MetaPruner``; ``weights`` (root conv name -> multiplier) scale ``ratio`` per
    group, ``fixed`` (root conv name -> ratio) set a group's ratio outright (the head towers)."""
    import torch_pruning as tp

    imp = tp.importance.TaylorImportance() if importance == "taylor" else tp.importance.MagnitudeImportance(p=2)
    modules = dict(model.named_modules())
    per_group = {modules[n]: min(ratio * w, MAX_GROUP_RATIO) for n, w in (weights or {}).items()}
    per_group.update({modules[n]: r for n, r in (fixed or {}).items()})
    return tp.pruner.MetaPruner(model, x, importance=imp, pruning_ratio=min(ratio, MAX_GROUP_RATIO) if weights else ratio,
                                pruning_ratio_dict=per_group or None, ignored_layers=ignored, round_to=round_to,
                                output_transform=_output_sum)


def _groups(model: nn.Module, x: Tensor, ignored: list[nn.Module]) -> tuple[Any, list[tuple[str, Any]]]:
    """The dependency graph and its prunable groups as ``(root conv name, group)``."""
    import torch_pruning as tp

    dg = tp.DependencyGraph().build_dependency(model, x, output_transform=_output_sum)
    names = {m: n for n, m in model.named_modules()}
    skip = [sub for m in ignored for sub in m.modules()]  # as MetaPruner expands them
    groups = dg.get_all_groups(ignored_layers=skip, root_module_types=(nn.Conv2d,))
    return dg, [(names[g[0].dep.target.module], g) for g in groups]


def latency_weights(model: nn.Module, x: Tensor, ignored: list[nn.Module], *, round_to: int = 16,
                    weight_range: tuple[float, float] = (0.5, 2.0), trial_ratio: float = 0.25,
                    cost_fn: Callable[[nn.Module], float] | None = None,
                    macs_fn: Callable[[nn.Module, Tensor], float] | None = None) -> dict[str, dict[str, float]]:
    """Per-group multipliers of the uniform ratio, from one trial cut of each group.

    efficiency = (relative cost saved) / (relative backbone MACs saved) of cutting about
    ``trial_ratio`` of the group's channels (a multiple of ``round_to``) from a copy; weight = the
    efficiency over the median group's, clipped to ``weight_range`` (a group that saves cost but no
    backbone MACs gets the top weight). ``cost_fn``: ``model -> cost`` (default: the analytic
    latency proxy of the whole model at ``x``); ``macs_fn``: ``(model, x) -> MACs`` the budget is counted
    in (default: the backbone's, body + FPN; the yolo pruner counts the whole model's).

    Returns ``{root conv name: {"weight", "efficiency"}}``.
    """
    if cost_fn is None:
        from .cost import latency_proxy

        cost_fn = lambda m: latency_proxy(m, x)  # noqa: E731
    macs_fn = macs_fn or _backbone_macs
    lo, hi = weight_range
    macs0, cost0 = macs_fn(model, x), float(cost_fn(model))
    names = {m: n for n, m in model.named_modules()}
    ignored_names = [names[m] for m in ignored]
    dg0, groups = _groups(model, x, ignored)
    effs: dict[str, float] = {}
    for root, group in groups:
        channels = dg0.get_out_channels(group[0].dep.target.module)
        keep = int(channels * (1.0 - trial_ratio)) // round_to * round_to  # as torch-pruning rounds: down
        k = channels - keep
        if keep <= 0 or k <= 0:
            continue  # too narrow to keep a whole step of round_to: the pruner cannot cut it either
        trial = copy.deepcopy(model)
        tm = dict(trial.named_modules())
        dg, _ = _groups(trial, x, [tm[n] for n in ignored_names])
        target = tm[root]
        g = dg.get_pruning_group(target, dg.get_pruner_of_module(target).prune_out_channels,
                                 list(range(channels - k, channels)))
        if not dg.check_pruning_group(g):
            continue
        g.prune()
        dm = (macs0 - macs_fn(trial, x)) / max(macs0, 1e-12)
        dc = (cost0 - float(cost_fn(trial))) / max(cost0, 1e-12)
        effs[root] = dc / dm if dm > 1e-9 else (math.inf if dc > 0 else 0.0)
    finite = sorted(e for e in effs.values() if math.isfinite(e))
    mid = finite[len(finite) // 2] if finite else 0.0
    med = mid if mid > 0 else 1.0
    return {r: {"weight": hi if not math.isfinite(e) else min(hi, max(lo, e / max(med, 1e-12))),
                "efficiency": e if math.isfinite(e) else None} for r, e in effs.items()}


def prune_fpn_detector(model: nn.Module, example_size: tuple[int, int], *, pruning_ratio: float | None = None,
                       target_macs: float | None = None, importance: str = "group_magnitude", round_to: int = 16,
                       ignored_layers: list[nn.Module] = (), loss_fn: Callable[[nn.Module], Tensor] | None = None,
                       allocation: str = "uniform", weight_range: tuple[float, float] = (0.5, 2.0),
                       head_ratio: float = 0.0) -> dict[str, Any]:
    """Prune ``model`` (a ``TorchvisionDetector``) in place; returns a JSON-able record.

    Args:
        example_size: ``(H, W)`` of the tracing input (a small one with the same stride pattern).
        pruning_ratio: uniform channel ratio removed from every prunable group, or
        target_macs: the backbone's (body + FPN) MACs after / before, found by bisection on the ratio.
        importance: ``group_magnitude`` (L2) or ``taylor`` (needs ``loss_fn(model) -> scalar``).
        round_to: channels kept per group are a multiple of this.
        ignored_layers: more modules never pruned (besides :func:`fpn_ignored_layers`).
        allocation: ``uniform`` (one ratio) or ``latency`` (:func:`latency_weights` scale it per group).
        weight_range: the latency allocation's clip of the per-group multiplier.
        head_ratio: remove this fraction of every head tower conv's output channels too (every level
            shares them, so a cut is valid for all; the prediction convs and the towers' input width
            stay); 0: the head is left whole.

    Returns:
        ``{"step", "ratio", "base_macs", "macs_after", "ops": [{"module", "idxs"}], "history",
        "allocation", "head_ratio"}`` (backbone MACs at ``example_size``; ``history`` is torch-pruning's
        ``pruning_history()``; ``"weights"``, root conv -> multiplier, with the latency allocation, whose
        ``"ratio"`` is then the base the weights multiply, not a ratio any one group got).
    """
    if allocation not in ALLOCATIONS:
        raise UserError(f"allocation: '{allocation}' is not one of {', '.join(ALLOCATIONS)}")
    if importance not in IMPORTANCES:
        raise UserError(f"importance: '{importance}' is not supported for FPN families (use one of "
                        f"{', '.join(IMPORTANCES)})")
    if importance == "taylor" and loss_fn is None:
        raise UserError("importance: taylor needs a loss on a training batch")
    p = next(model.parameters())
    x = torch.zeros(1, 3, *example_size, device=p.device, dtype=p.dtype)
    if not 0.0 <= head_ratio < MAX_GROUP_RATIO:
        raise UserError(f"prune_head: {head_ratio} is not a fraction of channels in [0, {MAX_GROUP_RATIO})")
    gn = next((m for m in model.det.head.modules() if isinstance(m, nn.GroupNorm)), None)
    if head_ratio and gn is not None:
        raise UserError(f"prune_head: the {getattr(model, 'family', 'model')} head's towers are normalised by "
                        f"GroupNorm({gn.num_groups}, {gn.num_channels}), whose groups torch-pruning does not keep "
                        "whole; prune the backbone only (prune_head: 0)")
    ignored = fpn_ignored_layers(model, bool(head_ratio)) + list(ignored_layers)
    base = _backbone_macs(model, x)
    # the latency weights spread the backbone's budget: the head's cut is fixed, so they ignore it
    found = latency_weights(model, x, fpn_ignored_layers(model) + list(ignored_layers), round_to=round_to,
                            weight_range=weight_range) if allocation == "latency" else {}
    fixed = {n: float(head_ratio) for n in head_tower_convs(model)} if head_ratio else {}
    weights = {r: v["weight"] for r, v in found.items()}

    if pruning_ratio is None:
        if target_macs is None:
            raise UserError("target: give macs or pruning_ratio")
        # the searched ratio is the base the latency weights multiply: every group reaches its clamp by hi
        lo, hi = 0.0, MAX_GROUP_RATIO / min([*weights.values(), 1.0])
        for _ in range(7 + math.ceil(math.log2(hi / MAX_GROUP_RATIO))):  # bisection on a copy: MACs fall
            # monotonically with the ratio; ~0.007 resolution whatever the weights' range
            mid = (lo + hi) / 2
            trial = copy.deepcopy(model)
            ig = fpn_ignored_layers(trial, bool(head_ratio)) + [
                dict(trial.named_modules())[n] for n, m in model.named_modules() if any(m is g for g in ignored_layers)]
            _pruner(trial, x, mid, "group_magnitude", round_to, ig, weights, fixed).step()
            if _backbone_macs(trial, x) / base > target_macs:
                lo = mid
            else:
                hi = mid
        pruning_ratio = hi
    pruner, ops = prune_once(model, lambda: _pruner(model, x, float(pruning_ratio), importance, round_to, ignored,
                                                    weights, fixed), importance, loss_fn)
    after = _backbone_macs(model, x)
    rec = {"step": 1, "ratio": float(pruning_ratio), "base_macs": base, "macs_after": after, "ops": ops,
           "history": pruner.pruning_history(), "allocation": allocation, "head_ratio": float(head_ratio)}
    if weights:
        rec["weights"] = {r: round(w, 4) for r, w in weights.items()}
        rec["efficiency"] = {r: v["efficiency"] for r, v in found.items()}
    return rec
