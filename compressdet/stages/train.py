"""Stage kind ``train``: a detector from scratch (``model``) or continued (``from``), optionally
imitating a teacher stage's features (``teacher`` + ``imitation``: the paper's student).

Artifacts: ``model`` (the best-val checkpoint as a model file). Metrics: map40, map11, per-class
AP40, train img/s, steps, final sub-losses. ``imitation: {weight: 0}`` (or none) is the baseline.
"""

from __future__ import annotations

from typing import Any

import torch

from ..engine.checkpoint import load_checkpoint
from ..engine.launch import fit_stage
from ..errors import UserError
from ..recipe import distill_methods
from . import StageContext, StageResult

__all__ = ["run"]


def build_stage_model(ctx: StageContext) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model the stage trains: built from ``model`` or loaded from the ``from`` stage."""
    from ..models import build_model, load_model

    cfg, recipe = ctx.cfg, ctx.recipe
    if cfg.from_ is not None:
        model, meta = load_model(ctx.input("from").artifact("model"))
        return model.train(), {"from": cfg.from_}
    m = recipe.resolve_model(cfg)
    if m is None:
        raise UserError(f"stage '{ctx.name}': needs 'model' or 'from'")
    torch.manual_seed(recipe.seed)  # same init on every rank and for every paired run
    if m.factory is not None:  # the user's own model: its arch records the factory, so every process rebuilds it
        from ..models._factory import build_from_factory
        from ..recipe import recipe_dir

        model = build_from_factory(m.factory, m.args, image_size=recipe.data.image_size, classes=recipe.data.classes,
                                   box_bias_init=m.box_bias_init, base_dir=recipe_dir(recipe))
        return model, {"model": m.model_dump(mode="json")}
    extra = m.model_dump(include={*m.RETINANET_ONLY, "weights"}, exclude_none=True)  # the builder's defaults otherwise
    model = build_model(m.arch, width=m.width, image_size=tuple(recipe.data.image_size), dropout=m.dropout,
                        num_classes=len(recipe.data.classes), pretrained=m.pretrained, **extra)
    return model, {"model": m.model_dump(mode="json")}


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    model, origin = build_stage_model(ctx)
    summary = fit_stage(ctx, model, schedule=cfg.schedule, imitation=distill_methods(cfg), postprocess=cfg.postprocess,
                        eval_cfg=cfg.eval)
    if not ctx.is_main:
        return StageResult()
    from ..eval.evaluator import metric_summary
    from ..models import save_model

    best = load_checkpoint(ctx.checkpoint_dir / "best.pt")
    model.load_state_dict(best["model"])
    imit = cfg.imitation
    meta = {**origin, "arch": getattr(model, "arch", None), "best_step": best["step"],
            "teacher": cfg.teacher if distill_methods(cfg) else None,
            "imitation": imit.model_dump(mode="json") if imit is not None else None,
            "distill": [m.model_dump(mode="json") for m in distill_methods(cfg)],
            "distill_weights": summary.get("distill_weights") or {},  # in force: weight: auto's measured ones
            "image_size": list(ctx.recipe.data.image_size), "classes": list(ctx.recipe.data.classes)}
    path = save_model(model.cpu(), ctx.stage_dir / "model.pt", meta=meta)
    res = summary.get("best_result") or {}
    metrics = {**metric_summary(res),
               "best_step": summary["best_step"], "steps": summary["steps"],
               "train_img_per_s": summary["train_img_per_s"], "final_losses": summary["final_losses"],
               "train_minutes": summary["minutes"],
               "distill_weights": summary.get("distill_weights") or {},
               "distill_calibration": summary.get("distill_calibration") or {},
               "eval_history": [{"step": h["step"], "map40": h.get("map40"), "primary": h.get("primary")}
                                for h in summary.get("history", [])]}
    return StageResult(artifacts={"model": path}, metrics=metrics, meta=meta)
