"""Training hooks: everything around the loop that is not the loop (detectron2's pattern).

A hook sees the trainer through a weak proxy (``self.trainer``) and may keep state that goes into
checkpoints (``state_dict``/``load_state_dict``). Order matters and is fixed by
``Trainer.build_hooks``: timer, LR schedule, evaluation, best checkpoint, periodic checkpoint,
tensorboard, progress bar. ``trainer.iter`` is the 0-based index of the step that just ran;
``trainer.iter + 1`` steps are done in ``after_step``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["HookBase", "IterationTimer", "LRSchedulerHook", "EvalHook", "BestCheckpointer",
           "PeriodicCheckpointer", "TensorboardWriter", "ProgressHook", "CallbackHook"]


class HookBase:
    """Base class; all methods are no-ops. ``trainer`` is set by ``TrainerBase.register_hooks``."""

    trainer: Any = None

    def before_train(self) -> None: ...

    def after_train(self) -> None: ...

    def before_step(self) -> None: ...

    def after_step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _is_period(step_done: int, every: int, max_iter: int) -> bool:
    return step_done % every == 0 or step_done == max_iter


class IterationTimer(HookBase):
    """Step wall time (evaluation excluded) -> ``storage['img_per_s']`` over a moving window."""

    def __init__(self, window: int = 20) -> None:
        self.window, self._times, self._t0 = window, [], 0.0
        self.total_time, self.total_steps = 0.0, 0

    def before_step(self) -> None:
        self._t0 = time.perf_counter()

    def after_step(self) -> None:
        dt = time.perf_counter() - self._t0
        t = self.trainer
        if t.iter > t.start_iter:  # the first step pays for warm-up (allocations, cudnn autotune)
            self.total_time += dt
            self.total_steps += 1
        self._times = (self._times + [dt])[-self.window:]
        t.storage["step_time"] = sum(self._times) / len(self._times)
        t.storage["img_per_s"] = t.global_batch / max(t.storage["step_time"], 1e-9)

    @property
    def mean_img_per_s(self) -> float | None:
        if not self.total_steps:
            return None
        return self.trainer.global_batch * self.total_steps / self.total_time


class LRSchedulerHook(HookBase):
    def after_step(self) -> None:
        t = self.trainer
        t.storage["lr"] = t.optimizer.param_groups[0]["lr"]
        t.scheduler.step()


class EvalHook(HookBase):
    """Every ``every`` steps (and at the last) call ``eval_fn(model, step) -> dict`` on rank 0."""

    def __init__(self, every: int, eval_fn: Callable[[Any, int], dict[str, Any]]) -> None:
        self.every, self.eval_fn = every, eval_fn
        self.history: list[dict[str, Any]] = []

    def after_step(self) -> None:
        t = self.trainer
        done = t.iter + 1
        t.storage.pop("eval", None)
        if not _is_period(done, self.every, t.max_iter) or t.rank != 0:
            return
        result = t.evaluate(self.eval_fn)
        t.storage["eval"] = result
        self.history.append({"step": done, **{k: v for k, v in result.items() if isinstance(v, (int, float))}})

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))


class BestCheckpointer(HookBase):
    """Writes ``best.pt`` (model weights) when the watched metric improves: the evaluator's ``primary``
    value (KITTI mAP40, COCO AP), or ``map40`` for an ``evaluate_fn`` that gives no ``primary``."""

    def __init__(self, path: Path, metric: str = "primary") -> None:
        self.path, self.metric = Path(path), metric
        self.best: float = -math.inf
        self.best_step: int | None = None
        self.best_result: dict[str, Any] = {}

    def after_step(self) -> None:
        t = self.trainer
        result = t.storage.get("eval")
        key = self.metric if result and self.metric in result else "map40"
        if t.rank != 0 or not result or result.get(key) is None:
            return
        value = float(result[key])
        if value > self.best or self.best_step is None:
            self.best, self.best_step = value, t.iter + 1
            self.best_result = {k: v for k, v in result.items() if k != "images"}
            t.save_best(self.path, self.best_result)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "best_result": self.best_result}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = float(state["best"]), state["best_step"]
        self.best_result = dict(state.get("best_result") or {})


class PeriodicCheckpointer(HookBase):
    """``last.pt`` every ``every`` steps and at the end (all ranks join: RNG states are gathered)."""

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = Path(path), every

    def after_step(self) -> None:
        t = self.trainer
        if _is_period(t.iter + 1, self.every, t.max_iter):
            t.save_checkpoint(self.path)


class TensorboardWriter(HookBase):
    """Scalars per sub-loss, lr, img/s every ``every`` steps; eval metrics and images (rank 0)."""

    def __init__(self, log_dir: Path, every: int) -> None:
        self.log_dir, self.every, self.writer = Path(log_dir), every, None

    def before_train(self) -> None:
        if self.trainer.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.log_dir))

    def after_step(self) -> None:
        t = self.trainer
        if self.writer is None:
            return
        done = t.iter + 1
        if _is_period(done, self.every, t.max_iter):
            for k, v in t.loss_values().items():
                self.writer.add_scalar(f"loss/{k}", v, done)
            self.writer.add_scalar("lr", t.storage.get("lr", 0.0), done)
            if "img_per_s" in t.storage:
                self.writer.add_scalar("perf/img_per_s", t.storage["img_per_s"], done)
        result = t.storage.get("eval")
        if result:
            for k, v in result.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(f"val/{k}", v, done)
            for name, img in (result.get("images") or {}).items():
                self.writer.add_image(f"val/{name}", img, done, dataformats="HWC")
            self.writer.flush()

    def after_train(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ProgressHook(HookBase):
    """rich progress bar on rank 0: step, sub-losses, img/s, ETA."""

    def __init__(self, description: str = "train", every: int = 1) -> None:
        self.description, self.every = description, every
        self.progress, self.task = None, None

    def before_train(self) -> None:
        t = self.trainer
        if t.rank != 0:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn())
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=t.max_iter, completed=t.start_iter, info="")

    def after_step(self) -> None:
        t = self.trainer
        if self.progress is None:
            return
        done = t.iter + 1
        if _is_period(done, self.every, t.max_iter) or t.storage.get("eval"):
            info = " ".join(f"{k[:4]} {v:.3f}" for k, v in t.loss_values().items())
            if "img_per_s" in t.storage:
                info += f" | {t.storage['img_per_s']:.1f} img/s"
            result = t.storage.get("eval")
            if result and "map40" in result:
                info += f" | mAP40 {result['map40']:.2f}"
            elif result and result.get("metric") == "coco":
                info += f" | COCO AP {result['primary']:.2f}"
            self.progress.update(self.task, completed=done, info=info)

    def after_train(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class CallbackHook(HookBase):
    """Calls ``fn(trainer)`` after every step (the ``on_step`` argument of :class:`Trainer`)."""

    def __init__(self, fn: Callable[[Any], None]) -> None:
        self.fn = fn

    def after_step(self) -> None:
        self.fn(self.trainer)
