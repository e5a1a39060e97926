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

#: default on. Provisional: shuffle folding and 4-channel padding follow ORT's kernel rules (no
#: reshape-transpose between the convs; NCHWc depthwise only at multiples of 4); they are to be
#: confirmed or replaced by ``python benchmarks/fp32_rewrites.py`` on a quiet machine, which has
#: not run yet (README says so)
DEFAULT_FP32_REWRITES: dict[str, Any] = {"fold_shuffle": True, "pad_bottleneck": 4, "pool_as_conv": False,
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
