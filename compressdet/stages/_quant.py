"""What the ``qat`` and ``ptq`` stages share: inputs, artifacts and evaluation of an int8 program.

Stage glue (reads the stage context, returns a StageResult), so it lives with the stages, over
:mod:`compressdet.quant`, which knows nothing of stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .._io import atomic_save_with, atomic_write_json
from ..errors import UserError

__all__ = ["load_float_model", "save_quantized", "finish_quant_stage", "TIMING_METRICS"]

#: metrics that depend on the machine's speed, not on the recipe (kept out of reproducible artifacts)
TIMING_METRICS = ("qat_minutes", "train_img_per_s", "train_minutes", "minutes")


def load_float_model(ctx: Any, role: str = "from") -> tuple[torch.nn.Module, dict]:
    """The float model of the stage named by ``role`` (its ``model`` artifact), in eval mode.

    Families: ShuffleDet, and the torchvision FPN families (FCOS, RetinaNet) and yolo, captured as they are
    (see ``quant._fpn``)."""
    from ..models import load_model
    from ..quant._fpn import CAPTURED_AS_IS

    src = ctx.input(role)
    model, meta = load_model(src.artifact("model"))
    family = getattr(model, "family", "shuffledet")
    if family != "shuffledet" and family not in CAPTURED_AS_IS:
        raise UserError(f"stage '{ctx.name}': {role}: INT8 quantization supports the shuffledet, "
                        f"{', '.join(CAPTURED_AS_IS)} families, '{src.name}' is a {family} model")
    if tuple(getattr(model, "image_size", ctx.recipe.data.image_size)) != tuple(ctx.recipe.data.image_size):
        raise UserError(f"stage '{ctx.name}': model of '{src.name}' was built for {tuple(model.image_size)}, "
                        f"data.image_size is {tuple(ctx.recipe.data.image_size)}")
    return model.eval(), meta


def save_quantized(converted: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """``torch.export.save`` of the deployable (head-only) int8 program; load with ``torch.export.load``
    (FPN families: it returns the tuple of raw outputs)."""
    from ..quant.onnx_int8 import HeadOnly

    ep = torch.export.export(HeadOnly(converted), (example,), strict=False)
    # through a buffer: a file name would become the archive's record prefix (not reproducible)
    return atomic_save_with(path, lambda buf: torch.export.save(ep, buf))


def _describe_int8_graph(path: Path, model: torch.nn.Module, recipe: Any, cfg: Any, stage: str) -> None:
    """The stage's QDQ graph carries what an exported one does (classes, family, input size, arch, decode
    settings), so ``predict``/``deploy`` on this file alone name the user's classes and decode its outputs."""
    from ..conventions import MEAN_BGR
    from ..export._int8 import copy_onnx_int8_with_metadata
    from ..quant._pt2e import resolve_reduce_range

    h, w = (int(s) for s in model.image_size)
    family = model.export_metadata() if hasattr(model, "export_metadata") else {}
    pp = getattr(cfg, "postprocess", None)
    meta = {**family, "classes": list(recipe.data.classes), "mean_bgr": list(MEAN_BGR), "input_size": f"{h}x{w}",
            "arch": getattr(model, "arch", {}), "precision": "int8", "stage": stage,
            "quantizer": cfg.quant.quantizer, "reduce_range": resolve_reduce_range(cfg.quant),
            **({"postprocess": pp.model_dump()} if pp is not None else {})}
    copy_onnx_int8_with_metadata(path, path, meta)


def finish_quant_stage(ctx: Any, converted: torch.nn.Module, example: torch.Tensor, *, extra_metrics: dict,
                       meta: dict, model: torch.nn.Module) -> Any:
    """Write ``quantized`` (.pt2) and ``onnx_int8`` artifacts, evaluate both, return the StageResult.

    ``model``: the float model the stage quantized (:func:`load_float_model`), for its decode and output names.
    The placement (``quant.quantizer``) and the 7-bit choice (``reduce_range``, as applied) go into the metrics,
    ``meta`` and the graph's metadata; an openvino-placed graph is also evaluated in OpenVINO (``openvino_*``
    metrics) and skips the ONNX Runtime rewrites."""
    from ..eval.evaluator import metric_summary
    from ..quant._eval import evaluate_head_fn, openvino_head_fn, ort_head_fn, torch_head_fn
    from ..quant._pt2e import resolve_reduce_range
    from ..quant.onnx_int8 import check_int8_graph, export_int8_onnx, ort_session
    from . import StageResult

    cfg, recipe = ctx.cfg, ctx.recipe
    placement = cfg.quant.quantizer
    placed = {"quantizer": placement, "reduce_range": resolve_reduce_range(cfg.quant)}
    meta = {**meta, **placed}
    example = example[:1].cpu()
    # the float model's output names (FPN families: several raw outputs, decoded outside; ShuffleDet: "head")
    q_path = save_quantized(converted, example, ctx.stage_dir / "quantized.pt2")
    onnx_path = export_int8_onnx(converted, example, ctx.stage_dir / "model_int8.onnx",
                                 output_names=tuple(model.export_outputs), ort_rewrites=placement == "x86")
    _describe_int8_graph(onnx_path, model, recipe, cfg, ctx.name)
    graph = check_int8_graph(onnx_path)
    res_torch = evaluate_head_fn(torch_head_fn(converted), recipe.data, post_cfg=cfg.postprocess, eval_cfg=cfg.eval,
                                 model=model)
    res_ort = evaluate_head_fn(ort_head_fn(ort_session(onnx_path)), recipe.data, post_cfg=cfg.postprocess,
                               eval_cfg=cfg.eval, model=model)
    metrics = {**metric_summary(res_torch), "ort_primary": res_ort["primary"],
               "ort_vs_torch_primary": res_ort["primary"] - res_torch["primary"], "graph": graph, **placed,
               **extra_metrics}
    if placement == "openvino":  # the runtime this placement is for
        res_ov = evaluate_head_fn(openvino_head_fn(onnx_path), recipe.data, post_cfg=cfg.postprocess,
                                  eval_cfg=cfg.eval, model=model)
        metrics.update(openvino_primary=res_ov["primary"],
                       openvino_vs_torch_primary=res_ov["primary"] - res_torch["primary"])
    if res_torch["metric"] == "kitti":
        metrics.update(ort_map40=res_ort["map40"], ort_map11=res_ort["map11"],
                       ort_vs_torch_map40=res_ort["map40"] - res_torch["map40"])
    else:
        metrics["ort_coco"] = metric_summary(res_ort)["coco"]
    report = ctx.stage_dir / "quant_report.json"
    # wall-clock values (minutes, img/s) stay in the manifest's metrics: the report artifact is reproducible
    atomic_write_json(report, {"metrics": {k: v for k, v in metrics.items() if k not in TIMING_METRICS},
                               "meta": meta})
    return StageResult(artifacts={"quantized": q_path, "onnx_int8": onnx_path, "report": report},
                       metrics=metrics, meta=meta)
