"""KITTI ``label_2`` records: parsing, writing, splits and difficulty levels.

One line per object, 15 space-separated fields (16 for detections, the last being the score):
type, truncated, occluded, alpha, bbox (x1 y1 x2 y2), dimensions (h w l), location (x y z),
rotation_y[, score]. A malformed line is an error naming ``file:line`` and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

__all__ = ["KittiObject", "KITTI_TYPES", "TRAIN_CLASS_OF", "read_label_file", "parse_label_lines",
           "write_label_file", "format_label_line", "read_split", "difficulty", "DIFFICULTY_LEVELS",
           "NEIGHBOUR_OF", "train_label", "read_image", "image_size"]

KITTI_TYPES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc", "DontCare")
#: KITTI type -> training class (the seed trains on these three and drops the rest)
TRAIN_CLASS_OF = {"Car": "car", "Pedestrian": "pedestrian", "Cyclist": "cyclist"}

#: METHOD.md section 5: (min box height px, max occlusion, max truncation) per level
DIFFICULTY_LEVELS = {"easy": (40, 0, 0.15), "moderate": (25, 1, 0.30), "hard": (25, 2, 0.50)}

_FIELDS = ("type", "truncated", "occluded", "alpha", "x1", "y1", "x2", "y2", "h", "w", "l", "x", "y", "z",
           "rotation_y", "score")


@dataclass
class KittiObject:
    type: str
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    truncated: float = 0.0
    occluded: int = 0
    alpha: float = -10.0
    dimensions: tuple[float, float, float] = (-1.0, -1.0, -1.0)  # h, w, l
    location: tuple[float, float, float] = (-1000.0, -1000.0, -1000.0)
    rotation_y: float = -10.0
    score: float | None = None  # detections only
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def height(self) -> float:
        return self.bbox[3] - self.bbox[1]


def _num(tok: str, name: str, where: str, integer: bool = False) -> float:
    try:
        v = float(tok)
    except ValueError:
        raise DataError(f"{where}: field '{name}': expected a number, got '{tok}'") from None
    if not math.isfinite(v):
        raise DataError(f"{where}: field '{name}': expected a finite number, got '{tok}'")
    if integer:
        if v != int(v):
            raise DataError(f"{where}: field '{name}': expected an integer, got '{tok}'")
        return int(v)
    return v


def parse_label_lines(lines: list[str], source: str = "<labels>") -> list[KittiObject]:
    objs: list[KittiObject] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{i}"
        tok = line.split()
        if len(tok) not in (15, 16):
            raise DataError(f"{where}: expected 15 fields (16 with a score), got {len(tok)}")
        if tok[0] not in KITTI_TYPES:
            raise DataError(f"{where}: field 'type': unknown KITTI type '{tok[0]}' (one of {', '.join(KITTI_TYPES)})")
        v = [_num(t, _FIELDS[j], where, integer=(j == 2)) for j, t in enumerate(tok[1:], 1)]
        x1, y1, x2, y2 = v[3:7]
        if x2 < x1 or y2 < y1:
            raise DataError(f"{where}: field 'bbox': x2 < x1 or y2 < y1 in ({x1}, {y1}, {x2}, {y2})")
        objs.append(KittiObject(type=tok[0], truncated=v[0], occluded=int(v[1]), alpha=v[2], bbox=(x1, y1, x2, y2),
                                dimensions=tuple(v[7:10]), location=tuple(v[10:13]), rotation_y=v[13],
                                score=v[14] if len(v) == 15 else None))
    return objs


def read_label_file(path: str | Path) -> list[KittiObject]:
    """Parse one label_2 (or detection result) file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise DataError(f"{p}: label file not found") from None
    except UnicodeDecodeError:
        raise DataError(f"{p}: not a text file") from None
    return parse_label_lines(text.splitlines(), str(p))


def format_label_line(o: KittiObject) -> str:
    parts = [o.type, f"{o.truncated:.2f}", str(int(o.occluded)), f"{o.alpha:.2f}",
             *(f"{x:.2f}" for x in o.bbox), *(f"{x:.2f}" for x in o.dimensions),
             *(f"{x:.2f}" for x in o.location), f"{o.rotation_y:.2f}"]
    if o.score is not None:
        parts.append(f"{o.score:.6f}")
    return " ".join(parts)


def write_label_file(path: str | Path, objs: list[KittiObject]) -> None:
    from .._io import atomic_write_text

    atomic_write_text(path, "".join(format_label_line(o) + "\n" for o in objs))


def read_split(path: str | Path) -> list[str]:
    """Image ids, one per line (the last line may lack a newline, as in the MSCNN split files)."""
    p = Path(path)
    try:
        ids = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        raise DataError(f"{p}: split file not found") from None
    except (UnicodeDecodeError, OSError) as e:
        raise DataError(f"{p}: cannot read the split file ({type(e).__name__}: expected UTF-8 text, one image id "
                        "per line)") from None
    for i, x in enumerate(ids, 1):
        if not x.isalnum():
            raise DataError(f"{p}:{i}: expected an image id like 000123, got '{x}'")
    return ids


def difficulty(o: KittiObject) -> int | None:
    """Hardest-to-easiest level index the object qualifies for: 0 easy, 1 moderate, 2 hard, None.

    Uses the devkit's comparisons: height > min (a box exactly at the minimum is ignored), occlusion <= max,
    truncation <= max.
    """
    for idx, (hmin, occ, trunc) in enumerate(DIFFICULTY_LEVELS.values()):
        if o.height > hmin and o.occluded <= occ and o.truncated <= trunc:
            return idx
    return None


# --------------------------------------------------------------------------------------------
# Class mapping, neighbours and images (added for the data pipeline)
# --------------------------------------------------------------------------------------------
#: evaluation: a detection on a neighbour is neither TP nor FP, a missed neighbour is no FN (METHOD.md §5)
NEIGHBOUR_OF = {"car": "Van", "pedestrian": "Person_sitting"}


def train_label(o: KittiObject, classes: list[str] | tuple[str, ...]) -> int | None:
    """Index of ``o``'s training class in ``classes``, or None when the seed drops it in training.

    Van, Truck, Person_sitting, Tram, Misc and DontCare have no training class (the seed dropped
    them); they stay in :func:`read_label_file`'s output for the evaluator.
    """
    cls = TRAIN_CLASS_OF.get(o.type)
    if cls is None or cls not in classes:
        return None
    return list(classes).index(cls)


def read_image(path: str | Path):
    """Fully decode an image into ``uint8 Tensor[3, H, W]`` (RGB): :func:`compressdet.data.images.read_image`.

    Raises:
        DataError: the file is missing, truncated or cannot be decoded (one line naming it).
    """
    from .images import read_image as _read

    return _read(path)


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of a PNG/JPEG from its header only (cheap: the evaluator needs sizes of thousands)."""
    from PIL import UnidentifiedImageError

    from .images import pil_open

    p = Path(path)
    try:
        with pil_open(p) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DataError(f"{p}: image not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{p}: cannot read image header ({e})") from None
    return h, w
