"""Stage kind ``qat``: INT8 quantization-aware training from any earlier model stage.

Starts from ``from`` (student or pruned student), keeps the imitation loss on when ``teacher`` and
``imitation.weight > 0`` (fp32 teacher, fake-quantized student), trains with PT2E fake quant,
converts and writes (training: ``engine.launch.fit_stage`` over a fake-quant graph, so a killed
QAT resumes from its ``last.pt`` with ``--resume`` and ``torchrun`` trains it with DDP):

Artifacts: ``quantized`` (``torch.export`` ``.pt2`` of the int8 program, head output only),
``onnx_int8`` (the QDQ graph), ``report`` (JSON). Metrics: ``map40``/``map11`` of the PyTorch
int8 program, ``ort_map40`` of the ONNX graph under ONNX Runtime, QAT losses and timing.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..recipe import distill_methods
from . import StageContext, StageResult

__all__ = ["run"]


def run(ctx: StageContext) -> StageResult:
    from ..data import build_dataset
    from ..engine.launch import fit_stage
    from ..quant._pt2e import convert
    from ..quant.qat import prepare_qat, qat_training, resolve_freeze_steps
    from ._quant import finish_quant_stage, load_float_model

    cfg, recipe = ctx.cfg, ctx.recipe
    sched = cfg.schedule
    obs_step, bn_step = resolve_freeze_steps(sched.steps, cfg.freeze_observers_step, cfg.freeze_bn_step)
    if sched.threads:
        torch.set_num_threads(sched.threads)
    torch.manual_seed(recipe.seed)
    student, smeta = load_float_model(ctx, "from")
    methods = distill_methods(cfg)
    use_imit = bool(methods)
    if use_imit and cfg.teacher is None:
        raise UserError(f"stage '{ctx.name}': imitation / distill weight > 0 needs 'teacher: <stage name>'")
    # a real training image fixes the capture's shapes and checks the export (batch stays dynamic)
    example = build_dataset(recipe.data, "train", train=False)[0][0].unsqueeze(0).expand(2, -1, -1, -1).contiguous()
    fq, settings = qat_training(prepare_qat(student, example, cfg.quant), sched, obs_step, bn_step)
    summary = fit_stage(ctx, fq, imitation=methods or None, postprocess=cfg.postprocess,
                        eval_cfg=cfg.eval, evaluate=False, **settings)
    if not ctx.is_main:
        return StageResult()
    converted = convert(fq.prepared.to("cpu"))  # ONNX export and ORT evaluation run on CPU
    meta = {"from": cfg.from_, "teacher": cfg.teacher if use_imit else None, "quant": cfg.quant.model_dump(mode="json"),
            "arch": getattr(student, "arch", None), "from_meta": {k: smeta.get(k) for k in ("arch", "image_size")
                                                                  if k in smeta},
            "freeze_observers_step": obs_step, "freeze_bn_step": bn_step, "world_size": ctx.world_size,
            "image_size": list(recipe.data.image_size), "classes": list(recipe.data.classes)}
    extra = {"steps": sched.steps, "qat_minutes": summary["minutes"], "final_losses": summary["final_losses"],
             "train_img_per_s": summary["train_img_per_s"], "imitation": use_imit,
             "distill": [m.method for m in methods], "distill_weights": summary.get("distill_weights") or {},
             "distill_calibration": summary.get("distill_calibration") or {}}
    return finish_quant_stage(ctx, converted, example[:1], extra_metrics=extra, meta=meta, model=student)
