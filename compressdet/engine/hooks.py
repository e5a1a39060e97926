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
           "PeriodicCheckpointer", "TensorboardWriter", "ProgressHook", "CallbackHook", "loss_labels"]


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
            for method, vals in (self.trainer.storage.get("distill") or {}).items():  # weights in force (#41)
                for k, v in vals.items():
                    self.writer.add_scalar(f"distill/{method}/{k}", v, self.trainer.start_iter)

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


#: short names of common sub-loss words (torchvision's ``classification``, ``bbox_regression``, ...)
_LOSS_WORDS = {"classification": "cls", "regression": "reg", "confidence": "conf", "imitation": "imit"}


def loss_labels(keys: list[str]) -> dict[str, str]:
    """Short, distinct progress labels for sub-loss keys: common words shortened (``bbox_regression`` ->
    ``bbox_reg``), a key whose short label would be shared kept whole (FCOS's ``bbox_regression`` and
    ``bbox_ctrness`` must not both read ``bbox``)."""
    short = {k: "_".join(_LOSS_WORDS.get(w, w) for w in k.split("_")) for k in keys}
    counts: dict[str, int] = {}
    for v in short.values():
        counts[v] = counts.get(v, 0) + 1
    return {k: (v if counts[v] == 1 else k) for k, v in short.items()}


def _hms(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ProgressHook(HookBase):
    """Progress on rank 0, always named by the stage (``description``).

    On a terminal: a rich bar that fits the terminal's width (stage, bar, steps, ETA, then as many whole
    fields of total/sub-losses, img/s and mAP as fit: a field that does not fit is left out, never cut).
    Not a terminal (a pipe, a CI log, where a live bar would print nothing until the end): one plain line
    per ``schedule.log_every`` steps with every field, unsqueezed.
    """

    def __init__(self, description: str = "train", every: int = 1) -> None:
        self.description, self.every = description, every
        self.progress, self.task, self.console = None, None, None

    def before_train(self) -> None:
        t = self.trainer
        if t.rank != 0:
            return
        from .._console import console

        self.console = console()
        if not self.console.is_terminal:
            self.console.print(f"{self.description}: step {t.start_iter}/{t.max_iter}", highlight=False,
                               markup=False, soft_wrap=True)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Column

        self.progress = Progress(
            TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=self._bar_width()), MofNCompleteColumn(table_column=Column(no_wrap=True)),
            TimeRemainingColumn(table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[info]}", markup=False, table_column=Column(no_wrap=True, overflow="crop")),
            console=self.console)
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=t.max_iter, completed=t.start_iter, info="")

    def _bar_width(self) -> int:
        return max(8, min(30, self.console.width // 6))

    def _info_width(self) -> int:
        """Columns left for the fields after the stage name, bar, ``M/N`` and ETA (and rich's gaps)."""
        n = len(str(self.trainer.max_iter))
        return self.console.width - len(self.description) - self._bar_width() - (2 * n + 1) - 8 - 5

    def fields(self) -> list[str]:
        """The line's fields, most wanted first: total, sub-losses, img/s, the last evaluation."""
        t = self.trainer
        losses = t.loss_values()
        labels = loss_labels(list(losses))
        order = (["total"] if "total" in losses else []) + [k for k in losses if k != "total"]
        out = [f"{labels[k]} {losses[k]:.3f}" for k in order]
        if "img_per_s" in t.storage:
            out.append(f"{t.storage['img_per_s']:.1f} img/s")
        result = t.storage.get("eval")
        if result and "map40" in result:
            out.append(f"mAP40 {result['map40']:.2f}")
        elif result and result.get("metric") == "coco":
            out.append(f"COCO AP {result['primary']:.2f}")
        return out

    def after_step(self) -> None:
        t = self.trainer
        if t.rank != 0 or self.console is None:
            return
        done = t.iter + 1
        if self.progress is None:  # plain lines, one per log interval
            every = int(getattr(getattr(t, "schedule", None), "log_every", 0) or self.every)
            if not (_is_period(done, every, t.max_iter) or t.storage.get("eval")):
                return
            eta = ""
            if "step_time" in t.storage:
                eta = f"  ETA {_hms(t.storage['step_time'] * (t.max_iter - done))}"
            self.console.print(f"{self.description}: step {done}/{t.max_iter}  " + "  ".join(self.fields()) + eta,
                               highlight=False, markup=False, soft_wrap=True)
            return
        if _is_period(done, self.every, t.max_iter) or t.storage.get("eval"):
            from .._console import fit_fields

            self.progress.update(self.task, completed=done, info=fit_fields(self.fields(), self._info_width()))
        else:  # the bar moves every step; the fields every ``every`` steps
            self.progress.update(self.task, completed=done)

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
