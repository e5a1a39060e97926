"""Data: format readers (kitti, synth, coco, yolo, voc: ``compressdet.data.formats``), the seed's
augmentation, loaders, SynthKITTI (the embedded default), conversion and KITTI verification.

Public API (docs/architecture.md, ``compressdet.data``): :func:`prepare_data`,
:func:`build_dataset`, :func:`collate`, :func:`build_loader`, :func:`load_ground_truth`,
:func:`to_original`; ``formats.read_records`` / ``records.load_box_ground_truth`` for any format.
"""

from .dataset import (
           InfiniteSampler,
           KittiDataset,
           build_dataset,
           build_loader,
           collate,
           load_ground_truth,
           prepare_data,
)
from .kitti import KittiObject, difficulty, read_label_file, read_split, write_label_file
from .transforms import MEAN_BGR, to_original

__all__ = ["prepare_data", "build_dataset", "collate", "build_loader", "load_ground_truth", "to_original",
           "KittiDataset", "InfiniteSampler", "KittiObject", "read_label_file", "write_label_file", "read_split",
           "difficulty", "MEAN_BGR"]
