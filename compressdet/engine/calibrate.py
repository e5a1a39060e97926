"""``weight: auto`` (issue #41): a distiller's strength as a gradient ratio, not a loss weight.

The loss weights of different distillers are not comparable (FGFI's gradient on the shared
layers was 30-100x the detection loss's at weight 1, CrossKD's under 0.5x), so a sweep over weights
compares methods at different strengths. Here the strength is measured where the methods compete
with the detection loss: the L2 norm of each loss's gradient on the student's *shared* parameters
(backbone + neck: ``model.backbone``, which for the FPN families holds the FPN; a model without
one, YOLO or a QAT graph, the parameters the distillation loss reaches, so the detection head
it never trains is not counted), over a few
training batches with the actual teacher, before training. ``weight = auto_ratio / ratio(1)``
then makes the distillation gradient ``auto_ratio`` times the detection gradient.

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

__all__ = ["shared_parameters", "measure_grad_ratios", "grad_ratio_table", "calibrate_weights"]


def shared_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Where the losses compete: the backbone (+ FPN neck) -- ``model.backbone``, else all (a YOLO
    model, a QAT graph); :func:`measure_grad_ratios` keeps those a distiller's loss reaches."""
    part = getattr(model, "backbone", None)
    part = part if isinstance(part, nn.Module) else model
    return [p for p in part.parameters() if p.requires_grad]


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


def measure_grad_ratios(trainer: Any, batches: int | Iterable = 4) -> dict[str, float]:
    """Each distiller's gradient norm on :func:`shared_parameters` over the detection loss's, at
    weight 1: ``sum over batches ||grad kd|| / sum ||grad det||`` (under DDP the global batch's
    gradients: the processes' summed), both norms over the shared parameters that distiller's loss reaches.

    ``trainer``: an :class:`~compressdet.engine.Trainer` with distillation. ``batches``: how many
    training batches (taken from a fresh pass of its loader), or an iterable of ``(images, targets)``.
    The trainer's model state, RNG and loader position are left as they were.
    """
    module = unwrap(trainer.ddp)
    distiller = module.imitation
    if distiller is None:
        raise ValueError("measure_grad_ratios: the trainer has no distillation")
    params = shared_parameters(trainer.model)
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
            det = _grads(trainer.loss_fn(outputs_float(head_out), targets)["total"], params)
            for name, loss in kd.items():
                # both norms on the parameters this loss reaches: a head only the detection loss trains
                # (a model without ``backbone``) would otherwise inflate the denominator
                kd_g = _grads(loss, params)
                reached = [g is not None for g in kd_g]
                kd_total[name] += _norm(kd_g, reached, trainer.world_size)
                det_total[name] += _norm(det, reached, trainer.world_size)
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
        raise UserError("weight: auto: the detection loss has no gradient on the student's backbone on the "
                        "batches measured; give the distillation weight as a number")
    return {n: float(kd_sums[i] / det_sums[i]) if det_sums[i] > 0 else 0.0 for i, n in enumerate(names)}


def grad_ratio_table(trainer: Any, weights: dict[str, Iterable[float]], batches: int | Iterable = 4
                     ) -> dict[str, dict[float, float]]:
    """``{method: {weight: gradient ratio}}`` for the given weights (the benchmark's calibration
    table): measured once at weight 1 and scaled, as the gradient is linear in the weight."""
    at_one = measure_grad_ratios(trainer, batches)
    return {m: {float(w): float(w) * at_one[m] for w in ws} for m, ws in weights.items()}


def calibrate_weights(trainer: Any) -> dict[str, dict[str, float]]:
    """Set the weight of each ``weight: auto`` method so its gradient ratio is its ``auto_ratio``;
    returns ``{method: {"weight", "grad_ratio", "grad_ratio_at_1", "auto_ratio", "batches"}}``."""
    distiller = unwrap(trainer.ddp).imitation
    auto = list(distiller.auto) if distiller is not None else []
    if not auto:
        return {}
    batches = max(int(distiller.cfgs[m].auto_batches) for m in auto)
    ratios = measure_grad_ratios(trainer, batches)
    out: dict[str, dict[str, float]] = {}
    for m in auto:
        target = float(distiller.cfgs[m].auto_ratio)
        if not ratios[m] > 0:
            raise UserError(f"distill {m} weight: auto: its loss has no gradient on the student's backbone on the "
                            f"{batches} batches measured (student already equals the teacher?); give a weight")
        w = target / ratios[m]
        distiller.weights[m] = w
        out[m] = {"weight": w, "grad_ratio": w * ratios[m], "grad_ratio_at_1": ratios[m], "auto_ratio": target,
                  "batches": batches}
    return out
