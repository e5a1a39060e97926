"""Quantization-aware training with PT2E, the fp32 teacher still guiding (feature imitation).

The student is captured once (``torch.export``), prepared with ``prepare_qat_pt2e`` and trained as
a fake-quantized GraphModule that returns ``(head_out, feature)``: the detection loss reads the
head, the imitation loss reads the feature, both through the int8 simulation.

Training is the engine's :class:`~compressdet.engine.Trainer` (same loss, imitation, SGD/cosine,
per-tensor clip, checkpoints with exact resume, DDP, progress bar and tensorboard) over
:class:`FakeQuantStudent`, plus :class:`QatFreezeHook`, which freezes BN statistics
(``freeze_bn_step``) and then observers (``freeze_observers_step``) so the last steps train
against the scales that ship. Under DDP the fake-quant observers' buffers are broadcast from
rank 0 every step (DDP's ``broadcast_buffers``), so every rank quantizes with the same scales;
batch norm in the captured graph is functional, so before ``freeze_bn_step`` each rank normalises
with its own batch (there is no module to swap for a synchronised one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.hooks import HookBase
from ..errors import UserError
from ._conv_bn_passes import present_conv_kinds_only
from ._fpn import is_fpn
from ._pt2e import apply_masks, capture, capture_options, check_prepared, convert, freeze_bn, freeze_observers, make_quantizer

__all__ = ["prepare_qat", "QatResult", "train_qat", "resolve_freeze_steps", "quantize_qat", "FakeQuantStudent",
           "FpnFakeQuantStudent", "QatFreezeHook", "qat_param_groups", "qat_schedule", "qat_training"]


def prepare_qat(model: nn.Module, example: torch.Tensor, cfg: Any) -> torch.fx.GraphModule:
    """Fake-quantized trainable copy of ``model`` (returns ``(head_out, feature)``).

    Args:
        model: a float ShuffleDet, FCOS or RetinaNet (student or pruned student); not modified. An FPN
            family's graph returns ``((raw outputs...), [levels])``.
        example: ``[N, 3, H, W]`` input with the training shape (N > 1 not required).
        cfg: ``QuantConfig``.
    """
    from torchao.quantization.pt2e import move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    gm = capture(model, example, **capture_options(cfg))
    quantizer = make_quantizer(cfg, is_qat=True, family=getattr(model, "family", "shuffledet"), model=model)
    with present_conv_kinds_only():  # torchao's conv + BN fusion for the conv kinds the graph has (same graph)
        prepared = prepare_qat_pt2e(gm, quantizer)
    check_prepared(prepared)
    move_exported_model_to_train(prepared)
    prepared._compressdet_masks = getattr(gm, "_compressdet_masks", {})
    prepared._compressdet_student = {"feature_channels": model.feature_channels, "arch": getattr(model, "arch", None)}
    if is_fpn(model):  # its geometry (levels, priors, masks, loss) is the float model's; weights are not used
        prepared._compressdet_student["detector"] = model
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
    summary: dict[str, Any] = field(default_factory=dict)


class FakeQuantStudent(nn.Module):
    """A prepared (fake-quant) GraphModule with the student interface the Trainer expects.

    ``forward`` gives the head output, ``forward_with_features`` ``(head, feature)``.
    ``train()``/``eval()`` only set the flag: an exported graph's mode is a graph rewrite
    (``move_exported_model_to_train``, done once here; BN freezing is :class:`QatFreezeHook`'s).

    An FPN family graph: :class:`FpnFakeQuantStudent`.
    """

    def __init__(self, prepared: torch.fx.GraphModule) -> None:
        super().__init__()
        from torchao.quantization.pt2e import move_exported_model_to_train

        info = getattr(prepared, "_compressdet_student", None)
        if info is None:
            raise UserError("FakeQuantStudent needs a graph from compressdet.quant.prepare_qat")
        move_exported_model_to_train(prepared)
        self.prepared = prepared
        self.feature_channels, self.arch = info["feature_channels"], info["arch"]
        self.bn_frozen = self.observers_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prepared(x)[0]

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prepared(x)

    def train(self, mode: bool = True) -> "FakeQuantStudent":
        self.training = mode
        return self


class FpnFakeQuantStudent(FakeQuantStudent):
    """:class:`FakeQuantStudent` of an FCOS / RetinaNet graph: the head is the raw outputs' tuple, the
    feature the FPN level list. The geometry distillation needs (``family``, ``feature_taps``,
    ``distill_mask``) is the float detector's it was captured from, held by reference (not a
    submodule: not trained, not saved); its weights are not used."""

    def __init__(self, prepared: torch.fx.GraphModule) -> None:
        super().__init__(prepared)
        det = prepared._compressdet_student["detector"]
        self.__dict__["_detector"] = det
        self.family, self.image_size, self.num_classes = det.family, det.image_size, det.num_classes
        self.export_outputs = det.export_outputs

    def feature_taps(self) -> list:
        return self.__dict__["_detector"].feature_taps()

    def distill_mask(self, gt_boxes: list, level_shapes: Any = None, psi: float = 0.5) -> list[torch.Tensor]:
        return self.__dict__["_detector"].distill_mask(gt_boxes, level_shapes, psi)


class QatFreezeHook(HookBase):
    """Freezes BN statistics at ``bn_step`` and observers at ``observer_step`` (before that step runs).

    Acting in ``before_step`` makes a resumed run re-apply the freezes its checkpoint was past.
    """

    def __init__(self, student: FakeQuantStudent, observer_step: int, bn_step: int) -> None:
        self.student, self.observer_step, self.bn_step = student, observer_step, bn_step

    def before_step(self) -> None:
        step, s = self.trainer.iter, self.student
        if not s.bn_frozen and step >= self.bn_step:
            freeze_bn(s.prepared)
            s.bn_frozen = True
        if not s.observers_frozen and step >= max(self.observer_step, 1):  # ranges need one observed step
            freeze_observers(s.prepared)
            s.observers_frozen = True


def qat_param_groups(weight_decay: float, on: str = "seed", head_prefixes: tuple[str, ...] = ()
                     ) -> Callable[[nn.Module, nn.Module | None], list]:
    """The seed's weight-decay rule on a captured graph: the head's (ShuffleDet ``head``, FPN families
    ``det.head``, or parameters under ``head_prefixes``: a yolo model's Detect, ``net.model.<last>.``) and the
    adaptation layers' weights, as in float training."""

    def groups(model: nn.Module, extra: nn.Module | None) -> list[dict[str, Any]]:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                rest = name.split(".", 1)[-1]  # FPN families' head sits under the captured ``det``
                head = (rest.startswith("head") or rest.startswith("det.head")
                        or any(name.startswith(h) for h in head_prefixes))
                (decay if on == "all" or head else no_decay).append(p)
        if extra is not None:
            decay.extend(p for p in extra.parameters() if p.requires_grad)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    return groups


def qat_schedule(schedule: Any) -> Any:
    """The schedule QAT trains with: no AMP (fake quant simulates int8 in fp32) and contiguous
    tensors (the graph was captured that way)."""
    return schedule.model_copy(update={"amp": False, "channels_last": False})


def qat_training(prepared: torch.fx.GraphModule, schedule: Any, observer_step: int, bn_step: int
                 ) -> tuple[FakeQuantStudent, dict[str, Any]]:
    """The trainable student and the Trainer / ``fit_stage`` settings every QAT run uses:
    ``schedule`` (:func:`qat_schedule`), ``param_groups`` (:func:`qat_param_groups`) and ``hooks``
    (the :class:`QatFreezeHook`); for an FPN family also ``loss_fn`` (the float detector's
    ``build_loss()``)."""
    det = (getattr(prepared, "_compressdet_student", None) or {}).get("detector")
    student = FakeQuantStudent(prepared) if det is None else FpnFakeQuantStudent(prepared)
    # a yolo graph keeps the float model's names (``net.model.<i>``): its Detect head is the last layer
    heads = tuple(f"{n}." for n, m in det.named_modules() if m is det.head) if getattr(det, "family", "") == "yolo" else ()
    settings = {"schedule": qat_schedule(schedule),
                "param_groups": qat_param_groups(schedule.weight_decay, schedule.weight_decay_on, heads),
                "hooks": (QatFreezeHook(student, observer_step, bn_step),)}
    if det is not None:  # torchvision's loss on the float detector's priors (fit_stage would build ShuffleDet's)
        settings["loss_fn"] = det.build_loss()
    return student, settings


def train_qat(prepared: torch.fx.GraphModule, batches: Iterable[tuple[torch.Tensor, list[dict]]], *,
              det_loss: nn.Module, schedule: Any, freeze_observers_step: int | None = None,
              freeze_bn_step: int | None = None, teacher: nn.Module | None = None,
              imitation: Any = None, anchors: torch.Tensor | None = None, num_anchors: int = 9,
              device: str = "cpu", out_dir: str | Path, resume_from: str | Path | None = None,
              tb_dir: str | Path | None = None, seed: int = 0,
              on_step: Callable[[Any], None] | None = None) -> QatResult:
    """Run ``schedule.steps`` QAT steps on ``prepared`` (from :func:`prepare_qat`) in one process.

    The stage uses ``engine.launch.fit_stage`` (DDP, data, teacher from the recipe); this is the
    same training for callers that hold their own batches.

    Args:
        batches: endless ``(images [N,3,H,W], targets)`` iterable (``data.build_loader(train=True)``
            resumes exactly; a plain iterator works for runs that are not resumed).
        det_loss: ``SqueezeDetLoss``. schedule: ``ScheduleConfig`` (AMP and channels_last are off).
        teacher, imitation: frozen fp32 model with ``forward_with_features`` and ``ImitationConfig``;
            imitation is on when both are given and ``imitation.weight > 0``.
        anchors: for the imitation mask (default: ``det_loss.anchors``).
        out_dir: where ``last.pt`` (every ``schedule.checkpoint_every`` steps) goes;
            ``resume_from``: such a ``last.pt`` to continue.

    Returns:
        :class:`QatResult` with the per-``log_every`` history (sub-losses, lr) of the steps run here.
    """
    from ..engine import Trainer

    obs_step, bn_step = resolve_freeze_steps(schedule.steps, freeze_observers_step, freeze_bn_step)
    student, settings = qat_training(prepared, schedule, obs_step, bn_step)
    family_loss = settings.pop("loss_fn", None)
    det_loss = det_loss if det_loss is not None else family_loss
    history: list[dict[str, float]] = []

    def record(tr: Any) -> None:
        done = tr.iter + 1
        if done % schedule.log_every == 0 or done == schedule.steps:
            history.append({**tr.loss_values(), "step": done, "lr": tr.storage.get("lr", 0.0)})
        if on_step is not None:
            on_step(tr)

    use_imit = teacher is not None and imitation is not None and imitation.weight > 0
    trainer = Trainer(student, loss_fn=det_loss, train_loader=batches, teacher=teacher if use_imit else None,
                      imitation=imitation if use_imit else None, out_dir=out_dir, tb_dir=tb_dir, device=device,
                      seed=seed, on_step=record, anchors=anchors, num_anchors=num_anchors, description="qat",
                      **settings)
    summary = trainer.fit(resume_from=resume_from)
    return QatResult(prepared=student.prepared, history=history, seconds=summary["minutes"] * 60, summary=summary)


def quantize_qat(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The int8 program after training (``convert_pt2e``; BN folded)."""
    return convert(prepared)
