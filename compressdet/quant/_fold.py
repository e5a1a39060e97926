"""Quantization-ready float model: ShuffleNet units rewritten so INT8 graphs run fast and annotate.

Exact rewrites (same outputs as the source model, up to float rounding):

* **Channel shuffle folded into weights.** The shuffle (view/transpose/flatten) sits between the
  first 1x1 conv and the depthwise conv. A depthwise conv and its BN act per channel, so the
  permutation moves past them by permuting their parameters; it then reaches the second 1x1
  conv's *input* side. That conv is grouped (g=3) and the shuffle deliberately maps every output
  group to channels of all three input groups, so the permutation cannot stay a grouped conv: the
  conv becomes dense, its weight the block-diagonal expansion of the grouped weight with columns
  permuted (zeros elsewhere). ``mask`` keeps those zeros at zero during QAT (gradient hook), so
  the layer remains a ShuffleNet conv in disguise. Per-output-channel weight scales are unchanged
  (a zero column does not change a channel's max |w|). ONNX Runtime's NHWC INT8 kernels then see
  no 5-D reshape/transpose, which is what made the naive INT8 graph slower than fp32.
* **Shortcut average pool as a depthwise conv.** ``AvgPool2d(3, 2, 1, count_include_pad=False)``
  equals a depthwise 3x3/2 conv with weights 1/9 (zero padding) times a fixed map ``9 / count``
  (``count``: valid inputs per window; differs from 9 only on border rows/columns).
  :class:`AvgPoolAsConv`. ONNX Runtime runs it as QLinearConv + QLinearMul instead of its slow
  generic QLinearAveragePool.
* **Bottleneck widths padded to a multiple of 16.** ONNX Runtime's u8s8 kernels (1x1 GEMM,
  depthwise) run 2-4x faster when the channel count is a multiple of 16 (15 -> 16 channels:
  depthwise 3x3 2.21 -> 0.50 ms, 1x1 15 -> 60: 1.33 -> 0.30 ms at 96x312). The bottleneck gets
  zero channels appended: ``conv1`` (made dense, block-diagonal, if it was grouped) gets zero
  rows, the depthwise conv zero filters, ``conv2`` zero columns; the padded BN channels have
  gamma 1 and beta 0, so they output exactly 0 in training and eval mode (gamma 0 would make
  PT2E's QAT conv+BN fold divide 0 by 0). Masks keep every padded weight and beta at zero in QAT.
* **Head split per output kind** (opt-in, ``QuantConfig.head_int8``): the head conv becomes three
  convs (class logits, confidence logits, box deltas; :class:`PerKindHead`) whose outputs are
  concatenated in float, so an int8 head gives each kind its own output scale instead of one
  scale shared by logits and box offsets.
* **One ReLU module per use.** PT2E's pattern matcher groups the calls of a shared ``nn.ReLU``
  into one partition with several outputs and refuses it; each use gets its own module.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["QuantUnit", "PaddedStemConv", "AvgPoolAsConv", "PerKindHead", "shuffle_permutation", "quant_ready",
           "FeatureWrapper"]


def shuffle_permutation(channels: int, groups: int) -> Tensor:
    """``perm`` with ``channel_shuffle(x)[:, j] == x[:, perm[j]]`` (``channels % groups == 0``)."""
    if channels % groups:
        raise ValueError(f"{channels} channels are not divisible by {groups} shuffle groups")
    return torch.arange(channels).view(groups, channels // groups).t().reshape(-1)


def _block_diagonal(conv: nn.Conv2d, out: int | None = None) -> tuple[Tensor, Tensor]:
    """Dense weight of a (possibly grouped) conv, ``out`` rows (extra rows zero), and its 0/1 mask."""
    cout, cin_g = conv.weight.shape[:2]
    g = conv.groups
    full = conv.weight.new_zeros(out or cout, conv.in_channels, *conv.weight.shape[2:])
    mask = torch.zeros_like(full)
    og = cout // g
    for k in range(g):
        full[k * og:(k + 1) * og, k * cin_g:(k + 1) * cin_g] = conv.weight.detach()[k * og:(k + 1) * og]
        mask[k * og:(k + 1) * og, k * cin_g:(k + 1) * cin_g] = 1
    return full, mask


def _dense_conv(conv: nn.Conv2d, weight: Tensor) -> nn.Conv2d:
    dense = nn.Conv2d(weight.shape[1], weight.shape[0], conv.kernel_size, conv.stride, conv.padding,
                      bias=conv.bias is not None)
    dense.weight.data.copy_(weight)
    if conv.bias is not None:
        dense.bias.data.zero_()
        dense.bias.data[:conv.out_channels] = conv.bias.detach()
    return dense


def _dense_permuted(conv: nn.Conv2d, perm: Tensor) -> tuple[nn.Conv2d, Tensor]:
    """Dense 1x1 conv equal to ``conv(x[:, perm])`` applied to the unpermuted ``x``; plus its 0/1 mask."""
    full, mask = _block_diagonal(conv)
    # new input channel perm[j] carries what the grouped conv saw at position j
    w = torch.zeros_like(full)
    m = torch.zeros_like(mask)
    w[:, perm] = full
    m[:, perm] = mask
    return _dense_conv(conv, w), m


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad_rows(conv: nn.Conv2d, out: int) -> tuple[nn.Conv2d, Tensor]:
    """Dense copy of ``conv`` with ``out`` output channels (extra rows zero) and its 0/1 weight mask;
    a grouped conv becomes its block-diagonal dense equivalent (the mask marks the blocks)."""
    w, mask = _block_diagonal(conv, out)
    return _dense_conv(conv, w), mask


def _widened(conv: nn.Conv2d, out_channels: int, in_channels: int, mask: Tensor | None = None, *,
             depthwise: bool = False) -> tuple[nn.Conv2d, Tensor]:
    """``conv`` embedded in a wider zero conv and its 0/1 weight mask.

    The old weight, bias and ``mask`` (default: all ones) fill the leading output and input channels.
    ``depthwise``: ``conv`` is depthwise and stays so (``out_channels`` groups).
    """
    if conv.groups != (conv.in_channels if depthwise else 1):
        raise ValueError(f"cannot widen a conv with groups={conv.groups} (depthwise={depthwise})")
    new = nn.Conv2d(in_channels, out_channels, conv.kernel_size, conv.stride, conv.padding,
                    groups=out_channels if depthwise else 1, bias=conv.bias is not None)
    o, i = conv.weight.shape[:2]
    new_mask = torch.zeros_like(new.weight)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:o, :i] = conv.weight
        new_mask[:o, :i] = 1 if mask is None else mask
        if conv.bias is not None:
            new.bias.zero_()
            new.bias[:o] = conv.bias
    return new, new_mask


def _pad_bn(bn: nn.BatchNorm2d, channels: int) -> tuple[nn.BatchNorm2d, Tensor]:
    """BN with zero-output extra channels (gamma 1, beta 0, mean 0, var 1); mask for beta."""
    c = bn.num_features
    new = nn.BatchNorm2d(channels, eps=bn.eps, momentum=bn.momentum).to(bn.weight.device)
    with torch.no_grad():
        new.weight[:c], new.bias[:c] = bn.weight, bn.bias
        new.running_mean[:c], new.running_var[:c] = bn.running_mean, bn.running_var
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    mask = torch.zeros_like(new.bias)
    mask[:c] = 1
    return new, mask


def _permute_channels_(module: nn.Module, perm: Tensor) -> None:
    """Reorder a per-channel module (depthwise conv, BN) so new channel ``perm[j]`` = old channel ``j``."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(module, name, None)
        if t is None:
            continue
        new = torch.empty_like(t.data)
        new[perm] = t.data
        t.data = new


class _MaskedParams(nn.Module):
    """Parameters whose masked entries stay zero in QAT: the mask multiplies the gradient in eager
    mode, and ``param_masks()`` hands it to ``_pt2e.apply_masks`` for the captured graph."""

    def __init__(self) -> None:
        super().__init__()
        self._masks: dict[str, str] = {}  # parameter name -> name of its mask buffer

    def _add_mask(self, param: str, mask: Tensor) -> None:
        buf = "mask_" + param.replace(".", "_")
        self.register_buffer(buf, mask, persistent=False)
        self._masks[param] = buf
        self.get_parameter(param).register_hook(lambda g, b=buf: g * getattr(self, b))

    def param_masks(self) -> dict[str, Tensor]:
        return {p: getattr(self, b) for p, b in self._masks.items()}


class AvgPoolAsConv(nn.Module):
    """``AvgPool2d(3, stride=2, padding=1, count_include_pad=False)`` as depthwise conv * border map.

    The conv weight (1/9, a frozen parameter) quantizes exactly (per channel: q = 127). The
    correction map ``9 / count`` (repeated per channel) depends only on the input's spatial size; it is computed in
    Python on the first eager call for a size (``capture`` runs one eager pass before export) and
    kept as a non-persistent buffer, so exported graphs see a constant.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        # an nn.Conv2d with a frozen weight: with F.conv2d on a module tensor, PT2E QAT left it float
        self.conv = nn.Conv2d(channels, channels, 3, 2, 1, groups=channels, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 9)
        self.conv.weight.requires_grad_(False)
        self.register_buffer("corr", torch.ones(1, 1, 1, 1), persistent=False)
        self._corr_hw: tuple[int, int] | None = None  # input size ``corr`` was made for

    @staticmethod
    def _counts(n: int) -> list[int]:
        return [sum(0 <= i < n for i in (2 * r - 1, 2 * r, 2 * r + 1)) for r in range((n - 1) // 2 + 1)]

    def correction(self, h: int, w: int) -> Tensor:
        rows, cols = self._counts(h), self._counts(w)
        return torch.tensor([[9.0 / (a * b) for b in cols] for a in rows]).view(1, 1, len(rows), len(cols))

    def forward(self, x: Tensor) -> Tensor:
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        if self._corr_hw != hw:
            # one value per channel too: ONNX Runtime's NHWC int8 Mul broadcasting a [1, H, W, 1]
            # map over channels is 4-6x slower than an elementwise Mul of equal shapes
            corr = self.correction(*hw)
            self.corr = corr.expand(1, self.channels, *corr.shape[2:]).contiguous().to(x.device, x.dtype)
            self._corr_hw = hw
        y = self.conv(x)
        return y * self.corr


class QuantUnit(_MaskedParams):
    """A ShuffleNet v1 unit in quantization-ready form (see module docstring).

    Args:
        unit: a ``compressdet.models.shuffledet.ShuffleUnit`` (copied, not shared).
        fold_shuffle: fold the shuffle into ``conv2`` (exact) instead of keeping the 5-D transpose.
        pool_as_conv: replace the stride-2 shortcut's average pool by :class:`AvgPoolAsConv` (exact).
        pad_bottleneck: pad the bottleneck width to a multiple of this (exact; needs
            ``fold_shuffle``); None or 1 keeps it.

    ``param_masks()`` maps parameter names to the 0/1 masks that must stay applied during QAT.
    """

    def __init__(self, unit: nn.Module, fold_shuffle: bool = True, pool_as_conv: bool = True,
                 pad_bottleneck: int | None = 16) -> None:
        super().__init__()
        unit = copy.deepcopy(unit)
        self.mode, self.stride = unit.mode, unit.stride
        self.groups = unit.shuffle.groups
        self.conv1, self.bn1, self.dwconv, self.bn2 = unit.conv1, unit.bn1, unit.dwconv, unit.bn2
        self.bn3, self.pool = unit.bn3, unit.pool
        p = unit.pool
        if (pool_as_conv and isinstance(p, nn.AvgPool2d) and p.kernel_size in (3, (3, 3))
                and p.stride in (2, (2, 2)) and p.padding in (1, (1, 1)) and not p.ceil_mode
                and not p.count_include_pad and p.divisor_override is None):
            self.pool = AvgPoolAsConv(unit.conv1.in_channels)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.folded = fold_shuffle
        masks: dict[str, Tensor] = {}
        if fold_shuffle:
            perm = shuffle_permutation(unit.dwconv.in_channels, self.groups)
            _permute_channels_(self.dwconv, perm)
            _permute_channels_(self.bn2, perm)
            self.conv2, masks["conv2.weight"] = _dense_permuted(unit.conv2, perm)
        else:
            self.conv2 = unit.conv2
        b = self.dwconv.in_channels
        if pad_bottleneck and pad_bottleneck > 1 and b % pad_bottleneck:
            if not fold_shuffle:
                raise ValueError("pad_bottleneck needs fold_shuffle=True (the shuffle would move the padding)")
            width = _round_up(b, pad_bottleneck)
            self.conv1, masks["conv1.weight"] = _pad_rows(self.conv1, width)
            self.dwconv, masks["dwconv.weight"] = _widened(self.dwconv, width, width, depthwise=True)
            self.bn1, masks["bn1.bias"] = _pad_bn(self.bn1, width)
            self.bn2, masks["bn2.bias"] = _pad_bn(self.bn2, width)
            self.conv2, masks["conv2.weight"] = _widened(self.conv2, self.conv2.out_channels, width,
                                                         masks["conv2.weight"])
        for name, m in masks.items():
            self._add_mask(name, m)

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        if not self.folded:
            y = y.unflatten(1, (self.groups, -1)).transpose(1, 2).flatten(1, 2)
        y = self.bn2(self.dwconv(y))
        y = self.bn3(self.conv2(y))
        if self.pool is not None:
            return torch.cat([self.pool(x), self.relu2(y)], dim=1)
        if self.mode == "residual":
            return self.relu2(x + y)
        return self.relu2(y)


class FeatureWrapper(nn.Module):
    """``forward(x) -> (head_out, feature)`` so one exported graph exposes the imitation feature.

    At deployment only ``head_out`` is used (``head_only=True`` drops the second output).
    """

    def __init__(self, model: nn.Module, head_only: bool = False) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head
        self.head_only = head_only

    def forward(self, x: Tensor):
        feat = self.backbone(x)
        out = self.head(feat)
        return out if self.head_only else (out, feat)


class PaddedStemConv(_MaskedParams):
    """The stem conv with its 3 input channels zero-padded to ``channels`` (exact: zero weights).

    ONNX Runtime's int8 im2col conv is about 2x faster with 4 input channels than with 3 (the
    reduction depth 27 -> 36 fits its u8s8 kernels); the zero channel quantizes to the zero point
    exactly, so outputs do not change.
    """

    def __init__(self, conv: nn.Conv2d, channels: int = 4) -> None:
        super().__init__()
        if conv.groups != 1 or conv.in_channels > channels:
            raise ValueError(f"cannot pad a {conv.in_channels}-channel (groups={conv.groups}) conv to {channels}")
        self.extra = channels - conv.in_channels
        self.conv, mask = _widened(conv, conv.out_channels, channels)
        self._add_mask("conv.weight", mask)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(torch.nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra)))


class FloatConcat(nn.Module):
    """``torch.cat(parts, dim=1)`` as a module, so the quantizer can leave it float by module name."""

    def forward(self, *parts: Tensor) -> Tensor:
        return torch.cat(parts, dim=1)


class PerKindHead(nn.Module):
    """The head conv as one conv per output kind, concatenated in float (exact in float).

    Quantized, each part gets its own per-tensor output scale: class logits, confidence logits and
    box deltas have very different ranges, and one shared u8 scale would spend the 256 levels on
    the widest of them. ``merge`` (the concat) is left unquantized by ``make_quantizer``.

    Args:
        conv: the head's ``nn.Conv2d`` (``A*(C+5)`` outputs, layout of ``models.head``).
        num_classes, num_anchors: ``C`` and ``A``.
    """

    KINDS = ("class_logits", "confidence", "box_deltas")

    def __init__(self, conv: nn.Conv2d, num_classes: int, num_anchors: int) -> None:
        super().__init__()
        a, c = num_anchors, num_classes
        bounds = ((0, a * c), (a * c, a * (c + 1)), (a * (c + 1), a * (c + 5)))
        if conv.out_channels != bounds[-1][1]:
            raise ValueError(f"head conv has {conv.out_channels} outputs, expected {bounds[-1][1]} for "
                             f"{num_classes} classes x {num_anchors} anchors")
        self.parts = nn.ModuleDict()
        for kind, (lo, hi) in zip(self.KINDS, bounds, strict=True):
            part = nn.Conv2d(conv.in_channels, hi - lo, conv.kernel_size, conv.stride, conv.padding,
                             bias=conv.bias is not None)
            with torch.no_grad():
                part.weight.copy_(conv.weight[lo:hi])
                if conv.bias is not None:
                    part.bias.copy_(conv.bias[lo:hi])
            self.parts[kind] = part
        self.merge = FloatConcat()

    def forward(self, x: Tensor) -> Tensor:
        return self.merge(*(part(x) for part in self.parts.values()))


def quant_ready(model: nn.Module, *, fold_shuffle: bool = True, pad_stem: int | None = 4,
                pool_as_conv: bool = True, pad_bottleneck: int | None = 16, per_kind_head: bool = False
                ) -> nn.Module:
    """Deep copy of a ShuffleDet with every ``ShuffleUnit`` replaced by :class:`QuantUnit`.

    ``pad_stem``: pad the stem conv's input channels to this many (:class:`PaddedStemConv`);
    None keeps it. ``pool_as_conv``: shortcut average pools as :class:`AvgPoolAsConv`.
    ``pad_bottleneck``: bottleneck widths padded to a multiple of this (None/1: kept).
    ``per_kind_head``: the head conv as :class:`PerKindHead`.
    Returns the copy (same outputs as ``model``); the source is not modified.
    """
    from ..models.shuffledet import ShuffleUnit

    model = copy.deepcopy(model)
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, ShuffleUnit):
                setattr(mod, child_name, QuantUnit(child, fold_shuffle=fold_shuffle, pool_as_conv=pool_as_conv,
                                                   pad_bottleneck=pad_bottleneck))
    stem = getattr(getattr(model, "backbone", None), "stem", None)
    if isinstance(stem, nn.Sequential):
        for i, layer in enumerate(stem):
            if isinstance(layer, nn.ReLU):
                stem[i] = nn.ReLU()
            elif (pad_stem and isinstance(layer, nn.Conv2d) and layer.groups == 1
                  and layer.in_channels < pad_stem):
                stem[i] = PaddedStemConv(layer, pad_stem)
    if per_kind_head:
        head = getattr(model, "head", None)
        if not isinstance(getattr(head, "conv", None), nn.Conv2d) or not hasattr(head, "num_anchors"):
            raise ValueError("per_kind_head needs a ConvDet head (.conv, .num_classes, .num_anchors)")
        head.conv = PerKindHead(head.conv, head.num_classes, head.num_anchors)
    return model
