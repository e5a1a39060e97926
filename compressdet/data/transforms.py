"""The seed's input transform (METHOD.md §1 input, §4 augmentation) and its inverse.

Forward: photometric (brightness offset U{-b..b}, contrast x U(lo, hi)) -> drift (crop or pad at the
top-left, never cutting a box) -> horizontal flip -> resize to the model input (no aspect keep) ->
RGB->BGR minus the ImageNet BGR mean, no std. Inverse: :func:`to_original` maps model-input boxes
back to original pixels. Both live here so one module owns the coordinate frames.

The seed also had a "saturation" step that, because of a bug, changed nothing; it is deliberately
not reproduced (it would only cost time).

All randomness is drawn from a ``numpy.random.Generator`` the caller seeds per sample (see
``dataset.py``), so a sample's augmentation depends only on (seed, epoch, index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from ..conventions import MEAN_BGR
from ..recipe import AugmentConfig

__all__ = ["MEAN_BGR", "AugmentParams", "sample_params", "apply_geometry", "photometric", "normalize",
           "denormalize", "to_original", "DetectionTransform", "hflip"]


@dataclass(frozen=True)
class AugmentParams:
    """One sample's draw. ``drift``: pixels cropped from the left/top (negative = padded)."""

    brightness: float = 0.0
    contrast: float = 1.0
    drift: tuple[int, int] = (0, 0)  # (x, y) in the pixels of the image being transformed
    flip: bool = False


def sample_params(cfg: AugmentConfig, rng: np.random.Generator, boxes: torch.Tensor,
                  px_scale: tuple[float, float] = (1.0, 1.0)) -> AugmentParams:
    """Draw one sample's augmentation.

    Args:
        cfg: which steps are on and their ranges (drift limits in original pixels).
        rng: the sample's generator.
        boxes: Tensor[N, 4] xyxy in the pixels of the image to transform; crops never cut them.
        px_scale: (sx, sy) from original to those pixels (a cached, pre-resized image has < 1).
    """
    if not cfg.enabled:
        return AugmentParams()
    b = float(rng.integers(-cfg.brightness, cfg.brightness + 1)) if cfg.brightness else 0.0
    c = float(rng.uniform(*cfg.contrast)) if cfg.contrast else 1.0
    dx = dy = 0
    if cfg.drift:
        mx, my = round(cfg.drift[0] * px_scale[0]), round(cfg.drift[1] * px_scale[1])
        # cropping k px from the left is allowed only while every box starts at x >= k
        lim_x = int(np.floor(boxes[:, 0].min().item())) if len(boxes) else mx
        lim_y = int(np.floor(boxes[:, 1].min().item())) if len(boxes) else my
        dx = int(rng.integers(-mx, max(-mx, min(mx, lim_x)) + 1))
        dy = int(rng.integers(-my, max(-my, min(my, lim_y)) + 1))
    flip = bool(rng.random() < cfg.flip) if cfg.flip > 0 else False
    return AugmentParams(b, c, (dx, dy), flip)


def photometric(img: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """``clamp(img * contrast + brightness, 0, 255)`` on a float image (pixel values 0..255)."""
    if p.contrast == 1.0 and p.brightness == 0.0:
        return img
    return (img * p.contrast + p.brightness).clamp_(0.0, 255.0)


def hflip(img: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flip of an image Tensor[C, H, W] and its xyxy boxes (an involution)."""
    w = img.shape[-1]
    out = boxes.clone()
    out[:, 0], out[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return img.flip(-1), out


def apply_geometry(img: torch.Tensor, boxes: torch.Tensor, p: AugmentParams,
                   out_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Drift, flip and resize with torchvision.transforms.v2 on (Image, BoundingBoxes).

    Args:
        img: Tensor[3, h, w] (uint8 or float).
        boxes: Tensor[N, 4] xyxy in img's pixels.
        out_size: (H, W) of the model input.
    Returns:
        (Tensor[3, H, W], Tensor[N, 4] xyxy float32 in model-input pixels)
    """
    h, w = img.shape[-2:]
    im = tv_tensors.Image(img)
    bb = tv_tensors.BoundingBoxes(boxes.float(), format="XYXY", canvas_size=(h, w))
    dx, dy = p.drift
    if dx or dy:  # crop (positive) or zero-pad (negative) at the top-left; the size changes with it
        im, bb = F.crop(im, dy, dx, h - dy, w - dx), F.crop(bb, dy, dx, h - dy, w - dx)
    if p.flip:
        im, bb = F.horizontal_flip(im), F.horizontal_flip(bb)
    if tuple(im.shape[-2:]) != tuple(out_size):
        im, bb = F.resize(im, list(out_size), antialias=True), F.resize(bb, list(out_size))
    return im.as_subclass(torch.Tensor), bb.as_subclass(torch.Tensor).float()


def normalize(img: torch.Tensor) -> torch.Tensor:
    """RGB Tensor[..., 3, H, W] (0..255) -> float32 BGR minus :data:`MEAN_BGR`."""
    mean = torch.tensor(MEAN_BGR, dtype=torch.float32, device=img.device).view(3, 1, 1)
    return img.flip(-3).float() - mean


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize`: back to uint8 RGB for visualisation."""
    mean = torch.tensor(MEAN_BGR, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x + mean).flip(-3).round().clamp(0, 255).to(torch.uint8)


def to_original(boxes: torch.Tensor, image_size: tuple[int, int], orig_size: tuple[int, int]) -> torch.Tensor:
    """Scale xyxy boxes from the model input (H, W) back to the original image (H0, W0).

    The forward resize keeps no aspect ratio, so x and y scale separately. Evaluation images are
    never drifted or flipped, so this is the exact inverse of the eval transform.
    """
    sy = orig_size[0] / image_size[0]
    sx = orig_size[1] / image_size[1]
    scale = torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)
    return boxes * scale


class DetectionTransform:
    """Whole input transform for one sample (augmentation only when ``augment`` is given and on).

    Args:
        image_size: model input (H, W).
        augment: the recipe's AugmentConfig, or None for evaluation.
    """

    def __init__(self, image_size: tuple[int, int], augment: AugmentConfig | None = None):
        self.image_size = tuple(image_size)
        self.augment = augment if augment is not None and augment.enabled else None

    def __call__(self, img: torch.Tensor, boxes: torch.Tensor, rng: np.random.Generator | None = None,
                 px_scale: tuple[float, float] = (1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 RGB Tensor[3, h, w] + boxes in its pixels -> (float32 BGR Tensor[3, H, W], boxes)."""
        p = AugmentParams()
        if self.augment is not None:
            if rng is None:
                raise ValueError("an augmenting transform needs the sample's rng")
            p = sample_params(self.augment, rng, boxes, px_scale)
        if img.dtype == torch.uint8 and (p.contrast != 1.0 or p.brightness != 0.0):
            # rounded back to uint8 (lossless for uint8 sources up to 0.5 levels) so the resize runs
            # on uint8, ~4x faster than on float; padding added by the drift stays black as in the seed
            img = photometric(img.float(), p).round_().to(torch.uint8)
        elif img.dtype != torch.uint8:
            img = photometric(img.float(), p)
        x, boxes = apply_geometry(img, boxes, p, self.image_size)
        return normalize(x), boxes
