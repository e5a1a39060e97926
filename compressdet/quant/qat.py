"""Quantization-aware training with PT2E, the fp32 teacher still guiding (feature imitation).

The student is captured once (``torch.export``), prepared with ``prepare_qat_pt2e`` and trained as
a fake-quantized GraphModule that returns ``(head_out, feature)``: the detection loss reads the
head, the imitation loss reads the feature, both through the int8 simulation. Schedules freeze BN
statistics (``freeze_bn_step``) and then observers (``freeze_observers_step``), so the last steps
train against the scales that ship.

The loop is deliberately small (SGD + cosine, per-tensor grad clip, the seed's weight-decay rule):
a fake-quant GraphModule does not support DDP/SyncBN conversion or module surgery that a general
trainer does, and QAT fine-tunes are short.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ._pt2e import apply_masks, capture, convert, freeze_bn, freeze_observers, make_quantizer

__all__ = ["prepare_qat", "QatResult", "train_qat", "resolve_freeze_steps", "quantize_qat"]


def prepare_qat(model: nn.Module, example: torch.Tensor, cfg: Any) -> torch.fx.GraphModule:
    """Fake-quantized trainable copy of ``model`` (returns ``(head_out, feature)``).

    Args:
        model: a float ShuffleDet (student or pruned student); not modified.
        example: ``[N, 3, H, W]`` input with the training shape (N > 1 not required).
        cfg: ``QuantConfig``.
    """
    from torchao.quantization.pt2e import move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    gm = capture(model, example)
    prepared = prepare_qat_pt2e(gm, make_quantizer(cfg, is_qat=True))
    move_exported_model_to_train(prepared)
    prepared._compressdet_masks = getattr(gm, "_compressdet_masks", {})
    apply_masks(prepared)
    return prepared


def resolve_freeze_steps(steps: int, freeze_observers_step: int | None, freeze_bn_step: int | None
                         ) -> tuple[int, int]:
    """Defaults (observers at 2/3, BN at 1/2 of the steps) and range checks; raises UserError."""
    obs = int(steps * 2 / 3) if freeze_observers_step is None else freeze_observers_step
    bn = steps // 2 if freeze_bn_step is None else freeze_bn_step
    for name, v in (("freeze_observers_step", obs), ("freeze_bn_step", bn)):
        if v > steps:
            raise UserError(f"{name}={v} is after the last step ({steps}); use a value in [0, {steps}]")
    return obs, bn


@dataclass
class QatResult:
    prepared: torch.fx.GraphModule
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def _cosine(step: int, steps: int, lr: float, lr_min: float, warmup: int) -> float:
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * min(1.0, t)))


def train_qat(prepared: torch.fx.GraphModule, batches: Iterable[tuple[torch.Tensor, list[dict]]], *,
              det_loss: nn.Module, schedule: Any, freeze_observers_step: int | None = None,
              freeze_bn_step: int | None = None, teacher: nn.Module | None = None,
              imitation: Any = None, imitation_loss: nn.Module | None = None,
              anchors: torch.Tensor | None = None, grid: tuple[int, int] | None = None, num_anchors: int = 9,
              device: str = "cpu", log: Callable[[dict[str, float]], None] | None = None) -> QatResult:
    """Run ``schedule.steps`` QAT steps on ``prepared`` (from :func:`prepare_qat`).

    Args:
        batches: endless ``(images [N,3,H,W], targets)`` iterator (``data.build_loader(train=True)``).
        det_loss: ``SqueezeDetLoss`` (returns named sub-losses with ``total``).
        schedule: ``ScheduleConfig`` (steps, lr, lr_min, momentum, weight_decay(_on), warmup, clip).
        teacher: frozen fp32 model with ``forward_with_features``; with ``imitation.weight > 0`` and
            ``imitation_loss`` (an ``ImitationLoss``, trained with the student) imitation is on.
        anchors, grid: for the imitation mask (``losses.imitation_mask``).

    Returns:
        :class:`QatResult` with the per-log-step history (losses, lr).
    """
    from torchao.quantization.pt2e import move_exported_model_to_train

    from ..losses import imitation_mask

    steps = schedule.steps
    obs_step, bn_step = resolve_freeze_steps(steps, freeze_observers_step, freeze_bn_step)
    use_imit = teacher is not None and imitation is not None and imitation.weight > 0
    if use_imit and (imitation_loss is None or anchors is None or grid is None):
        raise UserError("QAT with imitation needs the imitation loss, anchors and grid")
    move_exported_model_to_train(prepared)
    prepared.to(device)
    if use_imit:
        teacher.eval().to(device)
        for p in teacher.parameters():
            p.requires_grad_(False)
        imitation_loss.to(device).train()
    decay, no_decay = [], []
    for name, p in prepared.named_parameters():
        (decay if schedule.weight_decay_on == "all" or name.startswith("head") else no_decay).append(p)
    if use_imit:
        decay.extend(imitation_loss.parameters())
    opt = torch.optim.SGD([{"params": decay, "weight_decay": schedule.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=schedule.lr, momentum=schedule.momentum)
    params = [p for g in opt.param_groups for p in g["params"]]
    history: list[dict[str, float]] = []
    it: Iterator = iter(batches)
    t0 = time.time()
    bn_frozen = obs_frozen = False
    for step in range(steps):
        if not bn_frozen and step >= bn_step:
            freeze_bn(prepared)
            bn_frozen = True
        if not obs_frozen and step >= max(obs_step, 1):  # ranges need at least one observed step
            freeze_observers(prepared)
            obs_frozen = True
        lr = _cosine(step, steps, schedule.lr, schedule.lr_min, schedule.warmup_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        images, targets = next(it)
        images = images.to(device)
        head, feat = prepared(images)
        losses = det_loss(head, [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()}
                                 for t in targets])
        total = losses["total"]
        rec = {k: float(v.detach()) for k, v in losses.items()}
        if use_imit and step >= imitation.warmup_steps:
            with torch.no_grad():
                _, t_feat = teacher.forward_with_features(images)
            mask = imitation_mask([t["boxes"] for t in targets], anchors, grid, num_anchors, imitation.psi).to(device)
            imit = imitation_loss(feat, t_feat, mask)
            total = total + imitation.weight * imit
            rec["imitation"] = float(imit.detach())
        if not torch.isfinite(total):
            raise RuntimeError(f"QAT loss is not finite at step {step} ({rec}); lower schedule.lr")
        opt.zero_grad(set_to_none=True)
        total.backward()
        if schedule.clip_grad_norm:
            for p in params:  # the seed clips each tensor's gradient on its own
                if p.grad is not None:
                    torch.nn.utils.clip_grad_norm_([p], schedule.clip_grad_norm)
        opt.step()
        rec.update(step=step + 1, lr=lr, total=float(total.detach()))
        if (step + 1) % schedule.log_every == 0 or step + 1 == steps:
            history.append(rec)
            if log:
                log(rec)
    return QatResult(prepared=prepared, history=history, seconds=time.time() - t0)


def quantize_qat(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The int8 program after training (``convert_pt2e``; BN folded)."""
    return convert(prepared)
