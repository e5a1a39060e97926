"""The training loop shared by the train, prune and qat stages.

``TrainerBase`` only loops and calls hooks (``after_train`` runs in ``finally``). ``Trainer`` adds
one step of detection training with optional fine-grained feature imitation: momentum SGD with a
cosine schedule, per-tensor gradient-norm clipping, AMP on CUDA (CPU bf16 autocast when ``schedule.amp: bf16``
asks), DDP with cross-process batch norm, and exact resume from ``last.pt``. Evaluation, checkpoints,
logging and the progress bar are hooks.

Example:
    >>> trainer = Trainer(model, schedule=cfg.schedule, loss_fn=SqueezeDetLoss(anchors, image_size=hw),
    ...                   train_loader=loader, evaluate_fn=evaluate, teacher=teacher,
    ...                   imitation=cfg.imitation, out_dir=ctx.checkpoint_dir, tb_dir=ctx.tb_dir)
    >>> summary = trainer.fit(resume_from=ctx.latest_checkpoint())
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from ..losses import imitation_mask
from ..losses.distill import Distiller, Taps, build_distiller
from ..models.contract import as_levels, outputs_float
from ..recipe import ImitationConfig, ScheduleConfig, as_distill_list
from .checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from .distributed import all_gather_object, all_reduce_sum, all_reduce_sum_grad, convert_sync_batchnorm, unwrap
from .hooks import (
    BestCheckpointer,
    CallbackHook,
    EvalHook,
    HookBase,
    IterationTimer,
    LRSchedulerHook,
    PeriodicCheckpointer,
    ProgressHook,
    TensorboardWriter,
)

__all__ = ["TrainerBase", "Trainer", "NonFiniteLossError", "cosine_lr_lambda", "clip_grad_norm_per_tensor", "clip_gradients",
           "seed_param_groups", "amp_dtype"]


class NonFiniteLossError(UserError):
    """The loss became NaN/inf; training stops and the last good checkpoint is kept."""


class TrainerBase:
    """Runs ``run_step`` from ``start_iter`` to ``max_iter`` between hook calls; nothing else."""

    def __init__(self) -> None:
        self._hooks: list[HookBase] = []
        self.iter = self.start_iter = self.max_iter = 0
        self.storage: dict[str, Any] = {}

    def register_hooks(self, hooks: Iterable[HookBase | None]) -> None:
        for h in hooks:
            if h is None:
                continue
            h.trainer = weakref.proxy(self)
            self._hooks.append(h)

    def train(self, start_iter: int, max_iter: int) -> None:
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        try:
            for h in self._hooks:
                h.before_train()
            for self.iter in range(start_iter, max_iter):
                for h in self._hooks:
                    h.before_step()
                self.run_step()
                for h in self._hooks:
                    h.after_step()
        finally:
            for h in self._hooks:
                h.after_train()

    def run_step(self) -> None:
        raise NotImplementedError

    def hooks_state_dict(self) -> dict[str, Any]:
        return {type(h).__name__: h.state_dict() for h in self._hooks if h.state_dict()}

    def load_hooks_state_dict(self, state: dict[str, Any]) -> None:
        for h in self._hooks:
            if type(h).__name__ in state:
                h.load_state_dict(state[type(h).__name__])


def cosine_lr_lambda(steps: int, lr: float, lr_min: float, warmup_steps: int = 0) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up to ``lr``, then cosine from ``lr`` to ``lr_min`` at ``steps``."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(steps - warmup_steps, 1)
        progress = min(max(step - warmup_steps, 0) / span, 1.0)
        return (lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))) / lr

    return f


@torch.no_grad()
def clip_grad_norm_per_tensor(params: Iterable[Tensor], max_norm: float) -> None:
    """Scale each parameter's gradient to norm <= ``max_norm`` separately (the seed's clip)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    if len({n.dtype for n in norms}) == 1:  # one tensor of scales: 3 ops, not 2 per parameter (#42)
        scales = torch.clamp(max_norm / (torch.stack(norms) + 1e-6), max=1.0).unbind()
    else:  # mixed dtypes (an fp64 adaptation layer on an fp32 student): each scale in its own
        scales = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, scales)


def clip_gradients(params: Iterable[Tensor], mode: str, max_norm: float) -> None:
    """``schedule.clip``: ``per_tensor`` (the seed's), ``global`` (torch's clip_grad_norm_) or ``none``."""
    if mode == "per_tensor":
        clip_grad_norm_per_tensor(params, max_norm)
    elif mode == "global":
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)
    elif mode != "none":
        raise ValueError(f"clip mode '{mode}' is not one of: per_tensor, global, none")


_warned_bf16_slow = False


def amp_dtype(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``schedule.amp`` asks for on ``device`` (None: fp32).

    ``auto`` / ``true``: CUDA's mixed precision (bf16 where the GPU has it, else fp16), nothing on a CPU,
    where bf16 pays only with AVX512-BF16 / AMX; ``bf16``: bf16 autocast on either (on a CPU without native
    bf16 a one-time warning says it will be slow); ``false``: none.
    """
    global _warned_bf16_slow
    if amp is False:
        return None
    if amp == "bf16":
        if device.type == "cpu":
            from .._cpu import BF16_SLOW_NOTE, bf16_native

            if not bf16_native() and not _warned_bf16_slow:
                _warned_bf16_slow = True
                warnings.warn(f"schedule.amp: bf16 on a CPU: {BF16_SLOW_NOTE}", RuntimeWarning, stacklevel=2)
        return torch.bfloat16
    if amp in (True, "auto") and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def seed_param_groups(model: nn.Module, extra: nn.Module | None, weight_decay: float,
                      on: str = "seed") -> list[dict[str, Any]]:
    """SGD groups: ``seed`` decays only the head (``model.head``) and ``extra`` (the adaptation layer)."""
    decay_modules = [m for m in (getattr(model, "head", None), extra) if m is not None]
    decay_ids = {id(p) for m in decay_modules for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    if extra is not None:
        params += [p for p in extra.parameters() if p.requires_grad]
    if on == "all" or not decay_ids:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if id(p) in decay_ids], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) not in decay_ids], "weight_decay": 0.0}]


class _TrainModule(nn.Module):
    """Student + the distillers' training-only layers in one module, so DDP syncs both with a
    single forward()."""

    def __init__(self, model: nn.Module, imitation: Distiller | None) -> None:
        super().__init__()
        self.model, self.imitation = model, imitation

    def forward(self, images: Tensor, teacher: tuple | None = None, mask: Tensor | None = None, step: int = 0,
                gt_boxes: list[Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor] | None]:
        if self.imitation is None:
            return self.model(images), None
        head_out, taps = self.taps(images, teacher, mask, gt_boxes)
        # taps None (warm-up): zero losses that keep the distillers' params in the graph (DDP)
        return head_out, self.imitation(taps, step)

    def taps(self, images: Tensor, teacher: tuple | None, mask: Tensor | None = None,
             gt_boxes: list[Tensor] | None = None) -> tuple[Any, Taps | None]:
        """The student's forward: ``(raw outputs, the taps the distillers read)`` (None without a teacher pass)."""
        layer = self.imitation.tower_layer
        tower = None
        if layer is not None:  # CrossKD's paper variant reads the student's head tower
            head_out, feat, tower = self.model.forward_with_tower(images, layer)
        else:
            head_out, feat = self.model.forward_with_features(images)
        if teacher is None:
            return head_out, None
        return head_out, Taps(feat, head_out, teacher[0], teacher[1], mask, s_tower=tower,
                              t_tower=teacher[2] if len(teacher) > 2 else None, gt_boxes=gt_boxes)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)


class Trainer(TrainerBase):
    """Detection training with optional feature imitation; see the module docstring.

    Args:
        model: the student (a ShuffleDet-like module: ``forward``, ``forward_with_features``,
            ``feature_channels``, ``head``). Moved to ``device``; wrapped in DDP when ``world_size > 1``.
        schedule: steps, global batch, lr/cosine/warm-up, momentum, weight decay, clip, periods, AMP.
        loss_fn: ``loss_fn(head_out, targets) -> {"class", "confidence", "box", "total", ...}``;
            its ``reduce_counts`` attribute (if any) is set under DDP so normalisers are global.
        train_loader: endless loader of ``(images, targets)``, per-process batch
            ``schedule.batch_size / world_size``; its sampler's ``set_position``/``state_dict``
            (``compressdet.data.InfiniteSampler``) make resume exact.
        evaluate_fn: ``evaluate_fn(model, step) -> dict`` with ``primary`` (the metric best.pt follows:
            KITTI mAP40, COCO AP) or at least ``map40`` (rank 0 only);
            ``images`` (name -> HWC uint8) go to tensorboard. None: no evaluation, best = last.
        teacher: frozen model with ``forward_with_features`` (needed when imitation weight > 0).
        imitation: ``ImitationConfig`` (the seed's fgfi) or a list of ``DistillConfig`` (any registered
            methods, ``compressdet.losses.distill``); None or all weights 0 is the baseline.
        out_dir: where ``last.pt`` and ``best.pt`` go. tb_dir: tensorboard folder (None: off).
        device, rank, world_size: where and as which process to train.
        seed: seeds torch/numpy/random (plus rank) at the start of a fresh run.
        param_groups: ``fn(model, adaptation_module) -> list of SGD groups`` replacing the default.
        on_step: ``fn(trainer)`` after every step (after checkpoints): tests, custom schedules.
        hooks: extra hooks, called after the built-in ones (e.g. QAT's freeze schedule, which must
            act in ``before_step`` so a resumed run re-applies it).
        anchors, grid: for the imitation mask (default: ``loss_fn.anchors`` and the model's grid).
    """

    def __init__(self, model: nn.Module, *, schedule: ScheduleConfig, loss_fn: nn.Module, train_loader: Any,
                 evaluate_fn: Callable[[nn.Module, int], dict[str, Any]] | None = None,
                 teacher: nn.Module | None = None, imitation: ImitationConfig | list | None = None,
                 out_dir: str | Path, tb_dir: str | Path | None = None, device: str | torch.device = "cpu",
                 rank: int = 0, world_size: int = 1, seed: int = 0,
                 param_groups: Callable[[nn.Module, nn.Module | None], list[dict[str, Any]]] | None = None,
                 on_step: Callable[["Trainer"], None] | None = None, anchors: Tensor | None = None,
                 num_anchors: int = 9, description: str = "train", hooks: Iterable[HookBase] = ()) -> None:
        super().__init__()
        self.schedule, self.loss_fn, self.train_loader = schedule, loss_fn, train_loader
        self.device = torch.device(device)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.out_dir = Path(out_dir)
        self.global_batch = schedule.batch_size
        if schedule.batch_size % world_size:
            raise UserError(f"schedule.batch_size {schedule.batch_size} is not divisible by {world_size} processes")
        self.local_batch = schedule.batch_size // world_size
        if schedule.threads and self.device.type == "cpu":
            torch.set_num_threads(schedule.threads)

        self.distill_cfgs = as_distill_list(imitation)
        self.teacher = None
        imit_loss = None
        if self.distill_cfgs:
            if teacher is None:
                raise UserError("imitation / distill weight > 0 needs a teacher model")
            self.teacher = teacher.to(self.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            anchors = anchors if anchors is not None else getattr(loss_fn, "anchors", None)
            self.anchors = anchors.detach().float().cpu() if anchors is not None else None
            self.num_anchors = num_anchors
            try:
                imit_loss = build_distiller(self.distill_cfgs, model, self.teacher, self.anchors, num_anchors)
            except ValueError as e:
                raise UserError(str(e)) from None
            first = next((p for p in model.parameters() if p.is_floating_point()), None)
            if first is not None:  # the adaptation layers compute in the student's dtype (fp64 in tests)
                imit_loss.to(device=self.device, dtype=first.dtype)
        model.to(self.device)
        self.model = model  # the bare student: what is saved and evaluated
        self.module = _TrainModule(model, imit_loss).to(self.device)
        if schedule.channels_last:
            self.module.to(memory_format=torch.channels_last)
        if world_size > 1:
            self.module = convert_sync_batchnorm(self.module, self.device)
            self.model = self.module.model
            counts = all_reduce_sum
            for obj in (loss_fn, *(imit_loss.modules() if imit_loss is not None else ())):
                if obj is not None and hasattr(obj, "reduce_counts"):
                    obj.reduce_counts = counts
                if obj is not None and hasattr(obj, "reduce_sums"):
                    obj.reduce_sums = all_reduce_sum_grad
            ddp_kw = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            self.ddp = nn.parallel.DistributedDataParallel(self.module, **ddp_kw)
        else:
            self.ddp = self.module
        self.imitation_loss = unwrap(self.ddp).imitation
        # a loss whose normalisers are global sums must be scaled by W: DDP averages gradients
        self._grad_scale = float(world_size) if getattr(loss_fn, "reduce_counts", None) is not None else 1.0

        groups = (param_groups(self.model, self.imitation_loss) if param_groups is not None else
                  seed_param_groups(self.model, self.imitation_loss, schedule.weight_decay, schedule.weight_decay_on))
        self.params = [p for g in groups for p in g["params"]]
        # foreach: torch picks it on CUDA only; on a CPU the per-parameter loop costs Python time, same maths (#42)
        self.optimizer = torch.optim.SGD(groups, lr=schedule.lr, momentum=schedule.momentum, foreach=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_lr_lambda(schedule.steps, schedule.lr, schedule.lr_min, schedule.warmup_steps))
        self.amp_dtype = amp_dtype(schedule.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.last_path, self.best_path = self.out_dir / "last.pt", self.out_dir / "best.pt"
        self.timer = IterationTimer()
        self.eval_hook = EvalHook(schedule.eval_every, evaluate_fn) if evaluate_fn is not None else None
        self.best_hook = BestCheckpointer(self.best_path) if evaluate_fn is not None else None
        self.register_hooks([
            self.timer, LRSchedulerHook(), self.eval_hook, self.best_hook,
            PeriodicCheckpointer(self.last_path, schedule.checkpoint_every),
            TensorboardWriter(Path(tb_dir), schedule.log_every) if tb_dir is not None else None,
            ProgressHook(description, every=max(1, min(schedule.log_every, 10))),
            CallbackHook(on_step) if on_step is not None else None,
            *hooks,
        ])
        self._data_iter = None
        self._last_good: Path | None = None
        #: what ``weight: auto`` measured: ``{method: {weight, grad_ratio, grad_ratio_at_1, auto_ratio, batches,
        #: params: {set, modules, tensors, numel}}}`` (``params``: the backbone+neck set the norms are over)
        self.distill_calibration: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------------------------- helpers
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _next_batch(self) -> tuple[Tensor, list[dict]]:
        if self._data_iter is None:
            self._data_iter = iter(self.train_loader)
        try:
            return next(self._data_iter)
        except StopIteration:  # a finite loader: start another pass
            self._data_iter = iter(self.train_loader)
            return next(self._data_iter)

    def _set_position(self, step: int) -> None:
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_position"):
            sampler.set_position(step * self.local_batch)
        elif step:
            raise UserError("cannot resume: the train loader's sampler has no set_position "
                            "(use compressdet.data.build_loader)")

    def loss_values(self) -> dict[str, float]:
        """The last step's sub-losses, summed over processes (what the whole batch saw)."""
        return dict(self.storage.get("losses", {}))

    def imitation_active(self, step: int) -> bool:
        return bool(self.distill_cfgs) and self.imitation_loss.active(step)

    def _distill_mask(self, boxes: list[Tensor], teacher_feat: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
        """The student's near-object mask (detector contract ``distill_mask``) on the teacher's levels:
        one ``Bool[N, h, w]`` for a single-level feature (ShuffleDet), a list for FPN levels."""
        shapes = [tuple(f.shape[-2:]) for f in as_levels(teacher_feat)]
        if hasattr(self.model, "distill_mask"):
            masks = [m.to(self.device) for m in self.model.distill_mask(boxes, shapes, self.imitation_loss.psi)]
        else:  # a bare ShuffleDet-like module: FGFI's anchor mask on the trainer's anchors
            masks = [imitation_mask(boxes, self.anchors, shapes[0], self.num_anchors,
                                    self.imitation_loss.psi).to(self.device)]
        return masks[0] if isinstance(teacher_feat, Tensor) else masks

    @torch.no_grad()
    def teacher_taps(self, images: Tensor) -> tuple:
        """``(features, raw outputs[, head-tower features])`` of the frozen teacher."""
        layer = self.imitation_loss.tower_layer
        if layer is not None:
            t_head, t_feat, t_tower = self.teacher.forward_with_tower(images, layer)
            return t_feat, t_head, t_tower
        t_head, t_feat = self.teacher.forward_with_features(images)
        return t_feat, t_head

    # ---------------------------------------------------------------------------------- one step
    def run_step(self) -> None:
        images, targets = self._next_batch()
        images = images.to(self.device, non_blocking=True)
        if self.schedule.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.module.train()
        teacher = mask = None
        with self._autocast():
            if self.imitation_active(self.iter):
                teacher = self.teacher_taps(images)
                if self.imitation_loss.needs_mask:
                    mask = self._distill_mask([t["boxes"] for t in targets], teacher[0])
            gt = [t["boxes"] for t in targets] if teacher is not None else None
            head_out, imit = self.ddp(images, teacher, mask, self.iter, gt)
        losses = dict(self.loss_fn(outputs_float(head_out), targets))
        total = losses.pop("total")
        for name, value in (imit or {}).items():  # weighted; zero during a method's warm-up
            losses[name] = value
            total = total + value
        losses["total"] = total
        names = list(losses)
        values = torch.stack([losses[k].detach().float() for k in names])
        if self._grad_scale != 1.0:
            values = all_reduce_sum(values)  # partial sums with global normalisers -> the batch's loss
        vals = values.tolist()
        self.storage["losses"] = dict(zip(names, vals))
        if not all(math.isfinite(v) for v in vals):
            bad = ", ".join(f"{k}={v:.4g}" for k, v in zip(names, vals))
            kept = f"the last good checkpoint is {self._last_good}" if self._last_good else "no checkpoint was written yet"
            raise NonFiniteLossError(f"loss became non-finite at step {self.iter + 1} ({bad}); {kept}; "
                                     "lower schedule.lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total * self._grad_scale).backward()
        clip = self.schedule.clip_setting
        if clip.mode != "none":
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.params, clip.mode, clip.max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    # ---------------------------------------------------------------------------------- eval / ckpt
    def evaluate(self, eval_fn: Callable[[nn.Module, int], dict[str, Any]]) -> dict[str, Any]:
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return dict(eval_fn(self.model, self.iter + 1))
        finally:
            self.model.train(was)

    def checkpoint_state(self) -> dict[str, Any]:
        rng = all_gather_object(get_rng_state())  # every rank's RNG, so DDP resumes exactly too
        sampler = getattr(self.train_loader, "sampler", None)
        done = self.iter + 1
        return {
            "model": self.model.state_dict(),
            "imitation": self.imitation_loss.state_dict() if self.imitation_loss is not None else None,
            "distill_weights": dict(self.imitation_loss.weights) if self.imitation_loss is not None else None,
            "distill_calibration": dict(self.distill_calibration),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": done,
            "rng": rng,
            "sampler": sampler.state_dict(done * self.local_batch) if hasattr(sampler, "state_dict") else
            {"consumed": done * self.local_batch},
            "hooks": self.hooks_state_dict(),
            "world_size": self.world_size,
            "schedule": self.schedule.model_dump(mode="json"),
        }

    def save_checkpoint(self, path: Path) -> None:
        state = self.checkpoint_state()  # all ranks: gathers RNG states
        if self.rank == 0:
            save_checkpoint(state, path)
        self._last_good = path

    def save_best(self, path: Path, metrics: dict[str, float]) -> None:
        if self.rank == 0:
            save_checkpoint({"model": self.model.state_dict(), "step": self.iter + 1, "metrics": metrics}, path)

    def resume(self, path: str | Path) -> int:
        """Load ``last.pt``; returns the number of steps already done."""
        state = load_checkpoint(path, map_location="cpu")
        self.model.load_state_dict(state["model"])
        if self.imitation_loss is not None and state.get("imitation"):
            self.imitation_loss.load_state_dict(self.imitation_loss.fgfi_state_compat(state["imitation"]))
        if self.imitation_loss is not None and state.get("distill_weights"):  # weight: auto is measured once
            self.imitation_loss.weights.update({k: float(v) for k, v in state["distill_weights"].items()
                                                if k in self.imitation_loss.weights})
            self.distill_calibration = dict(state.get("distill_calibration") or {})
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.load_hooks_state_dict(state.get("hooks", {}))
        self._resume_rng = state["rng"]
        self._last_good = Path(path)
        return int(state["step"])

    # ---------------------------------------------------------------------------------- fit
    def fit(self, resume_from: str | Path | None = None) -> dict[str, Any]:
        """Train to ``schedule.steps`` (continuing ``resume_from`` if given); returns a summary.

        Summary keys: steps, best_map40 (the best ``primary`` value: KITTI mAP40 or COCO AP), best_step,
        final_losses, train_img_per_s, eval (last), history, last_path, best_path, minutes.
        """
        t0 = time.perf_counter()
        start = 0
        if resume_from is not None:
            start = self.resume(resume_from)
        else:
            _seed_all(self.seed + 1_000_003 * self.rank)
            if self.imitation_loss is not None and self.imitation_loss.auto:  # weight: auto, before training
                from .calibrate import calibrate_weights

                self.distill_calibration = calibrate_weights(self)
        if self.imitation_loss is not None:
            self.storage["distill"] = {m: {"weight": w, **({"grad_ratio": self.distill_calibration[m]["grad_ratio"]}
                                                         if m in self.distill_calibration else {})}
                                       for m, w in self.imitation_loss.weights.items()}
        self._set_position(start)
        self._data_iter = iter(self.train_loader)  # before restoring RNG: creating it may draw from torch's
        if resume_from is not None:
            rngs = self._resume_rng
            set_rng_state(rngs[self.rank] if len(rngs) == self.world_size else rngs[0])
        if start < self.schedule.steps:
            self.train(start, self.schedule.steps)
        if self.rank == 0 and not self.best_path.is_file() and self.last_path.is_file():
            state = load_checkpoint(self.last_path)
            save_checkpoint({"model": state["model"], "step": state["step"], "metrics": {}}, self.best_path)
        history = self.eval_hook.history if self.eval_hook else []
        return {
            "steps": self.schedule.steps,
            "best_map40": None if self.best_hook is None or self.best_hook.best_step is None else self.best_hook.best,
            "best_step": self.best_hook.best_step if self.best_hook else self.schedule.steps,
            "best_result": self.best_hook.best_result if self.best_hook else {},
            "final_losses": self.loss_values(),
            "train_img_per_s": self.timer.mean_img_per_s,
            "eval": history[-1] if history else None,
            "history": history,
            "last_path": str(self.last_path),
            "best_path": str(self.best_path),
            "minutes": (time.perf_counter() - t0) / 60,
            "distill_weights": dict(self.imitation_loss.weights) if self.imitation_loss is not None else {},
            "distill_calibration": dict(self.distill_calibration),
        }
