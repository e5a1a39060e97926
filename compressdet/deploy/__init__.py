"""Deploy: the fastest runtime and precision that keeps the accuracy, measured on this machine.

``compressdet deploy RUN`` and the recipe stage ``kind: deploy`` export a model's candidates (ORT fp32,
OpenVINO f32 / default precision, the run's own INT8 QDQ graph in ORT and OpenVINO, OpenVINO INT8 by
NNCF PTQ; TensorRT on CUDA), time each in processes of its own, measure each one's mAP and keep the
fastest within ``max_map_drop`` of PyTorch fp32. Names resolve lazily, as in :mod:`compressdet.bench`.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"DeployOptions": "runner", "deploy": "runner", "read_deploy": "runner", "model_at_size": "runner",
          "DEPLOY_JSON": "runner", "CANDIDATE_NAMES": "runner", "write_reports": "report"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
