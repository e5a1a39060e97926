"""``weight: auto`` (issue #41): a distiller's strength as a gradient ratio, not a loss weight.

The loss weights of different distillers are not comparable (FGFI's gradient on the shared
layers was 30-100x the detection loss's at weight 1, CrossKD's under 0.5x), so a sweep over weights
compares methods at different strengths. Here the strength is measured where the methods compete
with the detection loss, as issue #41 defines it: the L2 norm of each loss's gradient on the student's
**backbone + neck** (:data:`PARAMETER_SET`: the parameters its feature taps depend on -- found by
autograd from the taps themselves, so the same rule holds for every family: ShuffleDet's backbone,
the FPN families' ``det.backbone`` body + FPN, a YOLO model's layers before its Detect head, a QAT
graph's equivalents; a head the detection loss trains, and the head-tower layers CrossKD's paper variant
reaches, are not in it), over a few training batches with the actual teacher, before training.
``weight = auto_ratio / ratio(1)`` then makes the distillation gradient ``auto_ratio`` times the
detection gradient; which parameters were measured is recorded with the weight
(:func:`describe_parameters`: ``params`` in the calibration).

The gradient is linear in the weight, so ``ratio(w) = w * ratio(1)`` exactly on the batches
measured; :func:`grad_ratio_table` gives that table (the benchmark's ``calibration``).
Measuring leaves the run as it was: the student's state (BatchNorm statistics), each module's
train/eval mode, the RNG and the loader's position are restored, so a run with ``weight: auto`` trains exactly as one given the
chosen weight.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..models.contract import outputs_float
from .checkpoint import get_rng_state, set_rng_state
from .distributed import all_reduce_sum, unwrap

__all__ = ["PARAMETER_SET", "shared_parameters", "describe_parameters", "measure_grad_ratios", "grad_ratio_table",
           "calibrate_weights"]


#: the parameters ``weight: auto`` measures gradients on (issue #41's "backbone+FPN")
PARAMETER_SET = "backbone+neck"


def shared_parameters(model: nn.Module, feats: Tensor | Iterable[Tensor]) -> list[nn.Parameter]:
    """Backbone + neck: the student's trainable parameters its feature taps ``feats`` (the student's
    ``forward_with_features`` / ``forward_with_tower`` features, still in the graph) depend on."""
    params = [p for p in model.parameters() if p.requires_grad]
    flat = [feats] if isinstance(feats, Tensor) else list(feats)
    probe = sum(f.float().sum() for f in flat)
    grads = torch.autograd.grad(probe, params, retain_graph=True, allow_unused=True)
    return [p for p, g in zip(params, grads, strict=True) if g is not None]


def describe_parameters(model: nn.Module, params: Iterable[nn.Parameter]) -> dict[str, Any]:
    """What a calibration measured on: ``{"set", "modules", "tensors", "numel"}``, ``modules`` the
    fewest module (or parameter) names that cover exactly ``params``."""
    params = list(params)
    ids = {id(p) for p in params}
    names: list[str] = []

    def visit(name: str, mod: nn.Module) -> None:
        own = [p for p in mod.parameters() if p.requires_grad]
        if not any(id(p) in ids for p in own):
            return
        if all(id(p) in ids for p in own):
            names.append(name or ".")
            return
        for n, p in mod.named_parameters(recurse=False):
            if id(p) in ids:
                names.append(f"{name}.{n}" if name else n)
        for n, child in mod.named_children():
            visit(f"{name}.{n}" if name else n, child)

    visit("", model)
    return {"set": PARAMETER_SET, "modules": names, "tensors": len(params), "numel": int(sum(p.numel() for p in params))}


def _grads(loss: Tensor, params: list[nn.Parameter]) -> tuple[Tensor | None, ...]:
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)


def _norm(grads: Iterable[Tensor | None], keep: Iterable[bool], world_size: int = 1) -> float:
    """L2 norm of the kept gradients; under DDP of their sum over processes: with the global
    normalisers that sum is the gradient one process with the whole batch would compute, so the
    weight chosen does not depend on the number of processes (a sum of per-process norms would)."""
    flat = [g.detach().float().flatten() for g, k in zip(grads, keep, strict=True) if k and g is not None]
    if not flat:
        return 0.0
    v = torch.cat(flat)
    return float(torch.linalg.vector_norm(all_reduce_sum(v) if world_size > 1 else v))


def measure_grad_ratios(trainer: Any, batches: int | Iterable = 4, record: dict[str, Any] | None = None
                        ) -> dict[str, float]:
    """Each distiller's gradient norm on :func:`shared_parameters` (backbone + neck) over the detection
    loss's, at weight 1: ``sum over batches ||grad kd|| / sum ||grad det||`` (under DDP the global
    batch's gradients: the processes' summed), both norms over the same backbone + neck parameters.

    ``trainer``: an :class:`~compressdet.engine.Trainer` with distillation. ``batches``: how many
    training batches (taken from a fresh pass of its loader), or an iterable of ``(images, targets)``.
    ``record``: if given, gets ``"params"``: :func:`describe_parameters` of the set measured.
    The trainer's model state, RNG and loader position are left as they were.
    """
    module = unwrap(trainer.ddp)
    distiller = module.imitation
    if distiller is None:
        raise ValueError("measure_grad_ratios: the trainer has no distillation")
    params: list[nn.Parameter] | None = None
    state = trainer.model.state_dict()
    saved = type(state)((k, v.detach().clone()) for k, v in state.items())
    # the modules' versions: without them a QAT observer loads as version 1 and resets its eps
    saved._metadata = getattr(state, "_metadata", None)  # type: ignore[attr-defined]
    rng = get_rng_state()
    modes = [(m, m.training) for m in module.modules()]  # a loaded student may be in eval mode
    source: Iterator = (itertools.islice(iter(trainer.train_loader), batches) if isinstance(batches, int)
                        else iter(batches))
    det_total, kd_total = dict.fromkeys(distiller.methods, 0.0), dict.fromkeys(distiller.methods, 0.0)
    try:
        module.train()
        for images, targets in source:
            images = images.to(trainer.device)
            with trainer._autocast():
                teacher = trainer.teacher_taps(images)
                gt = [t["boxes"] for t in targets]
                mask = trainer._distill_mask(gt, teacher[0]) if distiller.needs_mask else None
                head_out, taps = module.taps(images, teacher, mask, gt)
                kd = distiller.unweighted(taps)
            if params is None:  # the backbone + neck: what the student's feature taps depend on
                params = shared_parameters(trainer.model, taps.s_feat)
            det = _grads(trainer.loss_fn(outputs_float(head_out), targets)["total"], params)
            every = [True] * len(params)
            det_norm = _norm(det, every, trainer.world_size)
            for name, loss in kd.items():  # both norms on the backbone + neck (the head is not in it)
                kd_total[name] += _norm(_grads(loss, params), every, trainer.world_size)
                det_total[name] += det_norm
    finally:
        trainer.model.load_state_dict(saved)
        set_rng_state(rng)
        for m, mode in modes:
            m.training = mode
    names = list(kd_total)
    sums = torch.tensor([*(det_total[n] for n in names), *(kd_total[n] for n in names)], dtype=torch.float64,
                        device=trainer.device)  # NCCL reduces CUDA tensors only
    if trainer.world_size > 1:  # the same on every process already; averaged so every process holds the same bits
        sums = all_reduce_sum(sums) / trainer.world_size
    det_sums, kd_sums = sums[:len(names)], sums[len(names):]
    if not (det_sums > 0).any():
        raise UserError("weight: auto: the detection loss has no gradient on the student's backbone + neck on the "
                        "batches measured; give the distillation weight as a number")
    if record is not None and params is not None:
        record["params"] = describe_parameters(trainer.model, params)
    return {n: float(kd_sums[i] / det_sums[i]) if det_sums[i] > 0 else 0.0 for i, n in enumerate(names)}


def grad_ratio_table(trainer: Any, weights: dict[str, Iterable[float]], batches: int | Iterable = 4
                     ) -> dict[str, dict[float, float]]:
    """``{method: {weight: gradient ratio}}`` for the given weights (the benchmark's calibration
    table): measured once at weight 1 and scaled, as the gradient is linear in the weight."""
    at_one = measure_grad_ratios(trainer, batches)
    return {m: {float(w): float(w) * at_one[m] for w in ws} for m, ws in weights.items()}


def calibrate_weights(trainer: Any) -> dict[str, dict[str, Any]]:
    """Set the weight of each ``weight: auto`` method so its gradient ratio is its ``auto_ratio``;
    returns ``{method: {"weight", "grad_ratio", "grad_ratio_at_1", "auto_ratio", "batches", "params"}}``
    (``params``: :func:`describe_parameters` of the backbone + neck set the ratios were measured on)."""
    distiller = unwrap(trainer.ddp).imitation
    auto = list(distiller.auto) if distiller is not None else []
    if not auto:
        return {}
    batches = max(int(distiller.cfgs[m].auto_batches) for m in auto)
    record: dict[str, Any] = {}
    ratios = measure_grad_ratios(trainer, batches, record)
    out: dict[str, dict[str, Any]] = {}
    for m in auto:
        target = float(distiller.cfgs[m].auto_ratio)
        if not ratios[m] > 0:
            raise UserError(f"distill {m} weight: auto: its loss has no gradient on the student's backbone + neck on the "
                            f"{batches} batches measured (student already equals the teacher?); give a weight")
        w = target / ratios[m]
        distiller.weights[m] = w
        out[m] = {"weight": w, "grad_ratio": w * ratios[m], "grad_ratio_at_1": ratios[m], "auto_ratio": target,
                  "batches": batches, "params": record.get("params")}
    return out
