"""Stage kind ``export``: the ``from`` stage's model to ONNX / INT8 ONNX / TensorRT, each verified."""

from __future__ import annotations

from pathlib import Path

from ..export.exporter import Exporter, ExportSource, QuantSource, _load_recipe
from ..export.formats import FORMATS
from . import StageContext, StageResult

__all__ = ["run"]


def run(ctx: StageContext) -> StageResult:
    """Artifacts: ``onnx`` (always), ``onnx_int8``, ``openvino`` (+ ``openvino_bin``), ``openvino_int8``
    (+ ``openvino_int8_bin``) and ``tensorrt`` when asked for.

    Recipes list ``tensorrt`` for GPU machines: where tensorrt or CUDA is absent the format is
    skipped with a printed note and the reason in the metric ``tensorrt_skipped`` (the CLI
    ``compressdet export --tensorrt`` still fails with exit 2).
    """
    from ..export._tensorrt import tensorrt_unavailable
    from ..export.quantized import is_quant_stage
    from ..models import load_model

    cfg = ctx.cfg
    formats, skipped = list(cfg.formats), {}
    if "tensorrt" in formats:
        why = tensorrt_unavailable("TensorRT export")
        if why:
            formats = [f for f in formats if f != "tensorrt"] or ["onnx"]  # its ONNX input is still useful
            skipped["tensorrt"] = why
            print(f"note: stage '{ctx.name}': skipping format tensorrt ({why})", flush=True)
    if any(f.startswith("openvino") for f in formats):
        from ..export._openvino import openvino_unavailable

        why = openvino_unavailable("OpenVINO export")
        if why:
            for f in [f for f in formats if f.startswith("openvino")]:
                skipped[f] = why
                print(f"note: stage '{ctx.name}': skipping format {f} ({why})", flush=True)
            formats = [f for f in formats if not f.startswith("openvino")] or ["onnx"]
    src_in = ctx.input("from")
    quant = None
    if is_quant_stage({"kind": src_in.kind, "artifacts": src_in.artifacts}):
        # a qat/ptq stage: fp32 from the float model it was quantized from, INT8 = its own graph
        quant, float_name = _quant_source(ctx, src_in)
        print(f"stage '{ctx.name}': '{src_in.name}' is a {src_in.kind} stage; fp32 ONNX from its float source "
              f"'{float_name}', INT8 ONNX = '{src_in.name}''s own verified QDQ graph", flush=True)
        src_in = ctx.all_stages[float_name]
    model, meta = load_model(src_in.artifact("model"))
    source = ExportSource(model=model, model_path=src_in.artifact("model"), meta=meta, stage=src_in.name,
                          stage_kind=src_in.kind, run_dir=ctx.run_dir, recipe=ctx.recipe or _load_recipe(ctx.run_dir),
                          artifacts=dict(src_in.artifacts), quant=quant)
    exporter = Exporter(source, ctx.stage_dir, opset=cfg.opset, dynamic_batch=cfg.dynamic_batch,
                        with_postprocess=cfg.with_postprocess, tolerance=cfg.tolerance,
                        calibration_images=cfg.calibration_images, postprocess=cfg.postprocess.model_dump())
    results = exporter.run(formats)
    artifacts = {FORMATS[n].artifact: Path(info["path"]) for n, info in results.items()}
    for n, info in results.items():  # an OpenVINO IR is two files: the manifest hashes both
        if info.get("bin"):
            artifacts[f"{FORMATS[n].artifact}_bin"] = Path(info["bin"])
    metrics = {f"{FORMATS[n].artifact}_max_abs_diff": info.get("max_abs_diff", info.get("max_abs_diff_vs_fp32"))
               for n, info in results.items() if n != "tensorrt"}
    if "onnx-int8" in results and "detection_agreement" in results["onnx-int8"]:
        metrics["int8_detection_agreement"] = results["onnx-int8"]["detection_agreement"]
    for name, why in skipped.items():
        metrics[f"{FORMATS[name].artifact}_skipped"] = why
    meta = {"from": quant.stage if quant else src_in.name, "float_source": src_in.name if quant else None,
            "formats": {n: {k: v for k, v in info.items() if k != "path"}
                                             for n, info in results.items()}, "skipped": skipped}
    return StageResult(artifacts=artifacts, metrics=metrics, meta=meta)


def _quant_source(ctx: StageContext, src_in) -> tuple[QuantSource, str]:
    """The quantized stage as a QuantSource and the name of its float source (a done stage of this run)."""
    from ..export.quantized import float_source

    records = {i.name: {"kind": i.kind, "meta": i.meta, "artifacts": i.artifacts}
               for i in (*ctx.all_stages.values(), src_in)}
    quant = QuantSource(stage=src_in.name, kind=src_in.kind, artifacts=dict(src_in.artifacts), meta=dict(src_in.meta))
    return quant, float_source(records, src_in.name)
