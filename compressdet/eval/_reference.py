"""Pure-python loop transcription of the KITTI devkit's 2D evaluation.

Slow (per image, per threshold, per GT, per detection) and deliberately plain: it is the
readable statement of the rules that ``kitti_eval.evaluate_kitti`` vectorises, and the oracle the
property tests and the speed benchmark compare it with. Same inputs and output as
``evaluate_kitti``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from ..data.kitti import KittiObject
from .kitti_eval import (
    CLASSES,
    LEVELS,
    MAX_OCCLUSION,
    MAX_TRUNCATION,
    MIN_HEIGHT,
    MIN_OVERLAP,
    N_SAMPLE_PTS,
    NEIGHBOUR,
    NO_DETECTION,
    _assemble,
    _check_inputs,
    _compute_aos,
)

__all__ = ["reference_evaluate_kitti"]


def _overlap(a, b, criterion: int = -1) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    w, h = x2 - x1, y2 - y1
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    if criterion == -1:
        return inter / (area_a + area_b - inter)
    return inter / area_a


def _clean(cls, gts, dets, lvl, protocol):
    ignored_gt, ignored_det, dc = [], [], []
    n_gt = 0
    for g in gts:
        t = g.type.lower()
        if t == cls:
            valid = 1
        elif NEIGHBOUR.get(cls) == t:
            valid = 0
        else:
            valid = -1
        height = g.bbox[3] - g.bbox[1]
        ignore = (g.occluded > MAX_OCCLUSION[lvl] or g.truncated > MAX_TRUNCATION[lvl]
                  or height <= MIN_HEIGHT[lvl])
        if valid == 1 and not ignore:
            ignored_gt.append(0)
            n_gt += 1
        elif valid == 0 or (ignore and valid == 1):
            ignored_gt.append(1)
        else:
            ignored_gt.append(-1)
    for g in gts:
        if g.type.lower() == "dontcare":
            dc.append(g)
    for d in dets:
        valid = 1 if d.type.lower() == cls else -1
        if protocol == "official" and int(abs(d.bbox[1] - d.bbox[3])) < MIN_HEIGHT[lvl]:
            ignored_det.append(1)
        elif valid == 1:
            ignored_det.append(0)
        else:
            ignored_det.append(-1)
    return ignored_gt, ignored_det, dc, n_gt


def _statistics(cls, gts, dets, dc, ignored_gt, ignored_det, compute_fp, compute_aos=False, thresh=0.0):
    min_ov = MIN_OVERLAP[cls]
    tp = fp = fn = 0
    v, delta = [], []
    assigned = [False] * len(dets)
    below = [compute_fp and d.score < thresh for d in dets]
    for i, g in enumerate(gts):
        if ignored_gt[i] == -1:
            continue
        det_idx, valid_det, max_ov, assigned_ignored = -1, NO_DETECTION, 0.0, False
        for j, d in enumerate(dets):
            if ignored_det[j] == -1 or assigned[j] or below[j]:
                continue
            ov = _overlap(d.bbox, g.bbox, -1)
            if not compute_fp and ov > min_ov and d.score > valid_det:
                det_idx, valid_det = j, d.score
            elif compute_fp and ov > min_ov and (ov > max_ov or assigned_ignored) and ignored_det[j] == 0:
                max_ov, det_idx, valid_det, assigned_ignored = ov, j, 1, False
            elif compute_fp and ov > min_ov and valid_det == NO_DETECTION and ignored_det[j] == 1:
                det_idx, valid_det, assigned_ignored = j, 1, True
        if valid_det == NO_DETECTION and ignored_gt[i] == 0:
            fn += 1
        elif valid_det != NO_DETECTION and (ignored_gt[i] == 1 or ignored_det[det_idx] == 1):
            assigned[det_idx] = True
        elif valid_det != NO_DETECTION:
            tp += 1
            v.append(dets[det_idx].score)
            if compute_aos:
                delta.append(g.alpha - dets[det_idx].alpha)
            assigned[det_idx] = True
    similarity = -1.0
    if compute_fp:
        for j in range(len(dets)):
            if not (assigned[j] or ignored_det[j] in (-1, 1) or below[j]):
                fp += 1
        nstuff = 0
        for region in dc:
            for j, d in enumerate(dets):
                if assigned[j] or ignored_det[j] in (-1, 1) or below[j]:
                    continue
                if _overlap(d.bbox, region.bbox, 0) > min_ov:
                    assigned[j] = True
                    nstuff += 1
        fp -= nstuff
        if compute_aos and (tp > 0 or fp > 0):
            similarity = sum((1.0 + math.cos(x)) / 2.0 for x in delta)
    return tp, fp, fn, v, similarity


def _thresholds(v, n_gt):
    v = sorted(v, reverse=True)
    t, cur = [], 0.0
    for i in range(len(v)):
        l_rec = (i + 1) / n_gt
        r_rec = (i + 2) / n_gt if i < len(v) - 1 else l_rec
        if (r_rec - cur) < (cur - l_rec) and i < len(v) - 1:
            continue
        t.append(v[i])
        cur += 1.0 / (N_SAMPLE_PTS - 1.0)
    return t


def _eval_class(cls, gt_list, det_list, lvl, protocol, compute_aos):
    n_gt = 0
    v, cleaned = [], []
    for gts, dets in zip(gt_list, det_list):
        ig, idt, dc, n = _clean(cls, gts, dets, lvl, protocol)
        n_gt += n
        cleaned.append((ig, idt, dc))
        v.extend(_statistics(cls, gts, dets, dc, ig, idt, False)[3])
    thresholds = _thresholds(v, n_gt)
    nt = len(thresholds)
    tp, fp, fn, sim = [0] * nt, [0] * nt, [0] * nt, [0.0] * nt
    for (gts, dets), (ig, idt, dc) in zip(zip(gt_list, det_list), cleaned):
        for t, th in enumerate(thresholds):
            a, b, c, _, s = _statistics(cls, gts, dets, dc, ig, idt, True, compute_aos, th)
            tp[t] += a
            fp[t] += b
            fn[t] += c
            if s != -1:
                sim[t] += s
    precision = [0.0] * N_SAMPLE_PTS
    aos = [0.0] * N_SAMPLE_PTS if compute_aos else None
    recall = []
    for i in range(nt):
        recall.append(tp[i] / (tp[i] + fn[i]))
        precision[i] = tp[i] / (tp[i] + fp[i])
        if compute_aos:
            aos[i] = sim[i] / (tp[i] + fp[i])
    for i in range(nt):
        precision[i] = max(precision[i:])
        if compute_aos:
            aos[i] = max(aos[i:])
    return {"precision": precision, "aos": aos, "recall": recall, "thresholds": thresholds}


def reference_evaluate_kitti(gt: Mapping[str, Sequence[KittiObject]], dets: Mapping[str, Sequence[KittiObject]], *,
                             protocol: str = "official", classes: Sequence[str] = CLASSES,
                             return_curves: bool = False) -> dict:
    """Same contract as ``evaluate_kitti``; loops only."""
    ids = _check_inputs(gt, dets, protocol, classes)
    gt_list = [list(gt[k]) for k in ids]
    det_list = [list(dets[k]) for k in ids]
    compute_aos = _compute_aos(dets)
    curves, evaluated = {}, {}
    for c in classes:
        evaluated[c] = any(o.type.lower() == c and o.bbox[0] >= 0 for lst in det_list for o in lst)
        curves[c] = {}
        for li, lvl in enumerate(LEVELS):
            if evaluated[c]:
                curves[c][lvl] = _eval_class(c, gt_list, det_list, li, protocol, compute_aos)
            else:
                curves[c][lvl] = {"precision": [0.0] * N_SAMPLE_PTS,
                                  "aos": [0.0] * N_SAMPLE_PTS if compute_aos else None,
                                  "recall": [], "thresholds": []}
    return _assemble(protocol, classes, curves, compute_aos, evaluated, len(ids), return_curves)
