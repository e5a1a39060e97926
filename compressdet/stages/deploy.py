"""Stage kind ``deploy``: the fastest runtime and precision of the ``from`` stage's model that keeps its mAP.

The same measurement as ``compressdet deploy`` (:mod:`compressdet.deploy`), at the end of a chain: a
qat/ptq ``from`` stage brings its float source (the fp32 candidates) and its own INT8 QDQ graph.
"""

from __future__ import annotations

from ..deploy.runner import DEPLOY_JSON, DeployOptions, deploy
from ..errors import UserError
from . import StageContext, StageResult

__all__ = ["run"]


def run(ctx: StageContext) -> StageResult:
    """Artifacts ``report`` (deploy.json) and ``deployed`` (the chosen file; ``deployed_bin`` for an IR);
    metrics: the chosen candidate, its latency, mAP, drop and speed-ups."""
    from ..export.exporter import ExportSource, QuantSource
    from ..export.quantized import float_source, is_quant_stage
    from ..models import load_model

    cfg = ctx.cfg
    src_in, quant = ctx.input("from"), None
    if is_quant_stage({"kind": src_in.kind, "artifacts": src_in.artifacts}):
        records = {i.name: {"kind": i.kind, "meta": i.meta, "artifacts": i.artifacts}
                   for i in (*ctx.all_stages.values(), src_in)}
        quant = QuantSource(stage=src_in.name, kind=src_in.kind, artifacts=dict(src_in.artifacts),
                            meta=dict(src_in.meta))
        src_in = ctx.all_stages[float_source(records, src_in.name)]
    model, meta = load_model(src_in.artifact("model"))
    source = ExportSource(model=model, model_path=src_in.artifact("model"), meta=meta, stage=src_in.name,
                          stage_kind=src_in.kind, run_dir=ctx.run_dir, recipe=ctx.recipe,
                          artifacts=dict(src_in.artifacts), quant=quant)
    opts = DeployOptions(target=cfg.target, image_size=tuple(cfg.image_size) if cfg.image_size else None,
                         max_map_drop=cfg.max_map_drop, split=cfg.split, runs=cfg.runs, rounds=cfg.rounds,
                         warmup=cfg.warmup, threads=cfg.threads, calibration_images=cfg.calibration_images,
                         postprocess=cfg.postprocess.model_dump(), protocol=cfg.eval.protocol, metric=cfg.eval.metric,
                         max_images=cfg.eval.max_images)
    rep = deploy(source, ctx.stage_dir, opts)
    print(rep["summary"], flush=True)
    if rep["chosen"] is None:
        raise UserError(f"stage '{ctx.name}': {rep['summary']} (raise max_map_drop to accept one)")
    chosen = next(c for c in rep["candidates"] if c["name"] == rep["chosen"])
    artifacts = {"report": ctx.stage_dir / DEPLOY_JSON, "deployed": ctx.stage_dir / rep["artifact"]["file"]}
    if rep["artifact"]["file"].endswith(".xml"):
        artifacts["deployed_bin"] = ctx.stage_dir / rep["artifact"]["files"][0]
    metrics = {"chosen": rep["chosen"], "precision": chosen.get("precision"),
               "latency_ms": round(chosen["latency"]["median_ms"], 3), "map": chosen["map"],
               "map_drop": chosen["map_drop"], "speedup_vs_best_exact_fp32": rep["speedup_vs_best_exact_fp32"],
               "speedup_vs_openvino_default": rep["speedup_vs_openvino_default"]}
    return StageResult(artifacts=artifacts, metrics=metrics,
                       meta={"from": cfg.from_, "artifact": rep["artifact"], "summary": rep["summary"],
                             # the whole comparison in the manifest too (a benchmark ledger keeps manifests)
                             **{k: rep[k] for k in ("image_size", "split", "map_key", "reference", "candidates",
                                                    "best_exact_fp32", "cpu", "versions")}})
