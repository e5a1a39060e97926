"""Quantized stages (kinds ``qat`` / ``ptq``) as export and bench sources.

Such a stage has no float ``model`` artifact: it holds ``quantized`` (a ``torch.export`` ``.pt2`` of
the int8 program), ``onnx_int8`` (its verified QDQ graph) and ``report``, and names the float stage
it was quantized from in ``meta["from"]``. Export and bench use the float source for the fp32 graph,
MACs and params, and the stage's own int8 files for everything int8 (never a fresh PTQ).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import UserError

__all__ = ["QUANT_KINDS", "is_quant_stage", "is_model_stage", "float_source", "load_quantized_program",
           "graph_sha256", "quantization_label"]

QUANT_KINDS = ("qat", "ptq")


def is_model_stage(rec: Mapping[str, Any]) -> bool:
    return "model" in rec.get("artifacts", {})


def is_quant_stage(rec: Mapping[str, Any]) -> bool:
    """A qat/ptq-like stage: an int8 graph of its own, no float model (export stages' copies don't count)."""
    arts = rec.get("artifacts", {})
    return ("onnx_int8" in arts and not is_model_stage(rec)
            and (rec.get("kind") in QUANT_KINDS or "quantized" in arts))


def float_source(stages: Mapping[str, Mapping[str, Any]], name: str) -> str:
    """The float stage a quantized stage was made from (``meta.from``, else its ``from`` input).

    Raises:
        UserError: no such stage, or it has no finished float model.
    """
    rec = stages[name]
    src = (rec.get("meta") or {}).get("from") or (rec.get("inputs") or {}).get("from")
    if not src or src not in stages:
        raise UserError(f"stage '{name}' ({rec.get('kind')}) names no float source stage ('from') in the manifest")
    s = stages[src]
    if s.get("status", "done") != "done" or not is_model_stage(s):
        raise UserError(f"stage '{name}' ({rec.get('kind')}) was quantized from '{src}', which has no finished "
                        "float model in this run")
    return src


def _register_quant_ops() -> None:
    """Make ``torch.ops.quantized_decomposed`` resolvable before deserializing a PT2E program."""
    try:
        import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the ops; cheap)
    except ImportError:  # pragma: no cover - newer torch without torch.ao quantization
        import torchao.quantization.pt2e  # noqa: F401


def load_quantized_program(path: str | os.PathLike) -> torch.nn.Module:
    """``torch.export.load(path).module()`` of a stage's ``quantized.pt2`` (images -> head, batch 1)."""
    _register_quant_ops()
    return torch.export.load(str(path)).module()


def graph_sha256(path: str | os.PathLike) -> str:
    """sha256 of an ONNX file's graph (nodes, initializers, inputs/outputs), ignoring ``metadata_props``.

    Identifies "the same graph" across copies that only add metadata.
    """
    import onnx

    m = onnx.load(str(path))
    return hashlib.sha256(m.graph.SerializeToString(deterministic=True)).hexdigest()


def quantization_label(kind: str | None, meta: Mapping[str, Any] | None = None) -> str:
    """``qat-pt2e`` / ``ptq-<observer>-pt2e``: how a quantized stage's graph was made."""
    if kind == "ptq":
        return f"ptq-{(meta or {}).get('method', 'pt2e')}-pt2e"
    return f"{kind or 'int8'}-pt2e"
