"""The score threshold ``predict`` draws boxes at: the one that maximises F1 on the run's val split.

Evaluation keeps every detection (``postprocess.score_thresh`` 0: AP integrates over all scores), so the
boxes a picture would show at that setting are every NMS survivor, several per object. A picture needs
one operating point; :func:`choose_draw_threshold` picks it the way a detector's user would: the score
at which precision and recall balance best (micro F1 over all classes, a detection matching an unmatched
ground-truth box of its class at IoU >= 0.5, greedy by score), measured on val, never on test. It is
computed once per model file, backend and post-processing and cached in the run folder
(``predict_thresholds.json``).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["FALLBACK_DRAW_THRESHOLD", "MAX_VAL_IMAGES", "best_f1_threshold", "choose_draw_threshold"]

#: drawing threshold of a model with no run (a bare .pt/.onnx/IR or an asset): no val split to choose on
FALLBACK_DRAW_THRESHOLD = 0.5
#: at most this many val images are scored to choose the threshold (the first ones, in the split's order)
MAX_VAL_IMAGES = 200
CACHE_FILE = "predict_thresholds.json"


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import torch
    from torchvision.ops import box_iou

    return box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _match(det: dict[str, np.ndarray], gt: dict[str, np.ndarray], iou: float) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, is_tp)`` of the image's detections; ones only on an ignore region are left out."""
    boxes, scores, labels = (np.asarray(det[k]) for k in ("boxes", "scores", "labels"))
    gb, gl = np.asarray(gt["boxes"], np.float64).reshape(-1, 4), np.asarray(gt["labels"])
    crowd = np.asarray(gt.get("crowd", np.zeros(len(gl), bool)), bool) | (gl < 0)
    order = np.argsort(-scores, kind="stable")
    used = np.zeros(len(gb), bool)
    out_s, out_tp = [], []
    ious = _iou(boxes.astype(np.float64).reshape(-1, 4), gb) if len(gb) else np.zeros((len(boxes), 0))
    for k in order:
        real = ~crowd & ~used & (gl == labels[k]) & (ious[k] >= iou)
        if real.any():
            used[int(np.argmax(np.where(real, ious[k], -1.0)))] = True
            out_s.append(scores[k])
            out_tp.append(True)
        elif not (crowd & (ious[k] >= iou)).any():  # a detection on an ignore region counts neither way
            out_s.append(scores[k])
            out_tp.append(False)
    return np.asarray(out_s, np.float64), np.asarray(out_tp, bool)


def best_f1_threshold(dets: list[dict[str, Any]], gts: list[dict[str, Any]], *, iou: float = 0.5
                      ) -> dict[str, Any] | None:
    """The score threshold maximising micro F1 over all classes (IoU ``iou``, same class, greedy by score).

    Returns:
        ``{"threshold", "f1", "precision", "recall", "objects", "detections"}`` (the threshold floored to 3
        decimals, so every box of the chosen point is kept), or None when no detection matches an object.
    """
    pairs = [_match({k: np.asarray(v) for k, v in d.items()}, g, iou) for d, g in zip(dets, gts)]
    n_obj = int(sum(int((~(np.asarray(g.get("crowd", np.zeros(len(g["labels"]), bool)), bool)
                           | (np.asarray(g["labels"]) < 0))).sum()) for g in gts))
    scores = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0)
    tp = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, bool)
    if n_obj == 0 or not tp.any():
        return None
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], tp[order]
    ctp = np.cumsum(tp)
    last = np.r_[scores[1:] != scores[:-1], True]  # a threshold keeps every box of equal score
    k = np.arange(1, len(scores) + 1)
    precision, recall = ctp / k, ctp / n_obj
    f1 = np.where(last, 2 * precision * recall / np.maximum(precision + recall, 1e-12), -1.0)
    i = int(np.argmax(f1))
    return {"threshold": math.floor(float(scores[i]) * 1000) / 1000, "f1": round(float(f1[i]), 4),
            "precision": round(float(precision[i]), 4), "recall": round(float(recall[i]), 4), "objects": n_obj,
            "detections": int(len(scores))}


def _cache_key(path: Path, backend: str, postprocess: dict[str, Any]) -> str:
    st = Path(path).stat()
    text = json.dumps([str(Path(path).resolve()), st.st_size, st.st_mtime_ns, backend, postprocess], sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def choose_draw_threshold(predictor: Any, run_dir: Path | None, classes: list[str],
                          log: Callable[[str], None] = print) -> dict[str, Any]:
    """The drawing threshold of ``predictor``'s model: max F1 on the val split of its run, else the fallback.

    ``predictor`` maps an RGB uint8 ``[3, H, W]`` tensor to ``{boxes, scores, labels}`` in image pixels
    (:class:`~compressdet.predict.predictor.Predictor`). The choice is cached in ``run_dir`` by model file,
    backend and post-processing.

    Returns:
        ``{"value", "source"}`` plus, when chosen on val, ``"val": {images, f1, precision, recall, objects}``.
    """
    fallback = {"value": FALLBACK_DRAW_THRESHOLD, "source": f"fixed default {FALLBACK_DRAW_THRESHOLD} (the model "
                "comes with no run, so no val split to choose on; pass --draw-threshold T)"}
    if run_dir is None or not (Path(run_dir) / "recipe.yaml").is_file():
        return fallback
    from ..data import build_dataset
    from ..data.kitti import read_image
    from ..data.records import load_box_ground_truth
    from ..errors import UserError
    from ..recipe import load_recipe

    resolved = predictor.resolved
    cache = Path(run_dir) / CACHE_FILE
    key = _cache_key(resolved.path, resolved.backend, resolved.postprocess)
    try:
        cached = json.loads(cache.read_text()) if cache.is_file() else {}
    except ValueError:
        cached = {}
    if isinstance(cached, dict) and key in cached:
        return cached[key]
    try:
        data = load_recipe(Path(run_dir) / "recipe.yaml").data.model_copy(update={"cache": False})
        if list(data.classes) != list(classes):
            return {**fallback, "source": f"fixed default {FALLBACK_DRAW_THRESHOLD} (the run's classes differ from "
                                          "the model's; pass --draw-threshold T)"}
        ds = build_dataset(data, "val", train=False)
        ids = list(ds.ids)[:MAX_VAL_IMAGES]
        gt, _ = load_box_ground_truth(data, "val")
    except (UserError, OSError) as e:  # the run's data moved or is gone: the pictures still get drawn
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        return {**fallback, "source": f"fixed default {FALLBACK_DRAW_THRESHOLD} (the run's val split cannot be read: "
                                      f"{msg}; pass --draw-threshold T)"}
    if not ids:
        return fallback
    log(f"choosing the drawing threshold on {len(ids)} val images of {run_dir} (max F1 at IoU 0.5; once, cached "
        f"in {cache.name})")
    dets = []
    for i in ids:
        d = predictor(read_image(ds.image_path(i)))
        dets.append({k: v.detach().cpu().numpy() for k, v in d.items()})
    best = best_f1_threshold(dets, [gt[i] for i in ids])
    if best is None:
        chosen = {**fallback, "source": f"fixed default {FALLBACK_DRAW_THRESHOLD} (no detection matches an object "
                                        f"on {len(ids)} val images)"}
    else:
        chosen = {"value": best["threshold"], "source": "max F1 at IoU 0.5 on the run's val split",
                  "val": {"images": len(ids), **{k: best[k] for k in ("f1", "precision", "recall", "objects")}}}
    try:
        from .._io import atomic_write_json

        atomic_write_json(cache, {**(cached if isinstance(cached, dict) else {}), key: chosen})
    except OSError:  # a read-only run: chosen again next time
        pass
    return chosen

