"""Stage kind ``ptq``: INT8 post-training quantization (calibration only), QAT's baseline.

Same quantizer, graph and artifacts as ``qat`` (``quantized`` .pt2, ``onnx_int8``, ``report``);
calibration uses ``quant.calibration_images`` train images without augmentation (the first ones, or
with ``calibration_draw: random`` a draw seeded by the recipe's seed).
Metrics: ``map40``/``map11`` (PyTorch int8), ``ort_map40`` (ONNX Runtime), calibration count.
"""

from __future__ import annotations

from . import StageContext, StageResult

__all__ = ["run"]


def run(ctx: StageContext) -> StageResult:
    from ..data import build_dataset, build_loader
    from ..quant.ptq import quantize_ptq
    from ._quant import finish_quant_stage, load_float_model

    cfg, recipe = ctx.cfg, ctx.recipe
    model, smeta = load_float_model(ctx, "from")
    ds = build_dataset(recipe.data, "train", train=False, seed=recipe.seed)
    if cfg.calibration_draw == "random":  # a seeded draw of the calibration images
        import torch

        n = min(cfg.quant.calibration_images, len(ds))
        pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(recipe.seed))[:n].tolist()
        ds = torch.utils.data.Subset(ds, sorted(pick))
    loader = build_loader(ds, batch_size=min(8, cfg.quant.calibration_images), train=False, seed=recipe.seed)
    images = (x for x, _ in loader)
    first = next(images)

    def stream():
        yield first
        yield from images

    converted = quantize_ptq(model, stream(), cfg.quant, observer=cfg.method, example=first[:1])
    meta = {"from": cfg.from_, "quant": cfg.quant.model_dump(mode="json"), "method": cfg.method,
            "arch": getattr(model, "arch", None), "image_size": list(recipe.data.image_size),
            "classes": list(recipe.data.classes)}
    n = min(cfg.quant.calibration_images, len(ds))
    return finish_quant_stage(ctx, converted, first[:1], extra_metrics={"calibration_images": n}, meta=meta,
                              model=model)
