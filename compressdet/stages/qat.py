"""Stage kind ``qat``: INT8 quantization-aware training from any earlier model stage.

Starts from ``from`` (student or pruned student), keeps the imitation loss on when ``teacher`` and
``imitation.weight > 0`` (fp32 teacher, fake-quantized student), trains with PT2E fake quant,
converts and writes:

Artifacts: ``quantized`` (``torch.export`` ``.pt2`` of the int8 program, head output only),
``onnx_int8`` (the QDQ graph), ``report`` (JSON). Metrics: ``map40``/``map11`` of the PyTorch
int8 program, ``ort_map40`` of the ONNX graph under ONNX Runtime, QAT losses and timing.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from . import StageContext, StageResult

__all__ = ["run"]


def run(ctx: StageContext) -> StageResult:
    from ..data import build_dataset, build_loader
    from ..losses import ImitationLoss, SqueezeDetLoss
    from ..quant._pt2e import convert
    from ..quant._runner import finish_quant_stage, load_float_model
    from ..quant.qat import prepare_qat, resolve_freeze_steps, train_qat

    cfg, recipe = ctx.cfg, ctx.recipe
    if ctx.world_size > 1:
        raise UserError(f"stage '{ctx.name}' (qat) runs in one process; launch the run without torchrun")
    sched = cfg.schedule
    obs_step, bn_step = resolve_freeze_steps(sched.steps, cfg.freeze_observers_step, cfg.freeze_bn_step)
    if sched.threads:
        torch.set_num_threads(sched.threads)
    torch.manual_seed(recipe.seed)
    student, smeta = load_float_model(ctx, "from")
    imit = cfg.imitation
    use_imit = imit is not None and imit.weight > 0
    teacher = None
    if use_imit:
        if cfg.teacher is None:
            raise UserError(f"stage '{ctx.name}': imitation.weight > 0 needs 'teacher: <stage name>'")
        teacher, _ = load_float_model(ctx, "teacher")
    ds = build_dataset(recipe.data, "train", train=True, seed=recipe.seed)
    loader = build_loader(ds, batch_size=sched.batch_size, train=True, seed=recipe.seed,
                          num_workers=recipe.data.num_workers)
    batches = iter(loader)
    first = next(batches)
    device = ctx.device

    def stream():
        yield first
        yield from batches

    prepared = prepare_qat(student, first[0], cfg.quant)
    anchors = student.anchors()
    det_loss = SqueezeDetLoss(anchors, student.num_classes, student.num_anchors, image_size=tuple(student.image_size))
    imit_loss = None
    if use_imit:
        width = getattr(student, "arch", {}).get("width")
        imit_loss = ImitationLoss(student.feature_channels, teacher.feature_channels, normalizer=imit.normalizer,
                                  student_width=width)
    result = train_qat(prepared, stream(), det_loss=det_loss, schedule=sched, freeze_observers_step=obs_step,
                       freeze_bn_step=bn_step, teacher=teacher, imitation=imit if use_imit else None,
                       imitation_loss=imit_loss, anchors=anchors, grid=student.grid_size,
                       num_anchors=student.num_anchors, device=device)
    converted = convert(result.prepared.to("cpu"))  # ONNX export and ORT evaluation run on CPU
    meta = {"from": cfg.from_, "teacher": cfg.teacher if use_imit else None, "quant": cfg.quant.model_dump(mode="json"),
            "arch": getattr(student, "arch", None), "from_meta": {k: smeta.get(k) for k in ("arch", "image_size")
                                                                  if k in smeta},
            "freeze_observers_step": obs_step, "freeze_bn_step": bn_step,
            "image_size": list(recipe.data.image_size), "classes": list(recipe.data.classes)}
    extra = {"steps": sched.steps, "qat_minutes": result.seconds / 60,
             "final_losses": result.history[-1] if result.history else {}, "imitation": use_imit}
    return finish_quant_stage(ctx, converted, first[0], extra_metrics=extra, meta=meta)
