"""MACs and parameter counts of a model, counted with ``torch.utils.flop_counter.FlopCounterMode``.

Convention: one multiply-add = one MAC = FlopCounter's flops / 2. Counting runs on the ``meta``
device (a copy of the model; no memory, no arithmetic), so full-size counts are instant.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["model_summary", "count_params", "count_macs"]


def count_params(module: nn.Module) -> dict[str, int]:
    """``{"params": weights+biases (BN gamma/beta included), "params_with_bn_stats": + BN running mean/var}``."""
    params = sum(p.numel() for p in module.parameters())
    stats = sum(b.numel() for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var")))
    return {"params": params, "params_with_bn_stats": params + stats}


def count_macs(model: nn.Module, image_size: Sequence[int], *, batch: int = 1) -> tuple[int, dict[str, int]]:
    """Total MACs of ``model(x)`` for ``x [batch, 3, H, W]`` and MACs per module name.

    Returns:
        ``(total, {module_name: macs})`` where names are ``named_modules`` names ('' = root).
    """
    h, w = image_size
    meta_model = copy.deepcopy(model).to("meta").eval()
    x = torch.empty(batch, 3, int(h), int(w), device="meta")
    mode = FlopCounterMode(display=False)
    with mode, torch.no_grad():
        meta_model(x)
    counts = mode.get_flop_counts()
    root = type(meta_model).__name__
    per_module: dict[str, int] = {}
    for key, ops in counts.items():
        if key == "Global":
            continue
        name = key[len(root):].lstrip(".") if key.startswith(root) else key
        per_module[name] = sum(ops.values()) // 2
    total = sum(counts.get("Global", {}).values()) // 2
    return total, per_module


def model_summary(model: nn.Module, image_size: Sequence[int] | None = None) -> dict[str, Any]:
    """Backbone/head/total MACs, params with and without BN running stats, per-stage rows.

    Args:
        model: a ShuffleDet (anything with ``.backbone`` and ``.head``; stages are the backbone's
            ``stage_names`` when present).
        image_size: ``(H, W)``; default ``model.image_size``.

    Returns:
        ``{"name", "image_size", "macs": {"backbone", "head", "total"}, "params": {...},
        "params_with_bn_stats": {...}, "feature_channels", "output_shape", "stages": [rows]}``;
        each row ``{"stage", "macs", "params", "params_with_bn_stats", "out_channels"}``.
    """
    image_size = tuple(int(v) for v in (image_size or model.image_size))
    total, per = count_macs(model, image_size)
    if getattr(model, "family", "shuffledet") == "yolo":
        return _yolo_summary(model, image_size, total, per)
    if getattr(model, "family", "shuffledet") != "shuffledet":
        return _fpn_summary(model, image_size, total, per)
    backbone_macs = per.get("backbone", 0)
    head_macs = per.get("head", 0)
    rows = []
    bb = model.backbone
    info = {d["module"]: d for d in bb.feature_info()} if hasattr(bb, "feature_info") else {}
    for stage in getattr(bb, "stage_names", [n for n, _ in bb.named_children()]):
        mod = getattr(bb, stage)
        p = count_params(mod)
        macs = per.get(f"backbone.{stage}", 0)
        if stage == "stem":
            macs += per.get("backbone.pool", 0)
        red = info.get(stage, {}).get("reduction")
        rows.append({"stage": "backbone.stem+pool" if stage == "stem" else f"backbone.{stage}", "macs": macs, **p,
                     "out_channels": info.get(stage, {}).get("num_chs"),
                     "reduction": red * 2 if stage == "stem" and red else red})
    ph = count_params(model.head)
    rows.append({"stage": "head", "macs": head_macs, **ph, "out_channels": model.head.conv.out_channels,
                 "reduction": 16})
    pb, pt = count_params(bb), count_params(model)
    hs, ws = image_size[0] // 16, image_size[1] // 16
    return {
        "name": getattr(model, "arch", {}).get("name", type(model).__name__),
        "image_size": list(image_size),
        "macs": {"backbone": backbone_macs, "head": head_macs, "total": total},
        "params": {"backbone": pb["params"], "head": ph["params"], "total": pt["params"]},
        "params_with_bn_stats": {"backbone": pb["params_with_bn_stats"], "head": ph["params_with_bn_stats"],
                                 "total": pt["params_with_bn_stats"]},
        "feature_channels": getattr(model, "feature_channels", None),
        "output_shape": [model.head.conv.out_channels, hs, ws],
        "stages": rows,
    }


def _fpn_summary(model: nn.Module, image_size: tuple[int, int], total: int, per: dict[str, int]) -> dict[str, Any]:
    """:func:`model_summary` of an FPN family (``model.det.backbone`` = body + fpn, ``model.det.head``):
    rows are the body, the FPN and the head; ``output_shape`` lists the raw outputs' shapes."""
    bb, head = model.backbone, model.head
    rows = []
    for name, mod in bb.named_children():
        rows.append({"stage": f"backbone.{name}", "macs": per.get(f"det.backbone.{name}", 0), **count_params(mod),
                     "out_channels": None, "reduction": None})
    ph, pb, pt = count_params(head), count_params(bb), count_params(model)
    rows.append({"stage": "head", "macs": per.get("det.head", 0), **ph, "out_channels": None, "reduction": None})
    k = sum(model.priors_per_level())
    return {
        "name": getattr(model, "arch", {}).get("name", type(model).__name__),
        "image_size": list(image_size),
        "macs": {"backbone": per.get("det.backbone", 0), "head": per.get("det.head", 0), "total": total},
        "params": {"backbone": pb["params"], "head": ph["params"], "total": pt["params"]},
        "params_with_bn_stats": {"backbone": pb["params_with_bn_stats"], "head": ph["params_with_bn_stats"],
                                 "total": pt["params_with_bn_stats"]},
        "feature_channels": [t.channels for t in model.feature_taps()],
        "output_shape": {name: [k, {"cls_logits": model.num_classes, "bbox_regression": 4, "bbox_ctrness": 1}[name]]
                         for name in model.export_outputs},
        "stages": rows,
    }


def _yolo_summary(model: nn.Module, image_size: tuple[int, int], total: int, per: dict[str, int]) -> dict[str, Any]:
    """:func:`model_summary` of an Ultralytics YOLO (``model.net.model``: the YAML's backbone layers, then its
    head section, whose last layer is Detect): rows backbone / neck / head; ``macs.backbone`` = backbone + neck
    (what feeds the head, as the FPN families count it)."""
    layers = list(model.net.model)
    nb = len(model.arch.get("cfg", {}).get("backbone", [])) or len(layers) - 1
    groups = {"backbone": layers[:nb], "neck": layers[nb:-1], "head": layers[-1:]}
    macs = {g: sum(per.get(f"net.model.{m.i}", 0) for m in mods) for g, mods in groups.items()}
    macs["head"] = total - macs["backbone"] - macs["neck"]  # its convs run outside Detect.forward (forward_head)
    params = {g: {"params": sum(count_params(m)["params"] for m in mods),
                  "params_with_bn_stats": sum(count_params(m)["params_with_bn_stats"] for m in mods)}
              for g, mods in groups.items()}
    rows = [{"stage": g, "macs": macs[g], **params[g], "out_channels": None, "reduction": None} for g in groups]
    pt = count_params(model)
    k = sum(h * w for h, w in model.level_shapes())
    body = {key: params["backbone"][key] + params["neck"][key] for key in ("params", "params_with_bn_stats")}
    return {
        "name": getattr(model, "arch", {}).get("name", type(model).__name__),
        "image_size": list(image_size),
        "macs": {"backbone": macs["backbone"] + macs["neck"], "head": macs["head"], "total": total},
        "params": {"backbone": body["params"], "head": params["head"]["params"], "total": pt["params"]},
        "params_with_bn_stats": {"backbone": body["params_with_bn_stats"],
                                 "head": params["head"]["params_with_bn_stats"], "total": pt["params_with_bn_stats"]},
        "feature_channels": [t.channels for t in model.feature_taps()],
        "output_shape": {"box_dist": [4 * int(model.head.reg_max), k], "cls_logits": [model.num_classes, k]},
        "stages": rows,
    }
