"""squeezeDet anchors for any input size whose sides divide by 16.

Centres follow squeezeDet: ``x_k = k * W / (Wg + 1)`` for ``k = 1..Wg`` and
``y_k = k * H / (Hg + 1)`` for ``k = 1..Hg`` (``Wg = W/16``, ``Hg = H/16``); the 9 shapes of
METHOD.md are given for 1248x384 and scaled by ``W/1248`` (widths) and ``H/384`` (heights).
Flat order: ``(h * Wg + w) * 9 + b``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._registry import ModelError

__all__ = ["SEED_ANCHOR_SHAPES", "SEED_IMAGE_SIZE", "anchor_shapes", "generate_anchors"]

SEED_IMAGE_SIZE = (384, 1248)  # (H, W) the shapes below were chosen for
# (w, h) in resized pixels at 1248x384, in anchor order b = 0..8
SEED_ANCHOR_SHAPES: tuple[tuple[float, float], ...] = (
    (36.0, 37.0), (366.0, 174.0), (115.0, 59.0), (162.0, 87.0), (38.0, 90.0),
    (258.0, 173.0), (224.0, 108.0), (78.0, 170.0), (72.0, 43.0),
)


def anchor_shapes(image_size: Sequence[int] = SEED_IMAGE_SIZE,
                  shapes: Sequence[tuple[float, float]] = SEED_ANCHOR_SHAPES) -> Tensor:
    """The anchor ``(w, h)`` list ``[B, 2]`` scaled from 1248x384 to ``image_size = (H, W)``."""
    h, w = image_size
    t = torch.tensor(shapes, dtype=torch.float64)
    t[:, 0] *= w / SEED_IMAGE_SIZE[1]
    t[:, 1] *= h / SEED_IMAGE_SIZE[0]
    return t.float()


def generate_anchors(image_size: Sequence[int] = SEED_IMAGE_SIZE, *, stride: int = 16,
                     shapes: Sequence[tuple[float, float]] = SEED_ANCHOR_SHAPES,
                     device: torch.device | str | None = None) -> Tensor:
    """All anchors of an input size.

    Args:
        image_size: ``(H, W)`` model input; both sides multiples of ``stride``.
        stride: the backbone stride (16).
        shapes: anchor ``(w, h)`` at 1248x384.

    Returns:
        ``Tensor[Hg*Wg*B, 4]`` float32 ``(cx, cy, w, h)`` in model-input pixels, index
        ``(h*Wg + w)*B + b`` (16,848 anchors at 384x1248).

    Raises:
        ModelError: a side is not a positive multiple of ``stride``.
    """
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ModelError(f"image_size must be (H, W), got {image_size!r}") from None
    if h <= 0 or w <= 0 or h % stride or w % stride:
        raise ModelError(f"image_size {h}x{w}: both sides must be positive multiples of {stride}")
    hg, wg = h // stride, w // stride
    xs = torch.arange(1, wg + 1, dtype=torch.float64) * (w / (wg + 1))
    ys = torch.arange(1, hg + 1, dtype=torch.float64) * (h / (hg + 1))
    wh = anchor_shapes((h, w), shapes).double()  # B, 2
    b = wh.shape[0]
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # Hg, Wg
    centres = torch.stack([cx, cy], dim=-1)[:, :, None, :].expand(hg, wg, b, 2)
    sizes = wh[None, None].expand(hg, wg, b, 2)
    anchors = torch.cat([centres, sizes], dim=-1).reshape(-1, 4)
    return anchors.to(dtype=torch.float32, device=device)
