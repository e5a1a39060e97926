"""Model files and pretrained backbones.

A model file is a ``torch.save``d dict of plain data (loads with ``weights_only=True``)::

    {"format": "compressdet.model/1", "arch": {...}, "layers": {name: {...}}, "state_dict": {...}, "meta": {...}}

``arch`` rebuilds the unpruned model; ``layers`` records every Conv2d/BatchNorm2d's channels and
groups, and loading replays them (falling back to the state dict's shapes), so a channel-pruned
model reloads without pickled modules.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_torch_save
from ._registry import ModelError

__all__ = ["save_model", "load_model", "load_pretrained_backbone", "layer_shapes", "replay_layer_shapes",
           "FORMAT"]

FORMAT = "compressdet.model/1"


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """JSON-able channels/groups of every Conv2d and BatchNorm2d, keyed by module name."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = {"type": "Conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels,
                         "groups": m.groups}
        elif isinstance(m, nn.BatchNorm2d):
            out[name] = {"type": "BatchNorm2d", "num_features": m.num_features}
    return out


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _conv_like(m: nn.Conv2d, in_ch: int, out_ch: int, groups: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                     groups=groups, bias=m.bias is not None, padding_mode=m.padding_mode)


def replay_layer_shapes(model: nn.Module, state_dict: dict[str, torch.Tensor],
                        layers: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Resize Conv2d/BatchNorm2d modules of ``model`` in place to the shapes in ``state_dict``.

    Channels come from ``layers`` when given, else from the weight shapes: a conv keeps its
    ``groups`` (a depthwise conv, ``groups == in == out``, stays depthwise) and its input
    channels are ``weight.shape[1] * groups``.

    Returns:
        the names of the modules that were replaced.
    """
    changed = []
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Conv2d):
            w = state_dict.get(f"{name}.weight")
            if w is None:
                continue
            rec = (layers or {}).get(name)
            if rec is not None:
                out_ch, in_ch, groups = rec["out_channels"], rec["in_channels"], rec["groups"]
            else:
                depthwise = m.groups == m.in_channels == m.out_channels and m.groups > 1
                out_ch = int(w.shape[0])
                groups = out_ch if depthwise else m.groups
                in_ch = int(w.shape[1]) * groups
            if (out_ch, in_ch, groups) != (m.out_channels, m.in_channels, m.groups):
                _set_module(model, name, _conv_like(m, in_ch, out_ch, groups))
                changed.append(name)
        elif isinstance(m, nn.BatchNorm2d):
            rm = state_dict.get(f"{name}.running_mean", state_dict.get(f"{name}.weight"))
            if rm is None:
                continue
            n = int(rm.shape[0])
            if n != m.num_features:
                _set_module(model, name, nn.BatchNorm2d(n, eps=m.eps, momentum=m.momentum, affine=m.affine,
                                                        track_running_stats=m.track_running_stats))
                changed.append(name)
    return changed


def save_model(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None, *,
               half: bool = False) -> Path:
    """Write ``model`` (arch + layer shapes + state dict + ``meta``) atomically to ``path``.

    Args:
        model: a model with an ``arch`` dict (every registered model has one); may be pruned.
        meta: JSON-able extra data (metrics, recipe, pruning history, ...).
        half: store floating-point tensors as float16 (half the bytes, for shipping a model;
            :func:`load_model` casts them back to float32).
    """
    arch = getattr(model, "arch", None)
    if not isinstance(arch, dict):
        raise ModelError(f"{type(model).__name__} has no 'arch' dict; only compressdet models can be saved")
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
        meta = {**(meta or {}), "stored_dtype": "float16"}
    obj = {"format": FORMAT, "arch": dict(arch), "layers": layer_shapes(model), "state_dict": sd,
           "meta": dict(meta or {})}
    return atomic_torch_save(obj, path)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
               base: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """Load a model file written by :func:`save_model`.

    The model is rebuilt through the registry from the stored ``arch["name"]`` (every family:
    ShuffleDet, ``fcos_*``, ``retinanet_*``, names registered by user code), then the saved layer
    shapes are replayed and the weights loaded.

    Args:
        base: a freshly built model to load the weights into instead of rebuilding from the
            registry (a "bring your own" model whose builder is not registered, see
            :func:`compressdet.models.wrap_torchvision`).

    Returns:
        ``(model, meta)``; the model is in eval mode with the saved (possibly pruned) shapes.

    Raises:
        ModelError: missing file, not a compressdet model file, unknown architecture, or weights
            that do not fit.
    """
    from ._registry import model_from_arch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file '{path}' does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our file"
        raise ModelError(f"'{path}' is not a loadable model file: {e.__class__.__name__}: {e}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ModelError(f"'{path}' is not a compressdet model file (expected format '{FORMAT}')")
    arch = obj["arch"]
    if base is not None:
        model = base
    else:
        try:
            model = model_from_arch(arch)
        except ModelError as e:
            if arch.get("wrapped") and not arch.get("factory"):  # a wrap_torchvision model whose builder is not registered
                raise ModelError(f"'{path}' holds a wrapped torchvision {arch['wrapped']} ('{arch.get('name')}'): load it "
                                 "with load_model(path, base=wrap_torchvision(<a fresh instance>, ...)) or register "
                                 "a builder under that name") from None
            raise ModelError(f"'{path}': {e}") from None
        except TypeError as e:
            raise ModelError(f"'{path}': cannot rebuild arch {arch}: {e}") from None
    sd = {k: v.float() if v.dtype == torch.float16 else v for k, v in obj["state_dict"].items()}  # half=True files
    replay_layer_shapes(model, sd, obj.get("layers"))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ModelError(f"'{path}': weights do not fit the rebuilt model: {' '.join(first[:3])}") from None
    model.to(map_location).eval()
    return model, obj.get("meta") or {}


# --------------------------------------------------------------------------------------------
# pretrained backbones

_PREFIXES = ("module.", "model.", "backbone.", "features.", "state_dict.")


def _unwrap_checkpoint(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state", "net"):
            if key in obj and isinstance(obj[key], dict):
                return _unwrap_checkpoint(obj[key])
        if obj.get("format") == FORMAT and "state_dict" in obj:
            return obj["state_dict"]
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    raise ModelError("pretrained checkpoint is not a state dict")


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _natural(key: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def load_pretrained_backbone(model: nn.Module, path: str | os.PathLike, *, verbose: bool = True) -> dict[str, Any]:
    """Copy a local backbone checkpoint (e.g. an ImageNet ShuffleNet v1) into ``model.backbone``.

    Keys are matched by name after stripping ``module.``/``backbone.``/... prefixes; when names do
    not match (a different implementation), the remaining tensors are matched in order by shape,
    per kind (weights, biases, running stats), skipping source tensors whose shape does not fit. Classifier
    weights and anything left over are reported as unexpected. Never downloads.

    Returns:
        ``{"loaded": [...], "missing": [...], "unexpected": [...], "mismatched": [...]}``.

    Raises:
        ModelError: the file is missing/unreadable or nothing could be matched.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"pretrained checkpoint '{path}' does not exist (compressdet never downloads weights)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"pretrained checkpoint '{path}' cannot be read: {e.__class__.__name__}: {e}") from None
    src = {_strip(k): v for k, v in _unwrap_checkpoint(obj).items()}
    backbone = model.backbone
    dst = backbone.state_dict()
    new: dict[str, torch.Tensor] = {}
    mismatched = []
    for k, v in src.items():
        if k in dst:
            if dst[k].shape == v.shape:
                new[k] = v
            else:
                mismatched.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(dst[k].shape)}")
    used = set(new)
    # fall back to order+shape matching for what names did not cover
    rest_dst = [k for k in dst if k not in new and not k.endswith("num_batches_tracked")]
    rest_src = [k for k in sorted(src, key=_natural) if k not in used and not k.endswith("num_batches_tracked")]
    if rest_dst and rest_src and len(new) < len(rest_dst):
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            ds = [k for k in rest_dst if k.endswith("." + suffix)]
            ss = [k for k in rest_src if k.endswith("." + suffix)]
            j = 0
            for dk in ds:  # greedy: skip source tensors (a classifier, extra units) that do not fit
                while j < len(ss) and src[ss[j]].shape != dst[dk].shape:
                    j += 1
                if j == len(ss):
                    break
                new[dk] = src[ss[j]]
                used.add(ss[j])
                j += 1
    if not new:
        raise ModelError(f"pretrained checkpoint '{path}': no tensor matches the backbone by name or shape")
    backbone.load_state_dict(new, strict=False)
    report = {
        "loaded": sorted(new),
        "missing": [k for k in dst if k not in new and not k.endswith("num_batches_tracked")],
        "unexpected": [k for k in src if k not in used],
        "mismatched": mismatched,
    }
    if verbose:
        import logging

        log = logging.getLogger("compressdet.models")
        log.warning("pretrained %s: loaded %d tensors, %d missing, %d unexpected, %d shape mismatches",
                    path, len(report["loaded"]), len(report["missing"]), len(report["unexpected"]),
                    len(mismatched))
        for what in ("missing", "unexpected", "mismatched"):
            if report[what]:
                more = f" (+{len(report[what]) - 8} more)" if len(report[what]) > 8 else ""
                log.warning("  %s: %s%s", what, ", ".join(report[what][:8]), more)
    return report
