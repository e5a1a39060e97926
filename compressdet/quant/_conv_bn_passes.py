"""torchao's conv + BN passes, run only for the conv kinds a graph holds.

``prepare_qat_pt2e`` (``_fuse_conv_bn_qat``) and ``convert_pt2e`` (``_fold_conv_bn_qat``) try conv1d,
conv2d, conv_transpose1d and conv_transpose2d patterns in turn, and build every pattern anew with
``torch.export`` at each call: 64 exports per convert, three quarters of them for kinds our 2-d
detectors never have, about 40 s of a 2-core CPU per QAT or PTQ stage. Inside :func:`present_conv_kinds_only`
the per-kind helper returns the graph untouched when it holds no conv of that kind, so only its patterns
are built. Nothing else changes: a kind the graph has runs torchao's own helper, and a graph without convs,
or with a conv node this module does not recognise, runs every kind (tests check the graph and weights
are those of the full pass).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

__all__ = ["present_conv_kinds_only", "conv_kinds", "narrowed"]

#: torchao's pattern function -> the aten op name its patterns match
_KIND = {F.conv1d: "conv1d", F.conv2d: "conv2d", F.conv_transpose1d: "conv_transpose1d",
         F.conv_transpose2d: "conv_transpose2d"}
#: torchao helpers that take ``(m, conv_fn, example_inputs, is_cuda)`` and only rewrite conv_fn's patterns
_HELPERS = ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper")


def conv_kinds(gm: torch.fx.GraphModule) -> set[str] | None:
    """The conv kinds (``conv2d`` ...) among ``gm``'s aten calls; None when a conv-like call is not one of them."""
    kinds: set[str] = set()
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        name = str(n.target)  # e.g. "aten.conv2d.default"
        if "conv" not in name:
            continue
        parts = name.split(".")
        if parts[0] != "aten" or len(parts) < 2 or parts[1] not in _KIND.values():
            return None  # aten.convolution or anything else: leave torchao's passes whole
        kinds.add(parts[1])
    return kinds


def narrowed(original: Callable) -> Callable:
    """``original`` (a torchao helper ``(m, conv_fn, example_inputs, is_cuda)``) that returns ``m`` untouched
    when ``m`` holds convs, none of them ``conv_fn``'s kind (a graph without any conv runs it: its
    dead-code pass is then the only one prepare gets)."""

    def helper(m, conv_fn, example_inputs, is_cuda, *args, **kwargs):
        kinds = conv_kinds(m)
        if kinds and conv_fn in _KIND and _KIND[conv_fn] not in kinds:
            return m
        return original(m, conv_fn, example_inputs, is_cuda, *args, **kwargs)

    helper.__wrapped__ = original
    return helper


_lock = threading.Lock()
_depth = 0
_originals: dict[str, Callable] = {}


@contextlib.contextmanager
def present_conv_kinds_only() -> Iterator[None]:
    """Within: torchao's conv + BN fuse / fold helpers skip the conv kinds a graph does not hold.

    Re-entrant and thread-safe: the first block in installs the narrowed helpers, the last one out
    puts torchao's back."""
    global _depth
    try:
        from torchao.quantization.pt2e import qat_utils
    except ImportError:  # pragma: no cover - torchao is a dependency; nothing to narrow without it
        yield
        return
    with _lock:
        if _depth == 0:
            _originals.update({h: getattr(qat_utils, h) for h in _HELPERS if callable(getattr(qat_utils, h, None))})
            for name, fn in _originals.items():
                setattr(qat_utils, name, narrowed(fn))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for name, fn in _originals.items():
                    setattr(qat_utils, name, fn)
                _originals.clear()
