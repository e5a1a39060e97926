"""Ultralytics YOLO: a dataset YAML (``path``, ``train``/``val``/``test``, ``names``) and one
``labels/.../<stem>.txt`` per image (``class cx cy w h``, normalised to [0, 1]).

A split entry is an image folder, a ``.txt`` list of image paths, or a list of those (as
Ultralytics reads them). An image's label file is its path with the last ``/images/`` replaced by
``/labels/`` and the suffix by ``.txt``; an image without one has no objects. YOLO has no ignore
regions: the writer drops crowd/DontCare boxes and counts them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from ..._yaml import DuplicateKeyError, format_key_path, safe_load_unique
from ...errors import DataError
from ._common import ImageRecord, Issues, check_box, probe_image

__all__ = ["read", "write", "available_splits", "load_dataset_yaml", "category_names", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def _yaml_path(cfg) -> Path:
    if cfg.yolo:
        p = Path(cfg.yolo).expanduser()
        if not p.is_absolute() and cfg.root:
            p = Path(cfg.root).expanduser() / p
        return p
    return Path(cfg.root).expanduser() / "data.yaml"


def load_dataset_yaml(path: Path) -> tuple[dict, Path, list[str]]:
    """(the YAML, the dataset root, class names in id order)."""
    try:
        data = safe_load_unique(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: YOLO dataset YAML not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the YOLO dataset YAML ({e.__class__.__name__})") from None
    except DuplicateKeyError as e:
        raise DataError(f"{path}:{e.line}: {format_key_path(e.path)}: duplicate key (first at line {e.first_line})") from None
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or "names" not in data:
        raise DataError(f"{path}: expected a YOLO dataset YAML with 'names' and 'train'/'val' entries")
    names = data["names"]
    if isinstance(names, dict):
        keyed = {}
        for k, v in names.items():
            ik = (k if isinstance(k, int) and not isinstance(k, bool)
                  else int(k) if isinstance(k, str) and re.fullmatch(r"\s*[0-9]+\s*", k) else None)
            if ik is None or ik in keyed:
                raise DataError(f"{path}: 'names' keys must be class ids 0..N-1, got {k!r}")
            keyed[ik] = v
        keys = sorted(keyed)
        if keys != list(range(len(keys))):
            raise DataError(f"{path}: 'names' keys must be class ids 0..N-1, got {keys}")
        names = [str(keyed[k]) for k in keys]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    else:
        raise DataError(f"{path}: 'names' must be a list or an {{id: name}} mapping")
    if data.get("path") is not None and not isinstance(data["path"], str):
        raise DataError(f"{path}: 'path' must be the dataset folder, got {data['path']!r}")
    root = Path(data.get("path") or ".")
    root = root if root.is_absolute() else Path(path).parent / root
    return data, root, names


def available_splits(cfg) -> list[str]:
    data, _, _ = load_dataset_yaml(_yaml_path(cfg))
    return [s for s in ("train", "val", "test") if data.get(s)]


def _images(entry, root: Path, where: str) -> list[tuple[Path, Path]]:
    """(image path, the folder its id is relative to) for a split entry."""
    out: list[tuple[Path, Path]] = []
    for e in (entry if isinstance(entry, list) else [entry]):
        p = Path(str(e))
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            out += [(f, p) for f in sorted(p.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        elif p.suffix == ".txt" and p.is_file():
            try:
                listed = p.read_text().splitlines()
            except (UnicodeDecodeError, OSError) as err:
                raise DataError(f"{where}: image list {p}: cannot read it ({type(err).__name__}: expected UTF-8 "
                                "text, one image path per line)") from None
            for ln in listed:
                if ln.strip():
                    q = Path(ln.strip())
                    q = q if q.is_absolute() else p.parent / q  # Ultralytics: relative to the list file
                    out.append((q, q.parent))
        else:
            shown = str(e) if str(e).isprintable() else repr(str(e))  # one line, whatever the YAML held
            raise DataError(f"{where}: split entry '{shown}': no such image folder or .txt list"
                            + (f" ({p})" if str(p).isprintable() else ""))
    return out


def label_path(image: Path) -> Path:
    s = image.as_posix()
    k = s.rfind("/images/")
    if k < 0:
        return image.with_suffix(".txt")
    return Path(s[:k] + "/labels/" + s[k + len("/images/"):]).with_suffix(".txt")


def read(cfg, split: str, issues: Issues) -> tuple[list[ImageRecord], list[str] | None, str]:
    ypath = _yaml_path(cfg)
    data, root, names = load_dataset_yaml(ypath)
    if not data.get(split):
        raise DataError(f"{ypath}: no '{split}' entry (the YOLO dataset YAML names train/val/test)")
    images = _images(data[split], root, f"{ypath}: {split}")
    seen_labels = set()
    out = []
    for img, base in images:
        lab = label_path(img)
        seen_labels.add(lab)
        size = probe_image(img, f"{ypath}: {split}", issues)
        if size is None:
            continue
        h, w = size
        boxes, cls_names, refs = [], [], []
        try:
            lines = lab.read_text().splitlines() if lab.is_file() else []
        except (UnicodeDecodeError, OSError) as e:
            issues.bad("bad label files", f"{lab}: cannot read the label file ({type(e).__name__}: expected UTF-8 "
                       "text lines 'class cx cy w h')")
            continue
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{lab}:{n}"
            tok = line.split()
            if len(tok) != 5:
                issues.bad("bad lines", f"{where}: expected 5 fields 'class cx cy w h', got {len(tok)}"
                           + (" (segments are not read)" if len(tok) > 5 else ""))
                continue
            try:
                c = int(tok[0])
                cx, cy, bw, bh = (float(t) for t in tok[1:])
            except ValueError:
                issues.bad("bad lines", f"{where}: expected an integer class id and 4 numbers, got '{line.strip()}'")
                continue
            if not 0 <= c < len(names):
                issues.bad("unknown category ids", f"{where}: class id {c} is not in 'names' of {ypath} "
                           f"(0..{len(names) - 1})")
                continue
            box = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
            if not check_box(box, size, where, issues):
                continue
            boxes.append(box)
            cls_names.append(names[c])
            refs.append(where)
        rid = img.relative_to(base).with_suffix("").as_posix() if img.is_relative_to(base) else img.stem
        out.append(ImageRecord(rid, img, size, np.asarray(boxes, np.float64).reshape(-1, 4), cls_names,
                               np.zeros(len(boxes), bool), refs))
    for d in {label_path(i).parent for i, _ in images}:
        for lab in sorted(d.glob("*.txt")) if d.is_dir() else []:
            if lab not in seen_labels:
                issues.bad("labels without image", f"{lab}: label file without an image (no image named "
                           f"'{lab.stem}.*' in the {split} split)")
    return out, names, str(ypath)


def write(out: Path, splits: dict[str, list[ImageRecord]], categories: list[str], issues: Issues) -> dict:
    from ..._io import atomic_write_text
    from ._io_util import copy_image, safe_ids

    names = list(categories)
    cid = {c: k for k, c in enumerate(names)}
    counts = {"images": 0, "boxes": 0, "dropped_ignore_regions": 0}
    every: list[str] = []
    for split, recs in splits.items():
        for i, rec in zip(safe_ids(recs), recs):
            copy_image(rec.path, out / "images" / split / f"{i}{rec.path.suffix.lower()}")
            every.append(f"./images/{split}/{i}{rec.path.suffix.lower()}")
            h, w = rec.size
            lines = []
            for b, name, crowd in zip(rec.boxes, rec.names, rec.crowd):
                if crowd:
                    counts["dropped_ignore_regions"] += 1
                    continue
                x1, y1, x2, y2 = (float(v) for v in b)
                vals = ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
                lines.append(f"{cid[name]} " + " ".join(f"{v:.8f}" for v in vals))
                counts["boxes"] += 1
            atomic_write_text(out / "labels" / split / f"{i}.txt", "".join(x + "\n" for x in lines))
        counts["images"] += len(recs)
    body = {"path": ".", **{s: f"images/{s}" for s in splits}, "names": dict(enumerate(names))}
    atomic_write_text(out / "data.yaml", "# YOLO dataset (Ultralytics layout), written by compressdet data convert\n"
                      + yaml.safe_dump(body, sort_keys=False))
    # every split's images, an Ultralytics image list (paths relative to this file) a YAML entry can name
    atomic_write_text(out / "all.txt", "".join(f"{p}\n" for p in every))
    return counts


def category_names(cfg, split: str, wanted: list[str] | None = None) -> tuple[list[str], str] | None:
    """(the dataset YAML's ``names``, the YAML), reading no image; None when the YAML is absent."""
    ypath = _yaml_path(cfg)
    if not ypath.is_file():
        return None
    return load_dataset_yaml(ypath)[2], str(ypath)
