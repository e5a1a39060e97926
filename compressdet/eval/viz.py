"""Pictures for people: detections and ground truth on images, the imitation mask, PR curves.

Everything returns arrays or matplotlib Figures (Agg backend, no display needed) so the trainer
can hand them to tensorboard; the ``viz`` command writes them as PNGs.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..data.kitti import KittiObject, difficulty
from ..errors import UserError
from .kitti_eval import LEVELS

__all__ = ["draw_detections", "draw_mask", "plot_pr_curves", "imitation_mask_for_boxes", "CLASS_COLOURS", "PALETTE",
           "class_colour"]

#: RGB per (lower-case) KITTI type; other classes: :data:`PALETTE`
CLASS_COLOURS = {"car": (230, 60, 50), "van": (240, 150, 60), "pedestrian": (40, 170, 70),
                 "person_sitting": (120, 200, 90), "cyclist": (50, 110, 230), "dontcare": (160, 160, 160)}
_LEVEL_TAG = ("E", "M", "H")
#: colours of other classes (a model's own class names), by their index in the model's classes: Tableau 10
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def class_colour(name: str, classes: Sequence[str] | None = None) -> tuple[int, int, int]:
    """RGB of a class: KITTI's types keep their fixed colours; another name takes the palette colour of
    its index in ``classes`` (so the classes of one model never share one), else one picked by a
    stable hash of the name (the same in every process)."""
    import zlib

    key = "_".join(str(name).lower().split())
    if key in CLASS_COLOURS:
        return CLASS_COLOURS[key]
    norm = ["_".join(str(c).lower().split()) for c in classes or ()]
    if key in norm:
        return PALETTE[norm.index(key) % len(PALETTE)]
    return PALETTE[zlib.crc32(key.encode()) % len(PALETTE)]


def _check_image(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise UserError(f"image: expected a uint8 RGB array [H, W, 3], got {a.dtype} {list(a.shape)}")
    return a


def gt_level(o: KittiObject) -> str | None:
    """Easiest level at which a GT counts (devkit rules: height > min, occlusion/truncation <= max)."""
    idx = difficulty(o)
    return None if idx is None else LEVELS[idx]


def draw_detections(image: np.ndarray, gt: Sequence[KittiObject] = (), dets: Sequence[KittiObject] = (), *,
                    score_thresh: float = 0.0, classes: Sequence[str] | None = None) -> np.ndarray:
    """Ground truth (thin, dashed-looking, with its difficulty E/M/H) and detections (thick, score).

    Args:
        image: uint8 RGB ``[H, W, 3]``.
        gt, dets: KittiObjects in the image's pixels (dets with ``score``), labelled with their type.
        score_thresh: detections below it are not drawn.
        classes: the model's class names: each gets its own colour (:func:`class_colour`).

    Returns:
        uint8 RGB ``[H, W, 3]`` copy with the boxes drawn.
    """
    from PIL import Image, ImageDraw

    img = Image.fromarray(_check_image(image).copy())
    draw = ImageDraw.Draw(img)
    for o in gt:
        t = o.type.lower()
        col = class_colour(t, classes)
        x1, y1, x2, y2 = o.bbox
        draw.rectangle([x1, y1, x2, y2], outline=col, width=1)
        lvl = gt_level(o) if t != "dontcare" else None
        tag = "DC" if t == "dontcare" else f"{o.type}{' ' + _LEVEL_TAG[LEVELS.index(lvl)] if lvl else ' -'}"
        draw.text((x1 + 2, y2 - 11), tag, fill=col)
    for o in dets:
        if o.score is not None and o.score < score_thresh:
            continue
        col = class_colour(o.type, classes)
        x1, y1, x2, y2 = o.bbox
        draw.rectangle([x1, y1, x2, y2], outline=col, width=3)
        label = f"{o.type} {o.score:.2f}" if o.score is not None else o.type
        tw = 6 * len(label) + 4
        draw.rectangle([x1, y1 - 12, x1 + tw, y1], fill=col)
        draw.text((x1 + 2, y1 - 12), label, fill=(255, 255, 255))
    return np.asarray(img)


def draw_mask(image: np.ndarray, mask, *, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Heat map of a grid mask (e.g. the imitation mask) over an image.

    Args:
        image: uint8 RGB ``[H, W, 3]``.
        mask: ``[Hg, Wg]`` tensor or array (bool or float, values in [0, 1]); each cell covers
            ``H/Hg x W/Wg`` pixels (nearest upsampling).
        alpha: blend weight of the heat map where the mask is > 0.

    Returns:
        uint8 RGB ``[H, W, 3]``.
    """
    import matplotlib

    img = _check_image(image)
    m = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    if m.ndim != 2:
        raise UserError(f"mask: expected [Hg, Wg], got shape {list(m.shape)}")
    m = m.astype(np.float64)
    h, w = img.shape[:2]
    rows = np.minimum((np.arange(h) * m.shape[0]) // h, m.shape[0] - 1)
    cols = np.minimum((np.arange(w) * m.shape[1]) // w, m.shape[1] - 1)
    up = np.clip(m[rows][:, cols], 0.0, 1.0)
    heat = matplotlib.colormaps[cmap](up)[..., :3] * 255.0
    a = (alpha * (up > 0))[..., None]
    out = img.astype(np.float64) * (1 - a) + heat * a
    return out.round().astype(np.uint8)


def imitation_mask_for_boxes(boxes, anchors, grid: tuple[int, int], num_anchors: int = 9, psi: float = 0.5):
    """METHOD.md section 3 mask of one image: :func:`compressdet.losses.imitation_mask`, the one training uses.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy GT boxes in model-input pixels.
        anchors: ``Tensor[Hg*Wg*B, 4]`` (cx, cy, w, h).
        grid: ``(Hg, Wg)``.

    Returns:
        bool ``Tensor[Hg, Wg]``.
    """
    from ..losses import imitation_mask

    return imitation_mask([boxes], anchors, grid, num_anchors, psi)[0]


def plot_pr_curves(result: Mapping, *, metric_title: str | None = None):
    """Precision at the 41 recall samples, one panel per class, one line per level.

    Args:
        result: ``evaluate_kitti(..., return_curves=True)`` output.

    Returns:
        matplotlib Figure (Agg; ``fig.savefig`` or tensorboard ``add_figure``).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if "curves" not in result:
        raise UserError("plot_pr_curves: the result has no curves; call evaluate_kitti(..., return_curves=True)")
    classes = list(result["curves"])
    fig = Figure(figsize=(4.2 * max(len(classes), 1), 3.4), dpi=100)
    recall = np.linspace(0.0, 1.0, 41)
    for i, c in enumerate(classes):
        ax = fig.add_subplot(1, len(classes), i + 1)
        for lvl in LEVELS:
            p = np.asarray(result["curves"][c][lvl]["precision"])
            ap = result["ap"][c][lvl]
            ax.plot(recall, p, label=f"{lvl} AP40 {ap['ap40']:.1f} / AP11 {ap['ap11']:.1f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"{c} ({metric_title or result.get('protocol', '')})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig
