"""KITTI ``training/image_2`` + ``training/label_2`` + ``ImageSets/<split>.txt`` (also SynthKITTI).

Names are KITTI types; DontCare boxes are ignore regions (``crowd``). The writer keeps the 3-D
fields of boxes read from KITTI and fills the rest with KITTI's "unknown" values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from ..kitti import KITTI_TYPES, KittiObject, read_label_file, read_split, write_label_file
from ._common import ImageRecord, Issues, check_box, probe_image

__all__ = ["read", "write", "available_splits", "split_file"]


def _root(cfg) -> Path:
    from ..dataset import prepare_data

    return prepare_data(cfg)


def split_file(cfg, root: Path, split: str) -> Path:
    rel = getattr(cfg, f"{split}_split", None) or f"ImageSets/{split}.txt"
    rel = Path(rel)
    return rel if rel.is_absolute() else root / rel


def available_splits(cfg) -> list[str]:
    root = _root(cfg)
    return [s for s in ("train", "val", "test") if split_file(cfg, root, s).is_file()]


def read(cfg, split: str, issues: Issues) -> tuple[list[ImageRecord], list[str] | None, str]:
    root = _root(cfg)
    sf = split_file(cfg, root, split)
    out: list[ImageRecord] = []
    for n, i in enumerate(read_split(sf), 1):
        lab = root / "training" / "label_2" / f"{i}.txt"
        img = root / "training" / "image_2" / f"{i}.png"
        if lab.is_file() and not img.is_file():
            issues.bad("labels without image", f"{lab}: label file without an image ({img} not found)")
            continue
        size = probe_image(img, f"{sf}:{n}", issues)
        if size is None:
            continue
        try:
            objs = read_label_file(lab)
        except DataError as e:
            issues.bad("bad label files", str(e))
            continue
        keep = []
        for line, o in enumerate(objs, 1):
            if check_box(o.bbox, size, f"{lab}:{line}", issues):
                keep.append((line, o))
        out.append(ImageRecord(i, img, size, np.asarray([o.bbox for _, o in keep], np.float64).reshape(-1, 4),
                               [o.type for _, o in keep], np.asarray([o.type == "DontCare" for _, o in keep], bool),
                               [f"{lab}:{line}" for line, _ in keep], kitti=[o for _, o in keep]))
    return out, None, str(sf)


def _kitti_type(name: str, crowd: bool, where: str) -> str:
    if crowd:
        return "DontCare"
    if name in KITTI_TYPES:
        return name
    low = {t.lower(): t for t in KITTI_TYPES}
    if name.lower() in low:
        return low[name.lower()]
    raise DataError(f"{where}: category '{name}' has no KITTI type (one of {', '.join(KITTI_TYPES)})")


def write(out: Path, splits: dict[str, list[ImageRecord]], categories: list[str], issues: Issues) -> dict:
    from ..._io import atomic_write_text
    from ._io_util import copy_image, safe_ids

    counts = {"images": 0, "boxes": 0}
    every: dict[str, None] = {}  # ids of every split, in order, once
    for split, recs in splits.items():
        ids = safe_ids(recs, alnum=True)
        for rec, i in zip(recs, ids):
            copy_image(rec.path, out / "training" / "image_2" / f"{i}.png", png=True)
            if rec.kitti is not None:
                objs = list(rec.kitti)
            else:
                objs = [KittiObject(type=_kitti_type(n, bool(c), ref), bbox=tuple(float(v) for v in b))
                        for b, n, c, ref in zip(rec.boxes, rec.names, rec.crowd, rec.refs or [rec.path] * len(rec))]
            write_label_file(out / "training" / "label_2" / f"{i}.txt", objs)
            counts["boxes"] += len(objs)
        atomic_write_text(out / "ImageSets" / f"{split}.txt", "".join(f"{i}\n" for i in ids))
        counts["images"] += len(recs)
        every.update(dict.fromkeys(ids))
    # every split's ids: a split file of its own (data.train_split: ImageSets/all.txt)
    atomic_write_text(out / "ImageSets" / "all.txt", "".join(f"{i}\n" for i in every))
    return counts
