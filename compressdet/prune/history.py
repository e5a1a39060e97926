"""Pruning history as JSON, and its replay on a fresh model.

Torch-Pruning keeps ``[module name, is_out, idxs]`` lists and pickles them; here each step of
:class:`~compressdet.prune.algorithm.ChannelPruner` is stored as plain JSON (root module, root
channel indices removed), so a pruned architecture can be rebuilt from the unpruned one and audited.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write_json
from .algorithm import apply_ops
from .graph import PruningError, ShuffleDependencyGraph

__all__ = ["HISTORY_FORMAT", "save_history", "load_history", "replay_history"]

HISTORY_FORMAT = "compressdet.prune_history/1"


def save_history(path: str | Path, steps: list[dict[str, Any]], *, arch: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write the steps (``ChannelPruner.history``) with the unpruned model's ``arch`` atomically."""
    obj = {"format": HISTORY_FORMAT, "arch": arch, "steps": [
        {**{k: v for k, v in s.items() if k != "ops"},
         "ops": [{"module": op["module"], "idxs": [int(i) for i in op["idxs"]]} for op in s["ops"]]}
        for s in steps], **(extra or {})}
    atomic_write_json(Path(path), obj)
    return Path(path)


def load_history(path: str | Path) -> dict[str, Any]:
    """Read a history file; raises :class:`PruningError` when it is not one."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise PruningError(f"{path}: cannot read pruning history ({e.__class__.__name__}: {e})") from None
    if not isinstance(obj, dict) or obj.get("format") != HISTORY_FORMAT:
        raise PruningError(f"{path}: not a pruning history (expected format '{HISTORY_FORMAT}')")
    return obj


def replay_history(model: nn.Module, history: dict[str, Any] | list[dict[str, Any]],
                   example_inputs: torch.Tensor) -> nn.Module:
    """Apply a recorded history to ``model`` (unpruned, same arch) in place; returns it.

    Each step is replayed on a graph rebuilt for that step, as it was recorded.
    """
    steps = history["steps"] if isinstance(history, dict) else history
    was = model.training
    for s in steps:
        DG = ShuffleDependencyGraph().build_dependency(model, example_inputs)
        apply_ops(DG, model, s["ops"])
    model.train(was)
    return model
