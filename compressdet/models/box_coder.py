"""squeezeDet box coding: deltas relative to anchors, ``safe_exp`` and clipping.

Boxes are ``(cx, cy, w, h)``. ``encode``: ``dx = (gx - ax)/aw``, ``dy = (gy - ay)/ah``,
``dw = log(gw/aw)``, ``dh = log(gh/ah)``. ``decode`` inverts it with ``safe_exp`` on the size
deltas, which is ``exp(x)`` up to 1 and linear (``e*x``) beyond, so untrained heads cannot overflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_convert

__all__ = ["BoxCoder", "safe_exp", "clip_boxes_xyxy"]


def safe_exp(x: Tensor, thresh: float = 1.0) -> Tensor:
    """``exp(x)`` for ``x <= thresh``, else ``exp(thresh) * (x - thresh + 1)`` (``e*x`` at thresh 1).

    Continuous with a continuous first derivative at ``thresh``; no Python control flow on values.
    """
    linear = math.exp(thresh) * (x - thresh + 1.0)
    return torch.where(x > thresh, linear, torch.exp(torch.clamp(x, max=thresh)))


def clip_boxes_xyxy(boxes: Tensor, image_size: Sequence[int]) -> Tensor:
    """Clip ``Tensor[..., 4]`` xyxy boxes to ``[0, W-1] x [0, H-1]`` (squeezeDet's convention)."""
    h, w = image_size
    x = boxes[..., 0::2].clamp(0.0, float(w) - 1.0)
    y = boxes[..., 1::2].clamp(0.0, float(h) - 1.0)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


class BoxCoder:
    """Encode/decode squeezeDet deltas.

    Args:
        image_size: ``(H, W)``; when given, :meth:`decode` clips the decoded boxes to the image
            (squeezeDet clips in xyxy and converts back) unless told otherwise.
    """

    def __init__(self, image_size: Sequence[int] | None = None) -> None:
        self.image_size = tuple(int(v) for v in image_size) if image_size is not None else None

    @staticmethod
    def encode(boxes: Tensor, anchors: Tensor) -> Tensor:
        """Deltas of ``boxes`` w.r.t. ``anchors``.

        Args:
            boxes: ``Tensor[..., 4]`` (cx, cy, w, h), ``w, h > 0``.
            anchors: ``Tensor[..., 4]`` (cx, cy, w, h), broadcastable to ``boxes``.

        Returns:
            ``Tensor[..., 4]`` ``(dx, dy, dw, dh)``.
        """
        dxy = (boxes[..., :2] - anchors[..., :2]) / anchors[..., 2:]
        dwh = torch.log(boxes[..., 2:] / anchors[..., 2:])
        return torch.cat([dxy, dwh], dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor, *, clip: bool = True) -> Tensor:
        """Boxes ``Tensor[..., 4]`` (cx, cy, w, h) from ``deltas`` and ``anchors`` (broadcastable).

        Clipped to :attr:`image_size` when it is set and ``clip`` is true.
        """
        cxy = anchors[..., :2] + deltas[..., :2] * anchors[..., 2:]
        wh = anchors[..., 2:] * safe_exp(deltas[..., 2:])
        boxes = torch.cat([cxy, wh], dim=-1)
        if clip and self.image_size is not None:
            xyxy = clip_boxes_xyxy(box_convert(boxes, "cxcywh", "xyxy"), self.image_size)
            boxes = box_convert(xyxy, "xyxy", "cxcywh")
        return boxes

    def decode_xyxy(self, deltas: Tensor, anchors: Tensor, *, clip: bool = True) -> Tensor:
        """Like :meth:`decode` but returns xyxy (what NMS and evaluation use)."""
        cxy = anchors[..., :2] + deltas[..., :2] * anchors[..., 2:]
        wh = anchors[..., 2:] * safe_exp(deltas[..., 2:])
        xyxy = torch.cat([cxy - 0.5 * wh, cxy + 0.5 * wh], dim=-1)
        if clip and self.image_size is not None:
            xyxy = clip_boxes_xyxy(xyxy, self.image_size)
        return xyxy
