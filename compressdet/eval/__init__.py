"""KITTI 2D evaluation (equal to the official devkit), the seed's results table, visualisation."""

from .inputs import load_coco_pair, load_kitti_dirs
from .kitti_eval import CLASSES, LEVELS, PROTOCOLS, evaluate_kitti, predictions_to_kitti
from .table import format_table

__all__ = ["evaluate_kitti", "predictions_to_kitti", "format_table", "CLASSES", "LEVELS", "PROTOCOLS",
           "load_kitti_dirs", "load_coco_pair",
           "draw_detections", "draw_mask", "plot_pr_curves"]


def __getattr__(name):  # viz pulls in matplotlib/PIL: import it only when asked for
    if name in ("draw_detections", "draw_mask", "plot_pr_curves"):
        from . import viz

        return getattr(viz, name)
    raise AttributeError(name)
