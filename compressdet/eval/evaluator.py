"""The one evaluation loop (trainer, QAT/PTQ stages, bench): a head-producing callable over a split,
decoded by a PostProcessor, scored by the metric that follows the data.

``eval.metric``: ``kitti`` (official-devkit KITTI AP, :func:`evaluate_kitti`) for kitti/synth data,
``coco`` (:func:`evaluate_coco`) for coco/yolo/voc; either can be chosen for KITTI-layout data, and
COCO AP is the only one for the others (KITTI AP needs truncation/occlusion). Every result holds
``metric`` and ``primary`` (KITTI: ``map40``; COCO: ``ap``), the value best-checkpoint selection,
stage metrics and bench deltas read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import UserError

__all__ = ["resolve_metric", "DetectionEvaluator", "metric_summary", "METRICS"]

METRICS = ("kitti", "coco")


def resolve_metric(data_cfg: Any, eval_cfg: Any = None, metric: str | None = None) -> str:
    """``metric`` or ``eval_cfg.metric``, else the data's own: kitti for kitti/synth, coco otherwise.

    Raises:
        UserError: ``kitti`` asked for data that is not in the KITTI layout.
    """
    m = metric or getattr(eval_cfg, "metric", None)
    kitti_layout = data_cfg.format in ("kitti", "synth")
    if m is None:
        return "kitti" if kitti_layout else "coco"
    if m not in METRICS:
        raise UserError(f"eval.metric: '{m}' is not one of {', '.join(METRICS)}")
    if m == "kitti" and not kitti_layout:
        raise UserError(f"eval.metric: kitti needs kitti/synth data (its AP uses truncation and occlusion); "
                        f"data.format is '{data_cfg.format}': use eval.metric: coco")
    return m


def metric_summary(res: dict[str, Any]) -> dict[str, Any]:
    """The stage-metric view of an evaluator result: KITTI ``map40``, ``map11``, ``ap40`` (as before)
    or COCO's numbers under ``coco``; both with ``metric``, ``primary`` and ``ap_unit`` (every AP is in %)."""
    if res.get("metric") == "coco":
        return {"metric": "coco", "ap_unit": "percent", "primary": res.get("primary"),
                "coco": {k: res.get(k) for k in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar100")}}
    return {"metric": "kitti", "ap_unit": "percent", "primary": res.get("primary", res.get("map40")),
            "map40": res.get("map40"),
            "map11": res.get("map11"), "ap40": res.get("ap", {})}


class DetectionEvaluator:
    """Ground truth read once; ``evaluator(head_fn)`` runs the split and returns the metric's result.

    Args:
        data_cfg: the recipe's DataConfig (``image_size`` is the model input).
        split: "val" (default), "train" or "test".
        metric: "kitti" | "coco" | None (follows ``eval_cfg.metric``, then the data).
        protocol: KITTI protocol ("official" | "seed").
        post: a PostProcessor (decode + NMS, boxes back to original pixels).
        batch_size, num_workers: the loader's.
        max_images: the first N images of the split (default: the data's max for that split).

    Attributes:
        dataset: the split's dataset (a ``Subset`` when ``max_images`` cuts it); ``base``: the full one.
        last_dets: ``{image_id: PostProcessor output (cpu)}`` of the last call.
    """

    def __init__(self, data_cfg: Any, *, post: Any, split: str = "val", metric: str | None = None,
                 eval_cfg: Any = None, protocol: str = "official", batch_size: int = 8, num_workers: int = 0,
                 max_images: int | None = None, pin_memory: bool = False):
        from ..data import build_dataset, build_loader

        self.data_cfg, self.split, self.post, self.protocol = data_cfg, split, post, protocol
        self.metric = resolve_metric(data_cfg, eval_cfg, metric)
        self.classes = tuple(data_cfg.classes)
        self.base = build_dataset(data_cfg, split, train=False)
        self.dataset = self.base
        if max_images is not None and max_images < len(self.base):
            self.dataset = torch.utils.data.Subset(self.base, range(max_images))
        if len(self.dataset) == 0:
            raise UserError(f"the {split} split is empty: nothing to evaluate (check data.{split}_split)")
        self.loader = build_loader(self.dataset, batch_size=batch_size, train=False, seed=0, num_workers=num_workers,
                                   pin_memory=pin_memory)
        if self.metric == "kitti":
            from ..data import load_ground_truth

            self.gt, self.sizes = load_ground_truth(data_cfg, split)
        else:
            from ..data.records import load_box_ground_truth

            self.gt, self.sizes = load_box_ground_truth(data_cfg, split)
        self.last_dets: dict[str, dict[str, torch.Tensor]] = {}

    def predict(self, head_fn: Callable[[torch.Tensor], torch.Tensor],
                on_batch: Callable[[torch.Tensor, list[dict]], None] | None = None) -> dict[str, dict]:
        """``{image_id: {"boxes", "scores", "labels"}}`` (original px, cpu) of ``head_fn`` on the split."""
        dets: dict[str, dict] = {}
        for images, targets in self.loader:
            head = head_fn(images)  # one raw tensor, or a tuple of them (detector contract: FPN families)
            head = tuple(torch.as_tensor(h).float() for h in head) if isinstance(head, (tuple, list)) else \
                torch.as_tensor(head).float()
            preds = self.post(head, [tuple(t["orig_size"]) for t in targets])
            for t, p in zip(targets, preds, strict=True):
                dets[t["image_id"]] = {k: v.detach().cpu() for k, v in p.items()}
            if on_batch is not None:
                on_batch(images, targets)
        self.last_dets = dets
        return dets

    def score(self, dets: dict[str, dict]) -> dict[str, Any]:
        """The metric's result on the images in ``dets``, with ``metric`` and ``primary``."""
        if self.metric == "kitti":
            from .kitti_eval import evaluate_kitti, predictions_to_kitti

            kd = {i: predictions_to_kitti(p, self.classes) for i, p in dets.items()}
            res = evaluate_kitti({i: self.gt[i] for i in kd}, kd, protocol=self.protocol, classes=self.classes)
            res["metric"], res["primary"] = "kitti", float(res["map40"])
            res["images"] = len(dets)
            return res
        from .coco_eval import evaluate_coco

        np_dets = {i: {k: np.asarray(v) for k, v in p.items()} for i, p in dets.items()}
        return {**evaluate_coco(self.gt, self.sizes, np_dets, self.classes), "images": len(dets)}

    def __call__(self, head_fn: Callable[[torch.Tensor], torch.Tensor], **kw: Any) -> dict[str, Any]:
        return self.score(self.predict(head_fn, **kw))

    def gt_objects(self, image_id: str) -> list:
        """Ground truth of one image as KittiObjects (for drawings; COCO classes named as in data.classes)."""
        if self.metric == "kitti":
            return list(self.gt.get(image_id, []))
        from ..data.kitti import KittiObject

        g = self.gt.get(image_id)
        if g is None:
            return []
        return [KittiObject(type="DontCare" if lab < 0 else self.classes[int(lab)], bbox=tuple(map(float, b)))
                for b, lab in zip(g["boxes"], g["labels"])]

    def det_objects(self, image_id: str) -> list:
        from ..data.kitti import KittiObject

        p = self.last_dets.get(image_id)
        if p is None:
            return []
        if self.metric == "kitti":
            from .kitti_eval import predictions_to_kitti

            return predictions_to_kitti(p, self.classes)
        return [KittiObject(type=self.classes[int(lab)], bbox=tuple(map(float, b)), score=float(s))
                for b, s, lab in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist())]
