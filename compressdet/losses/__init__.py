"""Training losses: squeezeDet's detection loss and fine-grained feature imitation.

Losses return named sub-losses (dicts of scalars) so each is logged on its own.
"""

from .detection import SqueezeDetLoss, assign_anchors, paired_iou
from .imitation import AdaptationLayer, ImitationLoss, imitation_mask, normalizer_factor

__all__ = ["SqueezeDetLoss", "assign_anchors", "paired_iou", "imitation_mask", "AdaptationLayer",
           "ImitationLoss", "normalizer_factor"]
