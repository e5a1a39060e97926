"""The record every format reader returns, bad-data handling and the category -> class mapping."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError, one_line

__all__ = ["ImageRecord", "Issues", "ClassMapper", "class_problems", "BOX_TOLERANCE", "check_box", "probe_image"]

log = logging.getLogger("compressdet.data")

#: a box may reach this many pixels past the image border (float rounding of converted sets)
BOX_TOLERANCE = 1.0


@dataclass
class ImageRecord:
    """One image and its annotations, in original pixels, whatever the format.

    Attributes:
        image_id: unique id within the split (KITTI/VOC: the file stem; COCO: the image id; YOLO:
            the image path relative to its split folder, without suffix).
        path: the image file.
        size: (H, W) of the image.
        boxes: float64 ``[N, 4]`` xyxy pixels.
        names: N source category names (KITTI type, COCO category name, YOLO/VOC name).
        crowd: N bools: an ignore region (COCO ``iscrowd``, KITTI DontCare, VOC ``difficult``);
            never a training target, ignored by the evaluator.
        refs: N strings naming where each box came from (``file:line``, ``file: annotation id 7``).
        kitti: the full KITTI objects when read from KITTI (the KITTI writer keeps their 3-D fields).
    """

    image_id: str
    path: Path
    size: tuple[int, int]
    boxes: np.ndarray
    names: list[str]
    crowd: np.ndarray
    refs: list[str] = field(default_factory=list)
    kitti: list | None = None

    def __len__(self) -> int:
        return len(self.names)


class Issues:
    """Bad data: a :class:`DataError` at once, or (``skip_bad``) a counted, logged skip."""

    def __init__(self, skip_bad: bool = False, logger: Any = None, shown: int = 20):
        self.skip_bad, self.counts, self.shown = bool(skip_bad), Counter(), shown
        self.log = logger or log.warning
        self.messages: list[str] = []

    def bad(self, kind: str, message: str) -> None:
        """Report one bad item of ``kind`` (message: one line naming file and line/annotation; control
        characters of names read from the data are escaped, so it stays one line)."""
        message = one_line(message)
        if not self.skip_bad:
            raise DataError(message + " (set data.skip_bad: true or pass --skip-bad to skip bad items)")
        self.counts[kind] += 1
        self.messages.append(message)
        if len(self.messages) <= self.shown:
            self.log(f"skipped: {message}")

    def summary(self) -> str:
        return ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items())) or "nothing"


def check_box(box: Any, size: tuple[int, int], where: str, issues: Issues) -> bool:
    """False (after reporting) when ``box`` (xyxy) has non-positive size or leaves the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    h, w = size
    if not np.isfinite([x1, y1, x2, y2]).all():
        issues.bad("bad boxes", f"{where}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) is not finite")
        return False
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        issues.bad("bad boxes", f"{where}: box xyxy ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has non-positive size "
                   "(expected x2 > x1 and y2 > y1)")
        return False
    t = BOX_TOLERANCE
    if x1 < -t or y1 < -t or x2 > w + t or y2 > h + t:
        issues.bad("bad boxes", f"{where}: box xyxy ({x1:g}, {y1:g}, {x2:g}, {y2:g}) is outside the {w}x{h} image")
        return False
    return True


def probe_image(path: Path, where: str, issues: Issues) -> tuple[int, int] | None:
    """(H, W) once the whole image decoded (:func:`~compressdet.data.images.admit_image`), or None (after
    reporting) when it is missing, truncated or unreadable."""
    from ..images import admit_image

    try:
        return admit_image(path, where)
    except DataError as e:
        issues.bad("missing images" if str(e).endswith(" not found") else "unreadable images", str(e))
        return None


def _did_you_mean(word: str, choices: list[str]) -> str:
    import difflib

    low = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(low), n=1, cutoff=0.6)
    return f" (did you mean '{low[close[0]]}'?)" if close else ""


def class_problems(classes: list[str], class_map: dict[str, str | None] | None, categories: list[str],
                   source: str) -> list[str]:
    """What does not match between the recipe's ``data.classes`` / ``data.class_map`` and the
    ``categories`` of ``source`` (names compared case-insensitively), one line each naming the recipe
    field and the file; [] when all match."""
    cmap = dict(class_map or {})
    cats = {c.lower() for c in categories}
    shown = ", ".join(categories) if len(categories) <= 30 else ", ".join(categories[:30]) + ", ..."
    out = [f"data.class_map: '{k}' is not a category of {source}{_did_you_mean(k, categories)} "
           f"(categories: {shown or 'none'})" for k in cmap if k.lower() not in cats]
    lower = {c.lower(): c for c in classes}
    if cmap:
        fed = {lower.get(str(t).lower()) for k, t in cmap.items() if t is not None and k.lower() in cats}
    else:
        fed = {lower.get(c.lower()) for c in categories}
    missing = [c for c in classes if c not in fed]
    if missing:
        how = ("map a category to them with data.class_map" if not cmap
               else "no data.class_map key that is a category there targets them")
        out.append(f"data.classes: {', '.join(map(repr, missing))} match{'es' if len(missing) == 1 else ''} no "
                   f"category of {source} "
                   f"(categories: {shown or 'none'}); {how}")
    return out


class ClassMapper:
    """Source category name -> model class index (``None``: not a training class).

    Names compare case-insensitively everywhere (``car`` in a recipe matches a file's ``Car``); the
    model's classes keep the spelling of ``data.classes``. With ``class_map`` (source name -> model
    class or None) only its keys map; every key must be a category of the source (when the source
    declares its categories). Without it, a category maps to the model class of the same name
    (KITTI's ``Car`` -> ``car``).

    Raises:
        DataError: a ``class_map`` key is not a category of ``source``; a model class matches no
            declared category; a ``class_map`` target is not one of ``classes`` (one line each).
    """

    def __init__(self, classes: list[str], class_map: dict[str, str | None] | None = None,
                 categories: list[str] | None = None, source: str = "<data>"):
        self.classes = list(classes)
        self._lower = {c.lower(): i for i, c in enumerate(self.classes)}
        self._explicit: dict[str, int | None] = {}
        for k, t in (class_map or {}).items():
            if t is not None and str(t).lower() not in self._lower:
                raise DataError(f"data.class_map: '{k}' targets '{t}', not one of data.classes "
                                f"({', '.join(self.classes)})")
            self._explicit[k.lower()] = None if t is None else self._lower[str(t).lower()]
        if categories is not None:
            problems = class_problems(self.classes, class_map, categories, source)
            if problems:
                raise DataError("\n".join(map(one_line, problems)))  # one line per problem

    def __call__(self, name: str) -> int | None:
        if self._explicit:
            return self._explicit.get(name.lower())
        return self._lower.get(name.lower())
