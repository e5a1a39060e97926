"""COCO-style box AP (AP@[.5:.95], AP50, AP75, AP small/medium/large, AR100) with faster-coco-eval.

A functional core: :func:`evaluate_coco_json` takes a COCO ground-truth dict and a COCO result
list (what ``compressdet eval --format coco`` reads from files); :func:`evaluate_coco` takes
compressdet's per-image arrays (``data.records.load_box_ground_truth`` and PostProcessor output in
original pixels), builds both in memory and calls it. Numbers equal pycocotools' to 1e-6 (tested).

Areas: a box-only annotation's area is ``w * h`` (the COCO default when there is no mask), and
small/medium/large split it at 32^2 and 96^2 px^2, as COCO does. Crowd (``iscrowd: 1``)
annotations are ignore regions: a detection matching one counts neither way.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np

__all__ = ["COCO_KEYS", "AP_UNIT", "evaluate_coco", "evaluate_coco_json", "to_coco_dicts", "ImageMatcher",
           "category_ids_by_name"]

#: every AP/AR compressdet writes is in percent (pycocotools' stats are 0-1): results say so in ``ap_unit``
AP_UNIT = "percent"

#: result keys, in COCOeval.stats order (all in % (``AP_UNIT``); None where COCO gives -1: no ground truth in that range)
COCO_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100", "ar_small",
             "ar_medium", "ar_large")


def _stats_dict(stats: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"metric": "coco", "ap_unit": AP_UNIT}
    for k, v in zip(COCO_KEYS, np.asarray(stats, np.float64)[: len(COCO_KEYS)]):
        out[k] = None if v < 0 else float(v) * 100.0
    out["primary"] = out["ap"] if out["ap"] is not None else 0.0
    return out


def evaluate_coco_json(gt: dict[str, Any], dets: list[dict[str, Any]], *, verbose: bool = False) -> dict[str, Any]:
    """COCO box AP of ``dets`` (``[{image_id, category_id, bbox: [x, y, w, h], score}]``) against ``gt``.

    Args:
        gt: a COCO detection dict (``images``, ``annotations``, ``categories``); not modified.
        dets: result list; image ids must be in ``gt``.
        verbose: print COCO's summary table.

    Returns:
        ``{"metric": "coco", "ap_unit": "percent", "ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10",
        "ar100", "ar_small", "ar_medium", "ar_large", "primary" (= ap), "images", "detections"}`` in %.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    gt = copy.deepcopy(gt)
    for a in gt.get("annotations", []):
        if "area" not in a:
            a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
        a.setdefault("iscrowd", 0)
    n_img = len(gt.get("images", []))
    if not dets or not gt.get("annotations"):
        res = _stats_dict([0.0 if dets or gt.get("annotations") else -1.0] * len(COCO_KEYS))
        res.update(images=n_img, detections=len(dets))
        return res
    coco_gt = COCO(gt)
    coco_dt = coco_gt.loadRes(copy.deepcopy(list(dets)))
    ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print(buf.getvalue(), end="")
    res = _stats_dict(ev.stats)
    res.update(images=n_img, detections=len(dets))
    return res


def to_coco_dicts(gt: dict[str, dict[str, np.ndarray]], sizes: dict[str, tuple[int, int]],
                  dets: dict[str, dict[str, Any]], classes: list[str] | tuple[str, ...]
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(COCO ground-truth dict, COCO result list) of the images in ``dets``.

    Args:
        gt: ``{id: {"boxes" [N, 4] xyxy px, "labels" int [N] (-1: ignore region of every class), "crowd" bool [N]}}``.
        sizes: ``{id: (H, W)}``.
        dets: ``{id: {"boxes" [M, 4] xyxy px, "scores" [M], "labels" int [M]}}`` (tensors or arrays).
        classes: model class names; category id = class index + 1.
    """
    images, anns, results = [], [], []
    for n, image_id in enumerate(dets, 1):
        h, w = sizes[image_id]
        images.append({"id": n, "file_name": str(image_id), "height": int(h), "width": int(w)})
        g = gt.get(image_id, {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int), "crowd": np.zeros(0, bool)})
        for b, lab, crowd in zip(np.asarray(g["boxes"], np.float64).reshape(-1, 4), g["labels"], g["crowd"]):
            x1, y1, x2, y2 = (float(v) for v in b)
            for c in (range(len(classes)) if lab < 0 else (int(lab),)):
                anns.append({"id": len(anns) + 1, "image_id": n, "category_id": c + 1,
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                             "iscrowd": int(bool(crowd) or lab < 0)})
        d = dets[image_id]
        boxes = np.asarray(d["boxes"], np.float64).reshape(-1, 4)
        for b, s, lab in zip(boxes, np.asarray(d["scores"], np.float64), np.asarray(d["labels"])):
            x1, y1, x2, y2 = (float(v) for v in b)
            results.append({"image_id": n, "category_id": int(lab) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(s)})
    cats = [{"id": k + 1, "name": c} for k, c in enumerate(classes)]
    return {"images": images, "annotations": anns, "categories": cats}, results


def evaluate_coco(gt: dict[str, dict[str, np.ndarray]], sizes: dict[str, tuple[int, int]],
                  dets: dict[str, dict[str, Any]], classes: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """COCO box AP of ``dets`` on the images it holds (see :func:`to_coco_dicts` for the shapes)."""
    g, d = to_coco_dicts(gt, sizes, dets, classes)
    return evaluate_coco_json(g, d)


def _parts(name: str) -> tuple[str, ...]:
    text = str(name).replace("\\", "/")
    return tuple(p for p in text.split("/") if p not in ("", "."))


class ImageMatcher:
    """Finds a ground-truth image by file name, so detections written for image files line up with a COCO
    file whose ids were numbered elsewhere (``data convert`` numbers per split).

    ``match(path)`` tries, in order: the same path; the ground truth's ``file_name`` as the path's tail
    (``val/000001.png`` in ``data/images/val/000001.png``); the same base name. A name that fits two
    images at the first step that finds any is an error, never a guess.

    Args:
        gt: a COCO detection dict (``images`` with ``id`` and ``file_name``).
        where: the file the dict came from, for messages.
    """

    def __init__(self, gt: dict[str, Any], where: str):
        self.where = where
        self.by_parts: dict[tuple[str, ...], list[Any]] = {}
        self.by_base: dict[str, list[Any]] = {}
        for im in gt.get("images", []):
            parts = _parts(im.get("file_name", ""))
            if not parts:
                continue
            self.by_parts.setdefault(parts, []).append(im["id"])
            self.by_base.setdefault(parts[-1], []).append(im["id"])

    def match(self, path: str) -> Any | None:
        """The ground-truth image id of ``path``; None when no image fits.

        Raises:
            UserError: ``path`` fits two or more ground-truth images equally well.
        """
        from ..errors import UserError

        parts = _parts(path)
        if not parts:
            return None
        hits = self.by_parts.get(parts)
        if not hits:
            for n in range(len(parts) - 1, 0, -1):  # longest tail first
                hits = self.by_parts.get(parts[-n:])
                if hits:
                    break
        if not hits:
            hits = self.by_base.get(parts[-1])
        if not hits:
            return None
        if len(hits) > 1:
            raise UserError(f"{self.where}: image '{path}' fits {len(hits)} images (ids {', '.join(map(str, hits[:4]))}) "
                            "by file name; give file names that tell them apart")
        return hits[0]


def category_ids_by_name(gt: dict[str, Any], where: str) -> dict[str, Any]:
    """``{lower-case category name: id}`` of a COCO dict (names compared case-insensitively).

    Raises:
        UserError: two categories whose names differ only in case.
    """
    from ..errors import UserError

    out: dict[str, Any] = {}
    for c in gt.get("categories", []):
        name = str(c.get("name", "")).strip().lower()
        if not name:
            continue
        if name in out and out[name] != c.get("id"):
            raise UserError(f"{where}: categories {out[name]} and {c.get('id')} are both named '{name}' "
                            "(names are compared case-insensitively)")
        out[name] = c.get("id")
    return out
