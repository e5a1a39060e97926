"""Structured channel pruning for ShuffleDet (torch-pruning DepGraph made shuffle- and group-aware).

One idea per module (Torch-Pruning's layout): :mod:`.graph` knows which channels are coupled
(channel shuffle permutation, grouped convs), :mod:`.importance` scores channels, :mod:`.algorithm`
decides how much and when, :mod:`.history` stores what was done as replayable JSON.
"""

from .algorithm import ChannelPruner, apply_ops, conv_macs, feasible_cuts
from .graph import GroupConstraints, PruningError, ShuffleDependencyGraph, group_constraints
from .history import load_history, replay_history, save_history
from .importance import IMPORTANCES, get_importance

__all__ = ["ChannelPruner", "ShuffleDependencyGraph", "GroupConstraints", "PruningError", "group_constraints",
           "feasible_cuts", "apply_ops", "conv_macs", "get_importance", "IMPORTANCES", "save_history",
           "load_history", "replay_history"]
