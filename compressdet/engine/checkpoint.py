"""Training checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain types only: model/optimizer/scheduler state dicts,
the step, RNG states (torch CPU + CUDA, numpy, python ``random``: converted to tensors/lists so
no pickled objects are needed) and the sampler position. Written atomically, so a kill during
the write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_torch_save
from ..errors import ArtifactError

__all__ = ["get_rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint"]


def get_rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as weights_only-loadable values."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda])


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Atomic ``torch.save`` of a trainer state (see module docstring for what it holds)."""
    return atomic_torch_save(state, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a bad file is a one-line :class:`ArtifactError`."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: checkpoint not found")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated or foreign files
        raise ArtifactError(f"{p}: not a readable compressdet checkpoint ({e.__class__.__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise ArtifactError(f"{p}: not a trainer checkpoint (no 'model'/'step' entries)")
    return state
