"""Stage kind ``export``: the ``from`` stage's model to ONNX / INT8 ONNX / TensorRT, each verified."""

from __future__ import annotations

from pathlib import Path

from ..export.exporter import ExportSource, Exporter, _load_recipe
from ..export.formats import FORMATS
from . import StageContext, StageResult

__all__ = ["run"]


def run(ctx: StageContext) -> StageResult:
    """Artifacts: ``onnx`` (always), ``onnx_int8`` and ``tensorrt`` when asked for."""
    from ..models import load_model
    from ..export._tensorrt import check_tensorrt

    cfg = ctx.cfg
    if "tensorrt" in cfg.formats:
        check_tensorrt()
    src_in = ctx.input("from")
    model, meta = load_model(src_in.artifact("model"))
    source = ExportSource(model=model, model_path=src_in.artifact("model"), meta=meta, stage=src_in.name,
                          stage_kind=src_in.kind, run_dir=ctx.run_dir, recipe=ctx.recipe or _load_recipe(ctx.run_dir),
                          artifacts=dict(src_in.artifacts))
    exporter = Exporter(source, ctx.stage_dir, opset=cfg.opset, dynamic_batch=cfg.dynamic_batch,
                        with_postprocess=cfg.with_postprocess, tolerance=cfg.tolerance,
                        calibration_images=cfg.calibration_images, postprocess=cfg.postprocess.model_dump())
    results = exporter.run(list(cfg.formats))
    artifacts = {FORMATS[n].artifact: Path(info["path"]) for n, info in results.items()}
    metrics = {f"{FORMATS[n].artifact}_max_abs_diff": info.get("max_abs_diff", info.get("max_abs_diff_vs_fp32"))
               for n, info in results.items() if n != "tensorrt"}
    if "onnx-int8" in results and "detection_agreement" in results["onnx-int8"]:
        metrics["int8_detection_agreement"] = results["onnx-int8"]["detection_agreement"]
    meta = {"from": src_in.name, "formats": {n: {k: v for k, v in info.items() if k != "path"}
                                             for n, info in results.items()}}
    return StageResult(artifacts=artifacts, metrics=metrics, meta=meta)
