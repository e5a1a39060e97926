"""Stage kind ``prune``: make the ``from`` model smaller and faster, then recover with imitation.

Structured channel pruning (:mod:`compressdet.prune`: shuffle-aware DepGraph, no masks) towards
``target`` (MACs ratio or channel ratios), ``iterative_steps`` rounds of prune -> fine-tune, each
fine-tune the train stage's machinery (:func:`compressdet.engine.launch.fit_stage`) with imitation
from ``teacher`` when configured (the adaptation layer is rebuilt for the pruned width).

Artifacts: ``model`` (a dense model file: arch + pruned state dict, reloadable by ``load_model``),
``history`` (``prune_history.json``, replayable). Metrics: MACs/params before and after, ratios,
map40/map11 of the fine-tuned model, per-round pruning records.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..recipe import distill_methods
from . import StageContext, StageResult

__all__ = ["run", "example_input_size", "build_pruner"]


def example_input_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """A small input with the same stride pattern, for tracing and the MACs search (ratios don't change)."""
    h, w = image_size
    return max(32, (h // 4) // 16 * 16), max(32, (w // 4) // 16 * 16)


def build_pruner(model: nn.Module, image_size: tuple[int, int], *, importance: str = "group_magnitude",
                 ignored_layers: list[str] = (), **kw: Any) -> Any:
    """The stage's :class:`~compressdet.prune.ChannelPruner` for a ShuffleDet: traced and searched at
    :func:`example_input_size`, MACs counted over the backbone, the head's output conv never pruned.

    ``kw``: the ChannelPruner targets and options (``target_macs``, ``allocation``, ``round_to`` ...).
    """
    from ..prune import ChannelPruner, conv_macs, get_importance

    x = torch.zeros(1, 3, *example_input_size(image_size))
    return ChannelPruner(model, x, get_importance(importance), ignored_layers=_ignored(model, list(ignored_layers)),
                         macs_fn=lambda m: conv_macs(m, x, m.backbone),
                         output_transform=lambda out: [out] if isinstance(out, torch.Tensor) else list(out), **kw)


def _ignored(model: nn.Module, names: list[str]) -> list[nn.Module]:
    modules = dict(model.named_modules())
    out = [model.head.conv] if hasattr(model, "head") and hasattr(model.head, "conv") else []
    for n in names:
        if n not in modules:
            close = difflib.get_close_matches(n, list(modules), n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"prune stage: ignored_layers: no module named '{n}'{hint}")
        out.append(modules[n])
    return out


def _say(ctx: StageContext, line: str) -> None:
    """A progress line on rank 0: the pruning step itself (tracing, the MACs search) takes minutes on a
    big model, with no bar to move."""
    if ctx.is_main:
        from .._console import console

        console().print(line, highlight=False, markup=False, soft_wrap=True)


def _round_ratio(r: float, i: int, k: int) -> float:
    """Round ``i`` of ``k``'s ratio of the channels there are now, so that ``1 - r * (i + 1) / k`` of the
    original channels are kept after it (torch-pruning's linear schedule)."""
    return 1.0 - (1.0 - r * (i + 1) / k) / (1.0 - r * i / k)


def _fine_tune_round(ctx: StageContext, model: nn.Module, i: int, k: int,
                     pruned: dict[str, Any]) -> tuple[StageContext, dict, dict]:
    """Round ``i`` of ``k``'s fine-tune after its pruning step ``pruned`` (``steps // k``, distilling as
    the stage says; its own folder when ``k > 1``). Every rank then continues from the same (last)
    weights. Returns the round's context, the fit summary and the round record's common fields."""
    from ..engine.checkpoint import load_checkpoint
    from ..engine.launch import fit_stage

    cfg = ctx.cfg
    sub = dataclasses.replace(ctx, stage_dir=ctx.stage_dir / f"round{i + 1}", resume=False) if k > 1 else ctx
    sched = cfg.schedule.model_copy(update={"steps": max(1, cfg.schedule.steps // k)})
    removed = sum(len(op["idxs"]) for op in pruned["ops"])
    _say(ctx, f"{ctx.name}: round {i + 1}/{k}: {removed} channels removed, backbone "
              f"{pruned['macs_after'] / 1e9:.3f} GMACs at the search input; fine-tuning {sched.steps} steps")
    summary = fit_stage(sub, model, schedule=sched, imitation=distill_methods(cfg), postprocess=cfg.postprocess,
                        eval_cfg=cfg.eval, description=f"{ctx.name} round {i + 1}/{k}" if k > 1 else ctx.name)
    if i < k - 1:
        model.load_state_dict(load_checkpoint(sub.checkpoint_dir / "last.pt")["model"])
    return sub, summary, {"channels_removed": removed,
                          "best_map40": summary.get("best_map40"), "steps": sched.steps,
                          **({"distill_weights": summary["distill_weights"],  # weight: auto measures per round
                              "distill_calibration": summary["distill_calibration"]}
                             if summary.get("distill_weights") else {})}


def _run_fpn(ctx: StageContext, model: nn.Module) -> StageResult:
    """The prune stage on an FPN family (FCOS / RetinaNet): torch-pruning on the backbone body and the
    FPN's lateral convs, the FPN outputs and the shared head kept (:mod:`compressdet.prune.fpn`; a yolo
    model: backbone, neck and Detect branches, :mod:`compressdet.prune.yolo`), in
    ``iterative_steps`` rounds of prune -> fine-tune like ShuffleDet's: round ``i`` of ``k`` brings the
    backbone MACs (or the kept channels) a fraction ``i/k`` of the way to the target, linearly, as
    torch-pruning's iterative schedule does, and fine-tunes ``steps // k``."""
    from ..eval.evaluator import metric_summary
    from ..models import save_model
    from ..prune.fpn import prune_fpn_detector
    from ..prune.history import save_history
    from ..prune.yolo import prune_yolo_detector

    cfg, recipe = ctx.cfg, ctx.recipe
    methods = distill_methods(cfg)
    hw = tuple(recipe.data.image_size)
    family = model.family
    # yolo: Ultralytics' C2f/C3k2, SPPF, concatenations and Detect/DFL head (prune/yolo.py; MACs target: whole model)
    prune_fn = prune_yolo_detector if family == "yolo" else prune_fpn_detector
    allocation = cfg.allocation
    if family == "yolo" and "allocation" not in cfg.model_fields_set:  # latency is wired for yolo (prune/yolo.py)
        allocation = "uniform"  # but not yet measured on its deployed latency: the default stays uniform
    if cfg.target.pruning_ratio_dict:
        raise UserError(f"stage '{ctx.name}': target.pruning_ratio_dict: not supported for a {family} model yet")
    modules = dict(model.named_modules())
    ignored = []
    for n in cfg.ignored_layers:
        if n not in modules:
            raise UserError(f"stage '{ctx.name}': ignored_layers: no module named '{n}'")
        ignored.append(modules[n])
    model.train()
    before = _summary(model, hw)
    loss_fn = _taylor_loss(ctx) if cfg.importance == "taylor" else None
    k = cfg.iterative_steps
    recs: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    sub = ctx
    macs_done = 1.0  # backbone MACs after the rounds so far / before pruning
    for i in range(k):
        model.cpu()
        ratio, macs = None, None
        if cfg.target.macs is not None:  # this round's goal, relative to the model as it is now
            macs = (1.0 - (1.0 - cfg.target.macs) * (i + 1) / k) / macs_done
        else:  # kept channels 1 - r*(i+1)/k of the original, from 1 - r*i/k now
            ratio = _round_ratio(cfg.target.pruning_ratio, i, k)
        # the head's cut in the first round, whole: at 16-channel steps a split would round away from it
        head_ratio = cfg.prune_head if i == 0 else 0.0
        _say(ctx, f"{ctx.name}: round {i + 1}/{k}: pruning {family} ({cfg.importance} importance)")
        rec = prune_fn(model, example_input_size(hw), pruning_ratio=ratio, target_macs=macs,
                       importance=cfg.importance, round_to=cfg.round_to or 16, ignored_layers=ignored,
                       loss_fn=loss_fn, allocation=allocation,
                       weight_range=tuple(cfg.latency_weight_range), head_ratio=head_ratio)
        rec["step"] = i + 1
        recs.append(rec)
        macs_done = rec["macs_after"] / recs[0]["base_macs"]
        sub, summary, done = _fine_tune_round(ctx, model, i, k, rec)
        rounds.append({"step": i + 1, "backbone_macs_ratio": macs_done, "ratio": rec["ratio"], **done})
    if not ctx.is_main:
        return StageResult()
    best = _load_best(model, sub.checkpoint_dir)
    after = _summary(model, hw)
    hist_path = save_history(ctx.stage_dir / "prune_history.json", recs, arch=getattr(model, "arch", None),
                             extra={"family": family, "torch_pruning_history": [r["history"] for r in recs],
                                    "importance": cfg.importance, "target": cfg.target.model_dump(mode="json")})
    meta = {"from": cfg.from_, "arch": getattr(model, "arch", None), "best_step": best["step"],
            "teacher": cfg.teacher if methods else None,
            "distill": [m.model_dump(mode="json") for m in methods],
            "image_size": list(hw), "classes": list(recipe.data.classes), "pruning_history": hist_path.name,
            "pruned": {"importance": cfg.importance, "iterative_steps": k, "allocation": allocation,
                       "prune_head": cfg.prune_head, "ratio": [r["ratio"] for r in recs]}}
    path = save_model(model, ctx.stage_dir / "model.pt", meta=meta)
    metrics = {
        "macs_before": before["macs"], "macs_after": after["macs"],
        "params_before": before["params"], "params_after": after["params"],
        "macs_ratio": after["macs"]["backbone"] / max(1, before["macs"]["backbone"]),
        "total_macs_ratio": after["macs"]["total"] / max(1, before["macs"]["total"]),
        "params_ratio": after["params"]["total"] / max(1, before["params"]["total"]),
        "pruning_ratio": [r["ratio"] for r in recs], **metric_summary(summary.get("best_result") or {}),
        "best_step": summary.get("best_step"), "rounds": rounds,
    }
    return StageResult(artifacts={"model": path, "history": hist_path}, metrics=metrics, meta=meta)


def _load_best(model: nn.Module, checkpoint_dir: Path) -> dict[str, Any]:
    """Put the fine-tune's best (val) weights into ``model`` (CPU, eval mode); returns the checkpoint."""
    from ..engine.checkpoint import load_checkpoint

    best = load_checkpoint(checkpoint_dir / "best.pt")
    model.cpu().load_state_dict(best["model"])
    model.eval()
    return best


def _taylor_loss(ctx: StageContext) -> Any:
    """``model -> detection loss`` on a fixed train batch (gradients for Taylor importance)."""
    from ..data import build_dataset, collate
    from ..losses import SqueezeDetLoss
    from ..models.anchors import generate_anchors

    data_cfg = ctx.recipe.data
    ds = build_dataset(data_cfg, "train", train=False, seed=ctx.recipe.seed)
    n = min(len(ds), max(1, min(8, ctx.cfg.schedule.batch_size)))
    images, targets = collate([ds[i] for i in range(n)])
    hw = tuple(data_cfg.image_size)
    loss = SqueezeDetLoss(generate_anchors(hw), num_classes=len(data_cfg.classes), image_size=hw)

    def fn(model: nn.Module) -> torch.Tensor:
        if getattr(model, "family", "shuffledet") != "shuffledet":  # the model's own loss (detector contract)
            return model.loss(model(images), targets)["total"]
        return loss(model(images), targets)["total"]

    return fn


def _summary(model: nn.Module, hw: tuple[int, int]) -> dict[str, Any]:
    from ..models import model_summary

    s = model_summary(model, hw)
    return {"macs": s["macs"], "params": s["params"], "params_with_bn_stats": s["params_with_bn_stats"],
            "feature_channels": s.get("feature_channels")}


def run(ctx: StageContext) -> StageResult:
    from ..models import load_model, save_model
    from ..prune import save_history

    cfg, recipe = ctx.cfg, ctx.recipe
    methods = distill_methods(cfg)
    hw = tuple(recipe.data.image_size)
    model, meta_in = load_model(ctx.input("from").artifact("model"))
    if getattr(model, "family", "shuffledet") != "shuffledet":  # FCOS / RetinaNet / yolo: torch-pruning
        return _run_fpn(ctx, model)
    if cfg.prune_head > 0:
        raise UserError(f"stage '{ctx.name}': prune_head: ShuffleDet's head is one conv whose outputs are the "
                        "detector's outputs; there is nothing to cut (it is for RetinaNet)")
    model.train()
    before = _summary(model, hw)
    target = cfg.target
    pruner = build_pruner(model, hw, importance=cfg.importance, target_macs=target.macs,
                          pruning_ratio=target.pruning_ratio, pruning_ratio_dict=target.pruning_ratio_dict,
                          iterative_steps=cfg.iterative_steps, ignored_layers=cfg.ignored_layers,
                          round_to=cfg.round_to, allocation=cfg.allocation,
                          weight_range=cfg.latency_weight_range, depthwise_align=cfg.depthwise_align)
    loss_fn = _taylor_loss(ctx) if cfg.importance == "taylor" else None
    k = cfg.iterative_steps
    rounds: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    sub = ctx
    for i in range(k):
        model.cpu()
        _say(ctx, f"{ctx.name}: round {i + 1}/{k}: pruning ({cfg.importance} importance)")
        rec = pruner.step(loss_fn)
        sub, summary, done = _fine_tune_round(ctx, model, i, k, rec)
        rounds.append({"step": rec["step"], "backbone_macs_ratio": rec["macs_after"] / rec["base_macs"], **done})
    if not ctx.is_main:
        return StageResult()
    best = _load_best(model, sub.checkpoint_dir)
    after = _summary(model, hw)
    hist_path = save_history(ctx.stage_dir / "prune_history.json", pruner.history, arch=getattr(model, "arch", None),
                             extra={"example_input_size": list(pruner.example_inputs.shape[2:]), "importance": cfg.importance,
                                    "allocation": cfg.allocation,
                                    "latency_weight_range": list(cfg.latency_weight_range),
                                    "depthwise_align": cfg.depthwise_align,
                                    "target": target.model_dump(mode="json")})
    imit = cfg.imitation
    meta = {"from": cfg.from_, "arch": getattr(model, "arch", None), "best_step": best["step"],
            "teacher": cfg.teacher if methods else None,
            "imitation": imit.model_dump(mode="json") if imit is not None else None,
            "distill": [m.model_dump(mode="json") for m in methods],
            "image_size": list(hw), "classes": list(recipe.data.classes), "pruning_history": hist_path.name,
            "pruned": {"importance": cfg.importance, "iterative_steps": k, "allocation": cfg.allocation}}
    path = save_model(model, ctx.stage_dir / "model.pt", meta=meta)
    res = summary.get("best_result") or {}
    from ..eval.evaluator import metric_summary

    metrics = {
        "macs_before": before["macs"], "macs_after": after["macs"],
        "params_before": before["params"], "params_after": after["params"],
        "macs_ratio": after["macs"]["backbone"] / max(1, before["macs"]["backbone"]),
        "total_macs_ratio": after["macs"]["total"] / max(1, before["macs"]["total"]),
        "params_ratio": after["params"]["total"] / max(1, before["params"]["total"]),
        "feature_channels": [before["feature_channels"], after["feature_channels"]],
        **metric_summary(res), "best_step": summary.get("best_step"), "rounds": rounds,
        "eval_history": [{"step": h["step"], "map40": h.get("map40"), "primary": h.get("primary")}
                         for h in summary.get("history", [])],
    }
    return StageResult(artifacts={"model": path, "history": hist_path}, metrics=metrics, meta=meta)
