"""Values of a COCO ground truth and result list that the evaluator needs as numbers, checked at the door.

Python's JSON reader accepts ``NaN`` and ``Infinity``; faster-coco-eval then fails without naming the
file or the detection (issue #44). Every id must be an int or a string, every box four finite numbers,
every score a finite number; a DataError names the file and the detection index / annotation id.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import DataError

__all__ = ["check_coco_values"]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


def _id_ok(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, str)


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _box(v: Any, where: str, *, sizes_positive: bool = False) -> None:
    if not (isinstance(v, list) and len(v) == 4 and all(_is_number(x) for x in v)):
        raise DataError(f"{where}: bbox must be [x, y, w, h] (4 numbers), got {_show(v)}")
    if not all(math.isfinite(x) for x in v):
        raise DataError(f"{where}: bbox {_show(v)} is not finite (NaN or Infinity)")
    if sizes_positive and (v[2] < 0 or v[3] < 0):
        raise DataError(f"{where}: bbox {_show(v)} has a negative width or height")


def _objects_with_ids(items: Any, where: str, key: str) -> None:
    if items is None:
        return
    if not isinstance(items, list):
        raise DataError(f"{where}: '{key}' must be a list, got {type(items).__name__}")
    for k, item in enumerate(items):
        if not isinstance(item, dict) or not _id_ok(item.get("id")):
            raise DataError(f"{where}: {key}[{k}]: expected an object with an int 'id', got {_show(item)}")


def check_coco_values(gt: dict[str, Any], dets: list[Any], gt_path: Any, det_path: Any,
                      own: dict[str, Any] | None = None) -> None:
    """Raise a one-line DataError for the first value of ``gt`` / ``dets`` the evaluator cannot take.

    Checks: ground-truth images and categories are objects with int/str ``id``; annotations are
    objects whose ``bbox`` is 4 finite numbers with w, h >= 0, ``area`` (when given) finite and
    ``iscrowd`` 0/1; every detection's ``image_id`` / ``category_id`` is an int or string, ``bbox``
    4 finite numbers and ``score`` a finite number. ``own``: the result file when it is an object; its
    own ``images`` / ``categories`` (predict's file names and class names) need int/str ids too.
    """
    for key in ("images", "categories"):
        _objects_with_ids(gt.get(key), str(gt_path), key)
        if own is not None:
            _objects_with_ids(own.get(key), str(det_path), key)
    anns = gt.get("annotations", [])
    if not isinstance(anns, list):
        raise DataError(f"{gt_path}: 'annotations' must be a list, got {type(anns).__name__}")
    seen_ids: dict[Any, int] = {}
    for k, a in enumerate(anns):
        if not isinstance(a, dict):
            raise DataError(f"{gt_path}: annotations[{k}]: expected an object, got {_show(a)}")
        where = f"{gt_path}: annotation id {_show(a.get('id', f'#{k}'))}"
        if not _id_ok(a.get("id")):  # COCO indexes annotations by id: none, or a list, is no index
            raise DataError(f"{gt_path}: annotations[{k}]: 'id' must be an int, got {_show(a.get('id'))}")
        if a["id"] in seen_ids:
            raise DataError(f"{where}: duplicate annotation id (annotations[{seen_ids[a['id']]}] has it too)")
        seen_ids[a["id"]] = k
        for f in ("image_id", "category_id"):
            if not _id_ok(a.get(f)):
                raise DataError(f"{where}: '{f}' must be an int, got {_show(a.get(f))}")
        _box(a.get("bbox"), where, sizes_positive=True)
        if "area" in a and not _finite(a["area"]):
            raise DataError(f"{where}: area must be a finite number, got {_show(a['area'])}")
        if a.get("iscrowd", 0) not in (0, 1):
            raise DataError(f"{where}: iscrowd must be 0 or 1, got {_show(a.get('iscrowd'))}")
    for n, d in enumerate(dets):
        where = f"{det_path}: detection {n}"
        if not isinstance(d, dict):
            raise DataError(f"{where}: expected an object with image_id, category_id, bbox [x, y, w, h], score")
        for f in ("image_id", "category_id"):
            if not _id_ok(d.get(f)):
                raise DataError(f"{where}: '{f}' must be an int, got {_show(d.get(f))}")
        _box(d.get("bbox"), where)
        if not _finite(d.get("score")):
            raise DataError(f"{where}: score must be a finite number, got {_show(d.get('score'))}")
