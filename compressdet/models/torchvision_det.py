"""FCOS and RetinaNet from ``torchvision.models.detection`` on the detector contract (issue #20).

torchvision's own modules do the work: the backbone + FPN (``BackboneWithFPN``), the head
(``FCOSHead`` / ``RetinaNetHead``), the anchor generator, the box coder, the loss
(``FCOS.compute_loss`` / ``RetinaNet.compute_loss``) and the decode + NMS
(``postprocess_detections``); nothing of them is re-implemented here. What the adapter changes:

- inputs follow compressdet's convention (BGR minus mean float ``[N, 3, H, W]`` at
  ``data.image_size``): ``GeneralizedRCNNTransform`` (resize + ImageNet normalisation) is
  bypassed: images go straight to the backbone, at the model input size;
- ``forward`` returns the raw head tensors ``(cls_logits [N, K, C], bbox_regression [N, K, 4]
  [, bbox_ctrness [N, K, 1]])`` (``K`` the priors of all levels, level-major as torchvision
  concatenates them): what training, export and quantization see; decoding stays float, outside;
- targets are compressdet's (``boxes`` xyxy model-input px, ``labels`` 0-based): torchvision's
  FCOS and RetinaNet classify with sigmoid focal loss over ``num_classes`` outputs and no
  background class, so a 0-based label is the logit index (no shift);
- the backbone is trained from scratch (``weights=None``) with ``BatchNorm2d``, not
  ``FrozenBatchNorm2d``.

Registered: ``fcos_mnv3_small``, ``fcos_mnv3_large``, ``fcos_mnv2_050``, ``fcos_r18`` (teacher), and
``retinanet_mnv3_small``, ``retinanet_mnv3_large``, ``retinanet_mnv2_050``, ``retinanet_r18``
(teacher); ``*_mnv2_050`` (MobileNetV2 x0.5, ReLU6 only) are the ones whose INT8 graph runs without
float glue under ONNX Runtime. Every variant has
five FPN levels P3-P7 (strides 8-128), so students and teachers pair level by level for
distillation. :func:`wrap_torchvision` puts a user's own FCOS / RetinaNet instance on the contract.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from ._registry import ModelError, register_model
from .contract import GlobalCountLoss, TapInfo, outputs_float, postprocess_kwargs

__all__ = ["TorchvisionDetector", "wrap_torchvision", "init_fcos_box_bias", "load_backbone_weights",
           "weights_cache_path", "BACKBONE_WEIGHTS", "build_torchvision_detector", "FAMILY_OUTPUTS", "anchor_fit",
           "suggest_anchor_scale"]

FAMILY_OUTPUTS = {"fcos": ("cls_logits", "bbox_regression", "bbox_ctrness"),
                  "retinanet": ("cls_logits", "bbox_regression")}
STRIDES = (8, 16, 32, 64, 128)
RETINANET_HEAD_GROUPS = 16  # fpn_channels is a multiple of 16
FCOS_BOX_BIAS_INIT = 1.0  # initial left/top/right/bottom distance of an FCOS box, in strides


def _family_of(det: nn.Module) -> str:
    from torchvision.models.detection import FCOS, RetinaNet

    if isinstance(det, FCOS):
        return "fcos"
    if isinstance(det, RetinaNet):
        return "retinanet"
    raise ModelError(f"{type(det).__name__} is not a torchvision FCOS or RetinaNet instance "
                     "(other torchvision detectors, SSD included, are not supported yet)")


def _num_classes_of(det: nn.Module) -> int:
    return int(det.head.classification_head.num_classes)


class TorchvisionDetector(nn.Module):
    """A torchvision FCOS / RetinaNet on compressdet's detector contract.

    Args:
        detector: the torchvision ``FCOS`` or ``RetinaNet`` (held as ``.det``; its ``transform``
            is never used).
        image_size: ``(H, W)`` model input.
        arch: the JSON dict that rebuilds the model (``name`` is the registry name).
        strides: the nominal stride of each feature level (default: from the level shapes).

    Attributes:
        family (``fcos`` | ``retinanet``), num_classes, image_size, arch, export_outputs,
        backbone (``det.backbone``, image -> ordered dict of levels), head (``det.head``).
    """

    def __init__(self, detector: nn.Module, *, image_size: Sequence[int], arch: dict[str, Any],
                 strides: Sequence[int] | None = None) -> None:
        super().__init__()
        self.family = _family_of(detector)
        self.det = detector
        self.num_classes = _num_classes_of(detector)
        h, w = (int(v) for v in image_size)
        if h <= 0 or w <= 0 or h % 16 or w % 16:
            raise ModelError(f"image_size {h}x{w}: both sides must be positive multiples of 16")
        self.image_size = (h, w)
        self.arch = dict(arch)
        self.export_outputs = FAMILY_OUTPUTS[self.family]
        # spatial facts only (pruning changes channels, never these): a plain dict, not state
        self.__dict__["_shape_cache"] = {}
        self.__dict__["_strides"] = tuple(int(s) for s in strides) if strides is not None else None

    # ------------------------------------------------------------------------------- parts
    @property
    def backbone(self) -> nn.Module:
        return self.det.backbone

    @property
    def head(self) -> nn.Module:
        return self.det.head

    def _features(self, x: Tensor) -> list[Tensor]:
        f = self.det.backbone(x)
        return [f] if isinstance(f, Tensor) else list(f.values())

    def _pack(self, head_out: dict[str, Tensor]) -> tuple[Tensor, ...]:
        return tuple(head_out[k] for k in self.export_outputs)

    def _unpack(self, outputs: Sequence[Tensor]) -> dict[str, Tensor]:
        if isinstance(outputs, Tensor) or len(outputs) != len(self.export_outputs):
            raise ValueError(f"{self.family} outputs are {len(self.export_outputs)} tensors "
                             f"({', '.join(self.export_outputs)})")
        return dict(zip(self.export_outputs, outputs))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """``x`` ``[N, 3, H, W]`` (BGR minus mean) -> the raw head tensors (see :attr:`export_outputs`)."""
        return self._pack(self.det.head(self._features(x)))

    def forward_with_features(self, x: Tensor) -> tuple[tuple[Tensor, ...], list[Tensor]]:
        """``(raw head tensors, [FPN level P3, ..., P7])``: the levels are what distillation imitates."""
        feats = self._features(x)
        return self._pack(self.det.head(feats)), feats

    # ------------------------------------------------------------------------------- head tower (CrossKD)
    def _towers(self) -> dict[str, list[tuple[list[nn.Module], nn.Module]]]:
        """The head's ``cls`` and ``reg`` towers as layers ``[(modules up to the activation, activation)]``
        (FCOS: conv, GroupNorm, ReLU; RetinaNet: conv [, GroupNorm], ReLU), from torchvision's ``conv``."""
        heads = {"cls": self.det.head.classification_head, "reg": self.det.head.regression_head}
        out: dict[str, list[tuple[list[nn.Module], nn.Module]]] = {}
        for name, head in heads.items():
            leaves: list[nn.Module] = []
            stack = list(head.conv.children())
            while stack:
                m = stack.pop(0)
                if isinstance(m, nn.Sequential):
                    stack[:0] = list(m.children())
                else:
                    leaves.append(m)
            layers, cur = [], []
            for m in leaves:
                if next(m.parameters(), None) is None and not isinstance(m, nn.Identity):  # the activation
                    layers.append((cur, m))
                    cur = []
                else:
                    cur.append(m)
            if cur or not layers:
                raise ModelError(f"{self.arch.get('name', self.family)}: the {name} head tower is not "
                                 "conv [+ norm] + activation layers; it has no layers to feed from")
            out[name] = layers
        return out

    def head_tower_depth(self) -> int:
        """Layers in each head tower (FCOS ``head_convs``, RetinaNet 4)."""
        return len(self._towers()["cls"])

    def head_tower_channels(self, layer: int | None = None, branch: str = "cls") -> int:
        """Channels of the ``branch`` (cls / reg) tower's features at ``layer`` (default: its output;
        0: the FPN level), read from the layers: correct after pruning."""
        layers = self._towers()[branch]
        layer = len(layers) if layer is None else layer
        if layer == 0:
            return self.feature_taps()[0].channels
        convs = [m for m in layers[layer - 1][0] if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ModelError(f"head tower layer {layer} of the {branch} branch has no conv")
        return int(convs[-1].out_channels)

    def forward_with_tower(self, x: Tensor, layer: int) -> tuple[tuple[Tensor, ...], list[Tensor],
                                                                   list[tuple[Tensor, Tensor]]]:
        """``(raw head tensors, FPN levels, [(cls, reg) tower features per level])``: the tower features
        are layer ``layer``'s output before its activation (CrossKD's entry point; ``layer`` 0: the FPN
        level itself), taken from the same forward as the outputs, so gradients flow through them."""
        feats = self._features(x)
        if layer == 0:
            return self._pack(self.det.head(feats)), feats, [(f, f) for f in feats]
        towers = self._towers()
        if not 0 <= layer <= len(towers["cls"]):
            raise ValueError(f"head tower layer {layer}: this head has {len(towers['cls'])} layers")
        got: dict[str, list[Tensor]] = {"cls": [], "reg": []}

        def grab(name: str):
            def hook(_m: nn.Module, _inp: Any, out: Tensor) -> Tensor:
                got[name].append(out)
                return out.clone()  # the tower's activation may act in place; the held tensor stays
            return hook

        handles = [towers[n][layer - 1][0][-1].register_forward_hook(grab(n)) for n in ("cls", "reg")]
        try:
            outputs = self._pack(self.det.head(feats))
        finally:
            for h in handles:
                h.remove()
        return outputs, feats, list(zip(got["cls"], got["reg"], strict=True))

    def head_from_tower(self, tower: Sequence[tuple[Tensor, Tensor]], layer: int) -> tuple[Tensor, ...]:
        """This head run from tower layer ``layer`` on: each level's ``(cls, reg)`` features (as
        :meth:`forward_with_tower` holds them) go through layer ``layer``'s activation (unless 0), the
        remaining tower layers and the output convs -> raw head tensors in :meth:`forward`'s layout."""
        towers = self._towers()
        head = self.det.head
        outs: dict[str, list[Tensor]] = {k: [] for k in self.export_outputs}

        def flat(t: Tensor, per: int) -> Tensor:  # (N, A * per, H, W) -> (N, HWA, per), as torchvision
            n, _, h, w = t.shape
            return t.view(n, -1, per, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, per)

        for cls_f, reg_f in tower:
            feats = {"cls": cls_f, "reg": reg_f}
            for name, layers in towers.items():
                f = feats[name]
                if layer > 0:
                    act = layers[layer - 1][1]
                    f = torch.relu(f) if isinstance(act, nn.ReLU) else act(f.clone())
                for mods, act in layers[layer:]:
                    for m in mods:
                        f = m(f)
                    f = torch.relu(f) if isinstance(act, nn.ReLU) else act(f)
                feats[name] = f
            k = self.num_classes
            outs["cls_logits"].append(flat(head.classification_head.cls_logits(feats["cls"]), k))
            reg = head.regression_head.bbox_reg(feats["reg"])
            if self.family == "fcos":
                outs["bbox_regression"].append(flat(torch.relu(reg), 4))
                outs["bbox_ctrness"].append(flat(head.regression_head.bbox_ctrness(feats["reg"]), 1))
            else:
                outs["bbox_regression"].append(flat(reg, 4))
        return tuple(torch.cat(outs[k], dim=1) for k in self.export_outputs)

    def kd_normalizer(self, gt_boxes: list[Tensor]) -> tuple[Tensor, Tensor | None]:
        """CrossKD's normaliser (the reference's ``avg_factor``) and the priors its losses count.

        FCOS: the sum of the centre-ness targets of the positive locations (torchvision's matching);
        RetinaNet: the number of positive anchors, and ``Bool[N, K]`` of the anchors that are not in
        the matcher's ignore band (the reference gives those weight 0). FCOS counts every location.
        """
        from torchvision.ops import box_iou

        priors = self.priors()
        n_pos = torch.zeros((), dtype=torch.float64)
        boxes = [torch.as_tensor(b).to(torch.float32).reshape(-1, 4).cpu() for b in gt_boxes]
        boxes = [b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])] for b in boxes]
        if self.family == "retinanet":
            valid = []
            for b in boxes:
                if b.shape[0] == 0:
                    valid.append(torch.ones(priors.shape[0], dtype=torch.bool))
                    continue
                m = self.det.proposal_matcher(box_iou(b, priors))
                n_pos = n_pos + (m >= 0).sum()
                valid.append(m != self.det.proposal_matcher.BETWEEN_THRESHOLDS)
            return n_pos, torch.stack(valid)
        seen: list[list[Tensor]] = []
        shim = SimpleNamespace(center_sampling_radius=self.det.center_sampling_radius,
                               head=SimpleNamespace(compute_loss=lambda tg, out, anc, m: seen.append(m) or {}))
        targets = [{"boxes": b, "labels": torch.zeros(b.shape[0], dtype=torch.int64)} for b in boxes]
        type(self.det).compute_loss(shim, targets, None, [priors] * len(boxes), self.priors_per_level())
        for b, m in zip(boxes, seen[0]):
            pos = m >= 0
            if not pos.any():
                continue
            d = self.det.box_coder.encode(priors[pos], b[m[pos]])  # l, t, r, b distances (any positive scale)
            lr, tb = d[:, [0, 2]], d[:, [1, 3]]
            ctr = torch.sqrt((lr.min(-1).values / lr.max(-1).values) * (tb.min(-1).values / tb.max(-1).values))
            n_pos = n_pos + ctr.sum()
        return n_pos, None

    # ------------------------------------------------------------------------------- geometry
    def _probe(self, size: tuple[int, int]) -> list[tuple[int, int, int]]:
        """``[(channels, h, w)]`` of each level for an input of ``size`` (one no-grad eval forward)."""
        p = next(self.parameters())
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                feats = self._features(torch.zeros(1, 3, *size, device=p.device, dtype=p.dtype))
        finally:
            self.train(was)
        return [(int(f.shape[1]), int(f.shape[2]), int(f.shape[3])) for f in feats]

    def level_shapes(self) -> list[tuple[int, int]]:
        """``[(h, w)]`` of each level at :attr:`image_size`."""
        cache = self.__dict__["_shape_cache"]
        if self.image_size not in cache:
            cache[self.image_size] = [(h, w) for _, h, w in self._probe(self.image_size)]
        return cache[self.image_size]

    def strides(self) -> list[int]:
        """Nominal stride of each level (8, 16, ... for the registered variants)."""
        if self.__dict__["_strides"] is not None:
            return list(self.__dict__["_strides"])
        H, W = self.image_size
        return [2 ** math.ceil(math.log2(max(H / h, W / w))) for h, w in self.level_shapes()]

    def anchors_per_location(self) -> list[int]:
        return [int(a) for a in self.det.anchor_generator.num_anchors_per_location()]

    def priors_per_level(self) -> list[int]:
        return [h * w * a for (h, w), a in zip(self.level_shapes(), self.anchors_per_location())]

    def priors(self, device: torch.device | str | None = None) -> Tensor:
        """torchvision's anchors (RetinaNet) or points as one-stride boxes (FCOS): ``[K, 4]`` xyxy, input px."""
        from torchvision.models.detection.image_list import ImageList

        dev = torch.device(device) if device is not None else torch.device("cpu")
        H, W = self.image_size
        images = ImageList(torch.empty(1, 3, H, W, device=dev), [(H, W)])
        feats = [torch.empty(1, 1, h, w, device=dev) for h, w in self.level_shapes()]
        return self.det.anchor_generator(images, feats)[0]

    def feature_taps(self) -> list[TapInfo]:
        """One tap per FPN level, channels read from the layers (one small forward), nominal strides."""
        chans = [c for c, _, _ in self._probe(self.image_size)]
        return [TapInfo(f"p{int(math.log2(s))}", c, s) for c, s in zip(chans, self.strides())]

    # ------------------------------------------------------------------------------- loss
    def build_loss(self) -> nn.Module:
        """torchvision's loss (``compute_loss``) as a module: ``loss(outputs, targets) -> {..., "total"}``."""
        return TorchvisionLoss(self)

    def loss(self, outputs: Sequence[Tensor], targets: list[dict[str, Any]], *,
             with_count: bool = False) -> dict[str, Tensor] | tuple[dict[str, Tensor], Tensor]:
        """torchvision's losses on ``(raw outputs, compressdet targets)``, plus ``total`` (their sum).

        FCOS: ``classification`` (focal), ``bbox_regression`` (GIoU), ``bbox_ctrness`` (BCE), each over
        the foreground count; RetinaNet: ``classification`` (focal), ``bbox_regression`` (L1; v2 head:
        GIoU), each per image over its foreground count, averaged over the images. ``with_count`` also
        returns the normaliser torchvision divided by, before its ``max(1, .)`` (FCOS: the batch's
        foreground locations; RetinaNet: the number of images), which :class:`TorchvisionLoss` makes
        global under DDP.
        """
        head = self._unpack(outputs)
        dev = head["cls_logits"].device
        anchors = self.priors(dev).to(head["bbox_regression"].dtype)
        tv_targets = []
        for t in targets:
            boxes = torch.as_tensor(t["boxes"]).to(dev, torch.float32).reshape(-1, 4)
            labels = torch.as_tensor(t["labels"]).to(dev, torch.int64).reshape(-1)
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # torchvision rejects degenerate boxes
            tv_targets.append({"boxes": boxes[ok], "labels": labels[ok]})
        anchor_list = [anchors] * len(tv_targets)
        if self.family == "fcos":
            # torchvision's FCOS.compute_loss matches locations to boxes and hands the matches to the
            # head's compute_loss; a stand-in head records them (the foreground count it divides by)
            seen: list[list[Tensor]] = []
            real = self.det.head

            def head_loss(tg, out, anc, matched_idxs):
                seen.append(matched_idxs)
                return real.compute_loss(tg, out, anc, matched_idxs)

            shim = SimpleNamespace(center_sampling_radius=self.det.center_sampling_radius,
                                   head=SimpleNamespace(compute_loss=head_loss))
            losses = type(self.det).compute_loss(shim, tv_targets, head, anchor_list, self.priors_per_level())
            count = sum((m >= 0).sum() for m in seen[0]).to(dev, torch.float64)
        else:
            losses = self.det.compute_loss(tv_targets, head, anchor_list)
            count = torch.tensor(float(len(tv_targets)), dtype=torch.float64, device=dev)
        losses = dict(losses)
        losses["total"] = sum(losses.values())
        return (losses, count) if with_count else losses

    # ------------------------------------------------------------------------------- decode
    def postprocessor(self, cfg: Any = None) -> TorchvisionPostProcessor:
        """torchvision's ``postprocess_detections`` with the recipe's thresholds (see
        :class:`TorchvisionPostProcessor`)."""
        return TorchvisionPostProcessor(self, **postprocess_kwargs(cfg))

    def postprocess(self, outputs: Sequence[Tensor], orig_sizes: Any = None) -> list[dict[str, Tensor]]:
        return self.postprocessor()(outputs, orig_sizes)

    def detection_graph(self, cfg: Any = None, net: nn.Module | None = None) -> TorchvisionDetectionGraph:
        """``net`` (default: this model; an export rewrite of it) followed by this family's decode and
        NMS in traceable ops, for an ONNX graph ending in boxes/scores/labels (``--with-postprocess``)."""
        return TorchvisionDetectionGraph(self, net if net is not None else self, **postprocess_kwargs(cfg))

    # ------------------------------------------------------------------------------- distillation
    def distill_mask(self, gt_boxes: list[Tensor], level_shapes: Sequence[Sequence[int]] | None = None,
                     psi: float = 0.5) -> list[Tensor]:
        """Near-object locations per level, ``[Bool[N, h, w]]``.

        RetinaNet (anchors): FGFI's mask over all levels' anchors at once: an anchor is near a GT
        when its IoU exceeds ``psi`` times that GT's best anchor IoU; a cell is marked when any of
        its anchors is. FCOS (points, anchor-free): a point is near a GT when it lies inside the
        box or in its centre region (within ``center_sampling_radius`` strides of the centre, so a
        box smaller than a cell still marks its centre cell); ``psi`` is not used.
        """
        from torchvision.ops import box_iou

        shapes = [tuple(int(v) for v in s) for s in (level_shapes or self.level_shapes())]
        if shapes != [tuple(s) for s in self.level_shapes()]:
            raise ValueError(f"level shapes {shapes} are not this model's {self.level_shapes()} "
                             f"(teacher and student need the same input size)")
        priors = self.priors()
        per_level = self.priors_per_level()
        A = self.anchors_per_location()
        strides = self.strides()
        out: list[list[Tensor]] = [[] for _ in shapes]
        for boxes in gt_boxes:
            boxes = torch.as_tensor(boxes).to(torch.float32).reshape(-1, 4).cpu()
            if boxes.shape[0] == 0:
                for lvl, (h, w) in enumerate(shapes):
                    out[lvl].append(torch.zeros(h, w, dtype=torch.bool))
                continue
            if self.family == "retinanet":
                iou = box_iou(boxes, priors)
                near = (iou > psi * iou.max(dim=1, keepdim=True).values).any(0)
                for lvl, (part, (h, w), a) in enumerate(zip(near.split(per_level), shapes, A)):
                    out[lvl].append(part.view(h, w, a).any(-1))
            else:
                radius = float(getattr(self.det, "center_sampling_radius", 1.5))
                centres = (boxes[:, :2] + boxes[:, 2:]) / 2
                for lvl, (pts, (h, w), s) in enumerate(zip(priors.split(per_level), shapes, strides)):
                    p = (pts[:, :2] + pts[:, 2:]) / 2  # [h*w, 2]
                    inside = ((p[:, None, 0] > boxes[None, :, 0]) & (p[:, None, 0] < boxes[None, :, 2])
                              & (p[:, None, 1] > boxes[None, :, 1]) & (p[:, None, 1] < boxes[None, :, 3]))
                    centre = ((p[:, None, :] - centres[None]).abs().amax(-1) < radius * s)
                    out[lvl].append((inside | centre).any(1).view(h, w))
        return [torch.stack(m) if m else torch.zeros(0, h, w, dtype=torch.bool)
                for m, (h, w) in zip(out, shapes)]

    # ------------------------------------------------------------------------------- export
    def export_metadata(self) -> dict[str, Any]:
        return {"family": self.family, "outputs": list(self.export_outputs), "num_classes": self.num_classes,
                "priors_shape": [sum(self.priors_per_level()), 4], "prior_format": "xyxy input px (torchvision)",
                "levels": [[h, w, a] for (h, w), a in zip(self.level_shapes(), self.anchors_per_location())],
                "strides": self.strides(),
                "decode": "torchvision " + ("FCOS" if self.family == "fcos" else "RetinaNet")
                          + ".postprocess_detections (float, outside the graph)"}

    @property
    def feature_channels(self) -> int:
        return self.feature_taps()[0].channels


class TorchvisionLoss(GlobalCountLoss):
    """``loss(outputs, targets)`` of a :class:`TorchvisionDetector` (held by reference, not a submodule).

    Under DDP the trainer sets ``reduce_counts`` (a sum over processes, as for ShuffleDet's loss):
    torchvision's normaliser is then the global batch's (FCOS: foreground locations of all processes;
    RetinaNet: all images), so ``W`` processes compute exactly one process's loss over the whole
    batch (each returns its partial sum; the trainer scales gradients by ``W``). torchvision's own
    reference training divides by each process's count instead, which weights a process with few
    objects as much as one with many.
    """



class TorchvisionPostProcessor:
    """torchvision's ``postprocess_detections`` on raw outputs; boxes scaled to ``orig_sizes``.

    The recipe's ``postprocess`` fields map onto torchvision's: ``score_thresh``, ``nms_thresh``,
    ``topk_candidates`` (per level, before NMS), ``detections_per_class * num_classes`` ->
    ``detections_per_img``. Defaults: compressdet's (0.0, 0.4, 64, 50).
    """

    def __init__(self, model: TorchvisionDetector, *, score_thresh: float = 0.0, nms_thresh: float = 0.4,
                 topk_candidates: int = 64, detections_per_class: int = 50) -> None:
        self.model = model
        self.params = SimpleNamespace(box_coder=model.det.box_coder, score_thresh=float(score_thresh),
                                      nms_thresh=float(nms_thresh), topk_candidates=int(topk_candidates),
                                      detections_per_img=int(detections_per_class) * model.num_classes)

    @torch.no_grad()
    def __call__(self, outputs: Sequence[Tensor], orig_sizes: Sequence[Sequence[int]] | None = None
                 ) -> list[dict[str, Tensor]]:
        m = self.model
        head = m._unpack(outputs_float(outputs))
        n = head["cls_logits"].shape[0]
        per_level = m.priors_per_level()
        split = {k: list(v.split(per_level, dim=1)) for k, v in head.items()}
        anchors = list(m.priors(head["cls_logits"].device).split(per_level))
        dets = type(m.det).postprocess_detections(self.params, split, [anchors] * n, [m.image_size] * n)
        if orig_sizes is not None:
            H, W = m.image_size
            for d, (h0, w0) in zip(dets, orig_sizes):
                scale = torch.tensor([w0 / W, h0 / H, w0 / W, h0 / H], dtype=d["boxes"].dtype, device=d["boxes"].device)
                d["boxes"] = d["boxes"] * scale
        return dets


class TorchvisionDetectionGraph(nn.Module):
    """Raw outputs -> torchvision's ``postprocess_detections``, redone in ops that trace (batch 1).

    Same result as :class:`TorchvisionPostProcessor` (the export checks it): per level the best
    ``topk_candidates`` of ``score = sigmoid(cls)`` (RetinaNet) or ``sqrt(sigmoid(cls) *
    sigmoid(ctrness))`` (FCOS) over all (location, class) pairs, the family's box coder, boxes
    clipped to the image, per-class NMS, then the score threshold and the ``detections_per_img``
    cap. torchvision thresholds first; thresholding after top-k and NMS keeps exactly the same
    boxes (a box below the threshold never outranks, so never suppresses, one above it) and
    leaves no data-dependent branch before NMS. Boxes are in model-input pixels.
    """

    def __init__(self, model: TorchvisionDetector, net: nn.Module, *, score_thresh: float = 0.0,
                 nms_thresh: float = 0.4, topk_candidates: int = 64, detections_per_class: int = 50) -> None:
        super().__init__()
        self.net = net
        self.family = model.family
        self.box_coder = model.det.box_coder
        self.per_level = [int(k) for k in model.priors_per_level()]
        self.register_buffer("priors", model.priors().float().clone(), persistent=False)
        self.image_size = tuple(int(v) for v in model.image_size)
        self.score_thresh, self.nms_thresh = float(score_thresh), float(nms_thresh)
        self.topk_candidates = int(topk_candidates)
        self.detections_per_img = int(detections_per_class) * model.num_classes

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        from .postprocess import traceable_batched_nms

        out = self.net(images)
        cls = out[0][0].float()
        reg = out[1][0].float()
        ctr = out[2][0].float() if self.family == "fcos" else None
        num_classes = cls.shape[-1]
        boxes, scores, labels = [], [], []
        start = 0
        for n in self.per_level:
            c = cls[start:start + n]
            s = (torch.sqrt(torch.sigmoid(c) * torch.sigmoid(ctr[start:start + n])) if ctr is not None
                 else torch.sigmoid(c)).flatten()
            sc, idx = s.topk(min(self.topk_candidates, n * num_classes))
            loc = torch.div(idx, num_classes, rounding_mode="floor") + start
            r, pri = reg[loc], self.priors[loc]
            b = self.box_coder.decode(r, pri) if self.family == "fcos" else self.box_coder.decode_single(r, pri)
            h, w = self.image_size
            b = torch.stack((b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)), 1)
            boxes.append(b)
            scores.append(sc)
            labels.append(idx % num_classes)
            start += n
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        boxes, scores, labels = traceable_batched_nms(boxes, scores, labels, self.nms_thresh, self.score_thresh,
                                                      strict=True)
        return boxes[: self.detections_per_img], scores[: self.detections_per_img], labels[: self.detections_per_img]


# --------------------------------------------------------------------------------------------
# backbones (from scratch, BatchNorm) and builders


def _mobilenet_fpn(kind: str, out_channels: int) -> nn.Module:
    """MobileNet (``weights=None``, BatchNorm) + FPN on the last block of strides 8, 16, 32 + P6/P7.

    ``kind``: ``small`` / ``large`` (MobileNetV3: HardSwish and squeeze-excitation, which ONNX Runtime
    runs in float between int8 convolutions) or ``v2_050`` (MobileNetV2 x0.5: ReLU6 only, which
    folds into the int8 convolutions, so the whole backbone runs in int8)."""
    from torchvision.models import mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    net = {"small": lambda: mobilenet_v3_small(weights=None), "large": lambda: mobilenet_v3_large(weights=None),
           "v2_050": lambda: mobilenet_v2(weights=None, width_mult=0.5)}[kind]()
    feats = net.features
    feats.eval()
    x, strides, chans = torch.zeros(1, 3, 64, 64), [], []
    with torch.no_grad():
        for block in feats:
            x = block(x)
            strides.append(64 // x.shape[-1])
            chans.append(x.shape[1])
    feats.train()
    idx = [max(i for i, s in enumerate(strides) if s == want) for want in (8, 16, 32)]
    return BackboneWithFPN(feats, {str(i): str(k) for k, i in enumerate(idx)}, [chans[i] for i in idx], out_channels,
                           extra_blocks=LastLevelP6P7(out_channels, out_channels))


def _resnet_fpn(depth: int, out_channels: int) -> nn.Module:
    """ResNet (``weights=None``, BatchNorm) + FPN on C3-C5 + P6/P7 (torchvision's FCOS/RetinaNet layout)."""
    from torchvision.models import resnet18, resnet34
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    net = {18: resnet18, 34: resnet34}[depth](weights=None)
    return BackboneWithFPN(net, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], out_channels,
                           extra_blocks=LastLevelP6P7(out_channels, out_channels))


BACKBONES = {"mnv3_small": lambda c: _mobilenet_fpn("small", c), "mnv3_large": lambda c: _mobilenet_fpn("large", c),
             "mnv2_050": lambda c: _mobilenet_fpn("v2_050", c),
             "r18": lambda c: _resnet_fpn(18, c), "r34": lambda c: _resnet_fpn(34, c)}


#: each backbone's torchvision classification weights (``model.weights`` names one of their members)
BACKBONE_WEIGHTS = {"mnv3_small": "MobileNet_V3_Small_Weights", "mnv3_large": "MobileNet_V3_Large_Weights",
                    "r18": "ResNet18_Weights", "r34": "ResNet34_Weights"}
_WEIGHT_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def weights_cache_path(backbone: str, weights: str, what: str = "model.weights") -> tuple[str, Any, Path]:
    """``(enum class name, torchvision weights entry, path in torchvision's cache)`` of a weight name.

    Raises:
        ModelError: the backbone has no torchvision weights, or the name is not one of them.
    """
    import torchvision.models as tvm

    enum_name = BACKBONE_WEIGHTS.get(backbone)
    if enum_name is None:
        raise ModelError(f"{what}: torchvision has no pretrained weights for backbone '{backbone}' (MobileNetV2 x0.5); "
                         "give a local weights file instead")
    enum = getattr(tvm, enum_name)
    try:
        w = enum[weights]
    except KeyError:
        raise ModelError(f"{what}: weights '{weights}' is not one of {enum_name}'s: "
                         f"{', '.join(dict.fromkeys(['DEFAULT', *enum.__members__]))}") from None
    return enum_name, w, Path(torch.hub.get_dir()) / "checkpoints" / w.url.rsplit("/", 1)[-1]


def _weights_state_dict(backbone: str, weights: str, what: str) -> dict[str, Tensor]:
    """The classification network's state dict ``weights`` names: a torchvision weight name
    (``DEFAULT``, ``IMAGENET1K_V1``, ...: from torchvision's cache, downloaded there when missing) or a
    local file."""
    if not _WEIGHT_NAME.match(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelError(f"{what}: weights file '{weights}' does not exist (a torchvision weight name is upper "
                             "case, e.g. DEFAULT or IMAGENET1K_V1)")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure: not a state dict
            raise ModelError(f"{what}: weights file '{path}' cannot be read: {type(e).__name__}: {e}") from None
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not obj:
            raise ModelError(f"{what}: weights file '{path}' is not a state dict")
        return obj
    enum_name, w, cached = weights_cache_path(backbone, weights, what)
    file = cached.name
    if not cached.is_file():  # torchvision's own download into its cache; offline: say what to place where
        try:
            return torch.hub.load_state_dict_from_url(w.url, progress=False, check_hash=True, file_name=file)
        except Exception as e:  # noqa: BLE001 - URLError, timeouts, proxies: all mean "place it yourself"
            raise ModelError(f"{what}: {enum_name}.{w.name} is not in torchvision's cache and cannot be downloaded "
                             f"({type(e).__name__}); download {w.url} and place it at {cached}") from None
    return torch.load(cached, map_location="cpu", weights_only=True)


def load_backbone_weights(model: TorchvisionDetector, backbone: str, weights: str) -> list[str]:
    """Load ImageNet classification weights into a registered variant's backbone body (``model.weights``).

    The first convolution is folded to compressdet's input: torchvision's weights expect RGB in
    [0, 1] normalised by ImageNet's mean and std, compressdet feeds BGR 0-255 minus ``MEAN_BGR``
    (which is ImageNet's mean x 255, to 0.5 grey levels), so its input channels are reversed and
    divided by ``255 * std``. BatchNorm statistics come with the weights; the FPN and head stay from
    scratch.

    Returns:
        the body's parameter and buffer names that were loaded (all of them).

    Raises:
        ModelError: unknown name, a missing or unreadable file (offline: the file to place and
            where), or tensors that do not fit the body.
    """
    what = f"{model.arch.get('name')}: model.weights"
    sd = _weights_state_dict(backbone, weights, what)
    body = model.det.backbone.body
    want = body.state_dict()
    best: dict[str, Tensor] = {}
    for prefix in ("", "features.", "body.", "backbone.body.", "det.backbone.body."):
        got = {k: sd[prefix + k] for k in want if prefix + k in sd}
        if len(got) > len(best):
            best = got
    missing = [k for k in want if k not in best and not k.endswith("num_batches_tracked")]
    bad = [f"{k} {tuple(v.shape)} vs {tuple(want[k].shape)}" for k, v in best.items() if v.shape != want[k].shape]
    if missing or bad:
        detail = f"missing {missing[:3]}" if missing else f"shapes differ: {bad[:2]}"
        raise ModelError(f"{what} '{weights}': does not fit the {backbone} backbone ({detail})")
    first = next(n for n, m in body.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3)
    std = torch.tensor((0.229, 0.224, 0.225)).flip(0).view(1, 3, 1, 1)  # BGR order
    best[f"{first}.weight"] = best[f"{first}.weight"].flip(1) / (255.0 * std)
    body.load_state_dict(best, strict=False)
    return sorted(best)


def _retinanet_anchors(anchor_scale: float) -> nn.Module:
    """torchvision's RetinaNet anchors, ``anchor_scale`` strides x 2^(0, 1/3, 2/3) x ratios 0.5, 1, 2 per level."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple(tuple(anchor_scale * s * 2 ** (k / 3) for k in range(3)) for s in STRIDES)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(STRIDES))


def build_torchvision_detector(*, name: str, family: str, backbone: str, fpn_channels: int, head_convs: int = 4,
                               num_classes: int = 3, image_size: Sequence[int] = (384, 1248),
                               anchor_scale: float = 4.0, head: str | None = None) -> TorchvisionDetector:
    """A registered FCOS / RetinaNet variant (what the registry names build; all arguments go in ``arch``).

    Args:
        family: ``fcos`` or ``retinanet``. backbone: ``mnv3_small``, ``mnv3_large``, ``mnv2_050``, ``r18``,
            ``r34``.
        fpn_channels: FPN (and head) width, a multiple of 16 (FCOS: of 32, its head's GroupNorm groups).
        head_convs: FCOS tower depth (torchvision: 4); RetinaNet's head always has 4.
        anchor_scale: RetinaNet anchor base size in strides (torchvision's default anchors are
            4 strides x 2^(0, 1/3, 2/3) x ratios 0.5, 1, 2 per level).
        head: RetinaNet head: ``None`` / ``"v1"`` (torchvision's default: plain tower convs, L1 box
            loss) or ``"v2"`` (``retinanet_resnet50_fpn_v2``'s: GroupNorm(16) after each tower conv, GIoU
            box loss). From scratch the v1 head's 0.01-std convs pass little signal and its
            unbounded L1 targets learn slowly (the families benchmark's teacher had not learned at
            2,400 steps); v2 trains like FCOS's head, but ``prune_head`` refuses its GroupNorm and INT8
            runs it in float, so the default stays v1. FCOS's head always has GroupNorm(32).
    """
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead
    from torchvision.models.detection.retinanet import RetinaNetHead

    if backbone not in BACKBONES:
        raise ModelError(f"{name}: unknown backbone '{backbone}' (known: {', '.join(BACKBONES)})")
    if fpn_channels % (32 if family == "fcos" else 16):
        raise ModelError(f"{name}: fpn_channels {fpn_channels} must be a multiple of "
                         f"{32 if family == 'fcos' else 16}{' (the head GroupNorm has 32 groups)' if family == 'fcos' else ''}")
    body = BACKBONES[backbone](fpn_channels)
    if family == "fcos":
        gen = AnchorGenerator(tuple((s,) for s in STRIDES), ((1.0,),) * len(STRIDES))
        fcos_head = FCOSHead(fpn_channels, 1, num_classes, num_convs=head_convs)
        # torchvision ends the box branch in ReLU with zero bias, so a from-scratch model starts with
        # near-zero boxes whose GIoU gradient (proportional to their size) vanishes, and one seed in
        # three died there (all four distances stuck at 0). Start at one stride per side instead,
        # where the FCOS paper's exp(0) = 1 starts.
        nn.init.constant_(fcos_head.regression_head.bbox_reg.bias, FCOS_BOX_BIAS_INIT)
        det: nn.Module = FCOS(body, num_classes, anchor_generator=gen, head=fcos_head)
    elif family == "retinanet":
        gen = _retinanet_anchors(anchor_scale)
        if head not in (None, "v1", "v2"):
            raise ModelError(f"{name}: head '{head}' is not one of: v1, v2")
        head = None if head == "v1" else head
        norm = partial(nn.GroupNorm, RETINANET_HEAD_GROUPS) if head == "v2" else None
        tv_head = RetinaNetHead(fpn_channels, gen.num_anchors_per_location()[0], num_classes, norm_layer=norm)
        if head == "v2":
            tv_head.regression_head._loss_type = "giou"  # as torchvision's retinanet_resnet50_fpn_v2
        det = RetinaNet(body, num_classes, anchor_generator=gen, head=tv_head)
    else:
        raise ModelError(f"{name}: unknown family '{family}' (fcos or retinanet)")
    arch = {"name": name, "family": family, "backbone": backbone, "fpn_channels": int(fpn_channels),
            "head_convs": int(head_convs), "num_classes": int(num_classes), "image_size": [int(v) for v in image_size],
            "anchor_scale": float(anchor_scale)}
    if family == "retinanet":
        arch["head"] = head
    return TorchvisionDetector(det, image_size=image_size, arch=arch, strides=STRIDES)


def init_fcos_box_bias(model: nn.Module, box_bias_init: bool | None = None, *, what: str = "FCOS") -> bool:
    """Start an FCOS box-distance bias at ``FCOS_BOX_BIAS_INIT`` strides, as the registered builders do.

    torchvision's FCOS ends the box branch in ReLU with a zero bias: from scratch its boxes start near
    zero, where the GIoU gradient vanishes, and the box branch can stay dead (docs/detectors.md).
    ``box_bias_init``: ``True`` always, ``False`` never, ``None`` (auto) when the bias is still
    torchvision's fresh zero (a bias that was trained or loaded is not zero, and is kept). A head
    without torchvision's ``regression_head.bbox_reg`` conv gets a warning (it cannot be told) or,
    with ``True``, a ModelError.

    Returns:
        whether the bias was set.
    """
    conv = getattr(getattr(getattr(model, "head", None), "regression_head", None), "bbox_reg", None)
    if box_bias_init is False:
        return False
    if not isinstance(conv, nn.Conv2d) or conv.bias is None:
        msg = (f"{what}: the head has no torchvision regression_head.bbox_reg conv with a bias, so the box-bias "
               f"initialisation (FCOS_BOX_BIAS_INIT) cannot be applied")
        if box_bias_init:
            raise ModelError(msg)
        logging.getLogger("compressdet.models").warning("%s; a box branch trained from scratch may not learn "
                                                        "(docs/detectors.md, 'FCOS box bias')", msg)
        return False
    if box_bias_init is None and bool(conv.bias.detach().abs().sum() != 0):
        return False  # trained or loaded: keep it
    with torch.no_grad():
        conv.bias.fill_(FCOS_BOX_BIAS_INIT)
    return True


def wrap_torchvision(model: nn.Module, *, image_size: Sequence[int], classes: Sequence[str],
                     name: str = "torchvision_custom", box_bias_init: bool | None = None) -> TorchvisionDetector:
    """Put a user's own torchvision ``FCOS`` / ``RetinaNet`` instance (any backbone, any class count)
    on compressdet's detector contract, so training, distillation, evaluation and export run on it.

    The instance's backbone, head, anchor generator, box coder, loss and post-processing are used as
    they are; its ``transform`` is bypassed: images enter at ``image_size`` as compressdet feeds them
    (BGR minus mean, no std; train from scratch or fine-tune with that input). ``classes`` must
    match the head's ``num_classes`` (torchvision's FCOS/RetinaNet have no background logit: label
    ``i`` is ``classes[i]``). Its weights are left as they are, but for an FCOS whose box bias is
    still torchvision's fresh zero: that starts at ``FCOS_BOX_BIAS_INIT`` strides as in the
    registered builders (without it a box branch from scratch can stay dead; see
    :func:`init_fcos_box_bias`).

    Args:
        model: a ``torchvision.models.detection.FCOS`` or ``RetinaNet``.
        image_size: ``(H, W)`` model input, multiples of 16.
        classes: the class names, in label order.
        name: recorded as ``arch["name"]``. Model files of a wrapped instance reload with
            ``load_model(path, base=wrap_torchvision(fresh_instance, ...))``, or by name once a
            builder is registered under ``name`` (:func:`compressdet.models.register_model`),
            which is what recipes need (``model: {arch: name}``); a recipe's ``model: {factory:
            ...}`` needs neither (:mod:`compressdet.models._factory`).
        box_bias_init: FCOS only: ``None`` (default) starts a fresh zero box bias at
            ``FCOS_BOX_BIAS_INIT``, ``True`` always, ``False`` never (:func:`init_fcos_box_bias`).

    Returns:
        a :class:`TorchvisionDetector` sharing the instance's modules (``.det`` is ``model``).

    Raises:
        ModelError: not an FCOS/RetinaNet, or ``classes`` does not match the head.

    Example:
        >>> from torchvision.models.detection import fcos_resnet50_fpn
        >>> tv = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
        >>> det = wrap_torchvision(tv, image_size=(128, 128), classes=["car", "pedestrian", "cyclist"])
        >>> [o.shape[-1] for o in det(torch.zeros(1, 3, 128, 128))]
        [3, 4, 1]
    """
    family = _family_of(model)
    n = _num_classes_of(model)
    if n != len(classes):
        raise ModelError(f"classes: {len(classes)} names given but the {family} head has num_classes={n} "
                         f"(torchvision FCOS/RetinaNet have no background logit: give one name per class)")
    arch = {"name": name, "family": family, "wrapped": type(model).__name__, "num_classes": n,
            "classes": list(classes), "image_size": [int(v) for v in image_size]}
    wrapped = TorchvisionDetector(model, image_size=image_size, arch=arch)
    if family == "fcos":
        init_fcos_box_bias(model, box_bias_init, what=f"{name} ({type(model).__name__})")
    return wrapped


# --------------------------------------------------------------------------------------------
# registered variants: (family, backbone, FPN width, head tower depth)

_VARIANTS = {
    "fcos_mnv3_small": ("fcos", "mnv3_small", 64, 2),
    "fcos_mnv3_large": ("fcos", "mnv3_large", 96, 3),
    "fcos_r18": ("fcos", "r18", 128, 4),
    "fcos_mnv2_050": ("fcos", "mnv2_050", 64, 2),
    "retinanet_mnv3_small": ("retinanet", "mnv3_small", 64, 4),
    "retinanet_mnv3_large": ("retinanet", "mnv3_large", 96, 4),
    "retinanet_r18": ("retinanet", "r18", 128, 4),
    "retinanet_mnv2_050": ("retinanet", "mnv2_050", 64, 4),
}


def anchor_fit(model: TorchvisionDetector, boxes: Tensor, *, chunk: int = 1024) -> dict[str, float]:
    """How well a RetinaNet's anchors fit ground-truth ``boxes`` (``[B, 4]`` xyxy, model-input px).

    torchvision's matcher trains an anchor as foreground at IoU >= its high threshold (0.5) and keeps a
    box below its low threshold (0.4) only through the one "low-quality" best anchor: a box no anchor
    reaches is barely trained, and scored at KITTI's IoU 0.7 it is rarely found. Anchors sized for
    COCO at 800 px leave many of KITTI's small boxes there; this measures it before any training.

    Returns:
        ``foreground`` (share of boxes whose best anchor reaches the high threshold), ``low_quality_only``
        (share below the low threshold), ``median_best_iou``, ``boxes``.
    """
    from torchvision.ops import box_iou

    if model.family != "retinanet":
        raise ModelError(f"'{model.arch.get('name')}' has no anchors to fit (anchor_fit is for retinanet_*)")
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    if not len(boxes):
        raise ModelError("anchor_fit: no boxes with a positive width and height")
    matcher = model.det.proposal_matcher
    anchors = model.priors()
    best = torch.cat([box_iou(b, anchors).max(1).values for b in boxes.split(chunk)])
    return {"foreground": float((best >= matcher.high_threshold).float().mean()),
            "low_quality_only": float((best < matcher.low_threshold).float().mean()),
            "median_best_iou": float(best.median()), "boxes": int(len(boxes))}


DEFAULT_ANCHOR_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0)


def suggest_anchor_scale(arch: str, boxes, image_size: tuple[int, int], num_classes: int,
                         scales=DEFAULT_ANCHOR_SCALES) -> tuple[float, dict[float, dict]]:
    """``(best scale, {scale: anchor_fit})``: the scale whose anchors reach the matcher's foreground IoU
    for the most boxes (ties: the higher median best IoU, then the larger scale)."""
    from . import build_model

    model = build_model(arch, image_size=image_size, num_classes=num_classes)  # once: only the anchors change
    fits = {}
    for s in scales:
        model.det.anchor_generator = _retinanet_anchors(float(s))
        fits[float(s)] = anchor_fit(model, boxes)
    best = max(fits, key=lambda s: (round(fits[s]["foreground"], 4), round(fits[s]["median_best_iou"], 4), s))
    return best, fits


def _from_arch(arch: dict[str, Any]) -> TorchvisionDetector:
    kw = dict(arch)
    if kw.get("wrapped"):
        raise ModelError(f"'{kw.get('name')}' is a wrapped torchvision instance: load it with "
                         "load_model(path, base=wrap_torchvision(<a fresh instance>, ...))")
    return build_torchvision_detector(**kw)


def _make_builder(name: str, family: str, backbone: str, channels: int, convs: int):
    def builder(*, image_size: Sequence[int] = (384, 1248), num_classes: int = 3, width: float | None = None,
                pretrained: str | None = None, fpn_channels: int = channels, head_convs: int = convs,
                anchor_scale: float = 4.0, head: str | None = None, weights: str | None = None,
                **_ignored: Any) -> TorchvisionDetector:
        # _ignored: ShuffleDet-only build_model arguments (num_anchors, dropout)
        if width is not None:
            raise ModelError(f"'{name}' has no width multiplier (model.width is for shuffledet)")
        if weights and pretrained:
            raise ModelError(f"'{name}': give model.weights or model.pretrained, not both")
        model = build_torchvision_detector(name=name, family=family, backbone=backbone, fpn_channels=fpn_channels,
                                           head_convs=head_convs, num_classes=num_classes, image_size=image_size,
                                           anchor_scale=anchor_scale, head=head)
        if pretrained:
            from ._builder import load_pretrained_backbone

            load_pretrained_backbone(model, pretrained)
        if weights:
            load_backbone_weights(model, backbone, weights)
        return model

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"{family} with a {backbone} FPN ({channels} channels), from scratch with BatchNorm."
    return builder


for _name, (_fam, _bb, _ch, _nc) in _VARIANTS.items():
    register_model(_name, from_arch=_from_arch)(_make_builder(_name, _fam, _bb, _ch, _nc))
