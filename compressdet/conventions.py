"""Constants every layer shares, defined once at the bottom of the package (beside ``errors`` and
``_io``) so that data, eval, export, bench and predict agree without importing each other."""

from __future__ import annotations

__all__ = ["MEAN_BGR", "KITTI_CLASSES", "default_classes"]

#: per-channel BGR mean subtracted from every input (METHOD.md §1); no std division
MEAN_BGR = (103.939, 116.779, 123.68)
#: the three classes KITTI's 2D benchmark evaluates; the default ``data.classes`` of the kitti/synth formats
#: only (coco/yolo/voc models have their own classes, carried by model files, runs, ONNX and IR metadata)
KITTI_CLASSES = ("car", "pedestrian", "cyclist")


def default_classes(n: int) -> list[str]:
    """Class names of a model file that records none: KITTI's three for a 3-class model (files made before
    classes were recorded were KITTI models), else ``class0 .. class{n-1}`` (never a guess at real names)."""
    return list(KITTI_CLASSES) if n == 3 else [f"class{i}" for i in range(n)]
