"""COCO detection JSON: one file per split (``images``, ``annotations``, ``categories``) + an image folder.

``bbox`` is ``[x, y, w, h]`` in pixels; ``iscrowd: 1`` (or ``ignore: 1``) marks an ignore region. An
image's id in compressdet is its file stem when stems are unique in the split, else the COCO id.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from ._common import ImageRecord, Issues, check_box, probe_image

__all__ = ["read", "write", "available_splits", "split_paths", "category_names"]


def split_paths(cfg, split: str) -> tuple[Path, Path]:
    """(annotation JSON, image folder) of ``split``."""
    sf = cfg.coco
    root = Path(cfg.root or ".").expanduser()
    ann = getattr(sf, split, None) if sf is not None else None
    ann = Path(ann or f"annotations/{split}.json")
    images = sf.images if sf is not None else None
    if isinstance(images, dict):
        images = images.get(split)
    img = Path(images or "images")
    return (ann if ann.is_absolute() else root / ann), (img if img.is_absolute() else root / img)


def available_splits(cfg) -> list[str]:
    return [s for s in ("train", "val", "test") if split_paths(cfg, s)[0].is_file()]


def load_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: COCO annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list):
        raise DataError(f"{path}: expected a COCO detection file (an object with 'images', 'annotations', "
                        "'categories' lists)")
    return data


def _int_id(v: Any) -> int | None:
    """A COCO id as an int (``3``, ``3.0`` or ``"3"``), or None for anything else (lists, NaN, 3.5, true)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*-?[0-9]+\s*", v):  # ASCII digits: int() refuses '²', '--3'
        return int(v)
    return None


def _show(v: Any) -> str:
    """A value for a one-line message (repr, shortened)."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read(cfg, split: str, issues: Issues) -> tuple[list[ImageRecord], list[str] | None, str]:
    ann_path, img_root = split_paths(cfg, split)
    data = load_json(ann_path)
    cats = {}
    for c in data["categories"]:
        cid = _int_id(c.get("id")) if isinstance(c, dict) else None
        if cid is None or not isinstance(c.get("name"), str):
            raise DataError(f"{ann_path}: category {_show(c)}: expected 'id' (int) and 'name' (text)")
        cats[cid] = c["name"]
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise DataError(f"{ann_path}: 'annotations' must be a list, got {type(anns).__name__}")
    images = []
    for im in data["images"]:
        iid = _int_id(im.get("id")) if isinstance(im, dict) else None
        fname = im.get("file_name") if isinstance(im, dict) else None
        if iid is None or not isinstance(fname, str) or not fname.strip() or not fname.isprintable():
            raise DataError(f"{ann_path}: image {_show(im)}: expected 'id' (int) and 'file_name' (a path)")
        images.append((iid, fname, im))
    stems = Counter(Path(fname).stem for _, fname, _ in images)
    by_id: dict[int, ImageRecord] = {}
    order: list[int] = []
    for iid, fname, im in images:
        where = f"{ann_path}: image id {iid}"
        size = probe_image(img_root / fname, where, issues)
        if size is None:
            continue
        if "height" in im and "width" in im:
            hw = (_int_id(im["height"]), _int_id(im["width"]))
            if hw != size:
                issues.bad("bad images", f"{where}: width x height {_show(im['width'])}x{_show(im['height'])} in the "
                           f"JSON, {size[1]}x{size[0]} in {img_root / fname}")
                continue
        stem = Path(fname).stem
        by_id[iid] = ImageRecord(stem if stems[stem] == 1 else str(iid), img_root / fname, size,
                                 np.zeros((0, 4)), [], np.zeros(0, bool), [])
        order.append(iid)
    boxes: dict[int, list] = {i: [] for i in by_id}
    known_images = {iid for iid, _, _ in images}
    for k, a in enumerate(anns):
        if not isinstance(a, dict):
            issues.bad("bad annotations", f"{ann_path}: annotations[{k}]: expected an object, got {_show(a)}")
            continue
        aid = a.get("id", "?")
        where = f"{ann_path}: annotation id {aid if isinstance(aid, (int, str)) else _show(aid)}"
        iid, cid = _int_id(a.get("image_id")), _int_id(a.get("category_id"))
        if iid not in known_images:
            issues.bad("annotations without image", f"{where}: image_id {_show(a.get('image_id'))} is not in 'images'")
            continue
        if iid not in by_id:  # its image was skipped
            continue
        if cid not in cats:
            issues.bad("unknown category ids", f"{where}: category_id {_show(a.get('category_id'))} is not in "
                       f"'categories' (ids {sorted(cats)})")
            continue
        bb = a.get("bbox")
        if not (isinstance(bb, list) and len(bb) == 4 and all(_is_number(v) for v in bb)):
            issues.bad("bad boxes", f"{where}: expected 'bbox': [x, y, w, h] (4 numbers), got {_show(bb)}")
            continue
        x, y, w, h = (float(v) for v in bb)
        if not check_box((x, y, x + w, y + h), by_id[iid].size, where, issues):
            continue
        boxes[iid].append(((x, y, x + w, y + h), cats[cid], bool(a.get("iscrowd", 0) or a.get("ignore", 0)), where))
    out = []
    for iid in order:
        rec, bs = by_id[iid], boxes[iid]
        rec.boxes = np.asarray([b[0] for b in bs], np.float64).reshape(-1, 4)
        rec.names = [b[1] for b in bs]
        rec.crowd = np.asarray([b[2] for b in bs], bool)
        rec.refs = [b[3] for b in bs]
        out.append(rec)
    return out, [cats[k] for k in sorted(cats)], str(ann_path)


def to_coco_dict(recs: list[ImageRecord], categories: list[str], file_names: list[str] | None = None) -> dict:
    """COCO detection dict of ``recs`` (image ids 1..N in order, category ids 1..C in ``categories`` order)."""
    cat_id = {c: k + 1 for k, c in enumerate(categories)}
    images, anns = [], []
    for n, rec in enumerate(recs, 1):
        images.append({"id": n, "file_name": file_names[n - 1] if file_names else rec.path.name,
                       "height": int(rec.size[0]), "width": int(rec.size[1])})
        for b, name, crowd in zip(rec.boxes, rec.names, rec.crowd):
            x1, y1, x2, y2 = (float(v) for v in b)
            anns.append({"id": len(anns) + 1, "image_id": n, "category_id": cat_id[name],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": int(bool(crowd))})
    return {"images": images, "annotations": anns,
            "categories": [{"id": k, "name": c, "supercategory": ""} for c, k in cat_id.items()]}


def write(out: Path, splits: dict[str, list[ImageRecord]], categories: list[str], issues: Issues) -> dict:
    from ..._io import atomic_write_json
    from ._io_util import copy_image, safe_ids

    counts = {"images": 0, "boxes": 0}
    every: tuple[list[ImageRecord], list[str]] = ([], [])
    for split, recs in splits.items():
        names = [f"{split}/{i}{r.path.suffix.lower()}" for i, r in zip(safe_ids(recs), recs)]
        for rec, fn in zip(recs, names):
            copy_image(rec.path, out / "images" / fn)
        atomic_write_json(out / "annotations" / f"{split}.json", to_coco_dict(recs, categories, names))
        counts["images"] += len(recs)
        counts["boxes"] += sum(len(r) for r in recs)
        every[0].extend(recs)
        every[1].extend(names)
    # every split's images in one file, usable as a split of its own (data.coco.train: annotations/all.json)
    atomic_write_json(out / "annotations" / "all.json", to_coco_dict(every[0], categories, every[1]))
    return counts


def category_names(cfg, split: str, wanted: list[str] | None = None) -> tuple[list[str], str] | None:
    """(the split file's category names, the file), reading no image; None when the file is absent."""
    ann_path, _ = split_paths(cfg, split)
    if not ann_path.is_file():
        return None
    cats = load_json(ann_path)["categories"]
    return [str(c["name"]) for c in cats if isinstance(c, dict) and "name" in c], str(ann_path)
