"""An analytic CPU latency proxy: MACs plus activation memory traffic.

MACs alone mislead on CPU: ONNX Runtime runs ShuffleNet's depthwise convs, pools, concats, channel
shuffles (a Transpose) and its layout reorders at memory speed, so a channel of the full-resolution
stem or of the residual/concat stream costs far more time than its MACs say, and a bottleneck channel
less. The proxy counts, per layer, ``MACs + mem_weight * (activation elements read + written)``;
``mem_weight`` = 16 MAC-equivalents per fp32 element was fitted on ORT fp32 (2 threads, 384x1248,
0.5x student: see benchmarks/prune.py ``latency``), where it ranks the channel groups the way
measured latency does. Only ratios of the proxy mean anything.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["DEFAULT_MEM_WEIGHT", "latency_proxy", "forward_with_hooks"]

DEFAULT_MEM_WEIGHT = 16.0


def _numel(t: object) -> int:
    return t[0].numel() if isinstance(t, Tensor) else 0  # one image of the batch


def latency_proxy(model: nn.Module, example_inputs: Tensor, modules: nn.Module | None = None, *,
                  mem_weight: float = DEFAULT_MEM_WEIGHT) -> float:
    """Latency proxy of one forward of ``model`` at ``example_inputs``, counted over ``modules``.

    Args:
        model: the network (run in eval mode, no grad).
        example_inputs: ``Tensor[N, 3, H, W]`` (only the first image is used).
        modules: the part to count (default: all of ``model``), e.g. ``model.backbone``.
        mem_weight: MAC-equivalents per activation element moved.

    Returns:
        ``sum(MACs) + mem_weight * sum(elements read + written)`` over convs, pools, channel shuffles
        and the concat / residual add of ShuffleNet units.
    """
    from ..models.shuffledet import ShuffleUnit
    from .graph import shuffle_types

    total = [0.0]

    def hook(m: nn.Module, args: tuple, out: Tensor) -> None:
        inp = _numel(args[0]) if args else 0
        outn = _numel(out)
        if isinstance(m, nn.Conv2d):
            macs = outn * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            total[0] += macs + mem_weight * (inp + outn)
        elif isinstance(m, nn.Linear):
            total[0] += outn * m.in_features + mem_weight * (inp + outn)
        elif isinstance(m, ShuffleUnit):
            # the unit's own glue: concat copies its output, the residual add reads the shortcut
            if m.mode == "down":
                total[0] += mem_weight * 2 * outn
            elif m.mode == "residual":
                total[0] += mem_weight * outn
        else:  # pools, shuffles: pure data movement
            total[0] += mem_weight * (inp + outn)

    kinds = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, ShuffleUnit) + shuffle_types()
    forward_with_hooks(model, example_inputs, model if modules is None else modules, kinds, hook)
    return total[0]


def forward_with_hooks(model: nn.Module, example_inputs: Tensor, scope: nn.Module, kinds: tuple[type, ...],
                       hook: Callable[[nn.Module, tuple, object], None]) -> None:
    """One eval-mode, no-grad forward of the first example image with ``hook`` on every ``kinds`` module
    inside ``scope``; hooks and the training flag are restored even if the forward fails."""
    hooks = [m.register_forward_hook(hook) for m in scope.modules() if isinstance(m, kinds)]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_inputs[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
