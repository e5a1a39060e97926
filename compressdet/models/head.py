"""The ConvDet head (squeezeDet) and the split of its raw output into named parts.

Channel layout of the raw tensor ``[N, A*(C+5), Hg, Wg]`` (METHOD.md section 1, C=3, A=9):
``[0, A*C)`` class logits, anchor-major (channel ``b*C + c``); ``[A*C, A*C+A)`` confidence
logits (channel ``A*C + b``); ``[A*C+A, A*(C+5))`` deltas (channel ``A*(C+1) + b*4 + k``).
Anchor ``b`` of cell ``(h, w)`` has the flat index ``(h*Wg + w)*A + b``.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ConvDetHead", "split_head_output", "head_channels"]


def head_channels(num_classes: int = 3, num_anchors: int = 9) -> int:
    """Output channels of the head: ``num_anchors * (num_classes + 1 + 4)`` (72 for the seed)."""
    return num_anchors * (num_classes + 5)


class ConvDetHead(nn.Module):
    """Dropout then one 3x3 conv with bias, no activation; init normal(std 1e-4), bias 0.

    Args:
        in_channels: channels of the backbone feature.
        num_classes, num_anchors: output layout (see module docstring).
        dropout: dropout probability (the seed: keep_prob 0.5 -> 0.5).
        init_std: std of the conv weight init.
    """

    def __init__(self, in_channels: int, *, num_classes: int = 3, num_anchors: int = 9, dropout: float = 0.5,
                 init_std: float = 1e-4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv2d(in_channels, head_channels(num_classes, num_anchors), 3, padding=1, bias=True)
        nn.init.normal_(self.conv.weight, std=init_std)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.dropout(x))


def split_head_output(out: Tensor, num_classes: int = 3, num_anchors: int = 9) -> tuple[Tensor, Tensor, Tensor]:
    """Split the raw head tensor into per-anchor parts in the flat anchor order.

    Args:
        out: ``[N, A*(C+5), Hg, Wg]`` raw head output (any memory format).

    Returns:
        ``(cls_logits [N, Hg*Wg*A, C], conf_logits [N, Hg*Wg*A], deltas [N, Hg*Wg*A, 4])``.

    Raises:
        ValueError: the channel count is not ``A*(C+5)``.
    """
    if out.dim() != 4 or out.shape[1] != head_channels(num_classes, num_anchors):
        raise ValueError(f"head output must be [N, {head_channels(num_classes, num_anchors)}, Hg, Wg] for "
                         f"{num_classes} classes x {num_anchors} anchors, got {list(out.shape)}")
    n = out.shape[0]
    x = out.permute(0, 2, 3, 1)  # N, Hg, Wg, ch: flat (h*Wg + w) then channel
    nc = num_anchors * num_classes
    cls_logits = x[..., :nc].reshape(n, -1, num_classes)
    conf_logits = x[..., nc:nc + num_anchors].reshape(n, -1)
    deltas = x[..., nc + num_anchors:].reshape(n, -1, 4)
    return cls_logits, conf_logits, deltas
