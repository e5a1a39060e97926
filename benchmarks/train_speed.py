"""Where a CPU training step goes, and what makes it faster (issue #42, "train faster on the CPU").

For the 1x teacher (``shuffledet_1x``), the 0.25x student (``shuffledet_0.25x``) and the FCOS student
(``fcos_mnv2_050``), batch 2, at the cpu preset's 192x624 with 2 threads, each *variant* of the step is
timed through the real ``compressdet.engine.Trainer`` (its hooks included) on the data the benchmarks train
on (SynthKITTI with ``data.cache``, augmentation on):

- ``before``: the step as it was before issue #42 (the pre-#42 functions patched back in, see ``LEGACY``);
- ``after``: the step as it is now, fp32 (what ``schedule.amp: auto`` gives on a CPU);
- ``channels_last``: ``after`` with ``schedule.channels_last``;
- ``bf16``: ``after`` with ``schedule.amp: bf16`` (CPU bf16 autocast) and ``channels_last``;
- ``compile`` (only when named in ``--variants``, on the 0.25x student): ``after`` with ``torch.compile`` of
  the Trainer's module; ``first_step_s`` holds the compile time.

The variants of one model alternate within each round (A B C D, A B C D, ...), so load on the shared
CPU falls on all of them alike; each variant's img/s is the median over rounds. Each step is split with
timers wrapped around the Trainer's parts: ``data`` (the loader), ``forward`` (the model, under
autocast), ``loss`` (the detection loss and its target assignment), ``backward``, ``clip``,
``optimizer``, ``step_other`` (the rest of ``run_step``: loss bookkeeping, zero_grad) and ``hooks``
(timer, lr, checkpoint/eval checks, logging, progress). ``checkpoint_ms``: one ``last.pt`` save.

    .venv/bin/python benchmarks/train_speed.py --preset cpu           # ~5 min on 2 quiet cores
    .venv/bin/python benchmarks/train_speed.py --preset smoke --results /tmp/x   # plumbing, seconds

Writes ``benchmarks/results/train_speed.json`` (``--results`` another folder). Numbers on a shared
CPU are indicative only: the JSON says which CPU and whether it has native bf16.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]

from compressdet._io import atomic_write_json  # noqa: E402

MODELS = ["shuffledet_1x", "shuffledet_0.25x", "fcos_mnv2_050"]
LAYOUTS = ROOT.parent / "shared" / "kitti_real" / "training" / "label_2_all"
VARIANTS: dict[str, dict[str, Any]] = {
    "before": {"legacy": True},
    "after": {},
    "channels_last": {"channels_last": True},
    "bf16": {"amp": "bf16", "channels_last": True},
    "compile": {"compile": True},
}
#: variants run only when named (``--variants``), on these models: ``compile`` is ``torch.compile`` of the
#: Trainer's module (the student's forward; the loss's target assignment stays eager), minutes to compile
OPT_IN = {"compile": ["shuffledet_0.25x"]}
PARTS = ["data", "forward", "loss", "backward", "clip", "optimizer", "step_other", "hooks"]
#: preset -> input size, batch, threads, timed steps per round, rounds, SynthKITTI images and their size, models
PRESETS = {
    "cpu": {"size": (192, 624), "batch": 2, "threads": 2, "steps": 6, "rounds": 5, "images": 48,
            "synth_size": [1242, 375], "models": MODELS},
    "smoke": {"size": (64, 192), "batch": 2, "threads": 1, "steps": 2, "rounds": 2, "images": 6,
              "synth_size": [384, 128], "models": ["shuffledet_0.25x"]},
}


# ------------------------------------------------------------------------------------------ legacy step
def _legacy_assign_anchors(gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """``losses.detection.assign_anchors`` before issue #42: one Python iteration per ground truth."""
    from torchvision.ops import box_convert, box_iou

    g = gt_boxes.shape[0]
    out = torch.empty(g, dtype=torch.long)
    if g == 0:
        return out
    gt_boxes = gt_boxes.detach().float().cpu()
    anchors = anchors.detach().float().cpu()
    ious = box_iou(gt_boxes, box_convert(anchors, "cxcywh", "xyxy"))
    gt_c = box_convert(gt_boxes, "xyxy", "cxcywh")
    taken = torch.zeros(anchors.shape[0], dtype=torch.bool)
    for i in range(g):
        row = ious[i].masked_fill(taken, -1.0)
        best = int(row.argmax())
        if row[best] <= 0:
            dist = ((anchors - gt_c[i]) ** 2).sum(1).masked_fill(taken, float("inf"))
            best = int(dist.argmin())
        taken[best] = True
        out[i] = best
    return out


@torch.no_grad()
def _legacy_clip_grad_norm_per_tensor(params, max_norm: float) -> None:
    """``engine.trainer.clip_grad_norm_per_tensor`` before issue #42: two small ops per parameter."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, scales)


#: (module, attribute) -> the pre-#42 implementation the ``before`` variant runs (and SGD without foreach,
#: torch's default on a CPU, set on its optimizer by ``legacy_optimizer``)
LEGACY: dict[tuple[str, str], Callable] = {
    ("compressdet.losses.detection", "assign_anchors"): _legacy_assign_anchors,
    ("compressdet.engine.trainer", "clip_grad_norm_per_tensor"): _legacy_clip_grad_norm_per_tensor,
}


def legacy_optimizer(trainer) -> None:
    """SGD as the Trainer built it before issue #42 (``foreach`` left to torch: off on a CPU)."""
    for g in trainer.optimizer.param_groups:
        g["foreach"] = None


@contextlib.contextmanager
def legacy_step(on: bool):
    """Patch the pre-#42 functions in (``on``) for the duration of the block."""
    import importlib

    saved = []
    try:
        if on:
            for (mod, attr), fn in LEGACY.items():
                m = importlib.import_module(mod)
                saved.append((m, attr, getattr(m, attr)))
                setattr(m, attr, fn)
        yield
    finally:
        for m, attr, fn in saved:
            setattr(m, attr, fn)


def assign_anchors_is_restored() -> bool:
    """Whether every patched function is the current one again (a test checks the patching is undone)."""
    import importlib

    return all(getattr(importlib.import_module(m), a) is not fn for (m, a), fn in LEGACY.items())


# ------------------------------------------------------------------------------------------ timers
class Split:
    """Seconds per part of the step, accumulated by wrappers around the Trainer's parts."""

    def __init__(self) -> None:
        self.t = dict.fromkeys(PARTS, 0.0)
        self.mark = 0.0

    def add(self, part: str, dt: float) -> None:
        self.t[part] += dt

    def timed(self, part: str, fn: Callable) -> Callable:
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.add(part, time.perf_counter() - t0)
        return wrapper


class _ScalerProbe:
    """Stands in for the Trainer's GradScaler: ``scale`` starts the backward clock, ``unscale_`` /
    ``step`` stop it (clip and optimizer are timed by their own wrappers)."""

    def __init__(self, scaler, split: Split) -> None:
        self.scaler, self.split, self.t0 = scaler, split, None

    def _stop(self) -> None:
        if self.t0 is not None:
            self.split.add("backward", time.perf_counter() - self.t0)
            self.t0 = None

    def scale(self, t):
        out = self.scaler.scale(t)
        self.t0 = time.perf_counter()
        return out

    def unscale_(self, opt):
        self._stop()
        return self.scaler.unscale_(opt)

    def step(self, opt):
        self._stop()
        t0 = time.perf_counter()
        out = self.scaler.step(opt)
        self.split.add("optimizer", time.perf_counter() - t0)
        return out

    def __getattr__(self, name):
        return getattr(self.scaler, name)


def instrument(trainer, split: Split) -> None:
    """Wrap the Trainer's parts so that ``split`` receives their times (run_step's whole time goes to
    ``step_other`` minus the parts inside it; the loop's time outside run_step is ``hooks``)."""
    import compressdet.engine.trainer as tr

    trainer._next_batch = split.timed("data", trainer._next_batch)
    trainer.ddp = split.timed("forward", trainer.ddp)
    trainer.loss_fn = split.timed("loss", trainer.loss_fn)
    trainer.scaler = _ScalerProbe(trainer.scaler, split)
    run_step = trainer.run_step
    clip = tr.clip_gradients

    def step() -> None:
        tr.clip_gradients = split.timed("clip", clip)
        before = sum(split.t[p] for p in PARTS if p not in ("hooks", "step_other"))
        t0 = time.perf_counter()
        try:
            run_step()
        finally:
            tr.clip_gradients = clip
            inside = sum(split.t[p] for p in PARTS if p not in ("hooks", "step_other")) - before
            split.add("step_other", time.perf_counter() - t0 - inside)

    trainer.run_step = step


# ------------------------------------------------------------------------------------------ the run
def _data_cfg(p: dict):
    from compressdet.recipe import DataConfig

    synth = {"num_images": p["images"], "size": p["synth_size"], "seed": 0, "val_fraction": 0.2, "test_fraction": 0.2}
    if LAYOUTS.is_dir():
        synth["layouts"] = str(LAYOUTS)
    return DataConfig(format="synth", image_size=list(p["size"]), synth=synth, cache=True)


def build_trainer(arch: str, variant: dict, p: dict, out_dir: Path, model: torch.nn.Module):
    from compressdet.data import build_dataset, build_loader
    from compressdet.engine import Trainer
    from compressdet.recipe import ScheduleConfig

    data_cfg = _data_cfg(p)
    loader = build_loader(build_dataset(data_cfg, "train", train=True, seed=0), batch_size=p["batch"], train=True,
                          seed=0, num_workers=0)
    big = 10 ** 9
    sched = ScheduleConfig(steps=big, batch_size=p["batch"], lr=0.01, eval_every=big, checkpoint_every=big,
                           log_every=20, threads=p["threads"],
                           **{k: v for k, v in variant.items() if k not in ("legacy", "compile")})
    model = copy.deepcopy(model)
    trainer = Trainer(model, schedule=sched, loss_fn=model.build_loss(), train_loader=loader, out_dir=out_dir,
                      seed=0, description=f"{arch}")
    if variant.get("compile"):
        trainer.ddp = torch.compile(trainer.module)
    return trainer


def steps(trainer, start: int, n: int) -> None:
    """``n`` steps of ``TrainerBase.train``'s loop (hooks included) inside a run that does not end here, so
    that no round pays for the end-of-run checkpoint (``checkpoint_ms`` reports one)."""
    trainer.max_iter = 10 ** 9
    for trainer.iter in range(start, start + n):
        for h in trainer._hooks:
            h.before_step()
        trainer.run_step()
        for h in trainer._hooks:
            h.after_step()


def measure_model(arch: str, p: dict, variants: dict[str, dict], out_dir: Path) -> dict[str, Any]:
    """Per variant: img/s (median over rounds), the split (median seconds per step per part, and its
    share of the step), one checkpoint save in ms."""
    from compressdet.models import build_model

    torch.manual_seed(0)
    base = build_model(arch, image_size=tuple(p["size"]))
    trainers, splits, ips, per_part = {}, {}, {v: [] for v in variants}, {v: {k: [] for k in PARTS} for v in variants}
    warmup_s: dict[str, float] = {}
    for name, var in variants.items():
        trainers[name] = build_trainer(arch, var, p, out_dir / arch / name, base)
        if var.get("legacy"):
            legacy_optimizer(trainers[name])
        splits[name] = Split()
        instrument(trainers[name], splits[name])
        trainers[name]._data_iter = iter(trainers[name].train_loader)
        t0 = time.perf_counter()
        with legacy_step(bool(var.get("legacy"))):
            trainers[name].train(0, 1)  # warm-up: allocations, first data, autocast caches (compile)
        warmup_s[name] = time.perf_counter() - t0
    for r in range(p["rounds"]):
        for name, var in variants.items():
            t, s = trainers[name], splits[name]
            s.t = dict.fromkeys(PARTS, 0.0)
            with legacy_step(bool(var.get("legacy"))):
                t0 = time.perf_counter()
                steps(t, 1 + r * p["steps"], p["steps"])
                dt = time.perf_counter() - t0
            inner = sum(v for k, v in s.t.items() if k != "hooks")
            s.t["hooks"] = dt - inner
            ips[name].append(p["batch"] * p["steps"] / dt)
            for k in PARTS:
                per_part[name][k].append(s.t[k] / p["steps"])
    out = {}
    for name, t in trainers.items():
        t0 = time.perf_counter()
        t.save_checkpoint(out_dir / arch / name / "last.pt")
        ckpt_ms = (time.perf_counter() - t0) * 1e3
        split = {k: statistics.median(v) for k, v in per_part[name].items()}
        step_s = sum(split.values())
        out[name] = {"img_per_s": round(statistics.median(ips[name]), 3),
                     "img_per_s_rounds": [round(x, 3) for x in ips[name]],
                     "step_ms": round(step_s * 1e3, 1),
                     "split_ms": {k: round(v * 1e3, 2) for k, v in split.items()},
                     "split_share": {k: round(v / step_s, 3) for k, v in split.items()},
                     "checkpoint_ms": round(ckpt_ms, 1), "first_step_s": round(warmup_s[name], 2),
                     "settings": {k: v for k, v in variants[name].items()}}
    out["speedup_after_vs_before"] = round(out["after"]["img_per_s"] / out["before"]["img_per_s"], 3) \
        if "after" in out and "before" in out else None
    best = max((v for v in variants if v != "before"), key=lambda v: out[v]["img_per_s"])
    out["fastest"] = best
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--models", nargs="*", choices=MODELS, help="default: the preset's")
    ap.add_argument("--variants", nargs="*", choices=list(VARIANTS), help="default: all")
    ap.add_argument("--threads", type=int, help="torch threads (default: the preset's; 1 where other jobs share "
                    "the cores: 2 threads on 2 busy cores measure the contention, not the step)")
    args = ap.parse_args(argv)
    from compressdet._cpu import bf16_native
    from compressdet.data import prepare_data
    from compressdet.pipeline import cpu_platform

    p = dict(PRESETS[args.preset])
    if args.threads:
        p["threads"] = args.threads
    torch.set_num_threads(p["threads"])
    variants = {k: v for k, v in VARIANTS.items() if (k in args.variants if args.variants else k not in OPT_IN)}
    prepare_data(_data_cfg(p))
    res: dict[str, Any] = {
        "preset": args.preset, "cpu": cpu_platform(), "bf16_native": bf16_native(), "torch": torch.__version__,
        "image_size": list(p["size"]), "batch": p["batch"], "threads": p["threads"], "steps_per_round": p["steps"],
        "rounds": p["rounds"], "note": "indicative, shared CPU: variants alternate within each round, medians",
        "models": {}}
    with tempfile.TemporaryDirectory(prefix="train_speed_") as tmp:
        for arch in args.models or p["models"]:
            print(f"== {arch}", flush=True)
            these = {k: v for k, v in variants.items() if arch in OPT_IN.get(k, [arch])}
            res["models"][arch] = r = measure_model(arch, p, these, Path(tmp))
            for name in these:
                v = r[name]
                parts = "  ".join(f"{k} {v['split_ms'][k]:.0f}" for k in PARTS)
                print(f"{arch:18s} {name:14s} {v['img_per_s']:6.2f} img/s  step {v['step_ms']:.0f} ms: {parts}",
                      flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "train_speed.json", res)
    print(f"wrote {args.results / 'train_speed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
