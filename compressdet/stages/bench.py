"""Stage kind ``bench``: benchmark the run's model stages; report in this stage's folder."""

from __future__ import annotations

from ..bench.runner import BenchOptions, bench_run, best_latency, row_map
from . import StageContext, StageResult

__all__ = ["run"]


def run(ctx: StageContext) -> StageResult:
    """Artifact ``report`` (report.json); metrics: mAP (in %, ``ap_unit``; KITTI mAP or COCO AP as ``metric``)
    and batch-1 latency per row."""
    from ..bench.report import print_table

    cfg = ctx.cfg
    opts = BenchOptions(backends=list(cfg.backends), runs=cfg.runs, warmup=cfg.warmup, rounds=cfg.rounds,
                        batch_sizes=list(cfg.batch_sizes), threads=cfg.threads, val=cfg.val, split=cfg.split,
                        stages=cfg.stages,
                        postprocess=cfg.postprocess.model_dump(), protocol=cfg.eval.protocol, metric=cfg.eval.metric,
                        max_images=cfg.eval.max_images, skip_unavailable=True)
    # skip_unavailable: recipes list tensorrt for GPU machines; on CPU it is a recorded skip, not a failure
    report = bench_run(ctx.run_dir, ctx.stage_dir, opts, recipe=ctx.recipe)
    print_table(report)
    metrics = {"metric": report.get("metric"), "ap_unit": report.get("ap_unit", "percent")}  # <row>/mAP's unit
    for r in report["rows"]:
        key = r["stage"] if r.get("float_source") else r["label"].replace(" (int8)", "_int8")
        m = row_map(r, opts.protocol)
        if m is not None:
            metrics[f"{key}/mAP"] = m
        lat = best_latency(r)[1]
        if lat is not None:
            metrics[f"{key}/latency_ms"] = round(lat, 3)
    q = report.get("qat_vs_ptq")
    if q and q.get("map_gain") is not None:
        metrics["qat_vs_ptq/map_gain"] = q["map_gain"]
    for backend, why in report.get("skipped_backends", {}).items():
        metrics[f"{backend}_skipped"] = why
    return StageResult(artifacts={"report": ctx.stage_dir / "report.json"}, metrics=metrics,
                       meta={"rows": [r["label"] for r in report["rows"]],
                             "skipped_backends": report.get("skipped_backends", {})})
