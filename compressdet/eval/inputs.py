"""Result files read and lined up with their ground truth: KITTI label / result folders and COCO
annotation / result JSON, checked so that a mismatch is one line naming the file rather than a silent AP of 0
(what ``compressdet eval`` and ``compressdet viz`` score)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError

__all__ = ["load_kitti_dirs", "load_coco_pair"]


def load_kitti_dirs(gt_dir: Path, det_dir: Path | None, ids: list[str] | None) -> tuple[dict, dict | None, list[str]]:
    """Read label files and result files; every id needs both (a missing one is an error naming it)."""
    from ..data.kitti import read_label_file

    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise DataError(f"{gt_dir}: ground-truth label folder not found")
    if ids is None:
        ids = sorted(p.stem for p in gt_dir.glob("*.txt"))
        if not ids:
            raise DataError(f"{gt_dir}: no label .txt files")
    gt = {k: read_label_file(gt_dir / f"{k}.txt") for k in ids}
    dets = None
    if det_dir is not None:
        det_dir = Path(det_dir)
        if not det_dir.is_dir():
            raise DataError(f"{det_dir}: result folder not found")
        dets = {}
        for k in ids:
            p = det_dir / f"{k}.txt"
            if not p.is_file():
                raise DataError(f"{p}: result file missing (every image needs one, empty if nothing was detected)")
            try:
                dets[k] = read_label_file(p)
            except DataError:
                _refuse_other_classes(p)  # the clearer line when the file holds a model's own class names
                raise
            for i, o in enumerate(dets[k], 1):
                if o.score is None:
                    raise DataError(f"{p}: detection {i} has no score (16th field)")
    return gt, dets, ids


def _refuse_other_classes(path: Path) -> None:
    """Raise a UserError when a result file holds a type that is not KITTI's (a model's own classes, written
    by predict as given): the KITTI protocol is defined per KITTI class (IoU 0.7 for cars, 0.5 for
    pedestrians and cyclists, vans and sitting persons as ignored neighbours), so they are scored with
    COCO AP instead."""
    from ..data.kitti import KITTI_TYPES
    from ..errors import UserError

    for i, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        tok = line.split()
        if tok and tok[0] not in KITTI_TYPES:
            raise UserError(f"{path}:{i}: detection type '{tok[0]}' is not a KITTI class; the KITTI protocol scores "
                            "Car, Pedestrian, Cyclist only: score other classes with --format coco "
                            "(compressdet predict --save-txt coco)")


def load_coco_pair(gt_path: Path, det_path: Path, notes: list[str] | None = None) -> tuple[dict, list[dict]]:
    """A COCO ground-truth JSON and a COCO result JSON, checked and lined up with the ground truth.

    The result file is a list ``[{image_id, category_id, bbox, score}]`` (ids must be the ground
    truth's), or an object with ``annotations`` (that list) and, as ``compressdet predict --save-txt
    coco`` writes, its own ``images`` (``file_name``) and ``categories`` (``name``): then images are
    matched by file name (:class:`~compressdet.eval.coco_eval.ImageMatcher`) and categories by name,
    case-insensitively, and the detections rewritten to the ground truth's ids, so ids numbered
    elsewhere cannot silently score 0.

    Args:
        notes: gets one line per thing worth telling (ids rewritten, ground-truth images without an entry).

    Raises:
        DataError: malformed files; UserError: a detection category that means another name in the ground
        truth (one line naming both) or has no category there, an image not in the ground truth.
    """
    from ..data.formats.coco import load_json
    from ..errors import UserError
    from .coco_eval import ImageMatcher, category_ids_by_name

    notes = notes if notes is not None else []
    gt = load_json(gt_path)
    try:
        raw = json.loads(Path(det_path).read_text())
    except FileNotFoundError:
        raise DataError(f"{det_path}: detection file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{det_path}: not valid JSON ({e})") from None
    dets = raw.get("annotations") if isinstance(raw, dict) else raw
    if not isinstance(dets, list):
        raise DataError(f"{det_path}: expected a COCO result list [{{image_id, category_id, bbox, score}}, ...]")
    from ._coco_input import check_coco_values

    check_coco_values(gt, dets, gt_path, det_path,  # ids, finite boxes and scores (JSON allows NaN / Infinity)
                      own=raw if isinstance(raw, dict) else None)
    images = {im.get("id") for im in gt["images"]}
    gt_names = {c.get("id"): str(c.get("name", "")) for c in gt["categories"]}
    for n, d in enumerate(dets):
        where = f"{det_path}: detection {n}"
        if not isinstance(d, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(d):
            raise DataError(f"{where}: expected keys image_id, category_id, bbox [x, y, w, h], score")
        if not (isinstance(d["bbox"], list) and len(d["bbox"]) == 4):
            raise DataError(f"{where}: bbox must be [x, y, w, h], got {d['bbox']!r}")
    for a in gt.get("annotations", []):
        if a.get("category_id") not in gt_names:
            raise DataError(f"{gt_path}: annotation id {a.get('id')}: category_id {a.get('category_id')} is not in "
                            "'categories'")
    own_images = raw.get("images") if isinstance(raw, dict) else None
    own_cats = raw.get("categories") if isinstance(raw, dict) else None
    # categories: by name when the detections name theirs
    cat_map: dict = {}
    det_names = {c.get("id"): str(c.get("name", "")) for c in own_cats or [] if isinstance(c, dict)}
    used = sorted({d["category_id"] for d in dets}, key=str)
    if det_names and any(det_names.values()):
        by_name = category_ids_by_name(gt, str(gt_path))
        for cid in used:
            if cid not in det_names:
                raise DataError(f"{det_path}: category_id {cid} of a detection is not in its own 'categories'")
            name = det_names[cid]
            gid = by_name.get(name.strip().lower())
            if gid is None:
                if cid in gt_names:
                    raise UserError(f"{det_path}: category_id {cid} is '{name}' in the detections but "
                                    f"'{gt_names[cid]}' in {gt_path}, which has no category '{name}' "
                                    f"(categories: {', '.join(gt_names.values())})")
                raise UserError(f"{det_path}: category '{name}' (id {cid}) is not a category of {gt_path} "
                                f"(categories: {', '.join(gt_names.values())})")
            cat_map[cid] = gid
        moved = [f"{k}->{v}" for k, v in cat_map.items() if k != v]
        if moved:
            notes.append(f"categories matched by name, ids rewritten to {Path(gt_path).name}'s: {', '.join(moved)}")
    else:
        for n, d in enumerate(dets):
            if d["category_id"] not in gt_names:
                raise UserError(f"{det_path}: detection {n}: category_id {d['category_id']} is not in the categories "
                                f"of {gt_path} (ids {', '.join(map(str, gt_names))})")
    # images: by file name when the detections name theirs
    img_map: dict = {}
    named = [im for im in own_images or [] if isinstance(im, dict) and im.get("file_name")]
    if named:
        matcher = ImageMatcher(gt, str(gt_path))
        with_dets = {d["image_id"] for d in dets}
        for im in named:
            gid = matcher.match(str(im["file_name"]))
            if gid is None:
                if im.get("id") in with_dets:
                    raise UserError(f"{det_path}: image '{im['file_name']}' (id {im.get('id')}) is not in {gt_path} "
                                    "(matched by path, path tail, then base name)")
                continue
            img_map[im.get("id")] = gid
        moved = sum(1 for k, v in img_map.items() if k != v)
        if moved:
            notes.append(f"{len(img_map)} images matched by file name, {moved} image ids rewritten to "
                         f"{Path(gt_path).name}'s")
        missing = len(images - set(img_map.values()))
        if missing:
            notes.append(f"{missing} of {len(images)} images of {gt_path} have no entry in {det_path} "
                         "(scored as images without detections)")
    out = []
    for n, d in enumerate(dets):
        iid = img_map.get(d["image_id"], d["image_id"]) if named else d["image_id"]
        if named and d["image_id"] not in img_map:
            raise DataError(f"{det_path}: detection {n}: image_id {d['image_id']} is not in its own 'images'")
        if iid not in images:
            raise UserError(f"{det_path}: detection {n}: image_id {d['image_id']} is not in {gt_path}")
        out.append({**d, "image_id": iid, "category_id": cat_map.get(d["category_id"], d["category_id"])})
    return gt, out
