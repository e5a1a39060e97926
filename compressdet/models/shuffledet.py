"""ShuffleDet: a ShuffleNet v1 (g=3) backbone with a squeezeDet ConvDet head.

The detector of "Distilling Object Detectors with Fine-grained Feature Imitation" (Wang et al.,
CVPR 2019), ShuffleDet variant (METHOD.md section 1): a stride-1 3x3 stem + 3x3/2 max-pool, the
three ShuffleNet v1 stages (4, 6, 4 units), an extra stride-1 stage ``added3`` (2 units), total
stride 16, then dropout + one 3x3 conv giving ``num_anchors * (num_classes + 5)`` channels.

``forward`` returns the raw head tensor so that export, pruning and quantization see a plain conv
net; decoding lives in :mod:`compressdet.models.postprocess`. Forward code never hard-codes channel
counts: a pruning pass may shrink any layer, and :func:`compressdet.models.load_model` replays the
shapes from the state dict.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._registry import ModelError, register_model
from .contract import TapInfo, postprocess_kwargs
from .head import ConvDetHead

__all__ = ["ChannelShuffle", "ShuffleUnit", "ShuffleNetV1Backbone", "ShuffleDet"]

SEED_IMAGE_SIZE = (384, 1248)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's channel shuffle: view ``N, g, C/g, H, W`` -> transpose(1, 2) -> flatten.

    Works for any channel count divisible by ``groups`` (the count is read from the tensor).
    """
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ChannelShuffle(nn.Module):
    """Module form of :func:`channel_shuffle` (so pruning tools can find and special-case it)."""

    def __init__(self, groups: int = 3) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class ShuffleUnit(nn.Module):
    """One ShuffleNet v1 unit.

    ``conv1`` (1x1, grouped unless ``dense_conv1``) -> ``bn1`` -> ``relu1`` -> ``shuffle`` -> 3x3 depthwise
    ``dwconv`` (stride ``stride``) -> BN -> ``conv2`` (1x1, grouped unless ``dense_conv2``) -> BN.

    Modes:
        ``"down"``: stride 2; the branch makes ``out_channels - in_channels`` channels and the unit
        returns ``concat(avgpool3x3/2(x), relu(branch))``.
        ``"residual"``: stride 1, ``relu(x + branch)`` (``in_channels == out_channels``).
        ``"plain"``: stride 1, no shortcut, ``relu(branch)`` (added3/block1).
    """

    def __init__(self, in_channels: int, out_channels: int, bottleneck: int, *, mode: str = "residual",
                 groups: int = 3, dense_conv1: bool = False, dense_conv2: bool = False) -> None:
        super().__init__()
        if mode not in ("down", "residual", "plain"):
            raise ValueError(f"unknown ShuffleUnit mode '{mode}' (use 'down', 'residual' or 'plain')")
        if mode == "residual" and in_channels != out_channels:
            raise ValueError(f"a residual unit needs in_channels == out_channels, got {in_channels} -> {out_channels}")
        branch_out = out_channels - in_channels if mode == "down" else out_channels
        if branch_out <= 0:
            raise ValueError(f"a stride-2 unit must widen: {in_channels} -> {out_channels}")
        g1 = 1 if dense_conv1 else groups
        g2 = 1 if dense_conv2 else groups
        for what, c, g in (("input", in_channels, g1), ("bottleneck", bottleneck, g1),
                           ("bottleneck", bottleneck, g2), ("branch output", branch_out, g2)):
            if c % g:
                raise ValueError(f"{what} channels {c} not divisible by the group count {g}")
        self.mode = mode
        self.stride = 2 if mode == "down" else 1
        self.conv1 = nn.Conv2d(in_channels, bottleneck, 1, groups=g1, bias=False)
        self.bn1 = nn.BatchNorm2d(bottleneck)
        self.relu1 = nn.ReLU(inplace=False)  # own module: eager conv-bn-relu fusion must not share it
        self.shuffle = ChannelShuffle(groups)
        self.dwconv = nn.Conv2d(bottleneck, bottleneck, 3, stride=self.stride, padding=1, groups=bottleneck,
                                bias=False)
        self.bn2 = nn.BatchNorm2d(bottleneck)
        self.conv2 = nn.Conv2d(bottleneck, branch_out, 1, groups=g2, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_out)
        self.relu = nn.ReLU(inplace=False)
        # TF 'SAME' average pooling ignores the padded border
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False) if mode == "down" else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.shuffle(y)
        y = self.bn2(self.dwconv(y))
        y = self.bn3(self.conv2(y))
        if self.pool is not None:
            return torch.cat([self.pool(x), self.relu(y)], dim=1)
        if self.mode == "residual":
            return self.relu(x + y)
        return self.relu(y)


class ShuffleNetV1Backbone(nn.Module):
    """ShuffleNet v1 (g=3) with the stride-1 stem and the ``added3`` stage; image -> stride-16 map.

    Args:
        stem_channels: conv1 output channels (16 for the 1x teacher, 24 otherwise).
        stage_channels: output channels of group1, group2, group3.
        added_channels: output channels of added3/block0 (== group3's) and added3/block1.
        stage_units: units per stage (the seed: 4, 6, 4; added3 always has 2).
        groups: group count of the 1x1 convs and the shuffle (3).
        dense_first: the teacher layout: group1/block0's second 1x1 conv is dense (its first 1x1
            conv is always dense because its input is the stem).
    """

    def __init__(self, stem_channels: int = 24, stage_channels: tuple[int, int, int] = (60, 120, 240),
                 added_channels: tuple[int, int] = (240, 192), stage_units: tuple[int, int, int] = (4, 6, 4),
                 groups: int = 3, dense_first: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, stem_channels, 3, stride=1, padding=1, bias=False),
                                  nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=False))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = stem_channels
        for i, (cout, n) in enumerate(zip(stage_channels, stage_units, strict=True)):
            units = []
            for j in range(n):
                first = i == 0 and j == 0
                units.append(ShuffleUnit(cin, cout, cout // 4, mode="down" if j == 0 else "residual", groups=groups,
                                         dense_conv1=first, dense_conv2=first and dense_first))
                cin = cout
            self.add_module(f"group{i + 1}", nn.Sequential(*units))
        a0, a1 = added_channels
        self.added3 = nn.Sequential(
            ShuffleUnit(cin, a0, a0 // 4, mode="residual", groups=groups),
            ShuffleUnit(a0, a1, a1 // 4, mode="plain", groups=groups),
        )
        self.stride = 16
        self.stage_names = ("stem", "group1", "group2", "group3", "added3")

    @property
    def out_channels(self) -> int:
        """Channels of the last feature map, read from the layers (correct after pruning)."""
        return self.added3[-1].bn3.num_features

    def feature_info(self) -> list[dict[str, Any]]:
        """Per-stage taps (timm ``FeatureInfo`` style): module name, channels and reduction."""
        info = [{"module": "stem", "num_chs": self.stem[1].num_features, "reduction": 1}]
        red = 2
        for name in ("group1", "group2", "group3", "added3"):
            stage = getattr(self, name)
            red *= 2 if stage[0].stride == 2 else 1
            last = stage[-1]
            ch = last.bn3.num_features + (last.conv1.in_channels if last.mode == "down" else 0)
            info.append({"module": name, "num_chs": ch, "reduction": red})
        return info

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.stem(x))
        x = self.group1(x)
        x = self.group2(x)
        x = self.group3(x)
        return self.added3(x)


class ShuffleDet(nn.Module):
    """ShuffleDet detector: backbone -> ConvDet head (raw tensor ``[N, A*(C+5), H/16, W/16]``).

    Args:
        width: width multiplier; stage widths are ``int(240w), int(480w), int(960w), int(960w),
            int(768w)`` (rounded to a multiple of 12 when needed so groups and bottlenecks divide).
        teacher_layout: the seed's 1x teacher (16-channel stem, dense group1/block0 second conv).
        num_classes, num_anchors: head layout (3 classes, 9 anchors: 72 channels).
        dropout: head dropout probability (the seed's keep 0.5).
        image_size: ``(H, W)`` model input, both multiples of 16 (anchors depend on it).
        backbone, head: prebuilt parts; ``None`` builds the default from the other arguments.
        name: the registry name recorded in :attr:`arch`.

    Raises:
        ModelError: bad width or image size.
    """

    def __init__(self, *, width: float = 0.25, teacher_layout: bool = False, num_classes: int = 3,
                 num_anchors: int = 9, dropout: float = 0.5, image_size: tuple[int, int] = SEED_IMAGE_SIZE,
                 backbone: nn.Module | None = None, head: nn.Module | None = None,
                 name: str = "shuffledet") -> None:
        super().__init__()
        image_size = _check_image_size(image_size)
        if backbone is None:
            stem, stages, added = shuffledet_widths(width, teacher_layout)
            try:
                backbone = ShuffleNetV1Backbone(stem, stages, added, dense_first=teacher_layout)
            except ValueError as e:
                raise ModelError(f"shuffledet width {width}: {e}") from None
        self.backbone = backbone
        if head is None:
            head = ConvDetHead(backbone.out_channels, num_classes=num_classes, num_anchors=num_anchors,
                               dropout=dropout)
        self.head = head
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.stride = 16
        self.image_size = image_size
        self.arch: dict[str, Any] = {"name": name, "width": float(width), "teacher_layout": bool(teacher_layout),
                                     "num_classes": num_classes, "num_anchors": num_anchors,
                                     "dropout": float(dropout), "image_size": list(image_size)}

    @property
    def feature_channels(self) -> int:
        """Channels of the feature map imitation uses (read from the layers, so pruning-safe)."""
        return self.backbone.out_channels

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.image_size[0] // self.stride, self.image_size[1] // self.stride

    def anchors(self, device: torch.device | str | None = None) -> Tensor:
        """Anchors ``[A, 4]`` (cx, cy, w, h) for :attr:`image_size`."""
        from .anchors import generate_anchors

        return generate_anchors(self.image_size, device=device)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[N, 3, H, W]`` (BGR minus mean) -> raw head tensor ``[N, A*(C+5), H/16, W/16]``."""
        return self.head(self.backbone(x))

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(raw head tensor, feature map)``; the feature is the backbone output before dropout."""
        feat = self.backbone(x)
        return self.head(feat), feat

    # ---------------------------------------------------------------------------- detector contract
    family = "shuffledet"
    export_outputs = ("head",)

    def priors(self, device: torch.device | str | None = None) -> Tensor:
        """The contract's priors: :meth:`anchors` (``[Hg*Wg*9, 4]`` cx, cy, w, h)."""
        return self.anchors(device)

    def feature_taps(self) -> list[TapInfo]:
        """One level: the backbone output (stride 16) before dropout."""
        return [TapInfo("backbone", self.feature_channels, self.stride)]

    def build_loss(self) -> nn.Module:
        """``SqueezeDetLoss`` on this model's anchors (``loss(head_out, targets) -> {class, confidence, box,
        total}``)."""
        from ..losses.detection import SqueezeDetLoss

        return SqueezeDetLoss(self.anchors(), num_classes=self.num_classes, num_anchors=self.num_anchors,
                              image_size=self.image_size)

    def loss(self, outputs: Tensor, targets: list[dict[str, Any]]) -> dict[str, Tensor]:
        return self.build_loss().to(outputs.device)(outputs, targets)

    def postprocessor(self, cfg: Any = None) -> Any:
        """A :class:`~compressdet.models.postprocess.PostProcessor` (``cfg``: PostprocessConfig / dict / None)."""
        from .postprocess import PostProcessor

        return PostProcessor(self.image_size, num_classes=self.num_classes, num_anchors=self.num_anchors,
                             **postprocess_kwargs(cfg))

    def postprocess(self, outputs: Tensor, orig_sizes: Any = None) -> list[dict[str, Tensor]]:
        return self.postprocessor()(outputs, orig_sizes)

    def distill_mask(self, gt_boxes: list[Tensor], level_shapes: Any = None, psi: float = 0.5) -> list[Tensor]:
        """FGFI's near-object mask (:func:`compressdet.losses.imitation_mask`) on the stride-16 grid, as a
        one-level list."""
        from ..losses.imitation import imitation_mask

        grid = tuple(level_shapes[0]) if level_shapes else self.grid_size
        return [imitation_mask(gt_boxes, self.anchors(), grid, self.num_anchors, psi)]

    def export_metadata(self) -> dict[str, Any]:
        anchors_shape = [self.grid_size[0] * self.grid_size[1] * self.num_anchors, 4]
        c, a = self.num_classes, self.num_anchors
        return {"family": self.family, "anchors_shape": anchors_shape,
                "anchor_order": f"(h*W_grid + w)*{a} + b, (cx, cy, w, h) in input pixels",
                "head_layout": f"[0:{a * c}) class logits b*{c}+c, [{a * c}:{a * (c + 1)}) confidence, "
                               f"[{a * (c + 1)}:{a * (c + 5)}) deltas {a * (c + 1)}+b*4+k"}

    @classmethod
    def from_arch(cls, arch: dict[str, Any]) -> ShuffleDet:
        """Rebuild from an :attr:`arch` dict (the layer shapes are those of the unpruned model)."""
        kw = dict(arch)
        name = kw.pop("name", "shuffledet")
        if "image_size" in kw:
            kw["image_size"] = tuple(kw["image_size"])
        return cls(name=name, **kw)


# --------------------------------------------------------------------------------------------
# builders


def _check_image_size(image_size: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ModelError(f"image_size must be (H, W), got {image_size!r}") from None
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise ModelError(f"image_size {h}x{w}: both sides must be positive multiples of 16 (the model stride), "
                         f"e.g. 384x1248 or 192x624")
    return h, w


def _round_width(c: float) -> int:
    v = int(c)
    return v if v % 12 == 0 else max(12, int(round(v / 12)) * 12)


def shuffledet_widths(width: float, teacher_layout: bool = False) -> tuple[int, tuple[int, int, int], tuple[int, int]]:
    """``(stem, (group1, group2, group3), (added3/block0, added3/block1))`` channels for a width.

    The seed's widths are ``int(240w), int(480w), int(960w), int(960w), int(768w)``; a width that
    does not give multiples of 12 (3 groups x bottleneck of a quarter) is rounded to the nearest.
    """
    if not width > 0:
        raise ModelError(f"width must be > 0, got {width}")
    stem = 16 if teacher_layout else 24
    g1, g2, g3, a1 = (_round_width(b * width) for b in (240, 480, 960, 768))
    if g1 <= stem:
        raise ModelError(f"width {width} gives group1 {g1} channels, not more than the {stem}-channel stem; "
                         f"use a width >= 0.15")
    return stem, (g1, g2, g3), (g3, a1)


def _create_shuffledet(name: str, width: float, /, *, teacher_layout: bool = False, **kwargs: Any) -> ShuffleDet:
    asked = kwargs.pop("width", None)
    if asked is not None and float(asked) != float(width):
        raise ModelError(f"'{name}' has width {width}; for width {asked} use arch 'shuffledet' with width={asked}")
    pretrained = kwargs.pop("pretrained", None)
    model = ShuffleDet(width=width, teacher_layout=teacher_layout, name=name, **kwargs)
    if pretrained:
        from ._builder import load_pretrained_backbone

        load_pretrained_backbone(model, pretrained)
    return model


# --------------------------------------------------------------------------------------------
# registered variants (METHOD.md section 1 table)


@register_model("shuffledet_1x", from_arch=ShuffleDet.from_arch)
def shuffledet_1x(**kwargs: Any) -> ShuffleDet:
    """The seed's 1x teacher: 16-channel stem, dense group1/block0 second 1x1 conv, 768-ch feature."""
    return _create_shuffledet("shuffledet_1x", 1.0, teacher_layout=True, **kwargs)


@register_model("shuffledet_0.5x", from_arch=ShuffleDet.from_arch)
def shuffledet_0_5x(**kwargs: Any) -> ShuffleDet:
    """0.5x student: 24-ch stem, 120/240/480, added3 480 -> 384."""
    return _create_shuffledet("shuffledet_0.5x", 0.5, **kwargs)


@register_model("shuffledet_0.25x", from_arch=ShuffleDet.from_arch)
def shuffledet_0_25x(**kwargs: Any) -> ShuffleDet:
    """0.25x student: 24-ch stem, 60/120/240, added3 240 -> 192."""
    return _create_shuffledet("shuffledet_0.25x", 0.25, **kwargs)


@register_model("shuffledet", from_arch=ShuffleDet.from_arch)
def shuffledet(*, width: float | None = None, teacher_layout: bool = False, **kwargs: Any) -> ShuffleDet:
    """Any width (student layout unless ``teacher_layout=True``); ``width`` defaults to 1.0."""
    width = 1.0 if width is None else float(width)
    return _create_shuffledet("shuffledet", width, teacher_layout=teacher_layout, **kwargs)
