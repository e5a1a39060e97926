"""The fastest *exact* fp32 graph: float rewrites that change ORT's kernels, never the function.

A speed ratio (INT8 vs fp32, pruned vs unpruned) is only honest best against best. The INT8
export gets exact rewrites that make ONNX Runtime pick fast kernels; several are exact in fp32
too, so the fp32 export gets them as well (``docs/quantization.md`` has the per-rewrite
measurements, ``benchmarks/fp32_rewrites.py`` re-measures them):

- ``fold_shuffle``: the channel shuffle folded into the permuted depthwise conv and a dense
  ``conv2`` (no Reshape-Transpose-Reshape between the convs);
- ``pad_bottleneck``: bottleneck widths zero-padded to a multiple of N (ORT runs a depthwise conv
  on its blocked NCHWc kernel only at multiples of 4 channels; 0.25x bottlenecks are 15/30/60);
- ``pool_as_conv``: the stride-2 shortcut's average pool as a depthwise conv with a border map;
- ``pad_stem``: the stem conv's 3 input channels zero-padded to N.

They reuse :func:`compressdet.quant._fold.quant_ready` (the same exact rewrites, masks unused in
eval). Models other than ShuffleDet pass through unchanged.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["DEFAULT_FP32_REWRITES", "fast_fp32", "resolve_rewrites"]

#: default on: the fastest variant of ``python benchmarks/fp32_rewrites.py`` (quiet 2-core CPU,
#: 384x1248, isolated processes; benchmarks/results/fp32_rewrites.json): shuffle folded into the convs
#: and bottleneck widths padded to multiples of 16 (0.25x 75.8 ms vs 89.8 unrewritten and 77.8 with
#: padding to 4; 1x 313 vs 384 and 362); pooling as conv and stem padding were slower
DEFAULT_FP32_REWRITES: dict[str, Any] = {"fold_shuffle": True, "pad_bottleneck": 16, "pool_as_conv": False,
                                         "pad_stem": None}


def resolve_rewrites(rewrites: bool | dict[str, Any] | None) -> dict[str, Any] | None:
    """``True`` -> the defaults, ``False``/``None`` -> none, a dict -> the defaults updated by it."""
    if rewrites is True:
        return dict(DEFAULT_FP32_REWRITES)
    if not rewrites:
        return None
    unknown = set(rewrites) - set(DEFAULT_FP32_REWRITES)
    if unknown:
        raise ValueError(f"unknown fp32 rewrite(s) {sorted(unknown)} (known: {sorted(DEFAULT_FP32_REWRITES)})")
    return {**DEFAULT_FP32_REWRITES, **rewrites}


def fast_fp32(model: nn.Module, rewrites: bool | dict[str, Any] | None = True) -> tuple[nn.Module, dict | None]:
    """(eval-mode copy with the exact rewrites applied, the settings applied or None)."""
    from ..models.shuffledet import ShuffleDet, ShuffleUnit

    settings = resolve_rewrites(rewrites)
    if settings is None or not isinstance(model, ShuffleDet) or not any(isinstance(m, ShuffleUnit)
                                                                        for m in model.modules()):
        return model, None
    from ..quant._fold import quant_ready

    pad_b = settings["pad_bottleneck"] if settings["fold_shuffle"] else None
    out = quant_ready(model, fold_shuffle=settings["fold_shuffle"], pad_stem=settings["pad_stem"],
                      pool_as_conv=settings["pool_as_conv"], pad_bottleneck=pad_b).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out, settings
