"""KITTI 2D object-detection AP, vectorised, equal to the official devkit (``evaluate_object.cpp``).

The devkit evaluates each (class, difficulty) by two greedy passes over every image's ground truth:
pass 1 matches each GT to the highest-scoring free detection (IoU > class threshold) to collect the
scores of true positives, from which 41 recall-spaced score thresholds are chosen; pass 2 repeats
the matching at each threshold, now preferring the free detection of greatest IoU, and counts
TP/FP/FN. Precision at the 41 samples is made monotone (max over higher recalls) and averaged:
AP11 = every 4th sample (the pre-2019 rule), AP40 = samples 1..40.

Rules kept exactly (they change numbers):

- GT of the class is *ignored* (neither TP nor FN, but can absorb a detection) when
  ``occluded > max_occ`` or ``truncated > max_trunc`` or ``height <= min_height`` (strict for
  height: a 40.0 px car is not "easy"). ``Van`` is a neighbour of ``Car`` and ``Person_sitting``
  of ``Pedestrian``: ignored GT. Other types play no part, except ``DontCare``.
- Official protocol: a detection with ``int(|y2 - y1|) < min_height`` is ignored, *whatever its
  class* (the devkit tests height before class, so a short detection of another class can absorb
  a GT of this one). ``protocol="seed"`` (the old devkit copy the seed used) ignores none.
- An unmatched, non-ignored detection is not a FP if ``intersection / its own area`` with any
  DontCare region exceeds the class IoU threshold.
- All overlap tests are strict ``>``; scores compare ``>=`` to a threshold.
- AOS is computed only if no detection anywhere has ``alpha == -10``; a class with no detection
  (with ``x1 >= 0``) is not evaluated by the devkit: reported as 0 with ``evaluated: False``.

Vectorisation: only (GT, detection) pairs with IoU above the threshold can ever match, and images
are independent. The greedy loop therefore runs over "the k-th contended GT of every image" at
once, with all 41 thresholds as a second axis; GTs whose candidate detections nobody else wants
are all resolved in the first step.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..conventions import KITTI_CLASSES
from ..data.kitti import DIFFICULTY_LEVELS, KittiObject
from ..errors import UserError

__all__ = ["evaluate_kitti", "predictions_to_kitti", "kitti_type_name", "ap_from_precision", "CLASSES", "LEVELS",
           "MIN_OVERLAP", "PROTOCOLS", "N_SAMPLE_PTS"]

CLASSES = KITTI_CLASSES
LEVELS = tuple(DIFFICULTY_LEVELS)  # ("easy", "moderate", "hard")
PROTOCOLS = ("official", "seed")
#: class -> minimum IoU (strictly greater) for a match, 2D boxes
MIN_OVERLAP = {"car": 0.7, "pedestrian": 0.5, "cyclist": 0.5}
#: class -> the neighbouring KITTI type (lower case) whose GT is ignored
NEIGHBOUR = {"car": "van", "pedestrian": "person_sitting"}
#: per level: min height (GT: ignored if <=; detection: ignored if int(height) <), max occlusion, max truncation
MIN_HEIGHT, MAX_OCCLUSION, MAX_TRUNCATION = (tuple(col) for col in zip(*DIFFICULTY_LEVELS.values()))
N_SAMPLE_PTS = 41
NO_DETECTION = -10000000.0  # the devkit's sentinel: a score <= this never wins pass 1
_BIG = np.iinfo(np.int32).max


# ----------------------------------------------------------------------------------------------
# input checks and flattening (shared with the reference implementation)

def _check_inputs(gt: Mapping[str, Sequence[KittiObject]], dets: Mapping[str, Sequence[KittiObject]],
                  protocol: str, classes: Sequence[str]) -> list[str]:
    if protocol not in PROTOCOLS:
        raise UserError(f"protocol '{protocol}': expected one of {', '.join(PROTOCOLS)}")
    for c in classes:
        if c not in CLASSES:
            raise UserError(f"class '{c}': the KITTI evaluator knows {', '.join(CLASSES)}")
    missing = [k for k in gt if k not in dets]
    if missing:
        raise UserError(f"detections missing for {len(missing)} image(s), first '{missing[0]}' "
                        "(every image needs an entry, possibly empty)")
    extra = [k for k in dets if k not in gt]
    if extra:
        raise UserError(f"detections for image '{extra[0]}' which has no ground truth")
    ids = sorted(gt)
    for k in ids:
        for o in dets[k]:
            if o.score is None:
                raise UserError(f"image '{k}': detection {o.type} {o.bbox} has no score")
    return ids


def _compute_aos(dets: Mapping[str, Sequence[KittiObject]]) -> bool:
    """The devkit computes AOS only if every detection line gives an alpha (!= -10)."""
    return all(o.alpha != -10 for lst in dets.values() for o in lst)


def ap_from_precision(precision: np.ndarray) -> tuple[float, float]:
    """(AP11, AP40) in percent from the 41 monotone precision samples."""
    p = np.asarray(precision, dtype=np.float64)
    ap11 = float(sum(p[i] for i in range(0, N_SAMPLE_PTS, 4)) / 11 * 100)
    ap40 = float(sum(p[i] for i in range(1, N_SAMPLE_PTS)) / 40 * 100)
    return ap11, ap40


def _assemble(protocol: str, classes: Sequence[str], curves: dict, aos: bool, evaluated: dict,
              n_images: int, return_curves: bool) -> dict:
    """Build the result dict from per (class, level) curves {precision, aos, recall, thresholds}."""
    ap: dict = {}
    for c in classes:
        ap[c] = {}
        for lvl in LEVELS:
            cur = curves[c][lvl]
            a11, a40 = ap_from_precision(cur["precision"])
            entry = {"ap11": a11, "ap40": a40}
            if aos:
                o11, o40 = ap_from_precision(cur["aos"])
                entry.update(aos11=o11, aos40=o40)
            ap[c][lvl] = entry
    vals11 = [ap[c][lvl]["ap11"] for c in classes for lvl in LEVELS]
    vals40 = [ap[c][lvl]["ap40"] for c in classes for lvl in LEVELS]
    out = {"protocol": protocol, "ap": ap,
           "map11": float(np.mean(vals11)) if vals11 else 0.0,
           "map40": float(np.mean(vals40)) if vals40 else 0.0,
           "aos": aos, "evaluated": dict(evaluated), "num_images": n_images}
    if return_curves:
        out["curves"] = {c: {lvl: {k: [float(x) for x in v] if v is not None else None
                                   for k, v in curves[c][lvl].items()} for lvl in LEVELS} for c in classes}
    return out


def get_thresholds(scores: Sequence[float], n_gt: int) -> list[float]:
    """Score thresholds giving (at most) 41 recall samples, as the devkit's ``getThresholds``.

    Walks the TP scores in descending order and keeps score i when its recall ``(i+1)/n_gt`` is
    at least as close to the next recall target (k/40) as recall ``(i+2)/n_gt`` would be.
    The skip test is monotone in i, so each next threshold is found by bisection.
    """
    v = sorted((float(s) for s in scores), reverse=True)
    n = len(v)
    out: list[float] = []
    cur = 0.0
    i = 0
    while i < n:
        c = cur

        def keep(j: int) -> bool:
            if j >= n - 1:
                return True
            return not ((j + 2) / n_gt - c < c - (j + 1) / n_gt)

        j = bisect.bisect_left(range(i, n), True, key=keep) + i
        out.append(v[j])
        cur += 1.0 / (N_SAMPLE_PTS - 1.0)
        i = j + 1
    return out[:N_SAMPLE_PTS]


# ----------------------------------------------------------------------------------------------
# vectorised core

_TYPE_CODE = {"car": 0, "pedestrian": 1, "cyclist": 2, "van": 3, "person_sitting": 4, "dontcare": 5}
_CLASS_CODE = {"car": 0, "pedestrian": 1, "cyclist": 2}
_NEIGHBOUR_CODE = {0: 3, 1: 4}
_DONTCARE = 5


@dataclass
class _Flat:
    """All objects of all images as arrays; objects of image k are contiguous and keep file order."""

    img: np.ndarray      # int64 [N] image index
    box: np.ndarray      # float64 [N, 4] x1 y1 x2 y2
    type: np.ndarray     # int64 [N] code of the lower-case type (_TYPE_CODE; -1 other types)
    trunc: np.ndarray    # float64 [N]
    occ: np.ndarray      # float64 [N]
    alpha: np.ndarray    # float64 [N]
    score: np.ndarray    # float64 [N] (0 for GT)


def _type_code(t: str, cache: dict = {}) -> int:  # noqa: B006 - memo of type spellings
    c = cache.get(t)
    if c is None:
        c = cache[t] = _TYPE_CODE.get(t.lower(), -1)
    return c


def _flatten(per_image: Sequence[Sequence[KittiObject]], with_score: bool) -> _Flat:
    counts = np.fromiter((len(x) for x in per_image), dtype=np.int64, count=len(per_image))
    objs = [o for lst in per_image for o in lst]
    n = len(objs)
    box = np.array([o.bbox for o in objs], dtype=np.float64).reshape(n, 4)
    if with_score:
        num = np.array([(o.truncated, o.occluded, o.alpha, o.score) for o in objs], dtype=np.float64).reshape(n, 4)
    else:
        num = np.array([(o.truncated, o.occluded, o.alpha, 0.0) for o in objs], dtype=np.float64).reshape(n, 4)
    return _Flat(img=np.repeat(np.arange(len(per_image), dtype=np.int64), counts), box=box,
                 type=np.array([_type_code(o.type) for o in objs], dtype=np.int64).reshape(n),
                 trunc=num[:, 0], occ=num[:, 1], alpha=num[:, 2], score=num[:, 3])


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for each (s, l)."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)


def _cross(img_a: np.ndarray, img_b: np.ndarray, n_img: int) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i, j) with ``img_a[i] == img_b[j]``, ordered by (i, j).

    Args:
        img_a, img_b: int64 [A], [B] image indices, each sorted ascending.
    """
    nb = np.bincount(img_b, minlength=n_img)
    start_b = np.cumsum(nb) - nb
    reps = nb[img_a]
    ia = np.repeat(np.arange(len(img_a), dtype=np.int64), reps)
    ib = _ranges(start_b[img_a], reps)
    return ia, ib


def _overlap(a: np.ndarray, b: np.ndarray, own_area: bool = False) -> np.ndarray:
    """Row-wise overlap of boxes a[P, 4] and b[P, 4] (xyxy), the devkit's ``imageBoxOverlap``.

    IoU ``inter / (area_a + area_b - inter)``, or ``inter / area_a`` when ``own_area``;
    0 where the boxes do not intersect (width or height <= 0).
    """
    w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    hit = (w > 0) & (h > 0)
    inter = np.where(hit, w * h, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    if own_area:
        denom = area_a
    else:
        denom = area_a + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(hit, inter / np.where(hit, denom, 1.0), 0.0)


def _greedy(pg: np.ndarray, pd: np.ndarray, gt_img: np.ndarray, n_det: int,
            score: np.ndarray | None, thresholds: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The devkit's sequential greedy matching, batched over images and thresholds.

    Args:
        pg: int64 [P] GT index of each candidate pair, pairs grouped by GT in ascending GT order
            (GT order = image order then file order), and within a GT sorted by preference.
        pd: int64 [P] detection index (0..n_det-1) of each pair.
        gt_img: int64 [G_all] image of every GT index.
        score, thresholds: float64 [P] pair scores and [T] thresholds; a pair is eligible at
            threshold t when ``score >= thresholds[t]``. None: one pass, all eligible.

    Returns:
        gts int64 [G] the GTs that have candidates, chosen int64 [G, T] index into the pairs of
        the detection each took (-1: none), assigned bool [n_det, T].
    """
    T = 1 if thresholds is None else len(thresholds)
    assigned = np.zeros((n_det, T), dtype=bool)
    if len(pg) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, T), dtype=np.int64), assigned
    seg_start = np.flatnonzero(np.r_[True, pg[1:] != pg[:-1]])
    seg_len = np.diff(np.r_[seg_start, len(pg)])
    gts = pg[seg_start]
    # a GT whose candidate detections no other GT wants can be resolved at any time: step 0
    lonely = np.bincount(pd, minlength=n_det)[pd] == 1
    free = np.logical_and.reduceat(lonely, seg_start)
    rank = np.zeros(len(gts), dtype=np.int64)
    contended = np.flatnonzero(~free)
    if len(contended):
        img = gt_img[gts[contended]]
        rank[contended] = np.arange(len(contended)) - np.searchsorted(img, img, side="left")
    order = np.lexsort((gts, rank))  # by rank, then GT
    gts_o, rank_o = gts[order], rank[order]
    len_o = seg_len[order]
    perm = _ranges(seg_start[order], len_o)
    pd_o = pd[perm]
    sc_o = score[perm] if score is not None else None
    pair_start_o = np.cumsum(len_o) - len_o
    step_bounds = np.searchsorted(rank_o, np.arange(rank_o[-1] + 2), side="left")
    chosen = np.full((len(gts_o), T), -1, dtype=np.int64)
    for k in range(len(step_bounds) - 1):
        g0, g1 = step_bounds[k], step_bounds[k + 1]
        if g0 == g1:
            continue
        p0 = pair_start_o[g0]
        p1 = pair_start_o[g1 - 1] + len_o[g1 - 1]
        d = pd_o[p0:p1]
        avail = ~assigned[d]
        if sc_o is not None:
            avail &= sc_o[p0:p1, None] >= thresholds[None, :]
        local = np.arange(p1 - p0, dtype=np.int32)[:, None]
        first = np.minimum.reduceat(np.where(avail, local, _BIG), pair_start_o[g0:g1] - p0, axis=0)
        rows, cols = np.nonzero(first != _BIG)
        sel = first[rows, cols]
        assigned[d[sel], cols] = True
        chosen[g0 + rows, cols] = perm[p0 + sel]
    return gts_o, chosen, assigned


def _eval_class(cls: str, g: _Flat, d: _Flat, n_img: int, protocol: str, compute_aos: bool) -> dict:
    """Curves {precision, aos, recall, thresholds} for the 3 levels of one class."""
    thr_iou = MIN_OVERLAP[cls]
    code = _CLASS_CODE[cls]
    neighbour = _NEIGHBOUR_CODE.get(code, -2)
    is_cls_g = g.type == code
    valid_g = np.where(is_cls_g, 1, np.where(g.type == neighbour, 0, -1))
    G = np.flatnonzero(valid_g != -1)
    gh = g.box[G, 3] - g.box[G, 1]
    is_cls_d = d.type == code
    d_hint = np.trunc(np.abs(d.box[:, 1] - d.box[:, 3]))
    if protocol == "official":
        D = np.flatnonzero(is_cls_d | (d_hint < max(MIN_HEIGHT)))
    else:
        D = np.flatnonzero(is_cls_d)
    # candidate pairs: same image, IoU > threshold; grouped by GT then detection (file order)
    ia, ib = _cross(g.img[G], d.img[D], n_img)
    iou = _overlap(d.box[D[ib]], g.box[G[ia]])
    keep = iou > thr_iou
    pg_all, pd_all, iou = ia[keep], ib[keep], iou[keep]  # indices into G and D
    # DontCare absorption of this class's detections (intersection over the detection's area)
    DC = np.flatnonzero(g.type == _DONTCARE)
    Dc_pos = np.flatnonzero(is_cls_d[D])  # positions in D of class detections
    dc_hit = np.zeros(len(D), dtype=bool)
    if len(DC) and len(Dc_pos):
        ja, jb = _cross(d.img[D[Dc_pos]], g.img[DC], n_img)
        ioa = _overlap(d.box[D[Dc_pos[ja]]], g.box[DC[jb]], own_area=True)
        dc_hit[Dc_pos[np.unique(ja[ioa > thr_iou])]] = True
    score_D = d.score[D]
    gt_img_G = g.img[G]
    out = {}
    for lvl_i, lvl in enumerate(LEVELS):
        hmin, occ, trunc = MIN_HEIGHT[lvl_i], MAX_OCCLUSION[lvl_i], MAX_TRUNCATION[lvl_i]
        ignore = (g.occ[G] > occ) | (g.trunc[G] > trunc) | (gh <= hmin)
        ig = np.where((valid_g[G] == 1) & ~ignore, 0, 1)
        n_gt = int((ig == 0).sum())
        if protocol == "official":
            idet = np.where(d_hint[D] < hmin, 1, np.where(is_cls_d[D], 0, -1))
        else:
            idet = np.zeros(len(D), dtype=np.int64)
        m = idet[pd_all] != -1
        pg, pd, piou = pg_all[m], pd_all[m], iou[m]
        ps = score_D[pd]
        # pass 1: highest score first (ties: file order); scores at the sentinel never win
        m1 = ps > NO_DETECTION
        o1 = np.lexsort((pd[m1], -ps[m1], pg[m1]))
        p1g, p1d = pg[m1][o1], pd[m1][o1]
        gts, chosen, _ = _greedy(p1g, p1d, gt_img_G, len(D), None, None)
        c = chosen[:, 0]
        hit = c >= 0
        tp_mask = hit & (ig[gts] == 0)
        tp_mask[hit] &= idet[p1d[c[hit]]] == 0
        v = score_D[p1d[c[tp_mask]]]
        thresholds = np.asarray(get_thresholds(v.tolist(), n_gt), dtype=np.float64)
        precision = np.zeros(N_SAMPLE_PTS)
        aos = np.zeros(N_SAMPLE_PTS) if compute_aos else None
        recall = np.zeros(len(thresholds))
        nt = len(thresholds)
        if nt:
            # pass 2: non-ignored detections by IoU (desc), then ignored ones; ties: file order
            key = np.where(idet[pd] == 0, -piou, 0.0)
            o2 = np.lexsort((pd, key, idet[pd], pg))
            p2g, p2d = pg[o2], pd[o2]
            gts, chosen, assigned = _greedy(p2g, p2d, gt_img_G, len(D), score_D[p2d], thresholds)
            hit = chosen >= 0
            det_of = np.where(hit, p2d[np.maximum(chosen, 0)], -1)
            valid_gt = (ig[gts] == 0)[:, None]
            tp_m = hit & valid_gt & (idet[np.maximum(det_of, 0)] == 0)
            tp = tp_m.sum(axis=0)
            fn = n_gt - (hit & valid_gt).sum(axis=0)
            free = (idet == 0) & ~dc_hit
            free_scores = np.sort(score_D[free])
            n_free = len(free_scores) - np.searchsorted(free_scores, thresholds, side="left")
            fp = n_free - assigned[free].sum(axis=0)
            precision[:nt] = tp / (tp + fp)
            recall = tp / (tp + fn) if n_gt else np.full(nt, np.nan)
            if compute_aos:
                rows, cols = np.nonzero(tp_m)
                delta = g.alpha[G[gts[rows]]] - d.alpha[D[det_of[rows, cols]]]
                sim = np.bincount(cols, weights=(1.0 + np.cos(delta)) / 2.0, minlength=nt)
                aos[:nt] = sim / (tp + fp)
            precision[:nt] = np.maximum.accumulate(precision[::-1])[::-1][:nt]
            if compute_aos:
                aos[:nt] = np.maximum.accumulate(aos[::-1])[::-1][:nt]
        out[lvl] = {"precision": precision, "aos": aos, "recall": recall, "thresholds": thresholds}
    return out


def evaluate_kitti(gt: Mapping[str, Sequence[KittiObject]], dets: Mapping[str, Sequence[KittiObject]], *,
                   protocol: str = "official", classes: Sequence[str] = CLASSES,
                   return_curves: bool = False) -> dict:
    """KITTI 2D AP of detections against ground truth, equal to the official devkit.

    Args:
        gt: image id -> ground-truth objects (all types, ``DontCare`` included, file order).
        dets: image id -> detections (``score`` set); every GT image needs an entry (may be empty).
        protocol: ``"official"`` (current devkit) or ``"seed"`` (old devkit copy: short
            detections are not ignored; read its AP11).
        classes: subset of ``("car", "pedestrian", "cyclist")``.
        return_curves: add ``"curves"``: cls -> level -> {precision [41], aos [41] or None,
            recall [T], thresholds [T]}.

    Returns:
        ``{"protocol", "ap": {cls: {level: {"ap11", "ap40"[, "aos11", "aos40"]}}}, "map11", "map40",
        "aos", "evaluated", "num_images"}``, AP in percent; map = plain mean of the class x level APs.
    """
    ids = _check_inputs(gt, dets, protocol, classes)
    g = _flatten([gt[k] for k in ids], with_score=False)
    d = _flatten([dets[k] for k in ids], with_score=True)
    compute_aos = _compute_aos(dets)
    curves, evaluated = {}, {}
    for c in classes:
        evaluated[c] = bool(np.any((d.type == _CLASS_CODE[c]) & (d.box[:, 0] >= 0)))
        if evaluated[c]:
            curves[c] = _eval_class(c, g, d, len(ids), protocol, compute_aos)
        else:
            curves[c] = {lvl: {"precision": np.zeros(N_SAMPLE_PTS), "aos": np.zeros(N_SAMPLE_PTS) if compute_aos
                               else None, "recall": np.zeros(0), "thresholds": np.zeros(0)} for lvl in LEVELS}
    return _assemble(protocol, classes, curves, compute_aos, evaluated, len(ids), return_curves)


def kitti_type_name(name: str) -> str:
    """The KITTI label-file type token of a class name.

    KITTI's own classes get the devkit's spelling (``Car``, ``Pedestrian``, ``Cyclist``, matched
    case-insensitively) so the KITTI evaluator finds them; any other name is kept as given with each
    run of whitespace written as one underscore, because a label line is split on whitespace
    (``"traffic light"`` -> ``traffic_light``).
    """
    text = str(name).strip()
    if not text:
        raise UserError(f"class name {name!r}: expected a non-empty name")
    if text.lower() in CLASSES:
        return text.lower().capitalize()
    return "_".join(text.split())


def predictions_to_kitti(pred: Mapping, classes: Sequence[str] = CLASSES) -> list[KittiObject]:
    """KITTI detections from one image's PostProcessor output.

    Args:
        pred: {"boxes": Tensor[N, 4] xyxy original-image px, "scores": Tensor[N],
            "labels": int64 Tensor[N] index into ``classes``}.
        classes: the model's class names, any names (e.g. ``("car", "pedestrian", "cyclist")`` or
            ``("vehicle", "traffic light")``).

    Returns:
        KittiObjects with bbox and score (alpha -10: no AOS); their type is
        :func:`kitti_type_name` of the class: ``Car``/``Pedestrian``/``Cyclist`` for KITTI's classes,
        other names as given with spaces written as underscores.
    """
    boxes = np.asarray(_to_numpy(pred["boxes"]), dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(_to_numpy(pred["scores"]), dtype=np.float64).reshape(-1)
    labels = np.asarray(_to_numpy(pred["labels"])).reshape(-1).astype(np.int64)
    if not (len(boxes) == len(scores) == len(labels)):
        raise UserError(f"predictions: boxes {len(boxes)}, scores {len(scores)}, labels {len(labels)} differ in length")
    names = [kitti_type_name(c) for c in classes]
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise UserError(f"predictions: label {int(labels.max())} out of range for {len(classes)} classes")
    return [KittiObject(type=names[lab], bbox=tuple(map(float, b)), score=float(s))
            for b, s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist())]


def _to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)

