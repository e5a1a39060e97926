"""How much to prune and when: targets (MACs ratio, uniform or per-layer ratios), one-shot or iterative.

The pruner does not own a training loop (Torch-Pruning's habit): :meth:`ChannelPruner.step` prunes
once and returns what it did; the caller fine-tunes between steps. Each step rebuilds the
:class:`~compressdet.prune.graph.ShuffleDependencyGraph`, scores every group, lists for each group
the valid cuts (whole shuffle tuples, balanced conv groups: :func:`feasible_cuts`) and picks one
uniform ratio for all groups, searched so that MACs land on the step's target.

``allocation="latency"`` scales that ratio per group by how much latency (a cost model, default the
analytic :func:`~compressdet.prune.cost.latency_proxy`: MACs + activation memory traffic) a group's
channels save per MAC they remove, measured with one trial cut per group: on CPU the residual/concat
stream (which reaches the full-resolution stem) and the head input are worth more than their MACs,
the bottleneck mids less. The MACs target is still met exactly (the ratio search is unchanged).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from .cost import forward_with_hooks
from .graph import GroupConstraints, PruningError, ShuffleDependencyGraph, group_constraints, is_depthwise_conv
from .importance import ChannelImportance

BUDGET_SLACK = 0.02  # a MACs target is met when MACs land in [(1 - slack) * target, target]
# latency allocation's clip of per-group ratio multipliers. Wider is faster but cuts the head input
# harder: trained 0.5x at 0.6 MACs, (0.5, 2) vs (0.25, 4): 1.29x vs 1.35x ORT speed-up, 18.75 vs
# 16.56 mAP40 after the same fine-tune (docs/pruning.md)
DEFAULT_WEIGHT_RANGE = (0.5, 2.0)

__all__ = ["ChannelPruner", "GroupPlan", "feasible_cuts", "conv_macs", "apply_ops", "ALLOCATIONS"]

ALLOCATIONS = ("uniform", "latency")

_MAX_DP_STATES = 200_000


def conv_macs(model: nn.Module, example_inputs: Tensor, modules: nn.Module | None = None) -> int:
    """Multiply-adds of the convs and linears of ``modules`` (default: all of ``model``) for one forward."""
    total = [0]

    def hook(m: nn.Module, args: tuple, out: Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            total[0] += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total[0] += out[0].numel() * m.in_features

    forward_with_hooks(model, example_inputs, model if modules is None else modules, (nn.Conv2d, nn.Linear), hook)
    return total[0]


def feasible_cuts(cons: GroupConstraints, scores: Tensor, max_remove: int) -> dict[int, tuple[float, list[int]]]:
    """All valid cuts of one group: removed channel count -> (importance removed, root channels).

    Tuples with the same per-conv-group signature are interchangeable for the constraints, so the
    cheapest ones of each kind go first; a small DP over the kinds (state: channels removed so far
    and the per-conv-group imbalance, pruned when the remaining kinds can no longer rebalance it)
    enumerates every balanced combination.
    """
    kinds: dict[tuple, list[tuple[float, list[int]]]] = {}
    for t in cons.tuples:
        key = (len(t), cons.signature(t))
        kinds.setdefault(key, []).append((float(scores[t].sum()), t))
    order = sorted(kinds, key=lambda k: len(kinds[k]))
    for k in order:
        kinds[k].sort(key=lambda x: x[0])

    def diff_vec(sig: tuple) -> tuple[int, ...]:
        return tuple(c[i] - c[0] for c in sig for i in range(1, len(c)))

    vecs = [diff_vec(k[1]) for k in order]
    dim = len(vecs[0]) if vecs else 0
    sizes = [len(kinds[k]) for k in order]
    lo = [[0] * dim for _ in range(len(order) + 1)]
    hi = [[0] * dim for _ in range(len(order) + 1)]
    for j in range(len(order) - 1, -1, -1):
        for d in range(dim):
            step = vecs[j][d] * sizes[j]
            lo[j][d] = lo[j + 1][d] + min(0, step)
            hi[j][d] = hi[j + 1][d] + max(0, step)
    prefix = [[0.0] + list(torch.tensor([c for c, _ in kinds[k]], dtype=torch.float64).cumsum(0).tolist())
              for k in order]

    states: dict[tuple[int, tuple[int, ...]], tuple[float, tuple[int, ...]]] = {(0, (0,) * dim): (0.0, ())}
    for j, key in enumerate(order):
        width = key[0]
        new: dict[tuple[int, tuple[int, ...]], tuple[float, tuple[int, ...]]] = {}
        for (removed, diff), (cost, choice) in states.items():
            for t in range(sizes[j] + 1):
                ch = removed + t * width
                if ch > max_remove:
                    break
                d = tuple(diff[i] + t * vecs[j][i] for i in range(dim))
                if any(not (lo[j + 1][i] <= -d[i] <= hi[j + 1][i]) for i in range(dim)):
                    continue
                c = cost + prefix[j][t]
                old = new.get((ch, d))
                if old is None or c < old[0]:
                    new[(ch, d)] = (c, choice + (t,))
        states = new
        if len(states) > _MAX_DP_STATES:
            return {0: (0.0, [])}
    out: dict[int, tuple[float, list[int]]] = {}
    zero = (0,) * dim
    for (removed, d), (cost, choice) in states.items():
        if d != zero:
            continue
        roots = [r for j, t in enumerate(choice) for _, tup in kinds[order[j]][:t] for r in tup]
        out[removed] = (cost, sorted(roots))
    return out


@dataclass
class GroupPlan:
    """One group of the current graph: its root, constraints, importance and valid cuts."""

    root: str
    members: list[str]
    channels: int
    cuts: dict[int, tuple[float, list[int]]]
    granularity: int = 1
    weight: float = 1.0  # multiplies the searched ratio (latency allocation)
    efficiency: float | None = None  # relative cost saved / relative MACs saved by a trial cut

    def pick(self, remove: float) -> list[int]:
        """Root channels of the valid cut whose size is closest to ``remove`` (fewer on ties)."""
        best = min(self.cuts, key=lambda n: (abs(n - remove), n))
        return self.cuts[best][1]


def apply_ops(DG: ShuffleDependencyGraph, model: nn.Module, ops: Sequence[dict[str, Any]]) -> None:
    """Prune ``model`` (the one ``DG`` was built on) by ``[{"module": name, "idxs": [...]}, ...]``."""
    modules = dict(model.named_modules())
    for op in ops:
        if op["module"] not in modules:
            raise PruningError(f"pruning op names module '{op['module']}', which the model does not have")
        m = modules[op["module"]]
        if not op["idxs"]:
            continue
        group = DG.get_pruning_group(m, DG.out_pruning_fn(m), list(op["idxs"]))
        if not DG.check_pruning_group(group):
            raise PruningError(f"pruning {len(op['idxs'])} channels rooted at '{op['module']}' would empty a layer")
        group.prune()


def _default_output_transform(out: Any) -> list[Tensor]:
    """Detector outputs (tensor, tuple or dict) -> flat list of tensors for the DepGraph tracer."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, Tensor)]
    return [v for v in out if isinstance(v, Tensor)]


class ChannelPruner:
    """Structured channel pruning for ShuffleNet-like detectors.

    Args:
        model: the network, pruned in place.
        example_inputs: ``Tensor[1, 3, H, W]`` used to trace the graph and count MACs.
        importance: a :class:`ChannelImportance` (``get_importance(name)``).
        target_macs: keep at most this fraction of the MACs counted by ``macs_fn`` (after the last
            step; the search aims at ``[(1 - BUDGET_SLACK) * target, target]``, over only if no
            valid cut lands inside).
        pruning_ratio: uniform fraction of every prunable group's channels to remove.
        pruning_ratio_dict: ``{module name or prefix: ratio}``; the longest prefix matching a module
            of a group wins over ``pruning_ratio``.
        iterative_steps: reach the target in this many equal steps (prune -> fine-tune -> prune ...).
        ignored_layers: modules whose output channels are never pruned (the head output conv).
        round_to: removed channels per group are a multiple of this (on top of group divisibility).
        max_pruning_ratio: never remove more than this fraction of one group.
        macs_fn: ``model -> MACs`` (default: every conv/linear at ``example_inputs``).
        output_transform: turns the model output into tensors for the tracer.
        forward_fn: ``(model, inputs) -> output`` for tracing (default ``model(inputs)``).
        allocation: ``"uniform"`` (one ratio for every group) or ``"latency"`` (per-group ratio
            scaled by the group's cost saved per MAC saved, clipped to ``weight_range``).
        cost_fn: ``model -> latency proxy`` for ``"latency"`` (default: :func:`latency_proxy` of the
            whole model at ``example_inputs``).
        weight_range: ``(lo, hi)`` clip of the per-group ratio multiplier (relative to the median
            group), so no group is cut far beyond the others.
        depthwise_align: a group with a depthwise conv keeps a multiple of this many channels (or is
            left at its current width). ONNX Runtime's x86 CPU provider runs a depthwise conv with its
            blocked NCHWc kernel only when the channel count is a multiple of 4; other counts fall back
            to a slower NCHW kernel (docs/pruning.md, "Aligned depthwise widths").
    """

    def __init__(self, model: nn.Module, example_inputs: Tensor, importance: ChannelImportance, *,
                 target_macs: float | None = None, pruning_ratio: float | None = None,
                 pruning_ratio_dict: dict[str, float] | None = None, iterative_steps: int = 1,
                 ignored_layers: Sequence[nn.Module] = (), round_to: int | None = None,
                 max_pruning_ratio: float = 0.9, macs_fn: Callable[[nn.Module], float] | None = None,
                 output_transform: Callable[[Any], Any] | None = None,
                 forward_fn: Callable[[nn.Module, Tensor], Any] | None = None, allocation: str = "uniform",
                 cost_fn: Callable[[nn.Module], float] | None = None,
                 weight_range: tuple[float, float] = DEFAULT_WEIGHT_RANGE, depthwise_align: int = 1) -> None:
        if allocation not in ALLOCATIONS:
            raise PruningError(f"unknown allocation '{allocation}' (known: {', '.join(ALLOCATIONS)})")
        if not 0 < weight_range[0] <= 1 <= weight_range[1]:
            raise PruningError(f"weight_range must satisfy 0 < lo <= 1 <= hi, got {weight_range}")
        if depthwise_align < 1:
            raise PruningError(f"depthwise_align must be >= 1, got {depthwise_align}")
        if target_macs is None and pruning_ratio is None and not pruning_ratio_dict:
            raise PruningError("give a target: target_macs, pruning_ratio or pruning_ratio_dict")
        if target_macs is not None and not 0 < target_macs < 1:
            raise PruningError(f"target_macs must be in (0, 1), got {target_macs}")
        if iterative_steps < 1:
            raise PruningError(f"iterative_steps must be >= 1, got {iterative_steps}")
        self.model = model
        self.example_inputs = example_inputs
        self.importance = importance
        self.target_macs = target_macs
        self.pruning_ratio = pruning_ratio
        self.pruning_ratio_dict = dict(pruning_ratio_dict or {})
        self.iterative_steps = iterative_steps
        names = {m: n for n, m in model.named_modules()}
        self.ignored_names = [names[m] for m in ignored_layers]
        self.round_to = round_to or 1
        self.depthwise_align = int(depthwise_align)
        self.max_pruning_ratio = max_pruning_ratio
        self.macs_fn = macs_fn or (lambda m: conv_macs(m, example_inputs))
        self.output_transform = output_transform or _default_output_transform
        self.forward_fn = forward_fn
        self.allocation = allocation
        if cost_fn is None and allocation == "latency":
            from .cost import latency_proxy

            cost_fn = lambda m: latency_proxy(m, example_inputs)  # noqa: E731
        self.cost_fn = cost_fn
        self.weight_range = (float(weight_range[0]), float(weight_range[1]))
        self.current_step = 0
        self.base_macs = float(self.macs_fn(model))
        self._orig_channels: dict[str, int] = {}
        self.history: list[dict[str, Any]] = []

    # -- graph --------------------------------------------------------------------------------
    def build_graph(self, model: nn.Module | None = None) -> ShuffleDependencyGraph:
        model = self.model if model is None else model
        was = model.training
        try:
            return ShuffleDependencyGraph().build_dependency(model, self.example_inputs, forward_fn=self.forward_fn,
                                                             output_transform=self.output_transform)
        finally:
            model.train(was)

    def _ratio_for(self, members: list[str]) -> float | None:
        best, best_len = None, -1
        for key, r in self.pruning_ratio_dict.items():
            for m in members:
                if (m == key or m.startswith(key + ".")) and len(key) > best_len:
                    best, best_len = r, len(key)
        return best

    def plan_groups(self, DG: ShuffleDependencyGraph) -> list[GroupPlan]:
        """Score every prunable group and list its valid cuts."""
        modules = dict(self.model.named_modules())
        ignored = [modules[n] for n in self.ignored_names]
        plans = []
        for group in DG.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d,)):
            root = DG.module_name(group[0].dep.target.module)
            members = sorted({DG.module_name(it.dep.target.module) for it in group
                              if isinstance(it.dep.target.module, nn.Module) and it.dep.target.module in DG._module2name})
            cons = group_constraints(DG, group)
            scores = self.importance(group)
            max_remove = int(math.floor(self.max_pruning_ratio * cons.channels))
            cuts = feasible_cuts(cons, scores, max_remove)
            if self.round_to > 1:
                cuts = {n: c for n, c in cuts.items() if n % self.round_to == 0}
            if self.depthwise_align > 1 and any(is_depthwise_conv(modules.get(m)) for m in members):
                cuts = {n: c for n, c in cuts.items() if n == 0 or (cons.channels - n) % self.depthwise_align == 0}
            self._orig_channels.setdefault(root, cons.channels)
            if len(cuts) > 1:
                plans.append(GroupPlan(root, members, cons.channels, cuts))
        return plans

    def _ops_for(self, plans: list[GroupPlan], ratio: float, step_frac: float) -> list[dict[str, Any]]:
        ops = []
        for p in plans:
            r = self._ratio_for(p.members)
            r = min(ratio * p.weight, self.max_pruning_ratio) if r is None else r * step_frac
            orig = self._orig_channels.get(p.root, p.channels)
            remove = p.channels - orig * (1.0 - r)  # ratios are of the original width
            idxs = p.pick(max(0.0, remove))
            ops.append({"module": p.root, "idxs": idxs})
        return ops

    def latency_weights(self, plans: list[GroupPlan], trial_ratio: float = 0.25) -> None:
        """Set each plan's ``efficiency`` and ``weight`` from one trial cut (about ``trial_ratio``).

        efficiency = (relative cost saved) / (relative MACs saved); a group that saves no MACs
        (nothing the MACs target counts) but saves cost gets the top weight. Weights are the
        efficiencies over their median, clipped to ``weight_range``.
        """
        assert self.cost_fn is not None
        macs0, cost0 = float(self.macs_fn(self.model)), float(self.cost_fn(self.model))
        lo, hi = self.weight_range
        effs = []
        for p in plans:
            k = min((n for n in p.cuts if n > 0), key=lambda n: (abs(n - trial_ratio * p.channels), n))
            trial = copy.deepcopy(self.model)
            apply_ops(self.build_graph(trial), trial, [{"module": p.root, "idxs": p.cuts[k][1]}])
            dm = (macs0 - float(self.macs_fn(trial))) / max(macs0, 1e-12)
            dc = (cost0 - float(self.cost_fn(trial))) / max(cost0, 1e-12)
            p.efficiency = dc / dm if dm > 1e-9 else (math.inf if dc > 0 else 0.0)
            effs.append(p.efficiency)
        finite = sorted(e for e in effs if math.isfinite(e))
        med = finite[len(finite) // 2] if finite else 1.0
        for p in plans:
            e = p.efficiency if p.efficiency is not None else med
            p.weight = hi if not math.isfinite(e) else min(hi, max(lo, e / max(med, 1e-12)))

    def _macs_after(self, ops: list[dict[str, Any]]) -> float | None:
        """MACs after ``ops`` on a copy; ``None`` when the ops together would empty a layer.

        Every cut in a plan is valid alone, but cuts of different groups meet in shared layers (the
        residual stream feeds every unit's grouped conv1), so a combination of large cuts can still
        empty one; the search treats that as over-pruned instead of failing.
        """
        trial = copy.deepcopy(self.model)
        try:
            apply_ops(self.build_graph(trial), trial, ops)
        except PruningError:
            return None
        return float(self.macs_fn(trial))

    @staticmethod
    def _miss(macs: float, goal: float) -> float:
        """Distance of ``macs`` from the budget window ``[(1 - BUDGET_SLACK) * goal, goal]``.

        A MACs target is a budget ("at most 60 %"), so going over it costs three times as much as
        staying under; inside the window the miss is 0.
        """
        if macs > goal:
            return 3.0 * (macs - goal)
        return max(0.0, (1.0 - BUDGET_SLACK) * goal - macs)

    def _refine(self, plans: list[GroupPlan], ops: list[dict[str, Any]], macs: float, goal: float,
                tries: int = 10) -> list[dict[str, Any]]:
        """Move single groups one valid cut up or down (cheapest importance first) into the budget.

        The uniform ratio moves every group at once, and a coarse group (the shared residual stream)
        can jump past the goal; single-group moves close the gap.
        """
        by_root = {p.root: p for p in plans}
        for _ in range(tries):
            if self._miss(macs, goal) == 0.0:
                break
            more = macs > goal
            moves = []
            for i, op in enumerate(ops):
                p = by_root[op["module"]]
                n = len(op["idxs"])
                sizes = sorted(k for k in p.cuts if (k > n if more else k < n))
                if not sizes:
                    continue
                k = sizes[0] if more else sizes[-1]
                delta = abs(p.cuts[k][0] - p.cuts[n][0]) / max(1, abs(k - n))
                moves.append((delta if more else -delta, i, k))
            if not moves:
                break
            moves.sort()
            best = None
            for _, i, k in moves[:4]:
                trial = list(ops)
                trial[i] = {"module": ops[i]["module"], "idxs": by_root[ops[i]["module"]].cuts[k][1]}
                m = self._macs_after(trial)
                if m is None:
                    continue
                miss = self._miss(m, goal)
                if miss < self._miss(macs, goal) and (best is None or miss < self._miss(best[0], goal)):
                    best = (m, trial)
            if best is None:
                break
            macs, ops = best
        return ops

    # -- pruning ------------------------------------------------------------------------------
    def step(self, loss_fn: Callable[[nn.Module], Tensor] | None = None) -> dict[str, Any]:
        """One pruning step (of ``iterative_steps``); returns its history record.

        Args:
            loss_fn: ``model -> scalar loss``; needed by gradient criteria (Taylor), whose gradients
                are computed here on the current model.
        """
        if self.current_step >= self.iterative_steps:
            raise PruningError(f"all {self.iterative_steps} pruning steps are done")
        self.current_step += 1
        frac = self.current_step / self.iterative_steps
        if getattr(self.importance, "needs_grad", False):
            if loss_fn is None:
                raise PruningError(f"{type(self.importance).__name__} needs loss_fn to compute gradients")
            self.model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss_fn(self.model).backward()
        macs_before = float(self.macs_fn(self.model))
        DG = self.build_graph()
        plans = self.plan_groups(DG)
        if self.allocation == "latency":
            self.latency_weights(plans)
        if self.target_macs is not None:
            goal = self.base_macs * (1.0 - (1.0 - self.target_macs) * frac)
            lo, hi = 0.0, self.max_pruning_ratio / min([p.weight for p in plans] + [1.0])
            best: tuple[float, list[dict[str, Any]]] | None = None
            for _ in range(14):
                mid = (lo + hi) / 2
                ops = self._ops_for(plans, mid, frac)
                macs = self._macs_after(ops)
                if macs is None:  # these cuts together empty a layer: too much, search lower ratios
                    hi = mid
                    continue
                if best is None or self._miss(macs, goal) < self._miss(best[0], goal):
                    best = (macs, ops)
                if macs > goal:
                    lo = mid
                else:
                    hi = mid
            if best is None:
                raise PruningError(f"no valid cut reaches {self.target_macs} of the MACs: every searched "
                                   "combination would empty a layer")
            ops = self._refine(plans, best[1], best[0], goal)
        else:
            ops = self._ops_for(plans, (self.pruning_ratio or 0.0) * frac, frac)
        ops = [op for op in ops if op["idxs"]]
        apply_ops(DG, self.model, ops)
        self.model.zero_grad(set_to_none=True)
        record = {"step": self.current_step, "macs_before": macs_before, "macs_after": float(self.macs_fn(self.model)),
                  "base_macs": self.base_macs, "allocation": self.allocation, "ops": ops}
        if self.allocation == "latency":
            record["weights"] = {p.root: round(p.weight, 4) for p in plans}
        self.history.append(record)
        return record
