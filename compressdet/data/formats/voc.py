"""Pascal VOC: ``Annotations/<id>.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.

Coordinates: VOC's ``xmin ymin xmax ymax`` are 1-based inclusive pixels; a box reads as
``(xmin - 1, ymin - 1, xmax, ymax)`` (the writer adds the 1 back). ``difficult: 1`` marks an
ignore region (VOC's metric ignores those boxes), and crowd/DontCare boxes are written that way.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ...errors import DataError
from ._common import ImageRecord, Issues, check_box, probe_image

__all__ = ["read", "write", "available_splits", "category_names"]


def _root(cfg) -> Path:
    return Path(cfg.root).expanduser()


def _split_file(cfg, split: str) -> Path:
    rel = getattr(cfg.voc, split, None) if cfg.voc is not None else None
    p = Path(rel or f"ImageSets/Main/{split}.txt")
    return p if p.is_absolute() else _root(cfg) / p


def _image_dir(cfg) -> Path:
    images = cfg.voc.images if cfg.voc is not None else None
    if isinstance(images, dict):
        raise DataError("data.voc.images: one image folder for every split (a path, not a mapping)")
    p = Path(images or "JPEGImages")
    return p if p.is_absolute() else _root(cfg) / p


def available_splits(cfg) -> list[str]:
    return [s for s in ("train", "val", "test") if _split_file(cfg, s).is_file()]


def _text(node, tag: str, where: str) -> str:
    el = node.find(tag)
    if el is None or el.text is None:
        raise DataError(f"{where}: missing <{tag}>")
    return el.text.strip()


def _split_ids(sf: Path) -> list[str]:
    """The image ids ``sf`` lists (the first word of each line).

    Raises:
        DataError: the file is missing or not UTF-8 text, or a line's id is not a file stem (file:line).
    """
    try:
        lines = sf.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{sf}: split file not found") from None
    except (UnicodeDecodeError, OSError) as e:
        raise DataError(f"{sf}: cannot read the split file ({type(e).__name__}: expected UTF-8 text, one image id "
                        "per line)") from None
    ids = []
    for n, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        i = ln.split()[0]
        if not i.isprintable() or "/" in i or "\\" in i:
            raise DataError(f"{sf}:{n}: expected an image id (a file stem like 2008_000008), got {i!r}")
        ids.append(i)
    return ids


def read(cfg, split: str, issues: Issues) -> tuple[list[ImageRecord], list[str] | None, str]:
    sf = _split_file(cfg, split)
    ids = _split_ids(sf)
    ann_dir, img_dir = _root(cfg) / "Annotations", _image_dir(cfg)
    out = []
    for i in ids:
        xml = ann_dir / f"{i}.xml"
        try:
            tree = ET.parse(xml).getroot()
        except FileNotFoundError:
            issues.bad("missing annotations", f"{sf}: id '{i}': annotation {xml} not found")
            continue
        except ET.ParseError as e:
            issues.bad("bad annotation files", f"{xml}: not valid XML ({e})")
            continue
        fname = tree.findtext("filename") or f"{i}.jpg"
        img = img_dir / fname.strip()
        if not img.is_file():
            issues.bad("labels without image", f"{xml}: annotation without an image ({img} not found)")
            continue
        size = probe_image(img, str(xml), issues)
        if size is None:
            continue
        boxes, names, crowd, refs = [], [], [], []
        for k, obj in enumerate(tree.iter("object"), 1):
            where = f"{xml}: object {k}"
            try:
                name = _text(obj, "name", where)
                bb = obj.find("bndbox")
                if bb is None:
                    raise DataError(f"{where}: missing <bndbox>")
                x1, y1, x2, y2 = (float(_text(bb, t, where)) for t in ("xmin", "ymin", "xmax", "ymax"))
            except (DataError, ValueError) as e:
                issues.bad("bad objects", str(e) if isinstance(e, DataError) else f"{where}: {e}")
                continue
            box = (x1 - 1, y1 - 1, x2, y2)
            if not check_box(box, size, where, issues):
                continue
            boxes.append(box)
            names.append(name)
            crowd.append((obj.findtext("difficult") or "0").strip() == "1")
            refs.append(where)
        out.append(ImageRecord(i, img, size, np.asarray(boxes, np.float64).reshape(-1, 4), names,
                               np.asarray(crowd, bool), refs))
    return out, None, str(sf)


def write(out: Path, splits: dict[str, list[ImageRecord]], categories: list[str], issues: Issues) -> dict:
    from ..._io import atomic_write_text
    from ._io_util import copy_image, fmt_num, safe_ids

    counts = {"images": 0, "boxes": 0}
    every: dict[str, None] = {}  # ids of every split, in order, once
    for split, recs in splits.items():
        ids = safe_ids(recs)
        for i, rec in zip(ids, recs):
            fname = f"{i}{rec.path.suffix.lower()}"
            copy_image(rec.path, out / "JPEGImages" / fname)
            root = ET.Element("annotation")
            ET.SubElement(root, "folder").text = "JPEGImages"
            ET.SubElement(root, "filename").text = fname
            sz = ET.SubElement(root, "size")
            for tag, v in (("width", rec.size[1]), ("height", rec.size[0]), ("depth", 3)):
                ET.SubElement(sz, tag).text = str(v)
            for b, name, crowd in zip(rec.boxes, rec.names, rec.crowd):
                o = ET.SubElement(root, "object")
                ET.SubElement(o, "name").text = name
                ET.SubElement(o, "difficult").text = "1" if crowd else "0"
                bb = ET.SubElement(o, "bndbox")
                x1, y1, x2, y2 = (float(v) for v in b)
                for tag, v in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
                    ET.SubElement(bb, tag).text = fmt_num(v)
                counts["boxes"] += 1
            ET.indent(root)
            atomic_write_text(out / "Annotations" / f"{i}.xml", ET.tostring(root, encoding="unicode") + "\n")
        atomic_write_text(out / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{i}\n" for i in ids))
        counts["images"] += len(recs)
        every.update(dict.fromkeys(ids))
    # every split's ids: a split file of its own (data.voc.train: ImageSets/Main/all.txt)
    atomic_write_text(out / "ImageSets" / "Main" / "all.txt", "".join(f"{i}\n" for i in every))
    return counts


def category_names(cfg, split: str, wanted: list[str] | None = None) -> tuple[list[str], str] | None:
    """(object names in the split's annotation files, where they came from); None without a split file.

    The XMLs are read one at a time (no image is opened) and reading stops once every name of
    ``wanted`` (compared case-insensitively) has been seen, so a large set that matches is quick.
    """
    sf = _split_file(cfg, split)
    if not sf.is_file():
        return None
    ann_dir = _root(cfg) / "Annotations"
    want = {w.lower() for w in wanted} if wanted else None
    names: dict[str, None] = {}
    for i in _split_ids(sf):
        try:
            tree = ET.parse(ann_dir / f"{i}.xml").getroot()
        except (OSError, ET.ParseError):  # read() names these when the split is loaded
            continue
        for obj in tree.iter("object"):
            n = (obj.findtext("name") or "").strip()
            if n:
                names.setdefault(n, None)
        if want is not None and want <= {n.lower() for n in names}:
            break
    return list(names), f"{ann_dir}/*.xml of {sf}"
