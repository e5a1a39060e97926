"""Datasets and evaluation ground truth of the record formats (coco, yolo, voc), and the format-neutral
ground truth the COCO evaluator reads for every format (KITTI included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..recipe import DataConfig
from .cache import ImageCache
from .dataset import KittiDataset
from .formats import ClassMapper, ImageRecord, read_records

__all__ = ["RecordDataset", "RECORD_FORMATS", "split_records", "build_record_dataset", "load_box_ground_truth",
           "input_boxes"]

#: formats read through compressdet.data.formats (kitti/synth keep the KITTI reader of dataset.py)
RECORD_FORMATS = ("coco", "yolo", "voc")


def _max_images(data_cfg: DataConfig, split: str) -> int | None:
    return getattr(data_cfg, f"max_{split}_images", None)


def split_records(data_cfg: DataConfig, split: str, max_images: int | None = None
                  ) -> tuple[list[ImageRecord], ClassMapper]:
    """(records of ``split``, the category -> model class mapping checked against the source)."""
    recs, cats, source = read_records(data_cfg, split, max_images=max_images or _max_images(data_cfg, split))
    return recs, ClassMapper(data_cfg.classes, data_cfg.class_map, cats, source)


class RecordDataset(KittiDataset):
    """:class:`KittiDataset`'s items (same transform, augmentation, cache) over :class:`ImageRecord` s.

    Boxes of categories without a model class and ignore regions (crowd) are not training targets.
    """

    def __init__(self, records: list[ImageRecord], mapper: ClassMapper, image_size: tuple[int, int],
                 classes: list[str], augment=None, seed: int = 0, cache: ImageCache | None = None):
        from .transforms import DetectionTransform

        self.root, self.ids, self.classes = None, [r.image_id for r in records], list(classes)
        self._paths = {r.image_id: Path(r.path) for r in records}
        self.image_size = tuple(image_size)
        self.transform = DetectionTransform(self.image_size, augment)
        self.seed, self.epoch, self.cache = seed, 0, cache
        self._boxes, self._labels = [], []
        for r in records:
            lab = [mapper(n) for n in r.names]
            keep = [k for k, c in enumerate(lab) if c is not None and not r.crowd[k]]
            self._boxes.append(np.asarray(r.boxes[keep], np.float32).reshape(-1, 4))
            self._labels.append(np.asarray([lab[k] for k in keep], np.int64))

    def image_path(self, image_id: str) -> Path:
        return self._paths[image_id]

    def label_path(self, image_id: str) -> Path:  # pragma: no cover - records carry their boxes
        raise NotImplementedError("record datasets have no KITTI label files")


def build_record_dataset(data_cfg: DataConfig, split: str, *, train: bool, seed: int = 0) -> RecordDataset:
    recs, mapper = split_records(data_cfg, split)
    cache = None
    if data_cfg.cache:
        cache = ImageCache.build({r.image_id: r.path for r in recs}, tuple(data_cfg.image_size))
    return RecordDataset(recs, mapper, data_cfg.image_size, data_cfg.classes,
                         augment=data_cfg.augment if train else None, seed=seed, cache=cache)


def load_box_ground_truth(data_cfg: DataConfig, split: str, max_images: int | None = None
                          ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, tuple[int, int]]]:
    """``({id: {"boxes" [N, 4] xyxy px, "labels" int [N], "crowd" bool [N]}}, {id: (H, W)})`` for COCO AP.

    ``labels`` index ``data_cfg.classes``; -1 marks an ignore region of no model class (KITTI
    DontCare, a crowd box of an unmapped category): it ignores detections of every class. Boxes of
    categories without a model class are left out. Same ids as ``build_dataset``.
    """
    gt: dict[str, dict[str, np.ndarray]] = {}
    if data_cfg.format in RECORD_FORMATS:
        recs, mapper = split_records(data_cfg, split, max_images)
        sizes = {r.image_id: tuple(r.size) for r in recs}
        items = [(r.image_id, r.boxes, r.names, r.crowd) for r in recs]
    else:
        from .dataset import load_ground_truth

        kgt, sizes = load_ground_truth(data_cfg, split, max_images)
        mapper = ClassMapper(data_cfg.classes)
        items = [(i, np.asarray([o.bbox for o in objs], np.float64).reshape(-1, 4), [o.type for o in objs],
                  np.asarray([o.type == "DontCare" for o in objs], bool)) for i, objs in kgt.items()]
    for i, boxes, names, crowd in items:
        lab = [mapper(n) for n in names]
        keep = [k for k, c in enumerate(lab) if c is not None or crowd[k]]
        gt[i] = {"boxes": boxes[keep].reshape(-1, 4),
                 "labels": np.asarray([-1 if lab[k] is None else lab[k] for k in keep], np.int64),
                 "crowd": np.asarray([bool(crowd[k]) for k in keep], bool)}
    return gt, sizes


def input_boxes(data_cfg: DataConfig, split: str, max_images: int | None = None) -> np.ndarray:
    """Every box of a model class in ``split``, ``[B, 4]`` xyxy in model-input pixels (each image resized
    to ``data.image_size`` as the loaders do); ignore regions left out. KITTI/synth: labels only, no image is
    decoded, so sizing anchors on a large training split is quick; record formats admit each image
    once per process (decoded whole)."""
    gt, sizes = load_box_ground_truth(data_cfg, split, max_images)
    H, W = data_cfg.image_size
    out = [np.zeros((0, 4))]
    for i, g in gt.items():
        h0, w0 = sizes[i]
        keep = (g["labels"] >= 0) & ~g["crowd"]
        out.append(g["boxes"][keep] * np.array([W / w0, H / h0, W / w0, H / h0]))
    return np.concatenate(out).astype(np.float32)
