"""Detector models: the ShuffleDet family, torchvision's FCOS and RetinaNet (``fcos_*``,
``retinanet_*``, and :func:`wrap_torchvision` for your own instance), all on one detector contract
(:mod:`compressdet.models.contract`); anchors, box coding, post-processing, model files.

Example:
    >>> import torch
    >>> from compressdet.models import build_model, list_models
    >>> list_models("shuffledet*")
    ['shuffledet', 'shuffledet_0.25x', 'shuffledet_0.5x', 'shuffledet_1x']
    >>> model = build_model("shuffledet_0.25x", image_size=(192, 624)).eval()
    >>> model(torch.zeros(1, 3, 192, 624)).shape
    torch.Size([1, 72, 12, 39])
"""

from __future__ import annotations

from typing import Any

from ._builder import load_model, load_pretrained_backbone, save_model
from ._registry import ModelError, get_model_builder, is_model, list_models, model_from_arch, register_model
from .anchors import generate_anchors
from .box_coder import BoxCoder, safe_exp
from .contract import Detector, TapInfo, is_detector
from .head import split_head_output
from .postprocess import PostProcessor
from .shuffledet import ShuffleDet
from .summary import model_summary
from .torchvision_det import TorchvisionDetector, anchor_fit, suggest_anchor_scale, wrap_torchvision

__all__ = [
    "build_model", "create_model", "list_models", "register_model", "is_model", "ModelError",
    "ShuffleDet", "generate_anchors", "BoxCoder", "safe_exp", "split_head_output", "PostProcessor",
    "save_model", "load_model", "load_pretrained_backbone", "model_summary", "model_from_arch",
    "Detector", "TapInfo", "is_detector", "TorchvisionDetector", "wrap_torchvision", "anchor_fit", "suggest_anchor_scale",
]


def build_model(name: str, *, width: float | None = None, image_size: tuple[int, int] = (384, 1248),
                num_classes: int = 3, num_anchors: int = 9, dropout: float = 0.5, pretrained: str | None = None,
                **kwargs: Any):
    """Build a registered model.

    Args:
        name: a name from :func:`list_models` (``shuffledet_1x``, ``shuffledet_0.5x``,
            ``shuffledet_0.25x``, or ``shuffledet`` with ``width=``; ``fcos_mnv3_small``,
            ``fcos_mnv3_large``, ``fcos_mnv2_050``, ``fcos_r18``, ``retinanet_mnv3_small``,
            ``retinanet_mnv3_large``, ``retinanet_mnv2_050``, ``retinanet_r18``).
        width: width multiplier; only for ``shuffledet`` (a named variant accepts its own width).
        image_size: ``(H, W)`` model input, multiples of 16.
        num_classes, num_anchors, dropout: head settings (``num_anchors``/``dropout``: ShuffleDet only).
        pretrained: a local backbone checkpoint to load (never downloaded).

    Returns:
        the model (a :class:`~compressdet.models.contract.Detector`), in training mode.

    Raises:
        ModelError: unknown name, bad width/size, unreadable checkpoint.
    """
    builder = get_model_builder(name)
    kw: dict[str, Any] = dict(image_size=tuple(image_size), num_classes=num_classes, num_anchors=num_anchors,
                              dropout=dropout, pretrained=pretrained, **kwargs)
    if width is not None:
        kw["width"] = width
    return builder(**kw)


create_model = build_model  # timm's name
