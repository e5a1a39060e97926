"""Post-training quantization (calibration only): the baseline every QAT number is compared with.

Same PT2E path and quantizer as QAT (``prepare_pt2e`` + calibration + ``convert_pt2e``), so PTQ and
QAT produce the same graph and differ only in how scales and weights were obtained. Chosen over
``onnxruntime.quantization.quantize_static`` for that reason (the PyTorch quantized model and the
ONNX graph are then one program; see docs/quantization.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ._pt2e import capture, capture_options, check_prepared, convert, make_quantizer

__all__ = ["quantize_ptq", "calibrate", "randomize_batchnorm"]


def calibrate(prepared: torch.fx.GraphModule, images: Iterable[torch.Tensor], max_images: int) -> int:
    """Feed up to ``max_images`` images (batches ``[N, 3, H, W]``) through the observers; returns the count."""
    seen = 0
    with torch.no_grad():
        for x in images:
            if seen >= max_images:
                break
            x = x[: max_images - seen]
            prepared(x)
            seen += x.shape[0]
    if seen == 0:
        raise UserError("PTQ calibration got no images (is the train split empty?)")
    return seen


def quantize_ptq(model: nn.Module, images: Iterable[torch.Tensor], cfg: Any, *, observer: str = "histogram",
                 example: torch.Tensor | None = None) -> torch.fx.GraphModule:
    """Calibrated int8 program of ``model`` (returns ``(head_out, feature)``; FPN families:
    ``((raw outputs...), [levels])``).

    Args:
        model: float ShuffleDet, FCOS, RetinaNet or yolo (not modified).
        images: iterable of model-ready batches ``[N, 3, H, W]``.
        cfg: ``QuantConfig`` (``calibration_images`` images are used).
        observer: ``"minmax"`` or ``"histogram"`` (activation range estimate).
        example: capture input (default: the first calibration batch's first image).
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    images = iter(images)
    first = next(images, None)
    if first is None:
        raise UserError("PTQ calibration got no images (is the train split empty?)")
    if example is None:
        example = first[:1]
    gm = capture(model, example, train=False, **capture_options(cfg))
    prepared = prepare_pt2e(gm, make_quantizer(cfg, is_qat=False, observer=observer,
                                               family=getattr(model, "family", "shuffledet"), model=model))
    check_prepared(prepared)
    move_exported_model_to_eval(prepared)

    def chain():
        yield first
        yield from images

    calibrate(prepared, chain(), cfg.calibration_images)
    return convert(prepared)


def randomize_batchnorm(model: nn.Module, seed: int = 0, head_std: float | None = None) -> nn.Module:
    """Give an untrained model realistic BN statistics (and optionally a visible head) in place.

    Latency and QDQ-graph checks run on untrained models; with BN at its init (mean 0, var 1,
    gamma 1, beta 0) and the seed's 1e-4 head, activation ranges are degenerate and calibration
    says little. Returns ``model``.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    head = getattr(model, "head", None)
    if head_std is not None and head is not None:
        nn.init.normal_(head.conv.weight, std=head_std, generator=g)
    return model
