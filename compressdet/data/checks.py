"""Checks before work: does the recipe's ``data`` fit the annotation files it names?

``recipe check`` and ``run`` (before a run directory exists) call :func:`check_classes`, so a class
name that no category feeds, or a ``class_map`` key the files do not have, is found in a second
rather than after the first stage has started.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError
from .formats import class_problems, get_format

__all__ = ["check_classes"]

#: formats whose files declare no category list (VOC: the names objects use): checked on all splits' names
_SEEN_NOT_DECLARED = {"voc"}


def check_classes(data_cfg: Any, notes: list[str] | None = None) -> list[str]:
    """Problems (one line each, naming the recipe field and the annotation file) between
    ``data.classes`` / ``data.class_map`` and the categories of every split present; [] when all match.

    Only annotations are read (COCO ``categories``, the YOLO YAML's ``names``, VOC object names;
    no image is opened). kitti/synth classes are KITTI's, checked by the recipe schema. A split whose
    annotation file is absent is left to the run (``notes`` gets a line for it).
    """
    spec = get_format(data_cfg.format)
    if spec.categories is None:
        return []
    wanted = list(data_cfg.class_map) or list(data_cfg.classes)
    problems: list[str] = []
    absent: list[str] = []
    found: list[tuple[list[str], str]] = []
    for split in ("train", "val", "test"):
        try:
            got = spec.categories(data_cfg, split, wanted)
        except DataError as e:  # an unreadable annotation file: the run would stop on it too
            if str(e) not in problems:
                problems.append(str(e))
            continue
        if got is None:
            absent.append(split)
        else:
            found.append(got)
    if data_cfg.format in _SEEN_NOT_DECLARED and found:  # the set's names: a class seen in train only is fine
        names = list(dict.fromkeys(n for got in found for n in got[0]))
        found = [(names, " and ".join(src for _, src in found))]
    seen: set[str] = set()
    for names, source in found:
        for p in class_problems(data_cfg.classes, data_cfg.class_map, names, source):
            key = p.split(" of ", 1)[0]  # the same problem in another split's file: named once, first file
            if key not in seen:
                seen.add(key)
                problems.append(p)
    if notes is not None and {"train", "val"} & set(absent):  # a missing test split is normal
        notes.append(f"data.classes not checked against the {'/'.join(absent)} annotations: not found "
                     f"({data_cfg.format} data at {data_cfg.yolo or data_cfg.root})")
    return problems
